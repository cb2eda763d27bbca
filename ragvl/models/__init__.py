"""The Qwen2-VL model family on onnxruntime: conversion from HF checkpoints and the runtime."""

"""Build time: a Hugging Face checkpoint -> ONNX graphs (numpy + onnx, no torch), quantized as
asked, and `models pull` (download, then convert)."""

from .convert import convert
from .pull import pull_defaults

__all__ = ["convert", "pull_defaults"]

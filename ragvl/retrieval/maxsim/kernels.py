"""The two tiny onnxruntime graphs MaxSim runs on (score MatMul, nearest-centroid ArgMax)."""

from __future__ import annotations

import threading

import numpy as np

__all__ = ["Kernels"]


class Kernels:
    """Two tiny onnxruntime graphs per storage dtype, single-threaded (built once, then cached).

    * ``scores(X (n, D) fp16|fp32, Q (m, D) fp32) -> (m, n) fp32`` = Q @ float32(X).T
    * ``assign(X (n, D), CT (D, K) fp32) -> (n,) int64`` = argmax over K of float32(X) @ CT

    Each session runs on ONE thread; the parallelism is ours (:func:`ragvl.retrieval.maxsim.pool.parallel`): whole chunks
    handed to worker threads from a shared queue. Why not onnxruntime's intra-op threads: they
    split every MatMul statically and meet at a barrier, so when another process holds one of
    the two cores each call waits for the descheduled half - measured 2x SLOWER than one thread
    on the shared dev machine, while chunk-level work sharing stays >= one thread's speed under
    contention and ~2x when the cores are free (the segment max runs in parallel too).
    Concurrent ``run`` calls on one session are supported by onnxruntime.
    """

    _cache: dict = {}
    _lock = threading.Lock()

    @classmethod
    def get(cls, dtype: np.dtype) -> "Kernels":
        key = np.dtype(dtype).str
        with cls._lock:
            k = cls._cache.get(key)
            if k is None:
                k = cls._cache[key] = cls(np.dtype(dtype))
            return k

    def __init__(self, dtype: np.dtype):
        import onnxruntime as ort

        def session(name: str):
            so = ort.SessionOptions()
            so.intra_op_num_threads = 1
            so.inter_op_num_threads = 1
            so.log_severity_level = 3
            try:
                return ort.InferenceSession(_graph_bytes(name, dtype), so, providers=["CPUExecutionProvider"])
            except Exception:  # a damaged cached file (onnxruntime's own exception types): build it again
                return ort.InferenceSession(_graph_bytes(name, dtype, rebuild=True), so,
                                            providers=["CPUExecutionProvider"])

        self._scores = session("scores")
        self._assign = session("assign")

    def scores(self, x: np.ndarray, q: np.ndarray) -> np.ndarray:
        return self._scores.run(None, {"X": x, "Q": q})[0]          # (m, n) float32

    def assign(self, x: np.ndarray, ct: np.ndarray) -> np.ndarray:
        return self._assign.run(None, {"X": x, "CT": ct})[0]        # (n,) int64


# Bump when a graph below changes: the cached bytes are looked up by this version.
GRAPHS_VERSION = 1


def _graph_bytes(name: str, dtype: np.dtype, *, rebuild: bool = False) -> bytes:
    """A kernel graph's serialized ONNX model, from the cache home once built there.

    Why cached: building needs the onnx package, whose import (its ml_dtypes extension) costs
    about a second, more than a whole search; onnxruntime itself loads the bytes.
    """
    from ...fsutil import atomic_write, cache_home

    path = cache_home() / "kernels" / f"maxsim-{name}-{np.dtype(dtype).name}-v{GRAPHS_VERSION}.onnx"
    if not rebuild:
        try:
            return path.read_bytes()
        except OSError:
            pass
    data = _build_graph(name, np.dtype(dtype))
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, data)
    except OSError:
        pass  # a read-only cache home: built again by the next process
    return data


def _build_graph(name: str, dtype: np.dtype) -> bytes:
    """``scores``: Gemm(Q, float32(X), transB) -> (m, n); ``assign``: ArgMax(float32(X) @ CT) -> (n,)."""
    from onnx import TensorProto, helper

    elem = {np.dtype(np.float16): TensorProto.FLOAT16, np.dtype(np.float32): TensorProto.FLOAT}[dtype]
    x_in = helper.make_tensor_value_info("X", elem, ["n", "d"])
    head = [helper.make_node("Cast", ["X"], ["Xf"], to=TensorProto.FLOAT)] if elem != TensorProto.FLOAT else []
    xf = "Xf" if head else "X"
    if name == "scores":
        # Gemm(Q, X, transB) gives (m, n) with n contiguous: the page segments of a row are
        # contiguous, which is what makes np.maximum.reduceat(axis=1) fast (~0.15 ns/element).
        nodes = [helper.make_node("Gemm", ["Q", xf], ["S"], transB=1)]
        inputs = [helper.make_tensor_value_info("Q", TensorProto.FLOAT, ["m", "d"])]
        outputs = [helper.make_tensor_value_info("S", TensorProto.FLOAT, ["m", "n"])]
    else:
        nodes = [helper.make_node("MatMul", [xf, "CT"], ["S"]),
                 helper.make_node("ArgMax", ["S"], ["I"], axis=1, keepdims=0)]
        inputs = [helper.make_tensor_value_info("CT", TensorProto.FLOAT, ["d", "k"])]
        outputs = [helper.make_tensor_value_info("I", TensorProto.INT64, ["n"])]
    graph = helper.make_graph(head + nodes, "maxsim", [x_in] + inputs, outputs)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8                                    # loadable by onnxruntime >= 1.14
    return model.SerializeToString()

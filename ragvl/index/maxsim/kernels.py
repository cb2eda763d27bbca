"""The two tiny onnxruntime graphs MaxSim runs on (score MatMul, nearest-centroid ArgMax)."""

from __future__ import annotations

import threading

import numpy as np

__all__ = ["Kernels"]


class Kernels:
    """Two tiny onnxruntime graphs, built in memory once per storage dtype, single-threaded.

    * ``scores(X (n, D) fp16|fp32, Q (m, D) fp32) -> (m, n) fp32`` = Q @ float32(X).T
    * ``assign(X (n, D), CT (D, K) fp32) -> (n,) int64`` = argmax over K of float32(X) @ CT

    Each session runs on ONE thread; the parallelism is ours (:func:`ragvl.index.maxsim.pool.parallel`): whole chunks
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
        from onnx import TensorProto, helper

        elem = {np.dtype(np.float16): TensorProto.FLOAT16, np.dtype(np.float32): TensorProto.FLOAT}[dtype]
        x_in = helper.make_tensor_value_info("X", elem, ["n", "d"])
        head = [helper.make_node("Cast", ["X"], ["Xf"], to=TensorProto.FLOAT)] if elem != TensorProto.FLOAT else []
        xf = "Xf" if head else "X"

        def session(nodes, inputs, outputs):
            graph = helper.make_graph(head + nodes, "maxsim", [x_in] + inputs, outputs)
            model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
            model.ir_version = 8                                    # loadable by onnxruntime >= 1.14
            so = ort.SessionOptions()
            so.intra_op_num_threads = 1
            so.inter_op_num_threads = 1
            so.log_severity_level = 3
            return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])

        # Gemm(Q, X, transB) gives (m, n) with n contiguous: the page segments of a row are
        # contiguous, which is what makes np.maximum.reduceat(axis=1) fast (~0.15 ns/element).
        self._scores = session(
            [helper.make_node("Gemm", ["Q", xf], ["S"], transB=1)],
            [helper.make_tensor_value_info("Q", TensorProto.FLOAT, ["m", "d"])],
            [helper.make_tensor_value_info("S", TensorProto.FLOAT, ["m", "n"])])
        self._assign = session(
            [helper.make_node("MatMul", [xf, "CT"], ["S"]),
             helper.make_node("ArgMax", ["S"], ["I"], axis=1, keepdims=0)],
            [helper.make_tensor_value_info("CT", TensorProto.FLOAT, ["d", "k"])],
            [helper.make_tensor_value_info("I", TensorProto.INT64, ["n"])])

    def scores(self, x: np.ndarray, q: np.ndarray) -> np.ndarray:
        return self._scores.run(None, {"X": x, "Q": q})[0]          # (m, n) float32

    def assign(self, x: np.ndarray, ct: np.ndarray) -> np.ndarray:
        return self._assign.run(None, {"X": x, "CT": ct})[0]        # (n,) int64

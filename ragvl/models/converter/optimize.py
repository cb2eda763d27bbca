"""onnxruntime's optimized graphs, saved at conversion so that loading a model skips that work.

Measured at the 2B shape (int8): the decoder session takes 5.1 s to open with onnxruntime's
graph optimizations on and 1.8 s with them off. So the converter lets onnxruntime optimize each
graph once and save the result (`decoder.opt.onnx` + `.data`), and the runtime loads that copy
with optimizations off. A saved graph is tied to the onnxruntime version and provider that wrote
it (the manifest's `optimized.key`); any other runtime falls back to the plain graph. The level
is "extended", not "all": the extra level only adds layout changes for the CPU it runs on.
Nothing is ever written into a model folder at load time (it may be read-only, and a shared
vision graph is hard-linked into two folders).
"""

from __future__ import annotations

from pathlib import Path

from ...errors import RagvlError
from ..contract import optimized_graph, optimized_key

PROVIDER = "CPUExecutionProvider"


def save_optimized(graph: Path) -> Path:
    """Write onnxruntime's optimized copy of `graph` beside it (external data file); returns its path."""
    import onnxruntime as ort

    out = graph.with_name(optimized_graph(graph.name))
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    so.optimized_model_filepath = str(out)
    so.add_session_config_entry("session.optimized_model_external_initializers_file_name", out.name + ".data")
    so.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes", "1024")
    so.log_severity_level = 3
    try:
        ort.InferenceSession(str(graph), so, providers=[PROVIDER])
    except Exception as e:  # onnxruntime raises its own exception types
        raise RagvlError(f"{graph}: onnxruntime could not optimize the graph ({str(e).splitlines()[0]})") from None
    return out


def key() -> str:
    """The `optimized.key` of graphs saved by this onnxruntime."""
    return optimized_key(PROVIDER)

"""Names the converter writes into the graphs and the runtime reads back: one place for both sides."""

from __future__ import annotations

VECTOR_DIM = 128  # ColQwen2's multi-vector width (custom_text_proj's output)


def kv_names(i: int) -> tuple[str, str, str, str]:
    """Graph names of layer i's past and present key/value tensors."""
    return (f"past_key_values.{i}.key", f"past_key_values.{i}.value", f"present.{i}.key", f"present.{i}.value")


def optimized_key(provider: str) -> str:
    """Which onnxruntime wrote a pre-optimized graph, and for which provider: a saved optimized
    graph is only loaded by the same onnxruntime version on the same provider (and, where the
    manifest records one, the same CPU: optimized.py)."""
    import onnxruntime as ort

    return f"onnxruntime-{ort.__version__}-{provider}"


def optimized_graph(graph_file: str) -> str:
    """The pre-optimized copy of a graph file (decoder.onnx -> decoder.opt.onnx)."""
    return graph_file[:-len(".onnx")] + ".opt.onnx"

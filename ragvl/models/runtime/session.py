"""A thin onnxruntime session wrapper that checks execution providers loudly."""

from __future__ import annotations

import os
import weakref
from pathlib import Path

import onnxruntime as ort

from ...errors import RagvlError
from ...fsutil import cpu_threads

DEVICES = {
    "cpu": ["CPUExecutionProvider"],
    "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
}


def default_device() -> str:
    return os.environ.get("RAGVL_DEVICE", "cpu")


def providers_for(device: str) -> list[str]:
    """The provider list for `device`; a missing provider is an error, never a silent CPU fallback."""
    if device not in DEVICES:
        raise RagvlError(f"--device {device}: expected one of {', '.join(DEVICES)}")
    wanted = DEVICES[device][0]
    available = ort.get_available_providers()
    if wanted not in available:
        hint = " (install onnxruntime-gpu in place of onnxruntime)" if device == "cuda" else ""
        raise RagvlError(f"execution provider {wanted} is not available in this onnxruntime "
                         f"({', '.join(available)}){hint}")
    return DEVICES[device]


# Open sessions by file identity: a vision graph hard-linked into both the embedder and the
# generator folders is loaded once per process.
_OPEN: "weakref.WeakValueDictionary[tuple, ort.InferenceSession]" = weakref.WeakValueDictionary()


def create_session(path: str | Path, device: str = "cpu", threads: int | None = None,
                   optimize: bool = True, prepack: bool = True) -> ort.InferenceSession:
    """Open one ONNX graph on `device`, failing loudly if the provider did not take it.

    `optimize=False` for a graph onnxruntime already optimized and saved (at conversion): its
    graph optimizations then cost seconds at every start for nothing.
    `prepack=False`: onnxruntime leaves the weights memory-mapped from the file instead of
    copying them into its kernels' packed layouts at load; each run packs what it multiplies.
    For a process that runs the graph once or twice (measured on the 2B int8 encoder, 2 cores:
    opening 2.2 s -> 0.2 s and 1.3 GB -> 70 MB resident; one query 0.5 s -> 0.7 s).
    """
    path = Path(path)
    try:
        st = path.stat()
    except OSError as e:
        raise RagvlError(f"{path}: cannot open the graph ({e.strerror})") from None
    key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, device, threads, optimize, prepack)
    sess = _OPEN.get(key)
    if sess is None:
        sess = _OPEN[key] = _open(path, device, threads, optimize, prepack)
    return sess


def _open(path: Path, device: str, threads: int | None, optimize: bool, prepack: bool) -> ort.InferenceSession:
    providers = providers_for(device)
    so = ort.SessionOptions()
    so.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize
                                   else ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    so.intra_op_num_threads = threads or cpu_threads()
    so.log_severity_level = 3
    if not prepack:
        so.add_session_config_entry("session.disable_prepacking", "1")
    try:
        sess = ort.InferenceSession(str(path), so, providers=providers)
    except Exception as e:  # onnxruntime raises its own exception types
        raise RagvlError(f"{path}: onnxruntime could not load the graph ({str(e).splitlines()[0]})") from None
    if sess.get_providers()[0] != providers[0]:
        raise RagvlError(f"{path}: onnxruntime fell back from {providers[0]} to {sess.get_providers()[0]}")
    return sess

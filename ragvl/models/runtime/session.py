"""A thin onnxruntime session wrapper that checks execution providers loudly."""

from __future__ import annotations

import os
import weakref
from pathlib import Path

import onnxruntime as ort

from ...errors import RagvlError
from ...fsutil import cpu_threads
from ..contract import int8_kernel
from .int8 import Derived, derive

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
# What each open session runs with (its int8 kernel) and the derived weights it needs kept alive.
_KERNELS: "weakref.WeakKeyDictionary[ort.InferenceSession, tuple[str | None, Derived | None]]" = \
    weakref.WeakKeyDictionary()


def create_session(path: str | Path, device: str = "cpu", threads: int | None = None,
                   optimize: bool = True, prepack: bool = True, kernel: str | None = None,
                   profile: str | None = None, column_blocks: bool = True) -> ort.InferenceSession:
    """Open one ONNX graph on `device`, failing loudly if the provider did not take it.

    `optimize=False` for a graph onnxruntime already optimized and saved (at conversion): its
    graph optimizations then cost seconds at every start for nothing.
    `prepack=False`: onnxruntime leaves the weights memory-mapped from the file instead of
    copying them into its kernels' packed layouts at load; each run packs what it multiplies.
    For a process that runs the graph once or twice (measured on the 2B int8 encoder, 2 cores:
    opening 2.2 s -> 0.2 s and 1.3 GB -> 70 MB resident; one query 0.5 s -> 0.7 s). Such a
    session keeps the stored int8 layout (u8u8): deriving another would copy the weights.
    `kernel`: the int8 kernel of the graph's rows-kernel matmuls (int8.py); default: this CPU's
    (`contract.int8_kernel()`).
    `profile`: a file prefix; onnxruntime's profiler records every run (bench/experiments), in
    a session of its own.
    `column_blocks=False`: the graph has no column-scaled MatMulNBits (its manifest says so:
    contract.column_scaled_blocks), so on u8u8, which keeps everything else as stored, the file
    is loaded without reading its structure first (and without importing onnx).
    """
    path = Path(path)
    try:
        st = path.stat()
    except OSError as e:
        raise RagvlError(f"{path}: cannot open the graph ({e.strerror})") from None
    kernel = kernel or (int8_kernel() if prepack else "u8u8")
    key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, device, threads, optimize, prepack, kernel, profile,
           column_blocks)
    sess = _OPEN.get(key)
    if sess is None:
        sess = _OPEN[key] = _open(path, device, threads, optimize, prepack, kernel, profile, column_blocks)
    return sess


def session_kernel(sess: ort.InferenceSession) -> str | None:
    """The int8 kernel `sess` runs its rows-kernel matmuls with: u8u8 for a graph loaded as
    stored without being read (whether or not it has any), None for a graph that was inspected
    and has none."""
    return _KERNELS.get(sess, (None, None))[0]


def _open(path: Path, device: str, threads: int | None, optimize: bool, prepack: bool,
          kernel: str, profile: str | None, column_blocks: bool) -> ort.InferenceSession:
    providers = providers_for(device)
    so = ort.SessionOptions()
    so.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize
                                   else ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    so.intra_op_num_threads = threads or cpu_threads()
    so.log_severity_level = 3
    if profile:
        so.enable_profiling, so.profile_file_prefix = True, profile
    if not prepack:
        so.add_session_config_entry("session.disable_prepacking", "1")
    try:
        used, derived = derive(path, kernel, many_runs=prepack, has_blocks=column_blocks)
        if derived is None:
            sess = ort.InferenceSession(str(path), so, providers=providers)
        else:  # the rewritten graph as bytes; its other weights still come from the folder
            so.add_session_config_entry("session.model_external_initializers_file_folder_path", str(path.parent))
            if derived.names:
                so.add_external_initializers(derived.names, [ort.OrtValue.ortvalue_from_numpy(a) for a in derived.arrays])
            sess = ort.InferenceSession(derived.model, so, providers=providers)
    except RagvlError:
        raise
    except Exception as e:  # onnxruntime (and onnx, reading the graph) raise their own exception types
        raise RagvlError(f"{path}: onnxruntime could not load the graph ({str(e).splitlines()[0]})") from None
    _KERNELS[sess] = (used, derived)
    if sess.get_providers()[0] != providers[0]:
        raise RagvlError(f"{path}: onnxruntime fell back from {providers[0]} to {sess.get_providers()[0]}")
    return sess


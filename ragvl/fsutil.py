"""Small file-system helpers every layer shares: atomic writes, file hashes, thread count.

An atomic write goes to a uniquely named temporary file in the same folder, is fsynced, and
then replaces the target in one `os.replace`: a reader sees the old file or the new one, never
a torn one, and two writers never share a temporary name.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from typing import Callable, IO

from .errors import RagvlError, os_error_cause

__all__ = ["atomic_write", "atomic_write_with", "sha256_file", "cpu_threads", "cache_home"]


def atomic_write_with(path: str | os.PathLike, write: Callable[[IO[bytes]], None]) -> None:
    """Call `write(f)` on a fresh temporary file beside `path`, fsync it, then replace `path`."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def atomic_write(path: str | os.PathLike, data: bytes | str) -> None:
    """Write `data` (str as UTF-8) to `path` atomically (see the module docstring)."""
    payload = data.encode() if isinstance(data, str) else data
    atomic_write_with(path, lambda f: f.write(payload))


def sha256_file(path: str | os.PathLike, chunk_size: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB chunks; RagvlError if it cannot be read."""
    h = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            while chunk := f.read(chunk_size):
                h.update(chunk)
    except OSError as e:
        raise RagvlError(f"{path}: {os_error_cause(e)}") from None
    return h.hexdigest()


def cpu_threads() -> int:
    """How many CPU threads ragvl computes on: RAGVL_THREADS, else the CPUs this process may use.

    It sets onnxruntime's intra-op threads of every model session and the MaxSim worker count:
    one knob, one meaning ("use this many cores").
    """
    raw = os.environ.get("RAGVL_THREADS", "").strip()
    if raw:
        try:
            n = int(raw)
        except ValueError:
            raise RagvlError(f"RAGVL_THREADS={raw!r}: not a whole number") from None
        if n < 1:
            raise RagvlError(f"RAGVL_THREADS={raw!r}: must be 1 or more")
        return n
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def cache_home() -> Path:
    """Where ragvl keeps machine-local caches (search caches of read-only or remote indexes, model
    checks): RAGVL_CACHE, else $XDG_CACHE_HOME/ragvl, else ~/.cache/ragvl."""
    if os.environ.get("RAGVL_CACHE"):
        return Path(os.environ["RAGVL_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "ragvl"

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

__all__ = ["atomic_write", "atomic_write_with", "save_npy", "sha256_file", "cpu_threads", "cache_home",
           "ragvl_home", "replace_dir",
           "remove_stale_partials"]


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


def save_npy(path: str | os.PathLike, arr) -> None:
    """Write a numpy array to `path` (.npy, no pickles) atomically, as :func:`atomic_write_with`."""
    import numpy as np

    atomic_write_with(path, lambda f: np.save(f, np.asarray(arr), allow_pickle=False))


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


def ragvl_home(var: str) -> Path:
    """The folder the environment variable `var` names, else $XDG_CACHE_HOME/ragvl, else ~/.cache/ragvl:
    the one rule of both ragvl homes (RAGVL_CACHE: caches; RAGVL_HOME: converted models)."""
    if os.environ.get(var):
        return Path(os.environ[var])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "ragvl"


def cache_home() -> Path:
    """Where ragvl keeps machine-local caches (search caches of read-only or remote indexes, model
    checks): RAGVL_CACHE, else $XDG_CACHE_HOME/ragvl, else ~/.cache/ragvl."""
    return ragvl_home("RAGVL_CACHE")


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths with Linux renameat2(RENAME_EXCHANGE); False where unsupported."""
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return False
    AT_FDCWD, RENAME_EXCHANGE = -100, 2
    return fn(AT_FDCWD, os.fsencode(a), AT_FDCWD, os.fsencode(b), RENAME_EXCHANGE) == 0


def replace_dir(new: str | os.PathLike, target: str | os.PathLike) -> None:
    """Make the complete folder `new` take the place of `target` (which may exist), then delete the old one.

    On Linux the two folders are exchanged in one atomic rename (renameat2 RENAME_EXCHANGE): a
    reader opening `target` sees the old folder or the new one, never none. Elsewhere, two
    renames with the old folder moved aside first (a window of microseconds).
    """
    import shutil

    new, target = Path(new), Path(target)
    if not target.exists():
        os.replace(new, target)
        return
    if _exchange(new, target):
        shutil.rmtree(new, ignore_errors=True)  # `new` now names the old folder
        return
    old = target.with_name(f".{target.name}.old-{os.getpid()}")
    os.replace(target, old)
    os.replace(new, target)
    shutil.rmtree(old, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_partials(target: str | os.PathLike) -> None:
    """Delete `.NAME.partial-PID` / `.NAME.old-PID` folders beside `target` left by dead processes."""
    import shutil

    target = Path(target)
    if not target.parent.is_dir():
        return
    for p in target.parent.glob(f".{target.name}.*-*"):
        kind, _, pid = p.name.rpartition("-")
        if kind.endswith((".partial", ".old")) and pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(p, ignore_errors=True)

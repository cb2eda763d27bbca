"""One writer at a time per index: `writer_lock(db)`.

An exclusive `fcntl.flock` on `writer.lock` in the index folder. The kernel drops the lock when
the holding process dies however it dies (kill -9 included), so a crashed writer never blocks
the next one; the file itself may stay and means nothing unless locked. While holding the lock
the writer writes "pid host start-time command" into the file, so a waiter can name it.

Choice: a second writer WAITS (with one message naming the holder) rather than failing, since
a second `ragvl index` started by a script usually wants the same end state; once it gets the
lock it plans from the committed index and finds the first writer's work done.
`wait=False` (`--no-wait` on the command line) fails at once with one line instead.

Every writer takes it: `ragvl index`, `ragvl rm`, migrations, and the Python API (Index.index,
Index.remove); the server's jobs and a distributed run's driver use the same function.
Readers never take it: LanceDB versions give them the last committed state.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import sys
import time
from pathlib import Path
from typing import Callable, Iterator

from ..errors import RagvlError, os_error_cause
from .schema import LOCK_FILE

_held: set[str] = set()  # lock files this process holds: nested writer_lock calls pass through


def _holder(path: Path) -> str:
    try:
        text = path.read_text().strip()
    except OSError:
        text = ""
    return text or "another process"


@contextlib.contextmanager
def writer_lock(db: str | os.PathLike, *, wait: bool = True,
                log: Callable[[str], None] | None = None) -> Iterator[None]:
    """Hold the index's writer lock for the `with` body (creates the index folder if needed)."""
    if "://" in str(db):
        # object storage has no flock: issue 12 adds a lease object with a conditional put
        raise RagvlError(f"{db}: writing to a remote index is not supported yet")
    folder = Path(db)
    path = folder / LOCK_FILE
    key = os.path.abspath(path)
    if key in _held:  # e.g. a migration inside `ragvl index`: this process already is the writer
        yield
        return
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        cause = (e.strerror or os_error_cause(e)).lower()
        raise RagvlError(f"{folder}: cannot write the index ({cause})") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(path)
            if not wait:
                raise RagvlError(f"{folder}: another writer holds the index ({holder})") from None
            (log or (lambda m: print(m, file=sys.stderr, flush=True)))(
                f"waiting for another writer of {folder} to finish ({holder})")
            fcntl.flock(fd, fcntl.LOCK_EX)
        info = (f"pid {os.getpid()} on {socket.gethostname()} since "
                f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime())}: {' '.join(sys.argv[:3])}")
        os.ftruncate(fd, 0)
        os.pwrite(fd, info.encode() + b"\n", 0)
        _held.add(key)
        try:
            yield
        finally:
            _held.discard(key)
            os.ftruncate(fd, 0)
    finally:
        os.close(fd)  # releases the flock

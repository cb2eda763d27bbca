"""One writer at a time per index: `writer_lock(db)`, for a local folder or object storage.

Object storage (`s3://`): a lease object made with a conditional put (objstore.ObjectLock). The
lock yields a holder whose `check()` raises once the lease was lost, before the next commit.

A local folder: an exclusive `fcntl.flock` on `writer.lock` in the index folder. The kernel drops the lock when
the holding process dies however it dies (kill -9 included), so a crashed writer never blocks
the next one; the file itself may stay and means nothing unless locked. While holding the lock
the writer writes "pid host start-time command" into the file, so a waiter can name it.

Choice: a second writer WAITS (with one message naming the holder) rather than failing, since
a second `ragvl index` started by a script usually wants the same end state; once it gets the
lock it plans from the committed index and finds the first writer's work done.
`wait=False` (`--no-wait` on the command line) fails at once with one line instead, on either
kind of storage.

Every writer takes it: `ragvl index` (with or without Ray workers), `ragvl rm`, migrations, the
Python API (Index.index, Index.remove) and the server's jobs. Readers never take it: LanceDB
versions give them the last committed state.
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
from .objstore import ObjectLock, is_uri
from .schema import LOCK_FILE

_held: set[str] = set()  # lock files this process holds: nested writer_lock calls pass through


def _holder(path: Path) -> str:
    try:
        text = path.read_text().strip()
    except OSError:
        text = ""
    return text or "another process"


class Held:
    """What `writer_lock` yields: `check()` raises if the lock was lost (an object-storage lease
    that ran out while the holder stalled); a local lock is never lost."""

    def __init__(self, lease: ObjectLock | None = None):
        self.lease = lease

    def check(self) -> None:
        if self.lease is not None:
            self.lease.check()


@contextlib.contextmanager
def writer_lock(db: str | os.PathLike, *, wait: bool = True,
                log: Callable[[str], None] | None = None) -> Iterator[Held]:
    """Hold the index's writer lock for the `with` body (creates a local index folder if needed)."""
    log = log or (lambda m: print(m, file=sys.stderr, flush=True))
    if is_uri(db):
        if not str(db).lower().startswith(("s3://", "s3a://")):
            log(f"{db}: no writer lock on this storage (only s3:// has one)")
            yield Held()
            return
        lease = ObjectLock(str(db), log=log)
        lease.acquire(timeout=None if wait else 0)
        try:
            yield Held(lease)
        finally:
            lease.release()
        return
    with _local_lock(Path(db), wait=wait, log=log):
        yield Held()


@contextlib.contextmanager
def _local_lock(folder: Path, *, wait: bool, log: Callable[[str], None]) -> Iterator[None]:
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
            log(f"waiting for another writer of {folder} to finish ({holder})")
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

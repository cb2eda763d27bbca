"""Rendering in a child process with a time limit: a page that hangs or crashes MuPDF costs
that page, never the run.

One long-lived worker per `Renderer` (per indexing run): the parent sends "open" and "render"
requests over a pipe; the worker answers with DocumentInfo / RenderedPage (PNG bytes) /
SkippedPage values. When an answer does not come within the time limit, or the worker dies (a
segfault, the kernel's OOM killer), the worker is killed, the page is reported as skipped with
the cause, and a fresh worker reopens the document for the next page.

`Renderer.pages` keeps one request in flight: the worker renders page n+1 while the caller
embeds page n.

The worker is `python -c _BOOT FD` (started with subprocess, not multiprocessing, so it never
re-imports the caller's __main__), talking over an inherited socket; its stdout and
stderr go to /dev/null (MuPDF may print there) unless RAGVL_DEBUG=1.

Test hooks (environment, read by the worker): RAGVL_TEST_RENDER_HANG=3,7 makes it sleep on
pages 3 and 7 of every document (0: when opening one); RAGVL_TEST_RENDER_CRASH=2 makes it die by
SIGSEGV on page 2.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from multiprocessing import Pipe
from multiprocessing.connection import Connection
from typing import Iterable, Iterator

from ..errors import RagvlError, short
from .document import DEFAULT_DPI, MAX_SIDE, open_document
from .mupdf import quiet_mupdf
from .pages import DocumentInfo, PageResult, SkippedPage, describe, render_result

PAGE_TIMEOUT = 60.0  # seconds for one page (or one open); RAGVL_PAGE_TIMEOUT overrides it
START_TIMEOUT = 120.0  # seconds for a fresh worker to import PyMuPDF and say it is ready
_HANG_ENV, _CRASH_ENV = "RAGVL_TEST_RENDER_HANG", "RAGVL_TEST_RENDER_CRASH"
# The worker's entry point. PyMuPDF 2 imports its optional `pymupdf.layout` (an ONNX layout model
# for pymupdf4llm) unconditionally, which is most of its import time (2.5 of 4 s on a busy
# machine); rendering and get_text() do not use it (same pixels and text on sample_pdfs/), so
# the worker blocks that import and starts in a fraction of the time.
_BOOT = ("import sys; sys.modules['pymupdf.layout'] = None; "
         "from ragvl.ingest.worker import serve_fd; serve_fd(int(sys.argv[1]))")


def page_timeout() -> float:
    """The per-page time limit: RAGVL_PAGE_TIMEOUT (seconds) if set, else PAGE_TIMEOUT."""
    raw = os.environ.get("RAGVL_PAGE_TIMEOUT", "").strip()
    if not raw:
        return PAGE_TIMEOUT
    try:
        value = float(raw)
    except ValueError:
        raise RagvlError(f"RAGVL_PAGE_TIMEOUT={raw!r}: not a number of seconds") from None
    if not value > 0:
        raise RagvlError(f"RAGVL_PAGE_TIMEOUT={raw!r}: must be more than 0")
    return value


class _WorkerLost(Exception):
    """The worker did not answer in time or died; the message is the cause."""


class Renderer:
    """A render worker process; a context manager. `open(path)`, then `pages(info)`.

    `timeout` (seconds per page or per open; default `page_timeout()`).
    """

    def __init__(self, *, timeout: float | None = None):
        self.timeout = page_timeout() if timeout is None else float(timeout)
        self._proc: subprocess.Popen | None = None
        self._conn: Connection | None = None
        self._open_path: str | None = None  # the document open in the worker
        self._pending = 0  # requests sent whose answers have not been read
        self.restarts = 0  # workers killed for a timeout or a crash

    # -- the process --------------------------------------------------------------------------

    def _start(self) -> None:
        parent, child = Pipe()
        fd = child.fileno()
        sink = None if os.environ.get("RAGVL_DEBUG") == "1" else subprocess.DEVNULL
        try:
            self._proc = subprocess.Popen([sys.executable, "-c", _BOOT, str(fd)], pass_fds=(fd,),
                                          stdin=subprocess.DEVNULL, stdout=sink, stderr=sink)
        except OSError as e:
            parent.close()
            raise RagvlError(f"cannot start the page renderer ({short(e)})") from None
        finally:
            child.close()
        self._conn, self._pending, self._open_path = parent, 0, None
        hint = "run with RAGVL_DEBUG=1 to see its errors"
        if not parent.poll(START_TIMEOUT):
            self._kill()
            raise RagvlError(f"the page renderer did not start within {START_TIMEOUT:g} s; {hint}")
        try:
            parent.recv()  # ("ready", None)
        except (EOFError, OSError):
            raise RagvlError(f"the page renderer did not start ({self._kill()}); {hint}") from None

    def _kill(self) -> str:
        """Kill the worker; the cause of its death for messages."""
        proc, self._proc = self._proc, None
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        self._open_path, self._pending = None, 0
        if proc is None:
            return "no worker"
        if proc.poll() is None:
            proc.kill()
        code = proc.wait()
        if code < 0:
            try:
                return f"killed by {signal.Signals(-code).name}"
            except ValueError:
                return f"killed by signal {-code}"
        return f"exit status {code}"

    def close(self) -> None:
        """Stop the worker (asking first); idempotent."""
        if self._proc is None:
            return
        try:
            self._conn.send(("exit",))
            self._proc.wait(timeout=2)
        except (OSError, ValueError, subprocess.TimeoutExpired):
            pass
        self._kill()

    def __enter__(self) -> "Renderer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- requests -----------------------------------------------------------------------------

    def _send(self, message: tuple) -> None:
        if self._proc is None:
            self._start()
        try:
            self._conn.send(message)
        except (OSError, ValueError):
            raise _WorkerLost(f"the renderer died ({self._kill()})") from None
        self._pending += 1

    def _receive(self, doing: str = "rendering"):
        if not self._conn.poll(self.timeout):
            self._kill()
            self.restarts += 1
            raise _WorkerLost(f"{doing} took longer than {self.timeout:g} s")
        try:
            reply = self._conn.recv()
        except (EOFError, OSError):
            why = self._kill()
            self.restarts += 1
            raise _WorkerLost(f"MuPDF crashed while {doing} ({why})") from None
        self._pending -= 1
        return reply

    def _drain(self) -> None:
        """Read the answers of requests an abandoned `pages` iteration left in flight."""
        while self._pending and self._proc is not None:
            try:
                self._receive()
            except _WorkerLost:
                pass

    def open(self, path: str | os.PathLike) -> DocumentInfo:
        """Open and validate a document in the worker; RagvlError (one line) if it is refused."""
        self._drain()
        try:
            self._send(("open", str(path)))
            status, value = self._receive("opening it")
        except _WorkerLost as e:
            raise RagvlError(f"{path}: {e}") from None
        if status != "ok":
            self._open_path = None
            raise RagvlError(value)
        self._open_path = str(path)
        return value

    def pages(self, info: DocumentInfo, dpi: float = DEFAULT_DPI, *,
              max_side: int | None = MAX_SIDE, skip: Iterable[int] = ()) -> Iterator[PageResult]:
        """Every page of `info`'s document in order, except the 1-based page numbers in `skip`:
        RenderedPage, or SkippedPage when it failed, hung past the time limit or crashed the
        worker. The next page renders while the caller works on this one."""
        self._drain()
        skip = set(skip)
        todo = [i for i in range(info.page_count) if i + 1 not in skip]  # 0-based indexes to render
        in_flight, lost = False, None
        for pos, index in enumerate(todo):
            try:
                if lost is not None:  # the document could not be reopened after a worker restart
                    raise lost
                if not in_flight:
                    if self._open_path != info.path:
                        self.open(info.path)
                    self._send(("render", index, dpi, max_side))
                _, result = self._receive()
            except _WorkerLost as e:
                result = SkippedPage(index + 1, str(e))
            except RagvlError as e:
                lost = lost or e
                result = SkippedPage(index + 1, f"the document could not be reopened ({short(e)})")
            in_flight = False
            if pos + 1 < len(todo) and self._proc is not None and self._open_path == info.path:
                try:  # the worker renders the next page while the caller works on this one
                    self._send(("render", todo[pos + 1], dpi, max_side))
                    in_flight = True
                except _WorkerLost:
                    pass  # a fresh worker reopens the document at the top of the loop
            yield result


def iter_pages(path: str | os.PathLike, dpi: float = DEFAULT_DPI, *, max_side: int | None = MAX_SIDE,
               timeout: float | None = None) -> Iterator[PageResult]:
    """Open `path` (a PDF or an image file) in a fresh render worker and yield each page's
    RenderedPage or SkippedPage; RagvlError (one line) if the document is refused whole."""
    with Renderer(timeout=timeout) as renderer:
        info = renderer.open(path)
        yield from renderer.pages(info, dpi, max_side=max_side)


# -- the worker's side ----------------------------------------------------------------------------


def _pages_from_env(name: str) -> set[int]:
    return {int(p) for p in os.environ.get(name, "").replace(" ", "").split(",") if p.isdigit()}


def _die_with_parent() -> None:
    """Linux: have the kernel kill this worker when its parent dies, even mid-render (a hung
    MuPDF never reads the closed pipe)."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except Exception:  # not Linux: the closed pipe still ends an idle worker
        pass


def _serve(conn: Connection) -> None:
    _die_with_parent()
    quiet_mupdf()
    hang, crash = _pages_from_env(_HANG_ENV), _pages_from_env(_CRASH_ENV)
    conn.send(("ready", None))
    doc = None
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):  # the parent is gone
            break
        if message[0] == "exit":
            break
        if message[0] == "open":
            if doc is not None:
                doc.close()
                doc = None
            if 0 in hang:
                time.sleep(3600)
            try:
                doc = open_document(message[1])
                reply = ("ok", describe(doc))
            except RagvlError as e:
                reply = ("error", str(e))
            except Exception as e:  # a bug in ragvl: still one line, still only this document
                reply = ("error", f"{message[1]}: cannot be read (unexpected {type(e).__name__}: {short(e)})")
        else:  # ("render", index, dpi, max_side)
            _, index, dpi, max_side = message
            if index + 1 in hang:
                time.sleep(3600)
            if index + 1 in crash:
                os.kill(os.getpid(), signal.SIGSEGV)
            try:
                reply = ("ok", render_result(doc, index, dpi, max_side=max_side))
            except Exception as e:
                reply = ("ok", SkippedPage(index + 1, f"unexpected {type(e).__name__}: {short(e)}"))
        conn.send(reply)


def serve_fd(fd: int) -> None:
    """The worker's main loop on the inherited socket `fd` (see `_BOOT`)."""
    _serve(Connection(fd))

"""Stopping a generation from another thread, prefill and vision included.

A Python flag checked between tokens cannot stop a prefill or a vision run already inside
onnxruntime (tens of seconds on a CPU). onnxruntime's `RunOptions.terminate` does: every
`run` given those options returns early with an error once the flag is set. `Cancellable`
wraps a model's long-running sessions so that their runs carry one generation's RunOptions.
"""

from __future__ import annotations

import contextlib
import threading
from typing import Iterator

import onnxruntime as ort

_GRAPHS = ("vision", "decoder")  # the attributes of Qwen2VL whose runs take long


class Cancelled(Exception):
    """The generation was stopped by `Cancellation.cancel()`."""


class _Session:
    """A session whose runs use the current generation's RunOptions."""

    def __init__(self, session, owner: "Cancellation"):
        self._session, self._owner = session, owner

    def run(self, output_names, feeds, run_options=None):
        opts = self._owner.options
        if opts is None:
            return self._session.run(output_names, feeds, run_options)
        if opts.terminate:
            raise Cancelled("generation stopped")
        try:
            return self._session.run(output_names, feeds, opts)
        except Exception as e:  # onnxruntime's own error type when the flag stopped the run
            if opts.terminate:
                raise Cancelled("generation stopped") from e
            raise

    def __getattr__(self, name):
        return getattr(self._session, name)


class Cancellation:
    """Install once on a model; then `with c.running(): ...` per generation, `c.cancel()` from anywhere.

    One generation at a time per model (the server's answer queue guarantees it).
    """

    def __init__(self, model):
        self.options: ort.RunOptions | None = None
        self._lock = threading.Lock()
        for name in _GRAPHS:  # the model's session cache then hands out the wrapped session
            session = model.session(name)
            if not isinstance(session, _Session):
                model._sessions[name] = _Session(session, self)

    @contextlib.contextmanager
    def running(self) -> Iterator[ort.RunOptions]:
        with self._lock:
            self.options = ort.RunOptions()
            opts = self.options
        try:
            yield opts
        finally:
            with self._lock:
                self.options = None

    def cancel(self, opts: ort.RunOptions | None = None) -> None:
        """Stop the generation that `opts` belongs to (default: the one running now)."""
        with self._lock:
            target = opts or self.options
            if target is not None:
                target.terminate = True

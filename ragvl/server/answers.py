"""The answer queue: one answer generates at a time, the others wait in order and know their place.

`AnswerQueue.stream` is an async generator of (event, data): ("queued", {"position": n,
"number": j}) while n answers are ahead, ("started", {"number": j, "turn": t}), then the
Service's ("token", {"text": ...}), ("sources", hits), ("done", result), or ("error", {"error":
message}). The generation runs in its own thread; when the consumer goes away (a client
disconnects, a tool call is cancelled), the generator's `finally` stops it through onnxruntime's
RunOptions.terminate, prefill included, and the next answer in line starts as soon as that
thread has let go of the model.

`number` is the answer's place in the order answers joined the queue (0, 1, ...), `turn` its
place in the order they started generating: first in, first out means a larger number never
gets an earlier turn. Both are counted by this server, so a client can check the order without
comparing clocks.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
import traceback
from collections import deque
from typing import AsyncIterator

from ..errors import RagvlError
from ..models.runtime import Cancelled
from .service import Service


class _Ticket:
    def __init__(self, number: int):
        self.number = number  # the order it joined in
        self.changed = asyncio.Event()


class AnswerQueue:
    """FIFO of answers for one Service (its answer model can run one generation at a time)."""

    def __init__(self, service: Service):
        self.service = service
        self._line: deque[_Ticket] = deque()
        self._joined = itertools.count()
        self._turns = itertools.count()

    def waiting(self) -> int:
        """Answers queued or generating now."""
        return len(self._line)

    def _release(self, ticket: _Ticket) -> None:
        if ticket in self._line:
            self._line.remove(ticket)
        for t in self._line:
            t.changed.set()

    async def stream(self, question: str, k: int) -> AsyncIterator[tuple[str, object]]:
        loop = asyncio.get_running_loop()
        ticket = _Ticket(next(self._joined))
        self._line.append(ticket)
        out: asyncio.Queue = asyncio.Queue()
        stop = threading.Event()
        running: dict = {}
        started = False

        def put(item) -> None:
            try:
                loop.call_soon_threadsafe(out.put_nowait, item)
            except RuntimeError:  # the event loop is gone (server shutting down)
                pass

        def on_start(opts) -> None:
            running["opts"] = opts
            if stop.is_set():
                opts.terminate = True

        def work() -> None:
            pieces = 0
            try:
                for event in self.service.answer_events(question, k, on_start=on_start):
                    if stop.is_set():
                        raise Cancelled("generation stopped")
                    pieces += event[0] == "token"
                    put(event)
            except Cancelled:
                self.service.log(f"answer stopped after {pieces} pieces: its client went away")
            except RagvlError as e:
                put(("error", {"error": str(e)}))
            except Exception:  # never a traceback to the client; the server log keeps it
                self.service.log(traceback.format_exc())
                put(("error", {"error": "internal error while answering (see the server log)"}))
            finally:
                put(None)
                try:
                    loop.call_soon_threadsafe(self._release, ticket)
                except RuntimeError:
                    pass

        try:
            while True:
                ticket.changed.clear()
                position = self._line.index(ticket)
                if position == 0:
                    break
                yield "queued", {"position": position, "number": ticket.number}
                await ticket.changed.wait()
            started = True
            threading.Thread(target=work, name="ragvl-answer", daemon=True).start()
            yield "started", {"number": ticket.number, "turn": next(self._turns)}
            while (event := await out.get()) is not None:
                yield event
        finally:  # runs on completion, on error and when the consumer is cancelled: no awaits here
            if not started:
                self._release(ticket)
            else:
                stop.set()
                self.service.cancel(running.get("opts"))

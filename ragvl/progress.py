"""A small progress line on stderr: count, rate and ETA; redrawn in place on a terminal."""

from __future__ import annotations

import sys
import time
from typing import TextIO


def _duration(s: float) -> str:
    s = int(s + 0.5)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else (f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s")


class Progress:
    """`update()` after each unit of work; `close()` at the end. Silent when `enabled` is False."""

    def __init__(self, total: int, unit: str = "pages", label: str = "indexing", stream: TextIO | None = None,
                 enabled: bool = True, interval: float | None = None):
        self.total, self.unit, self.label = total, unit, label
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.enabled = enabled
        self.interval = interval if interval is not None else (0.2 if self.tty else 5.0)
        self.done = 0
        self.start = time.perf_counter()
        self._last = 0.0
        self.note = ""

    def line(self) -> str:
        elapsed = time.perf_counter() - self.start
        rate = self.done / elapsed if elapsed > 0 else 0.0
        eta = _duration((self.total - self.done) / rate) if rate > 0 and self.total else "?"
        pct = f" {100 * self.done / self.total:3.0f}%" if self.total else ""
        return (f"{self.label}{pct} {self.done}/{self.total} {self.unit}  {rate:.2f} {self.unit}/s  "
                f"ETA {eta}  {self.note}").rstrip()

    def update(self, n: int = 1, note: str | None = None) -> None:
        self.done += n
        if note is not None:
            self.note = note
        now = time.perf_counter()
        if self.enabled and (now - self._last >= self.interval or self.done >= self.total):
            self._last = now
            if self.tty:
                self.stream.write("\r\x1b[K" + self.line())
            else:
                self.stream.write(self.line() + "\n")
            self.stream.flush()

    def close(self) -> None:
        if self.enabled and self.tty and self._last:
            self.stream.write("\n")
            self.stream.flush()

"""Progress on stderr: rich's progress bar on a terminal, a plain periodic line otherwise.

rich (installed with typer) draws the bar, rate and ETA on a terminal. When stderr is a file
or a pipe, rich would print nothing until the end, so a plain line is written every few
seconds instead: logs of long runs then show how far they got.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO


class Progress:
    """`update()` after each unit of work; `close()` at the end. Silent when `enabled` is False.

    `note` (e.g. the current file name) is shown beside the count.
    """

    def __init__(self, total: int, unit: str = "pages", label: str = "indexing", stream: TextIO | None = None,
                 enabled: bool = True, interval: float = 5.0):
        self.total, self.unit, self.label = total, unit, label
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.interval = interval
        self.done = 0
        self.note = ""
        self.start = time.perf_counter()
        self._last = 0.0
        self._bar = None
        if enabled and self.stream.isatty():
            from rich.console import Console
            from rich.progress import (BarColumn, MofNCompleteColumn, Progress as RichProgress, TextColumn,
                                       TimeRemainingColumn)

            self._bar = RichProgress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                     TextColumn(unit),
                                     TextColumn("{task.fields[rate]}"), TimeRemainingColumn(),
                                     TextColumn("{task.fields[note]}"), console=Console(file=self.stream),
                                     transient=False)
            self._task = self._bar.add_task(label, total=total or None, note="", rate="")
            self._bar.start()

    def rate(self) -> float:
        """Units per second so far."""
        elapsed = time.perf_counter() - self.start
        return self.done / elapsed if elapsed > 0 else 0.0

    def line(self) -> str:
        """The plain progress line: label, percent, count, rate, ETA and note."""
        rate = self.rate()
        eta = _duration((self.total - self.done) / rate) if rate > 0 and self.total else "?"
        pct = f" {100 * self.done / self.total:3.0f}%" if self.total else ""
        return (f"{self.label}{pct} {self.done}/{self.total} {self.unit}  {rate * 60:.1f} {self.unit}/min  "
                f"ETA {eta}  {self.note}").rstrip()

    def update(self, n: int = 1, note: str | None = None) -> None:
        self.done += n
        if note is not None:
            self.note = note
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.update(self._task, advance=n, note=self.note, rate=f"{self.rate() * 60:.1f}/min")
            return
        now = time.perf_counter()
        if now - self._last >= self.interval or self.done >= self.total:
            self._last = now
            self.stream.write(self.line() + "\n")
            self.stream.flush()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None


def _duration(s: float) -> str:
    s = int(s + 0.5)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else (f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s")

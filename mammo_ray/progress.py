"""Progress a person reads on the console while a long step works: units done of the total, the rate, the time
left and the errors so far, one line every `every_s` seconds and one at the end (a slow run and a hung one look
different). Counted in the units a person counts (images, cells, epochs), never in Ray's blocks."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

#: Seconds between two progress lines.
EVERY_S = 15.0


class Progress:
    """`advance(n, errors)` as work finishes; a line at most every `every_s` seconds, and `finish()` the last."""

    def __init__(self, log: logging.Logger, label: str, total: int, unit: str = "images", every_s: float = EVERY_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.log, self.label, self.total, self.unit, self.every_s, self.clock = log, label, total, unit, every_s, clock
        self.done = self.errors = 0
        self.started = clock()
        self.next_line = self.started + every_s
        self.lines: list[str] = []

    def line(self) -> str:
        """`label: done/total unit (share), rate/s, about N left, E errors`."""
        elapsed = max(self.clock() - self.started, 1e-9)
        rate = self.done / elapsed
        share = f" ({self.done / self.total:.0%})" if self.total else ""
        left = self.total - self.done
        eta = f", about {_duration(left / rate)} left" if rate > 0 and left > 0 else ""
        errors = f", {self.errors} error{'s' if self.errors != 1 else ''}" if self.errors else ""
        return (f"{self.label}: {self.done}/{self.total} {self.unit}{share}, {rate:.2f} {self.unit}/s "
                f"after {_duration(elapsed)}{eta}{errors}")

    def advance(self, count: int, errors: int = 0) -> None:
        self.done += count
        self.errors += errors
        if self.clock() >= self.next_line:
            self._emit()

    def finish(self) -> None:
        self._emit()

    def _emit(self) -> None:
        self.next_line = self.clock() + self.every_s
        text = self.line()
        self.lines.append(text)
        self.log.info("%s", text)


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"

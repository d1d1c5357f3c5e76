"""Progress lines in the units a person counts: done of total, rate, time left and errors, at most one line per
interval and always one at the end (a clock the test moves stands in for time)."""

from __future__ import annotations

import logging

from mammo_ray.progress import Progress


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_line_per_interval_then_the_last_with_rate_time_left_and_errors():
    clock = _Clock()
    progress = Progress(logging.getLogger("test"), "image pass (embed:x)", 410, every_s=15.0, clock=clock)
    clock.now += 10
    progress.advance(8)
    assert progress.lines == []  # not yet an interval
    clock.now += 10
    progress.advance(12, errors=1)
    assert progress.lines == ["image pass (embed:x): 20/410 images (5%), 1.00 images/s after 20 s, about 6.5 min "
                              "left, 1 error"]
    clock.now += 1
    progress.advance(8)
    assert len(progress.lines) == 1  # the next line waits another interval
    clock.now += 389
    progress.advance(382, errors=2)
    progress.finish()
    assert progress.lines[-1] == "image pass (embed:x): 410/410 images (100%), 1.00 images/s after 6.8 min, 3 errors"


def test_other_units_and_an_empty_total():
    clock = _Clock()
    cells = Progress(logging.getLogger("test"), "grid", 0, unit="cells", clock=clock)
    cells.finish()
    assert cells.lines == ["grid: 0/0 cells, 0.00 cells/s after 0 s"]

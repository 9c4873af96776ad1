"""When the daemon may train (the training window) and how long a crashed attempt
waits before the next one (backoff)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, time

_WINDOW = re.compile(r"^\s*(\d{1,2}):(\d{2})\s*-\s*(\d{1,2}):(\d{2})\s*$")


@dataclass(frozen=True)
class TrainingWindow:
    """Local hours in which jobs may train; ``start > end`` wraps past midnight."""

    start: time
    end: time

    def contains(self, moment: datetime) -> bool:
        """Whether ``moment`` (local time) falls inside the window."""
        now = moment.time().replace(second=0, microsecond=0)
        if self.start <= self.end:
            return self.start <= now < self.end
        return now >= self.start or now < self.end

    def __str__(self) -> str:
        return f"{self.start:%H:%M}-{self.end:%H:%M}"


def parse_window(text: str) -> TrainingWindow | None:
    """``"02:00-06:00"`` → a window; ``""`` → None (any time). ValueError otherwise."""
    if not text.strip():
        return None
    match = _WINDOW.match(text)
    if not match:
        raise ValueError(f"{text!r} is not a window; write HH:MM-HH:MM, e.g. 02:00-06:00")
    h1, m1, h2, m2 = (int(g) for g in match.groups())
    if h1 > 23 or h2 > 23 or m1 > 59 or m2 > 59:
        raise ValueError(f"{text!r}: hours run 00-23 and minutes 00-59")
    if (h1, m1) == (h2, m2):
        raise ValueError(f"{text!r}: start and end are equal; leave it empty to train at any time")
    return TrainingWindow(time(h1, m1), time(h2, m2))


def in_window(window: TrainingWindow | None, moment: datetime | None = None) -> bool:
    """True when training is allowed at ``moment`` (default: now, local time)."""
    return window is None or window.contains(moment or datetime.now())


def backoff_delay(failures: int, base_s: float, max_s: float) -> float:
    """Seconds to wait after the ``failures``-th crashed attempt: base, 2×base, 4×base…"""
    if failures <= 0:
        return 0.0
    return min(max_s, base_s * 2 ** (failures - 1))

"""Headline figures a benchmark hands to ``run_all.py`` (what ``--json PATH`` writes), and
the load measures they are reported with.

Each benchmark keeps printing its own report for people; with ``--json PATH`` it also
writes its headline figures, so that ``run_all.py`` collects them without parsing text::

    {"benchmark": "ingest", "command": "...", "date": "...", "cpus": 2,
     "load_before": [1.2, 0.9, 0.5], "load_after": [...],
     "figures": [{"name": ..., "value": ..., "unit": ..., "baseline": ...,
                  "baseline_value": ..., "ratio": ..., "goal": ..., "met": ...}],
     "details": {...}}

``ratio`` is value / baseline_value (for a latency, below 1 is better; the goal says
which way is good); ``met`` is None where no goal is stated.
"""

from __future__ import annotations

import json
import os
import sys
from datetime import UTC, datetime
from pathlib import Path


def load_average() -> list[float]:
    """The 1, 5 and 15 minute load averages."""
    return [round(x, 2) for x in os.getloadavg()]


def cpu_busy_seconds() -> float:
    """CPU seconds all processes of the machine have spent busy since boot (/proc/stat);
    the difference over a run, less the run's own CPU time, is what others took."""
    try:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return float("nan")
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def figure(name: str, value: float | None, unit: str, *, baseline: str = "", baseline_value: float | None = None,
           ratio: float | None | str = "auto", goal: str = "", met: bool | None = None) -> dict:
    """One headline figure and how it compares with its baseline and its goal
    (``ratio=None`` where a ratio means nothing, e.g. lost jobs out of files dropped)."""
    if ratio == "auto":
        ratio = value / baseline_value if value is not None and baseline_value else None
    return {"name": name, "value": value, "unit": unit, "baseline": baseline, "baseline_value": baseline_value,
            "ratio": ratio, "goal": goal, "met": met}


def write_headline(path: str | Path | None, benchmark: str, figures: list[dict], *,
                   load_before: list[float] | None = None, details: dict | None = None) -> None:
    """Write ``figures`` to ``path`` as JSON (nothing when ``path`` is None)."""
    if not path:
        return
    report = {
        "benchmark": benchmark,
        "command": " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "cpus": os.cpu_count(),
        "load_before": load_before,
        "load_after": load_average(),
        "figures": figures,
        "details": details or {},
    }
    Path(path).write_text(json.dumps(report, indent=2, default=str) + "\n", encoding="utf-8")

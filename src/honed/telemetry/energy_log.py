"""``energy.jsonl``: one energy reading per training attempt of a run, and their sum.

A run may take several attempts (pause and resume, a crash and its retry); each appends
its reading when it ends, and the manifest reports the sum over all of them together
with what that sum covers. An attempt killed outright (SIGKILL, power loss) writes no
line; the summary names such attempts rather than guessing their energy.
"""

from __future__ import annotations

import json
import logging
import os
from datetime import UTC, datetime
from pathlib import Path

from honed.telemetry.energy import JOULES_PER_KWH

log = logging.getLogger(__name__)

ENERGY_LOG = "energy.jsonl"

COVERS = ("each training attempt from loading the base to saving the adapter (training steps, "
          "validation, checkpoints); not the daemon's gate evaluation")


def record_attempt_energy(run_dir: Path, *, attempt: int, status: str, reading: dict) -> None:
    """Append ``reading`` (an :class:`EnergyMeter` reading) for ``attempt`` of the run.
    Energy is bookkeeping: a failure to write it is logged, never raised."""
    line = {"attempt": attempt, "status": status, "ended_at": datetime.now(UTC).isoformat(), **reading}
    try:
        with open(run_dir / ENERGY_LOG, "a+b") as out:
            # A process killed mid-write leaves a torn last line; start a fresh one so
            # this reading is not glued onto it and lost with it.
            out.seek(0, os.SEEK_END)
            torn = False
            if out.tell() > 0:
                out.seek(-1, os.SEEK_END)
                torn = out.read(1) != b"\n"
            out.write((("\n" if torn else "") + json.dumps(line) + "\n").encode())
    except OSError as exc:
        log.warning("energy reading of attempt %d not written to %s (%s)", attempt, run_dir / ENERGY_LOG, exc)


def read_energy_log(run_dir: Path) -> list[dict]:
    """The readings in ``run_dir``'s energy log, oldest first (a torn last line is skipped)."""
    path = run_dir / ENERGY_LOG
    if not path.is_file():
        return []
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            continue  # the end of a line being written when the process died
    return out


def run_energy(run_dir: Path, attempts: int) -> dict:
    """The manifest's ``energy`` section: the sum of the readings of the run's attempts
    so far (``attempts`` of them were started), whether all were measured, how, and the
    attempts that left no reading."""
    readings = read_energy_log(run_dir)
    joules = sum(r["joules"] for r in readings)
    methods = sorted({r["method"] for r in readings})
    logged = {r["attempt"] for r in readings}
    missing = [a for a in range(1, attempts + 1) if a not in logged]
    if not readings:  # noqa: SIM108 (one nested conditional expression reads worse than this)
        method = "none"
    else:
        method = methods[0] if len(methods) == 1 else "mixed"
    if len(readings) == 1:
        basis = readings[0]["basis"]
    elif readings:
        basis = f"sum of {len(readings)} attempts' readings; each attempt's basis is listed under 'attempts'"
    else:
        basis = "no attempt of this run has recorded a reading"
    return {
        "joules": round(joules, 3),
        "kwh": joules / JOULES_PER_KWH,
        "measured": bool(readings) and all(r["measured"] for r in readings),
        "method": method,
        "basis": basis,
        "covers": COVERS,
        "attempts": [
            {k: r.get(k) for k in ("attempt", "status", "joules", "measured", "method", "seconds", "basis")}
            for r in readings
        ],
        "attempts_without_reading": missing,
        "log": ENERGY_LOG,
    }

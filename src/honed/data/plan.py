"""Plan what one run trains on: new records, minus what was already trained, plus replay.

The plan is written into the run directory (``train.jsonl`` and ``heldout.jsonl``) on
the first attempt and read back on every resume, so an attempt resumed after a crash
trains on exactly the records the first one planned, whatever happened to the store
in between. It is also the run's own copy of its data, which ``honed verify`` re-hashes.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from honed.atomic_files import write_bytes_atomically


class PlanError(ValueError):
    """Nothing to train on, or a plan on disk is unreadable."""


@dataclass
class Plan:
    """Records of one run, each a normalised record with its ``hash``."""

    train: list[dict[str, Any]]
    heldout: list[dict[str, Any]]
    skipped_seen: int = 0
    replay: int = 0
    notes: list[str] = field(default_factory=list)


def is_heldout(record_hash: str, fraction: float) -> bool:
    """Held-out membership depends on the record alone, so a record held out from one run
    is held out from every run and never leaks into training later."""
    if fraction <= 0:
        return False
    return int(record_hash[-8:], 16) / 0x1_0000_0000 < fraction


def read_jsonl(path: Path) -> Iterator[dict[str, Any]]:
    """Records of a normalised JSONL file, one dict a line."""
    with open(path, "rb") as fh:
        for line in fh:
            if line.strip():
                yield orjson.loads(line)


def make_plan(
    new_records: Iterable[dict[str, Any]],
    *,
    trained: set[str],
    replay_pool: Iterable[dict[str, Any]] = (),
    heldout_fraction: float,
    replay_ratio: float,
    retrain_seen: bool,
    seed: int,
    everyday_pool: Iterable[dict[str, Any]] = (),
    everyday_ratio: float = 0.0,
) -> Plan:
    """Split new records into train and held-out, skip already-trained ones, add replay
    (of the track's earlier datasets, and of ``everyday_pool`` at ``everyday_ratio``)."""
    train, heldout, skipped = [], [], 0
    for record in new_records:
        if is_heldout(record["hash"], heldout_fraction):
            heldout.append(record)
        elif record["hash"] in trained and not retrain_seen:
            skipped += 1
        else:
            train.append(record)
    plan = Plan(train=train, heldout=heldout, skipped_seen=skipped)
    if skipped:
        plan.notes.append(f"skipped {skipped} records already trained on for this base and track")
    if not train:
        raise PlanError(
            "nothing to train on: "
            + (f"all {skipped} training records were already trained on for this base and "
               "track (pass --retrain-seen to train on them again)" if skipped
               else "the datasets hold no training records")
        )
    if replay_ratio > 0:
        pool = [r for r in replay_pool if not is_heldout(r["hash"], heldout_fraction)]
        want = round(len(train) * replay_ratio / (1 - replay_ratio))
        if pool and want:
            rng = random.Random(seed)
            picked = rng.sample(pool, want) if want <= len(pool) else pool
            plan.train.extend(dict(r, replay=True) for r in picked)
            plan.replay = len(picked)
            plan.notes.append(f"mixed in {len(picked)} replay records from earlier datasets")
    if everyday_ratio > 0:
        own = len(train) - plan.replay
        pool = list(everyday_pool)
        want = min(len(pool), round(own * everyday_ratio / (1 - everyday_ratio)))
        if want:
            picked = random.Random(f"everyday:{seed}").sample(pool, want)
            plan.train.extend(dict(r, replay=True, source="everyday") for r in picked)
            plan.replay += want
            plan.notes.append(f"mixed in {want} everyday instruction records (train.everyday_replay)")
    return plan


def _write_jsonl(path: Path, records: list[dict[str, Any]]) -> None:
    write_bytes_atomically(path, b"".join(orjson.dumps(record) + b"\n" for record in records))


def write_plan(plan: Plan, run_dir: Path) -> dict[str, Any]:
    """Write the plan into ``run_dir``; returns digests for the manifest."""
    _write_jsonl(run_dir / "heldout.jsonl", plan.heldout)
    # train.jsonl last: its presence marks a complete plan.
    _write_jsonl(run_dir / "train.jsonl", plan.train)
    return plan_digests(plan)


def hashes_digest(hashes: Iterable[str]) -> str:
    """sha256 over record hashes in order, one per line: what a manifest records of a
    split and what ``honed verify`` recomputes."""
    h = hashlib.sha256()
    for record_hash in hashes:
        h.update(record_hash.encode() + b"\n")
    return h.hexdigest()


def plan_digests(plan: Plan) -> dict[str, Any]:
    """Counts and a digest of the record hashes of each split, in training order."""
    out: dict[str, Any] = {}
    for name, records in (("train", plan.train), ("heldout", plan.heldout)):
        out[name] = {"records": len(records), "record_hashes_sha256": hashes_digest(r["hash"] for r in records)}
    out["skipped_seen"] = plan.skipped_seen
    out["replay"] = plan.replay
    return out


def load_plan(run_dir: Path) -> Plan:
    """The plan a run wrote on its first attempt."""
    if not (run_dir / "train.jsonl").is_file():
        raise PlanError(f"{run_dir}: no train.jsonl; the run never got past planning")
    return Plan(
        train=list(read_jsonl(run_dir / "train.jsonl")),
        heldout=list(read_jsonl(run_dir / "heldout.jsonl")),
    )

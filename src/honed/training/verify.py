"""``honed verify RUN``: check that a run is what its manifest claims.

Every check reads the evidence itself rather than trusting a summary:

- **datasets**: each source file still hashes to the manifest's file hash (when it is
  still there), and each stored, normalised copy re-hashes record by record to the
  record hashes the store holds;
- **plan**: the run's own ``train.jsonl`` and ``heldout.jsonl`` re-hash to their record
  hashes and to the manifest's digests, and every trained record (replay aside) comes
  from the run's datasets;
- **metrics**: the log covers every step once, in order, with timestamps inside the run
  and never going backwards within an attempt;
- **checkpoints**: every recorded checkpoint exists, is complete (file sizes and sha256
  against its ``checkpoint.json``) and was written during the run;
- **weights**: the adapter changed from its initial values at every checkpoint, between
  consecutive checkpoints, and in the final adapter.

Torch is not needed: safetensors files are read with numpy.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from honed.data.datasets import file_sha256
from honed.data.formats import record_hash
from honed.data.plan import hashes_digest, read_jsonl

_PLAN_KEYS = ("hash", "line", "replay")
# Clocks of the writers (trainer, store) may disagree slightly with each other.
_CLOCK_SLACK = timedelta(seconds=2)


@dataclass
class Check:
    """One thing verified: what, whether it held, and the evidence or the discrepancy."""

    name: str
    ok: bool
    detail: str


def _content_hashes(path: Path) -> tuple[list[str], list[str]]:
    """(hashes stated in the file, hashes recomputed from each record's content)."""
    stated, computed = [], []
    for record in read_jsonl(path):
        stated.append(record.get("hash", ""))
        computed.append(record_hash({k: v for k, v in record.items() if k not in _PLAN_KEYS}))
    return stated, computed


def _time(text: str) -> datetime:
    return datetime.fromisoformat(text)


def verify_run(workspace, store, run_id: str) -> list[Check]:
    """Run every check on ``run_id``; the run verifies when all of them are ok."""
    run = store.get_run(run_id)
    if run is None:
        return [Check("run", False, f"no run {run_id!r} in the store")]
    run_dir = workspace.runs_dir / run_id
    try:
        manifest = json.loads((run_dir / "manifest.json").read_text())
    except (OSError, ValueError) as exc:
        return [Check("manifest", False, f"{run_dir / 'manifest.json'}: {exc}")]
    checks = [Check("manifest", manifest.get("run_id") == run_id,
                    f"{run_dir / 'manifest.json'} (status {manifest.get('status')}, {manifest.get('steps')} steps)")]
    known = set()
    for entry in manifest.get("datasets", []):
        dataset_checks, hashes = _check_dataset(store, entry)
        checks += dataset_checks
        known.update(hashes)
    checks += _check_plan(run_dir, manifest, known)
    started = run.started_at
    ended = _time(manifest["ended_at"])
    checks.append(_check_metrics(run_dir, manifest, started, ended))
    checks += _check_checkpoints(store, run_id, manifest, started, ended)
    checks += _check_weights(run_dir, manifest)
    return checks


def _check_dataset(store, entry: dict) -> tuple[list[Check], list[str]]:
    """The checks of one dataset of the manifest, and its record hashes in the store."""
    name = f"dataset {entry['id']} ({entry['name']})"
    out = []
    dataset = store.get_dataset(entry["id"])
    if dataset is None or dataset.file_hash != entry["file_hash"]:
        return [Check(name, False, "the store no longer holds this dataset with the manifest's file hash")], []
    expected = [h for _, h in store.dataset_record_hashes(entry["id"])]
    source = Path(dataset.source_path)
    if source.is_file():
        actual = file_sha256(source)
        out.append(Check(f"{name} source", actual == entry["file_hash"],
                         f"{source} hashes to {actual[:16]}…" + ("" if actual == entry["file_hash"]
                                                               else f", the manifest says {entry['file_hash'][:16]}…")))
    else:
        out.append(Check(f"{name} source", True, f"{source} is gone (moved or deleted by its owner); "
                         "the stored copy is checked instead"))
    stored = Path(entry["stored_path"])
    if not stored.is_file():
        return [*out, Check(f"{name} records", False, f"stored copy {stored} is missing")], expected
    stated, computed = _content_hashes(stored)
    bad = [i + 1 for i, (s, c) in enumerate(zip(stated, computed)) if s != c]
    if bad:
        out.append(Check(f"{name} records", False, f"{stored}: lines {bad[:5]} do not hash to their recorded hash"))
    elif computed != expected:
        out.append(Check(f"{name} records", False, f"{stored}: {len(computed)} records do not match the "
                         f"{len(expected)} record hashes in the store"))
    else:
        out.append(Check(f"{name} records", True, f"{len(computed)} records re-hash to the store's hashes"))
    return out, expected


def _check_plan(run_dir: Path, manifest: dict, known: set[str]) -> list[Check]:
    out = []
    plan = manifest.get("plan") or manifest["config"]["plan"]
    for split in ("train", "heldout"):
        path = run_dir / f"{split}.jsonl"
        if not path.is_file():
            out.append(Check(f"plan {split}", False, f"{path} is missing"))
            continue
        stated, computed = _content_hashes(path)
        digest = hashes_digest(computed)
        claimed = plan[split]
        if stated != computed:
            out.append(Check(f"plan {split}", False, f"{path}: records do not hash to their stated hashes"))
        elif digest != claimed["record_hashes_sha256"] or len(computed) != claimed["records"]:
            out.append(Check(f"plan {split}", False, f"{path}: {len(computed)} records with digest {digest[:16]}…, "
                             f"the manifest says {claimed['records']} with {claimed['record_hashes_sha256'][:16]}…"))
        else:
            out.append(Check(f"plan {split}", True, f"{len(computed)} records match the manifest's digest"))
    train = run_dir / "train.jsonl"
    if train.is_file():
        strangers = [r["hash"] for r in read_jsonl(train) if not r.get("replay") and r["hash"] not in known]
        out.append(Check("plan provenance", not strangers,
                         "every trained record comes from the run's datasets" if not strangers
                         else f"{len(strangers)} trained records are in none of the run's datasets"))
    return out


def _check_metrics(run_dir: Path, manifest: dict, started: datetime, ended: datetime) -> Check:
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return Check("metrics", False, f"{path} is missing")
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    train = [r for r in rows if r.get("kind") == "train"]
    last_time: dict[int, datetime] = {}
    by_step: dict[int, int] = {}
    for row in train:
        at = _time(row["time"])
        if not (started - _CLOCK_SLACK <= at <= ended + _CLOCK_SLACK):
            return Check("metrics", False, f"step {row['step']} is stamped {row['time']}, outside the run "
                         f"({started.isoformat()} to {ended.isoformat()})")
        previous = last_time.get(row["attempt"])
        if previous is not None and at < previous:
            return Check("metrics", False, f"step {row['step']} of attempt {row['attempt']} is stamped before "
                         "the step logged ahead of it")
        last_time[row["attempt"]] = at
        by_step[row["step"]] = row["attempt"]  # a resumed attempt supersedes the earlier one
    steps = manifest.get("steps") or 0
    missing = sorted(set(range(1, steps + 1)) - set(by_step))
    if missing:
        return Check("metrics", False, f"steps {missing[:5]} of {steps} have no metrics row")
    return Check("metrics", True, f"{steps} steps logged in order within the run's time "
                 f"({len(last_time)} attempt{'s' if len(last_time) != 1 else ''})")


def _check_checkpoints(store, run_id: str, manifest: dict, started: datetime, ended: datetime) -> list[Check]:
    from honed.training.checkpoints import CheckpointError, validate_checkpoint

    out = []
    recorded = {c.step: c.path for c in store.list_checkpoints(run_id)}
    listed = {c["step"]: c["path"] for c in manifest.get("checkpoints", [])}
    for step in sorted(set(recorded) | set(listed)):
        path = Path(recorded.get(step) or listed[step])
        try:
            info = validate_checkpoint(path, verify_hashes=True)
        except CheckpointError as exc:
            out.append(Check(f"checkpoint {step}", False, str(exc)))
            continue
        at = _time(info.meta["created_at"])
        ok = started - _CLOCK_SLACK <= at <= ended + _CLOCK_SLACK
        out.append(Check(f"checkpoint {step}", ok, f"{path.name}: complete, sha256 verified, written {at:%H:%M:%S}"
                         + ("" if ok else " - outside the run's time")))
    if not out:
        out.append(Check("checkpoints", False, "the run recorded no checkpoint"))
    return out


def _load(path: Path) -> dict:
    from safetensors.numpy import load_file

    return load_file(str(path))


def _max_change(a: dict, b: dict) -> float:
    import numpy as np

    if a.keys() != b.keys():
        return float("inf")
    return max(float(np.max(np.abs(a[k].astype(np.float64) - b[k].astype(np.float64)))) for k in a)


def _check_weights(run_dir: Path, manifest: dict) -> list[Check]:
    init_path = run_dir / "adapter_init.safetensors"
    if not init_path.is_file():
        return [Check("weights", False, f"{init_path} (the adapter's initial values) is missing")]
    init = _load(init_path)
    out = []
    previous: tuple[int, dict] | None = None
    for entry in sorted(manifest.get("checkpoints", []), key=lambda c: c["step"]):
        weights_path = Path(entry["path"]) / "adapter_model.safetensors"
        if not weights_path.is_file():
            continue  # reported by the checkpoint checks
        weights = _load(weights_path)
        moved = _max_change(init, weights)
        out.append(Check(f"weights at step {entry['step']}", moved > 0,
                         f"largest change from the initial adapter {moved:.3g}"))
        if previous is not None:
            delta = _max_change(previous[1], weights)
            out.append(Check(f"weights {previous[0]} -> {entry['step']}", delta > 0,
                             f"largest change between the checkpoints {delta:.3g}"))
        previous = (entry["step"], weights)
    adapter = manifest.get("adapter")
    if adapter:
        final = Path(adapter) / "adapter_model.safetensors"
        if not final.is_file():
            out.append(Check("final adapter", False, f"{final} is missing"))
        else:
            moved = _max_change(init, _load(final))
            out.append(Check("final adapter", moved > 0, f"largest change from the initial adapter {moved:.3g}"))
    return out

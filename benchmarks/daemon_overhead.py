"""Benchmark: what the daemon costs around training.

    python benchmarks/daemon_overhead.py [--records N] [--rounds R] [--quick] [--json PATH]

For each of two daemon configurations, in a fresh workspace on the tiny base:

- ``warm`` (the default, ``daemon.warm_trainer = true``): the next trainer process is
  started ahead of time with torch and the training code imported;
- ``cold`` (the baseline, ``warm_trainer = false``): each attempt starts a fresh
  trainer process, as a plain "spawn a training script" supervisor would;

it starts ``honed daemon``, waits until it is idle, then moves a synthetic JSONL file of
N records (written beforehand beside the inbox, as a producer delivers one) into the
inbox and measures

- **drop → first step**: from the rename to the wall-clock time the trainer logged its
  first optimizer step (``runs/<run>/metrics.jsonl``); goal < 2 s;
- **non-training share**: of the job's wall time (rename → job succeeded in the store),
  the part not spent inside optimizer steps (the sum of the steps' own durations);
  goal < 10%. The job is short (one epoch of N records, about 25 s with the defaults).

It prints one row per configuration and round and the cold/warm ratio of the latency
(``--quick``: one round).
(A file written straight into the inbox is taken when its writer closes it, or after
``daemon.settle_s`` of unchanged size: up to a second more.)
Run it on a quiet machine (it prints the load average).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

try:
    import honed  # noqa: F401
except ImportError:  # run from a checkout without installing
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from headline import figure, load_average, write_headline  # noqa: E402
from honed.config import update_config_file  # noqa: E402
from honed.daemon.lock import daemon_running  # noqa: E402
from honed.data.synthetic import write_synthetic  # noqa: E402
from honed.store import Store  # noqa: E402


def _configure(root: Path, warm: bool, batch_size: int) -> None:
    update_config_file(root, {
        "train": {"epochs": 1.0, "batch_size": batch_size, "eval_every": 0, "checkpoint_every": 10_000},
        "daemon": {"warm_trainer": warm, "poll_interval_s": 0.5},
    })


def _first_step_time(run_dir: Path) -> float | None:
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return None
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            return None
        if row.get("kind") == "train":
            # "time" is when the step ended; its start is that minus its own duration.
            end = datetime.fromisoformat(row["time"]).timestamp()
            return end - row["tokens"] / row["tokens_per_s"]
    return None


def measure(work: Path, name: str, warm: bool, records: int, batch_size: int, data: Path) -> dict:
    root = work / name
    subprocess.run([sys.executable, "-m", "honed.cli", "init", str(root), "--base", "tiny"], check=True,
                   capture_output=True)
    _configure(root, warm, batch_size)
    staged = root / f".{data.name}.tmp"  # produced beforehand, beside the inbox
    shutil.copy(data, staged)
    daemon = subprocess.Popen([sys.executable, "-m", "honed.cli", "daemon", "-w", str(root), "--quiet"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while not daemon_running(root):
            time.sleep(0.05)
        if warm:  # wait until the spare trainer has done its imports and preloaded the base
            spare_log = root / "logs" / "trainers.log"
            while not (spare_log.exists() and "warm trainer ready" in spare_log.read_text()):
                time.sleep(0.1)
        time.sleep(2.0)  # and let the machine settle
        dropped = time.time()
        os.rename(staged, root / "inbox" / data.name)
        store = Store.open(f"sqlite:///{root / 'honed.db'}")
        while not (jobs := store.list_jobs()) or jobs[0].state not in ("succeeded", "failed"):
            time.sleep(0.05)
        finished = time.time()
        job = jobs[0]
        if job.state != "succeeded":
            raise SystemExit(f"{name}: the job failed: {job.error}")
        run_dir = root / "runs" / job.run_id
        first = _first_step_time(run_dir)
        steps = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        training = sum(r["tokens"] / r["tokens_per_s"] for r in steps if r.get("kind") == "train")
        store.close()
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(timeout=120)
    wall = finished - dropped
    return {"config": name, "latency_s": first - dropped, "wall_s": wall, "training_s": training,
            "overhead_share": 1 - training / wall, "steps": sum(1 for r in steps if r.get("kind") == "train")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=4000, help="records in the dropped file")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=None, help="default 2 (--quick: 1)")
    parser.add_argument("--quick", action="store_true", help="one round")
    parser.add_argument("--json", metavar="PATH", help="also write the headline figures as JSON to PATH")
    args = parser.parse_args()
    args.rounds = args.rounds or (1 if args.quick else 2)
    load_before = load_average()
    print(f"load average before: {os.getloadavg()[0]:.2f} (2 cores)")
    with tempfile.TemporaryDirectory(prefix="honed-daemon-bench-") as tmp:
        work = Path(tmp)
        data, _ = write_synthetic("reversal", args.records, work / "drop.jsonl", seed=7, eval_n=0)
        rows = []
        for r in range(args.rounds):
            for name, warm in (("cold", False), ("warm", True)):
                row = measure(work, f"{name}-{r}", warm, args.records, args.batch_size, data)
                row["config"] = name
                rows.append(row)
                print(f"{name:>5} round {r}: drop -> first step {row['latency_s']:.2f} s, job {row['wall_s']:.1f} s "
                      f"({row['steps']} steps, {row['training_s']:.1f} s in steps), "
                      f"not training {row['overhead_share']:.1%}", flush=True)
    by = {n: [r for r in rows if r["config"] == n] for n in ("cold", "warm")}
    lat = {n: statistics.median(r["latency_s"] for r in by[n]) for n in by}
    share = {n: statistics.median(r["overhead_share"] for r in by[n]) for n in by}
    print()
    print("| config | drop -> first step (median) | not-training share (median) |")
    print("| --- | --- | --- |")
    for n in ("warm", "cold"):
        print(f"| {n} | {lat[n]:.2f} s | {share[n]:.1%} |")
    print(f"\nwarm trainer: first step x{lat['cold'] / lat['warm']:.2f} sooner than a cold start "
          f"(goal: < 2 s, got {lat['warm']:.2f} s); not-training share {share['warm']:.1%} (goal < 10%)")
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    write_headline(args.json, "daemon_overhead", [
        figure("drop -> first step, warm trainer", lat["warm"], "s", baseline="cold trainer",
               baseline_value=lat["cold"], goal="< 2 s", met=lat["warm"] < 2.0),
        figure("not-training share, warm trainer", 100 * share["warm"], "%", baseline="cold trainer",
               baseline_value=100 * share["cold"], goal="< 10%", met=share["warm"] < 0.10),
    ], load_before=load_before, details={"rounds": args.rounds, "records": args.records, "runs": rows})


if __name__ == "__main__":
    main()

"""Benchmark: the long-haul soak. The daemon runs many short jobs back to back for a while.

    python benchmarks/soak.py [--minutes M] [--every S] [--backlog B] [--records N] [--steps K]
                              [--sample-s S] [--drain-s S] [--keep] [--json PATH]

In a fresh workspace on the tiny base, ``honed daemon`` runs; for ``--minutes`` the
benchmark keeps moving small synthetic JSONL files (``--records`` reversal records each,
written beforehand beside the inbox and renamed in) into ``inbox/``, one every ``--every``
seconds while fewer than ``--backlog`` files and queued jobs wait, so that the daemon
ingests, trains (``--steps`` optimizer steps), evaluates (a few records per set), gates
and deploys one job after another without pause. Every ``--sample-s`` seconds it samples

- the daemon process alone: RSS, open file descriptors, threads, CPU;
- its child processes (the trainers: the warm spare and the one training): how many,
  their RSS together, zombies;
- the store's job counts, and the workspace's size on disk.

Then it stops dropping, waits until the daemon has finished everything it was given
(the drain), stops the daemon with SIGTERM, and accounts for every file it dropped: each
must have become a dataset and a job that ended (succeeded, deployed or not, or rejected
by its gates, are fine; failed is a failure); a file with no dataset, or a job still
queued or running after the drain, is lost. Trainer processes left behind after the stop
are reported too.

Goal: zero lost jobs, flat memory and descriptors. The baseline is the daemon itself
right after its first job: the printed ratio is its last RSS over that one. "Flat" means
RSS grew by at most 10% beyond it, the least-squares slope of RSS over the second half of
the samples (warm-up left out) is under 10 MB per hour when that half spans at least
four minutes (a shorter one is too noisy to judge), and the daemon ended with at most 2
descriptors more than the most it held in the first half: a descriptor opened once and
kept (such as the pipe to the spare trainer waiting for the next job) counts once, a
steady leak does not pass. What the descriptors opened since the first job point
to is printed.

Other processes on the machine slow the jobs (the trainers run at ``daemon.trainer_nice``
10) but do not change what is judged; the load and the CPU share others took are printed.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

try:
    import honed  # noqa: F401
except ImportError:  # run from a checkout without installing
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import psutil  # noqa: E402

from headline import cpu_busy_seconds, figure, load_average, write_headline  # noqa: E402
from honed.config import update_config_file  # noqa: E402
from honed.daemon.lock import daemon_running  # noqa: E402
from honed.data.datasets import file_sha256  # noqa: E402
from honed.data.synthetic import generate  # noqa: E402
from honed.store import Store  # noqa: E402

RSS_GROWTH_LIMIT = 1.10  # last RSS / RSS after the first job
RSS_SLOPE_LIMIT_MB_H = 10.0
SLOPE_MIN_SPAN_S = 240.0  # a shorter second half is too noisy to judge a slope on
FD_SLACK = 2
FINAL_STATES = ("succeeded", "rejected", "failed", "skipped", "cancelled")
MB = 2**20


def configure(root: Path, steps: int) -> None:
    """Short jobs: a few optimizer steps, a few records per eval set, only the final checkpoint."""
    update_config_file(root, {
        "train": {"max_steps": steps, "batch_size": 16, "warmup_steps": 2, "eval_every": 0,
                  "checkpoint_every": 10_000},
        "eval": {"max_records": 16, "regression_records": 16, "max_new_tokens": 12},
        "daemon": {"poll_interval_s": 0.5},
    })


@dataclass
class Drop:
    """One file moved into the inbox."""

    name: str
    sha256: str
    at: float


@dataclass
class Dropper:
    """Writes synthetic files beside the inbox and renames them in, one at a time."""

    root: Path
    records: int
    drops: list[Drop] = field(default_factory=list)

    def drop(self, t: float) -> Drop:
        staging = self.root / "staging"
        staging.mkdir(exist_ok=True)
        n = len(self.drops) + 1
        name = f"soak-{n:05d}.jsonl"
        path = staging / name
        with open(path, "w", encoding="utf-8") as fh:  # a new seed each time: no file repeats another
            for record in generate("reversal", self.records, seed=1000 + n):
                fh.write(json.dumps(record) + "\n")
        drop = Drop(name, file_sha256(path), t)
        os.rename(path, self.root / "inbox" / name)
        self.drops.append(drop)
        return drop

    def waiting_in_inbox(self) -> int:
        return sum(1 for p in (self.root / "inbox").iterdir() if p.is_file() and not p.name.startswith("."))


def fd_targets(pid: int, root: Path) -> list[str]:
    """What each open descriptor of ``pid`` points to (the workspace shown as WS)."""
    targets = []
    folder = Path(f"/proc/{pid}/fd")
    for fd in os.listdir(folder):
        try:
            target = os.readlink(folder / fd)
        except OSError:
            continue
        if target.startswith(("pipe:", "socket:")):
            target = target.split(":")[0]
        targets.append(target.replace(str(root), "WS"))
    return targets


def _tree_bytes(root: Path) -> int:
    total = 0
    for folder, _, files in os.walk(root):
        for name in files:
            try:
                total += os.lstat(os.path.join(folder, name)).st_size
            except OSError:
                continue
    return total


@dataclass
class Sampler:
    """Samples the daemon process, its trainers and the store."""

    daemon: psutil.Process
    store: Store
    root: Path
    started: float
    last_cpu: tuple[float, float] | None = None

    def daemon_now(self) -> dict:
        with self.daemon.oneshot():
            cpu = self.daemon.cpu_times()
            return {"rss_mb": self.daemon.memory_info().rss / MB, "fds": self.daemon.num_fds(),
                    "threads": self.daemon.num_threads(), "cpu_s": cpu.user + cpu.system}

    def sample(self, dropped: int) -> dict:
        now = time.monotonic()
        row = {"t": now - self.started, "dropped": dropped, **self.daemon_now()}
        if self.last_cpu is not None:
            row["cpu_pct"] = 100 * (row["cpu_s"] - self.last_cpu[1]) / max(1e-9, now - self.last_cpu[0])
        self.last_cpu = (now, row["cpu_s"])
        trainers, rss, zombies = 0, 0, 0
        for child in self.daemon.children(recursive=True):
            try:
                if child.status() == psutil.STATUS_ZOMBIE:
                    zombies += 1
                    continue
                rss += child.memory_info().rss
                trainers += 1
            except psutil.Error:
                continue
        counts = {state: c["jobs"] for state, c in self.store.job_counts().items()}
        row.update(
            trainers=trainers, trainer_rss_mb=rss / MB, zombies=zombies,
            done=counts.get("succeeded", 0) + counts.get("rejected", 0), failed=counts.get("failed", 0),
            queued=counts.get("queued", 0), running=counts.get("running", 0) + counts.get("evaluating", 0),
            datasets=self.store.count_datasets(), disk_mb=_tree_bytes(self.root) / MB,
        )
        return row


COLUMNS = (("t", "elapsed s", "{:.0f}"), ("dropped", "dropped", "{}"), ("done", "done", "{}"),
           ("failed", "failed", "{}"), ("queued", "queued", "{}"), ("rss_mb", "daemon RSS MB", "{:.1f}"),
           ("fds", "fds", "{}"), ("threads", "threads", "{}"), ("cpu_pct", "daemon CPU%", "{:.1f}"),
           ("trainers", "trainers", "{}"), ("trainer_rss_mb", "trainer RSS MB", "{:.0f}"),
           ("disk_mb", "disk MB", "{:.1f}"))


def print_header() -> None:
    print("  ".join(f"{title:>{max(len(title), 7)}}" for _, title, _ in COLUMNS), flush=True)


def print_row(row: dict) -> None:
    cells = []
    for key, title, fmt in COLUMNS:
        value = row.get(key)
        cells.append(f"{(fmt.format(value) if value is not None else '-'):>{max(len(title), 7)}}")
    print("  ".join(cells), flush=True)


def slope_per_hour(points: list[tuple[float, float]]) -> float | None:
    """Least-squares slope of (seconds, value) points, per hour."""
    if len(points) < 3:
        return None
    mean_t = statistics.fmean(t for t, _ in points)
    mean_v = statistics.fmean(v for _, v in points)
    var = sum((t - mean_t) ** 2 for t, _ in points)
    if var == 0:
        return None
    return 3600 * sum((t - mean_t) * (v - mean_v) for t, v in points) / var


def account(drops: list[Drop], store: Store, root: Path) -> dict:
    """What became of every dropped file: outcome per file, and what is lost."""
    datasets = {d.file_hash: d for d in store.list_datasets()}
    jobs = store.list_jobs()
    jobs_of: dict[int, list] = {}
    for job in jobs:
        for dataset_id in job.dataset_ids:
            jobs_of.setdefault(dataset_id, []).append(job)
    outcomes: dict[str, int] = {}
    lost: list[str] = []
    failed: list[str] = []
    matched: set[int] = set()
    for drop in drops:
        dataset = datasets.get(drop.sha256)
        if dataset is None:
            if (root / "inbox" / "rejected" / drop.name).exists():
                outcome = "rejected at ingest"
                failed.append(f"{drop.name}: rejected at ingest (see inbox/rejected/{drop.name}.errors.txt)")
            elif (root / "inbox" / drop.name).exists():
                outcome = "lost"
                lost.append(f"{drop.name}: still in the inbox, never taken")
            else:
                outcome = "lost"
                lost.append(f"{drop.name}: gone from the inbox, but no dataset holds it")
        else:
            matched.add(dataset.id)
            its_jobs = jobs_of.get(dataset.id, [])
            if not its_jobs:
                outcome = "lost"
                lost.append(f"{drop.name}: dataset {dataset.id} has no job")
            else:
                job = its_jobs[-1]
                if len(its_jobs) > 1:
                    failed.append(f"{drop.name}: dataset {dataset.id} has {len(its_jobs)} jobs "
                                  f"({', '.join(str(j.id) for j in its_jobs)})")
                if job.state not in FINAL_STATES:
                    outcome = "lost"
                    lost.append(f"{drop.name}: job {job.id} still {job.state} after the drain")
                elif job.state == "succeeded":
                    deployed = any(e.kind == "deployed" for e in store.job_events(job.id))
                    outcome = "succeeded, deployed" if deployed else "succeeded, not deployed"
                else:
                    outcome = job.state
                    if job.state == "failed":
                        failed.append(f"{drop.name}: job {job.id} failed: {(job.error or '').splitlines()[:1]}")
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
    strangers = [d for d in datasets.values() if d.id not in matched]
    ended = [j for j in jobs if j.started_at and j.ended_at and j.state in FINAL_STATES]
    walls = [(j.ended_at - j.started_at).total_seconds() for j in ended]
    busy = None
    if ended:
        span = (max(j.ended_at for j in ended) - min(j.started_at for j in ended)).total_seconds()
        busy = sum(walls) / span if span > 0 else None
    return {"outcomes": outcomes, "lost": lost, "failed_lines": failed, "datasets_not_dropped": len(strangers),
            "jobs": len(jobs), "job_wall_median_s": statistics.median(walls) if walls else None,
            "busy_share": busy, "failed_attempts": sum(j.failures for j in jobs)}


def leftover_trainers(root: Path) -> list[int]:
    """Trainer processes of this workspace still alive (they should all be gone)."""
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        cmd = proc.info.get("cmdline") or []
        if any("honed.daemon.trainer_process" in part for part in cmd) and str(root) in cmd:
            found.append(proc.pid)
    return found


def stop_daemon(daemon: subprocess.Popen) -> dict:
    """SIGTERM, then wait (a trainer checkpoints at its next step); killed after 120 s."""
    stopped: dict = {}
    if daemon.poll() is None:
        t = time.monotonic()
        daemon.send_signal(signal.SIGTERM)
        try:
            daemon.wait(timeout=120)
        except subprocess.TimeoutExpired:
            stopped["timeout"] = True
            daemon.kill()
            daemon.wait()
        stopped["seconds"] = time.monotonic() - t
    stopped["returncode"] = daemon.returncode
    return stopped


def soak(args, work: Path, root: Path) -> dict:
    """Start the daemon, drop files for ``args.minutes``, drain, stop; what was seen."""
    busy0, self0 = cpu_busy_seconds(), resource.getrusage(resource.RUSAGE_SELF)
    children0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    wall0 = time.monotonic()
    dropper = Dropper(root, args.records)
    samples: list[dict] = []
    after_first: dict | None = None
    drained_at = None
    with open(work / "daemon.out", "wb") as log:
        daemon = subprocess.Popen([sys.executable, "-m", "honed.cli", "daemon", "-w", str(root), "--quiet"],
                                  stdout=log, stderr=subprocess.STDOUT)
    store = None
    try:
        while not daemon_running(root):
            if daemon.poll() is not None:
                raise SystemExit(f"the daemon exited with {daemon.returncode}; see {work / 'daemon.out'}")
            time.sleep(0.05)
        store = Store.open(f"sqlite:///{root / 'honed.db'}")
        started = time.monotonic()
        sampler = Sampler(psutil.Process(daemon.pid), store, root, started)
        end_drops = started + args.minutes * 60
        drain_deadline = end_drops + args.drain_s
        next_drop = next_sample = started
        draining = False
        print_header()
        while True:
            now = time.monotonic()
            if daemon.poll() is not None:
                raise SystemExit(f"the daemon exited with {daemon.returncode} during the soak; "
                                 f"see {work / 'daemon.out'} and {root / 'logs'}")
            counts = {s: c["jobs"] for s, c in store.job_counts().items()}
            settled = sum(counts.get(s, 0) for s in FINAL_STATES)
            if after_first is None and settled:
                after_first = {"t": now - started, **sampler.daemon_now(), "fd_targets": fd_targets(daemon.pid, root)}
            if now < end_drops and now >= next_drop:
                if dropper.waiting_in_inbox() + counts.get("queued", 0) < args.backlog:
                    dropper.drop(now - started)
                next_drop = max(next_drop + args.every, now)
            if now >= next_sample:
                samples.append(sampler.sample(len(dropper.drops)))
                print_row(samples[-1])
                next_sample += args.sample_s
            if now >= end_drops:
                if not draining:
                    draining = True
                    print(f"-- drops stopped after {len(dropper.drops)} files; waiting for the daemon to "
                          "finish them", flush=True)
                n = len(dropper.drops)
                taken = store.count_datasets() + len(list((root / "inbox" / "rejected").glob("*.jsonl")))
                if settled >= n and taken >= n and not dropper.waiting_in_inbox():
                    drained_at = now
                    break
                if now > drain_deadline:
                    print(f"-- the drain timed out after {args.drain_s:g} s", flush=True)
                    break
            time.sleep(0.25)
        time.sleep(3.0)  # the daemon starts its next spare trainer: sample it settled
        samples.append(sampler.sample(len(dropper.drops)))
        print_row(samples[-1])
        samples[-1]["fd_targets"] = fd_targets(daemon.pid, root)
    finally:
        stopped = stop_daemon(daemon)
    wall = time.monotonic() - wall0
    children1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    self1 = resource.getrusage(resource.RUSAGE_SELF)
    own = sum(getattr(b, f) - getattr(a, f) for a, b in ((children0, children1), (self0, self1))
              for f in ("ru_utime", "ru_stime"))
    try:
        accounted = account(dropper.drops, store, root)
    finally:
        store.close()
    return {
        "drops": dropper.drops, "samples": samples, "after_first": after_first, "stopped": stopped,
        "drops_s": min(args.minutes * 60, samples[-1]["t"]),
        "drain_s": drained_at - end_drops if drained_at else None, "wall": wall,
        "others_cpu": max(0.0, (cpu_busy_seconds() - busy0 - own) / (wall * (os.cpu_count() or 1))),
        "orphans": leftover_trainers(root), **accounted,
    }


def judge(run: dict) -> dict:
    """The figures the goal is judged on."""
    samples, last = run["samples"], run["samples"][-1]
    base = run["after_first"] or samples[0]
    middle = (samples[0]["t"] + last["t"]) / 2
    second = [s for s in samples if s["t"] >= middle]
    first_half_max = max(s["fds"] for s in samples if s["t"] < middle) if len(samples) > 1 else base["fds"]
    span = second[-1]["t"] - second[0]["t"] if second else 0.0
    slope = slope_per_hour([(s["t"], s["rss_mb"]) for s in second])
    slope_judged = span >= SLOPE_MIN_SPAN_S and slope is not None
    outcomes = run["outcomes"]
    j = {
        "base": base, "last": last, "span": span, "slope": slope, "slope_judged": slope_judged,
        "fd_slope": slope_per_hour([(s["t"], s["fds"]) for s in second]),
        "rss_ratio": last["rss_mb"] / base["rss_mb"], "fd_growth": last["fds"] - base["fds"],
        "failed": sum(n for k, n in outcomes.items() if k in ("failed", "rejected at ingest")),
        "done": sum(n for k, n in outcomes.items() if k.startswith("succeeded") or k == "rejected"),
    }
    j["rss_flat"] = j["rss_ratio"] <= RSS_GROWTH_LIMIT and (not slope_judged or slope < RSS_SLOPE_LIMIT_MB_H)
    j["fd_first_half_max"] = first_half_max
    j["fds_flat"] = last["fds"] - first_half_max <= FD_SLACK
    j["fds_new"] = Counter(last.get("fd_targets", [])) - Counter(base.get("fd_targets", []))
    return j


def summarize(run: dict, j: dict) -> list[tuple[bool, str]]:
    """Print the summary; returns the verdicts against the goal."""
    samples, base, last, stopped = run["samples"], j["base"], j["last"], run["stopped"]
    dropped, lost, done = len(run["drops"]), run["lost"], j["done"]
    drain = f"{run['drain_s']:.0f} s" if run["drain_s"] is not None else "NOT drained"
    worked = run["drops_s"] + (run["drain_s"] or 0.0)
    median = f"{run['job_wall_median_s']:.1f} s" if run["job_wall_median_s"] else "-"
    busy = f", the daemon was busy with a job {run['busy_share']:.0%} of the time" if run["busy_share"] else ""
    slope = f"{j['slope']:+.1f} MB/h over {j['span'] / 60:.1f} min" if j["slope"] is not None else "n/a"
    fd_slope = f"{j['fd_slope']:+.1f}/h" if j["fd_slope"] is not None else "n/a"
    print()
    print(f"soak: {run['drops_s'] / 60:.1f} min of drops, {dropped} files, drained in {drain}; "
          f"{run['wall']:.0f} s in all")
    print("outcomes: " + ", ".join(f"{k} {v}" for k, v in sorted(run["outcomes"].items())))
    print(f"jobs done: {done} ({done / max(worked, 1) * 60:.1f} a minute; median job {median}{busy}); "
          f"failed jobs: {j['failed']}; crashed trainer attempts: {run['failed_attempts']}")
    for line in run["failed_lines"][:5]:
        print(f"  {line}")
    print(f"lost: {len(lost)}" + "".join(f"\n  {line}" for line in lost[:10]))
    if run["datasets_not_dropped"]:
        print(f"datasets that no drop explains: {run['datasets_not_dropped']}")
    print(f"daemon RSS: {base['rss_mb']:.1f} MB after its first job (t={base['t']:.0f} s), "
          f"{last['rss_mb']:.1f} MB at the end (x{j['rss_ratio']:.3f}), max "
          f"{max(s['rss_mb'] for s in samples):.1f} MB; slope over the second half {slope}"
          + ("" if j["slope_judged"] else " (too short to judge)"))
    print(f"daemon fds: {base['fds']} after its first job, {last['fds']} at the end ({j['fd_growth']:+d}), "
          f"max {max(s['fds'] for s in samples)}; slope over the second half {fd_slope}; "
          f"threads {base['threads']} -> {last['threads']}; zombies at the end {last['zombies']}")
    if j["fds_new"]:
        print("  opened since the first job and open at the end: "
              + ", ".join(f"{t}" + (f" x{n}" if n > 1 else "") for t, n in sorted(j["fds_new"].items())))
    print(f"trainers: {min(s['trainer_rss_mb'] for s in samples):.0f}-"
          f"{max(s['trainer_rss_mb'] for s in samples):.0f} MB RSS together, at most "
          f"{max(s['trainers'] for s in samples)} at once; left after the stop: {len(run['orphans'])}")
    print(f"daemon stop: SIGTERM -> exit {stopped.get('returncode')} in {stopped.get('seconds', 0):.1f} s"
          + (" (did not stop in 120 s: killed)" if stopped.get("timeout") else ""))
    print(f"workspace on disk: {samples[0]['disk_mb']:.0f} -> {last['disk_mb']:.0f} MB "
          f"({(last['disk_mb'] - samples[0]['disk_mb']) / max(done, 1):.2f} MB a job)")
    print(f"machine: others used {run['others_cpu']:.0%} of the CPUs during the soak; "
          f"load average after {load_average()[0]:.2f}")
    slope_verdict = (f", slope {j['slope']:+.1f} MB/h (limit {RSS_SLOPE_LIMIT_MB_H:g})" if j["slope_judged"]
                     else f", slope not judged (second half {j['span']:.0f} s < {SLOPE_MIN_SPAN_S:.0f} s)")
    verdicts = [
        (not lost, f"zero lost jobs: {len(lost)} lost of {dropped}"),
        (j["failed"] == 0, f"no failed jobs: {j['failed']}"),
        (j["rss_flat"], f"flat daemon memory: x{j['rss_ratio']:.3f} after the first job "
         f"(limit x{RSS_GROWTH_LIMIT:.2f}){slope_verdict}"),
        (j["fds_flat"], f"flat descriptors: {last['fds']} at the end, at most {j['fd_first_half_max']} in the "
         f"first half (limit +{FD_SLACK}); {j['fd_growth']:+d} since the first job"),
        (not run["orphans"] and not stopped.get("timeout"),
         f"clean stop: {len(run['orphans'])} trainers left, exit {stopped.get('returncode')}"),
    ]
    print()
    for ok, text in verdicts:
        print(f"{'met    ' if ok else 'NOT met'}  {text}")
    return verdicts


def headline(run: dict, j: dict) -> list[dict]:
    """The figures run_all.py shows."""
    dropped, lost = len(run["drops"]), run["lost"]
    slope_goal = f", slope < {RSS_SLOPE_LIMIT_MB_H:g} MB/h" if j["slope_judged"] else ""
    return [
        figure("jobs lost", len(lost), "jobs", baseline="files dropped", baseline_value=dropped,
               ratio=None, goal="0", met=not lost),
        figure("daemon RSS at the end", j["last"]["rss_mb"], "MB", baseline="daemon RSS after its first job",
               baseline_value=j["base"]["rss_mb"], goal=f"<= x{RSS_GROWTH_LIMIT:.2f}{slope_goal}",
               met=j["rss_flat"]),
        figure("daemon open fds at the end", j["last"]["fds"], "fds", baseline="fds after its first job",
               baseline_value=j["base"]["fds"], goal=f"<= first half's most ({j['fd_first_half_max']}) + {FD_SLACK}",
               met=j["fds_flat"]),
        figure("failed jobs", j["failed"], "jobs", baseline="jobs done", baseline_value=j["done"], ratio=None,
               goal="0", met=j["failed"] == 0),
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="how long files are dropped (default 10)")
    parser.add_argument("--every", type=float, default=2.0, help="seconds between two drops (default 2)")
    parser.add_argument("--backlog", type=int, default=2,
                        help="a drop waits while this many files and queued jobs wait already (default 2)")
    parser.add_argument("--records", type=int, default=150, help="records per dropped file (default 150)")
    parser.add_argument("--steps", type=int, default=10, help="optimizer steps per job (default 10)")
    parser.add_argument("--sample-s", type=float, default=10.0, help="seconds between samples (default 10)")
    parser.add_argument("--drain-s", type=float, default=600.0,
                        help="longest wait for the daemon to finish what it was given (default 600)")
    parser.add_argument("--keep", action="store_true", help="keep the workspace (kept anyway when a job is lost)")
    parser.add_argument("--json", metavar="PATH", help="also write the headline figures as JSON to PATH")
    args = parser.parse_args()

    load_before = load_average()
    print(f"load average before: {load_before[0]:.2f} (1 min), {load_before[1]:.2f} (5 min) "
          f"on {os.cpu_count()} CPUs")
    work = Path(tempfile.mkdtemp(prefix="honed-soak-"))
    root = work / "ws"
    subprocess.run([sys.executable, "-m", "honed.cli", "init", str(root), "--base", "tiny"], check=True,
                   capture_output=True)
    configure(root, args.steps)
    print(f"workspace {root}: jobs of {args.records} reversal records, {args.steps} steps of 16, eval on 16 "
          f"records per set; a drop every {args.every:g} s while fewer than {args.backlog} wait; "
          f"{args.minutes:g} minutes, a sample every {args.sample_s:g} s", flush=True)
    run = soak(args, work, root)
    j = judge(run)
    verdicts = summarize(run, j)
    if args.keep or run["lost"] or run["orphans"]:
        print(f"workspace kept for inspection: {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)
    details = {k: run[k] for k in ("outcomes", "lost", "failed_lines", "job_wall_median_s", "busy_share",
                                   "stopped", "drain_s", "others_cpu", "orphans", "samples", "after_first")}
    details.update(minutes=args.minutes, dropped=len(run["drops"]), rss_slope_mb_per_h=j["slope"],
                   slope_span_s=j["span"], fd_growth=j["fd_growth"], fds_new=dict(j["fds_new"]))
    write_headline(args.json, "soak", headline(run, j), load_before=load_before, details=details)
    return 0 if all(ok for ok, _ in verdicts) else 1


if __name__ == "__main__":
    sys.exit(main())

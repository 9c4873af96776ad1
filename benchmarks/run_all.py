"""Benchmark suite: the quick variant of every benchmark, one after another, and one table.

    python benchmarks/run_all.py [--only a,b] [--logs DIR] [--json PATH]

Runs, each in its own process and each with ``--json`` so that its headline figures are
read back without parsing its text:

- ``train_throughput.py --quick``: honed recipe against HF Trainer + peft (and TRL
  when it is installed), 25 steps;
- ``ingest.py --quick``: 200,000 records against a naive json + pydantic ingest;
- ``daemon_overhead.py --quick``: one round of the warm and the cold trainer;
- ``api_latency.py --quick``: 4 s per endpoint and phase;
- ``soak.py --minutes 1``: a one-minute soak of the daemon.

Each benchmark's full output goes to ``DIR/<name>.log`` (a new temporary directory unless
``--logs`` names one); the console gets one line per benchmark (its time, exit status
and the CPU share other processes took meanwhile), then one table: benchmark | figure |
value | baseline | baseline value | ratio (value / baseline value) | goal | met. About six
minutes on two quiet cores; the total time and the load are printed at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from headline import cpu_busy_seconds, load_average

HERE = Path(__file__).resolve().parent
SUITE = (
    ("train_throughput", ["--quick"]),
    ("ingest", ["--quick"]),
    ("daemon_overhead", ["--quick"]),
    ("api_latency", ["--quick"]),
    ("soak", ["--minutes", "1", "--sample-s", "5"]),
)
COLUMNS = ("benchmark", "figure", "value", "baseline", "baseline value", "ratio", "goal", "met")


def run_one(name: str, extra: list[str], logs: Path) -> dict:
    """Run one benchmark in its own process; its report, time, exit status and the
    share of the machine's CPU that other processes took meanwhile."""
    report_path = logs / f"{name}.json"
    report_path.unlink(missing_ok=True)
    command = [sys.executable, str(HERE / f"{name}.py"), *extra, "--json", str(report_path)]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    busy, t0 = cpu_busy_seconds(), time.monotonic()
    with open(logs / f"{name}.log", "wb") as log:
        returncode = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, cwd=HERE.parent).returncode
    wall = time.monotonic() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    own = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    others = max(0.0, (cpu_busy_seconds() - busy - own) / (wall * (os.cpu_count() or 1)))
    report = json.loads(report_path.read_text()) if report_path.exists() else None
    return {"name": name, "command": " ".join(["python", f"benchmarks/{name}.py", *extra]),
            "returncode": returncode, "seconds": wall, "others_cpu": others, "report": report}


def _number(value, unit: str = "") -> str:
    if value is None:
        return "-"
    if isinstance(value, int) or abs(value) >= 100:
        text = f"{value:,.0f}"
    else:
        text = f"{value:.1f}" if abs(value) >= 10 else f"{value:.2f}"
    return f"{text} {unit}".rstrip()


def table_rows(runs: list[dict]) -> list[list[str]]:
    """One row per headline figure; a benchmark that wrote none gets a row saying why."""
    rows = []
    for run in runs:
        figures = (run["report"] or {}).get("figures") or []
        if not figures:
            rows.append([run["name"], f"FAILED: exit {run['returncode']}, no figures (see its log)",
                         "-", "-", "-", "-", "-", "no"])
        for f in figures:
            met = {True: "yes", False: "NO", None: "-"}[f["met"]]
            rows.append([run["name"], f["name"], _number(f["value"], f["unit"]), f["baseline"] or "-",
                         _number(f["baseline_value"], f["unit"]),
                         f"x{f['ratio']:.2f}" if f["ratio"] is not None else "-", f["goal"] or "-", met])
    return rows


def print_table(rows: list[list[str]]) -> None:
    widths = [max(len(c), *(len(r[i]) for r in rows)) for i, c in enumerate(COLUMNS)]
    print("| " + " | ".join(c.ljust(w) for c, w in zip(COLUMNS, widths)) + " |")
    print("| " + " | ".join("-" * w for w in widths) + " |")
    for row in rows:
        print("| " + " | ".join(c.ljust(w) for c, w in zip(row, widths)) + " |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    names = [name for name, _ in SUITE]
    parser.add_argument("--only", default="", help=f"comma-separated subset of {','.join(names)}")
    parser.add_argument("--logs", metavar="DIR", help="where each benchmark's output and JSON go")
    parser.add_argument("--json", metavar="PATH", help="also write every benchmark's report as JSON to PATH")
    args = parser.parse_args()
    chosen = [n.strip() for n in args.only.split(",") if n.strip()] or names
    unknown = set(chosen) - set(names)
    if unknown:
        parser.error(f"--only: unknown {sorted(unknown)}; choose from {', '.join(names)}")
    logs = Path(args.logs) if args.logs else Path(tempfile.mkdtemp(prefix="honed-run-all-"))
    logs.mkdir(parents=True, exist_ok=True)

    load_before = load_average()
    print(f"load average before: {load_before[0]:.2f} (1 min), {load_before[1]:.2f} (5 min) on "
          f"{os.cpu_count()} CPUs; logs in {logs}", flush=True)
    started = time.monotonic()
    runs = []
    for k, (name, extra) in enumerate((n, e) for n, e in SUITE if n in chosen):
        print(f"[{k + 1}/{len(chosen)}] python benchmarks/{name}.py {' '.join(extra)} ...", end=" ", flush=True)
        run = run_one(name, extra, logs)
        runs.append(run)
        print(f"{run['seconds']:.0f} s, exit {run['returncode']}, others used {run['others_cpu']:.0%} of the "
              f"CPUs, load {load_average()[0]:.2f}", flush=True)
    total = time.monotonic() - started

    print()
    print_table(table_rows(runs))
    load_after = load_average()
    print(f"\nratio = value / baseline value; goal says which way is good. Total {total / 60:.1f} min; "
          f"load average {load_before[0]:.2f} before, {load_after[0]:.2f} after ({os.cpu_count()} CPUs). "
          f"Full output: {logs}")
    busy = [r["name"] for r in runs if r["others_cpu"] > 0.1]
    if busy:
        print(f"WARNING: other processes took more than 10% of the CPUs during {', '.join(busy)}; "
              "throughput and latency figures there are pessimistic.")
    if args.json:
        Path(args.json).write_text(json.dumps({
            "total_s": total, "load_before": load_before, "load_after": load_after, "cpus": os.cpu_count(),
            "benchmarks": runs,
        }, indent=2, default=str) + "\n", encoding="utf-8")
    failed = [r for r in runs if r["report"] is None or any(f["met"] is False for f in r["report"]["figures"])]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

"""Benchmark: JSONL ingest throughput and memory, against a naive json + pydantic ingest.

    PYTHONPATH=src python benchmarks/ingest.py [--records N] [--quick] [--json PATH]

Generates a synthetic file of N records (mixed shapes, ~150 bytes a line) and one of N/4
in a temporary directory, ingests each in a fresh child process (so peak RSS is that of
the ingest alone), runs the naive baseline (json.loads + a pydantic model per line +
hashlib, writing the same output) on the N file, and breaks the time of one pass down
into its stages so it is visible where the time goes. ``--quick``: 200,000 records and
the breakdown on the first 20,000.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import orjson

try:
    import honed  # noqa: F401
except ImportError:  # run from a checkout without PYTHONPATH=src
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from headline import figure, load_average, write_headline  # noqa: E402
from honed.data.formats import normalize_record  # noqa: E402
from honed.data.ingest import ingest_file  # noqa: E402

WORDS = (
    "the model answer question data train learn adapter token write file read line value "
    "result number list python function return error check test small large fast slow"
).split()


def _sentence_pools(rng: random.Random) -> list[list[str]]:
    """500 sentences of each length from 0 to 24 words (drawing whole sentences is fast)."""
    return [
        [" ".join(rng.choice(WORDS) for _ in range(k)).capitalize() + "." for _ in range(500)]
        for k in range(25)
    ]


def generate(path: Path, n: int, seed: int = 0) -> None:
    """Write n records: 55% chat, 20% prompt/completion, 15% instruction, 10% text."""
    rng = random.Random(seed)
    pools = _sentence_pools(rng)

    def _sentence(rng: random.Random, lo: int, hi: int) -> str:
        return rng.choice(pools[rng.randint(lo, hi)])

    with open(path, "wb", buffering=1 << 20) as f:
        for _ in range(n):
            r = rng.random()
            if r < 0.55:
                obj = {"messages": [
                    {"role": "user", "content": _sentence(rng, 3, 8)},
                    {"role": "assistant", "content": _sentence(rng, 4, 10)},
                ]}
            elif r < 0.75:
                obj = {"prompt": _sentence(rng, 4, 9), "completion": _sentence(rng, 5, 12)}
            elif r < 0.90:
                obj = {"instruction": _sentence(rng, 3, 7), "input": _sentence(rng, 0, 4)
                       if rng.random() < 0.5 else "", "output": _sentence(rng, 4, 9)}
            else:
                obj = {"text": _sentence(rng, 12, 22)}
            f.write(orjson.dumps(obj) + b"\n")


def _naive_ingest(source: Path, dest: Path) -> int:
    """The obvious implementation: json + a pydantic model per line + hashlib."""
    from typing import Literal

    from pydantic import BaseModel, ConfigDict, ValidationError

    class Message(BaseModel):
        role: Literal["system", "user", "assistant"]
        content: str

    class Record(BaseModel):
        model_config = ConfigDict(extra="ignore")
        messages: list[Message] | None = None
        prompt: str | None = None
        completion: str | None = None
        instruction: str | None = None
        input: str | None = None
        output: str | None = None
        text: str | None = None

    n = 0
    with open(source, encoding="utf-8") as f, open(dest, "w", encoding="utf-8") as out:
        for lineno, line in enumerate(f, 1):
            try:
                rec = Record.model_validate(json.loads(line))
            except (ValueError, ValidationError):
                continue
            if rec.messages is not None:
                norm = {"messages": [m.model_dump() for m in rec.messages]}
            elif rec.prompt is not None:
                norm = {"messages": [{"role": "user", "content": rec.prompt},
                                     {"role": "assistant", "content": rec.completion}]}
            elif rec.instruction is not None:
                user = rec.instruction + ("\n\n" + rec.input if rec.input else "")
                norm = {"messages": [{"role": "user", "content": user},
                                     {"role": "assistant", "content": rec.output}]}
            else:
                norm = {"text": rec.text}
            canonical = json.dumps(norm, sort_keys=True, separators=(",", ":"))
            digest = hashlib.sha256(canonical.encode()).hexdigest()
            out.write(json.dumps({"line": lineno, "hash": digest, **norm}) + "\n")
            n += 1
    return n


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def child(kind: str, source: Path, dest: Path) -> None:
    """Run one ingest in this (fresh) process and print its figures as JSON."""
    if kind == "naive":
        import pydantic  # noqa: F401  (import cost is not part of the measurement)
    before = _rss()
    cpu_before = _cpu_seconds()
    start = time.perf_counter()
    if kind == "honed":
        result = ingest_file(source, dest, mode="lenient")
        n = result.n_records
        assert result.accepted and result.n_bad == 0, result.errors[:3]
    else:
        n = _naive_ingest(source, dest / "naive.jsonl")
    seconds = time.perf_counter() - start
    cpu = _cpu_seconds() - cpu_before
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    print(json.dumps({"records": n, "seconds": seconds, "cpu_seconds": cpu,
                      "rss_delta": max(0, peak - before)}))


def _run_child(kind: str, source: Path, dest: Path) -> dict:
    dest.mkdir(parents=True, exist_ok=True)
    out = subprocess.run(
        [sys.executable, __file__, "--child", kind, str(source), str(dest)],
        check=True, capture_output=True, text=True,
    )
    return json.loads(out.stdout)


def breakdown(source: Path, limit: int) -> list[tuple[str, float]]:
    """CPU seconds per record added by each stage of the per-line work.

    Each pass runs the pipeline up to one more stage over the same lines (nothing kept
    between records, as in the real loop); a stage's cost is the difference between the
    best of three runs of consecutive passes. CPU time, so other load disturbs it less.
    """
    with open(source, "rb") as f:
        lines = [line for _, line in zip(range(limit), f)]
    n = len(lines)
    loads, dumps, sort_keys = orjson.loads, orjson.dumps, orjson.OPT_SORT_KEYS
    sha256 = hashlib.sha256

    def read_only() -> None:
        with open(source, "rb", buffering=1 << 20) as f:
            readline, update = f.readline, sha256().update
            for _ in range(n):
                update(readline(1 << 20))

    def upto(stage: int) -> None:
        for i, line in enumerate(lines):
            obj = loads(line)
            if stage >= 1:
                rec = normalize_record(obj)
            if stage >= 2:
                canonical = dumps(rec, option=sort_keys)
            if stage >= 3:
                digest = sha256(canonical).hexdigest().encode()
            if stage >= 4:
                b'{"line":%d,"hash":"%b",%b\n' % (i, digest, canonical[1:])

    names = ["read lines + file sha256", "orjson.loads", "validate + normalise",
             "canonical orjson.dumps", "sha256 of record", "format output line"]
    timings = []
    for run in [read_only] + [lambda s=s: upto(s) for s in range(5)]:
        best = float("inf")
        for _ in range(3):
            t = time.process_time()
            run()
            best = min(best, time.process_time() - t)
        timings.append(best)
    per = [timings[0], timings[1]] + [timings[i] - timings[i - 1] for i in range(2, 6)]
    return [(name, secs / n) for name, secs in zip(names, per)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=None, help="default 1,000,000 (--quick: 200,000)")
    parser.add_argument("--quick", action="store_true", help="200,000 records, a shorter breakdown")
    parser.add_argument("--json", metavar="PATH", help="also write the headline figures as JSON to PATH")
    parser.add_argument(
        "--child", nargs=3, metavar=("KIND", "SOURCE", "DEST"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    if args.child:
        kind, source, dest = args.child
        child(kind, Path(source), Path(dest))
        return

    n = args.records or (200_000 if args.quick else 1_000_000)
    load_before = load_average()
    with tempfile.TemporaryDirectory(prefix="honed-bench-ingest-") as tmp:
        tmp = Path(tmp)
        big, small = tmp / "big.jsonl", tmp / "small.jsonl"
        t = time.perf_counter()
        generate(big, n)
        generate(small, max(1, n // 4), seed=1)
        size = big.stat().st_size
        print(f"generated {n:,} records ({size / 1e6:.1f} MB, {size / n:.0f} B/record) "
              f"and {max(1, n // 4):,} in {time.perf_counter() - t:.1f} s")

        load = os.getloadavg()[0]
        honed_big = _run_child("honed", big, tmp / "out-big")
        honed_small = _run_child("honed", small, tmp / "out-small")
        naive = _run_child("naive", big, tmp / "out-naive")

        rate = honed_big["records"] / honed_big["seconds"]
        naive_rate = naive["records"] / naive["seconds"]
        print(f"honed ingest: {rate:,.0f} rec/s, {size / honed_big['seconds'] / 1e6:.1f} MB/s "
              f"({honed_big['seconds']:.2f} s for {honed_big['records']:,} records, "
              f"writing normalised output, fsynced)")
        print(f"per CPU-second (what the code costs, whatever else runs on this machine): "
              f"honed {honed_big['records'] / honed_big['cpu_seconds']:,.0f} rec/s, naive "
              f"{naive['records'] / naive['cpu_seconds']:,.0f} rec/s; "
              f"load average before the run {load:.2f} on {os.cpu_count()} CPUs")
        print(f"honed ingest: {rate:,.0f} rec/s; naive json+pydantic: {naive_rate:,.0f} rec/s; "
              f"ratio {rate / naive_rate:.1f}x")
        print(f"peak RSS delta: {honed_small['rss_delta'] / 2**20:.1f} MiB at {n // 4:,} records, "
              f"{honed_big['rss_delta'] / 2**20:.1f} MiB at {n:,} records "
              f"(naive: {naive['rss_delta'] / 2**20:.1f} MiB)")

        limit = min(n, 20_000 if args.quick else 200_000)
        print(f"where the time goes (CPU per record, first {limit:,} records, in-process):")
        total = 0.0
        for name, per in breakdown(big, limit):
            total += per
            print(f"  {name:<26} {per * 1e6:6.2f} us")
        print(f"  {'sum of stages':<26} {total * 1e6:6.2f} us  (full ingest: "
              f"{1e6 * honed_big['cpu_seconds'] / honed_big['records']:.2f} us CPU/record, "
              f"including writes and fsync)")

    flat = honed_big["rss_delta"] <= honed_small["rss_delta"] + 2**20
    write_headline(args.json, "ingest", [
        figure("honed ingest, records/s wall", rate, "rec/s", baseline="naive json + pydantic",
               baseline_value=naive_rate, goal="> x1 (no number stated)", met=rate > naive_rate),
        figure("honed ingest, records per CPU-second", honed_big["records"] / honed_big["cpu_seconds"], "rec/s",
               baseline="naive json + pydantic", baseline_value=naive["records"] / naive["cpu_seconds"],
               goal="> x1 (no number stated)",
               met=honed_big["records"] / honed_big["cpu_seconds"] > naive["records"] / naive["cpu_seconds"]),
        figure(f"peak RSS growth at {n:,} records", honed_big["rss_delta"] / 2**20, "MiB",
               baseline=f"at {max(1, n // 4):,} records", baseline_value=honed_small["rss_delta"] / 2**20,
               goal="flat: within 1 MiB", met=flat),
    ], load_before=load_before, details={
        "records": n, "mb_per_s": size / honed_big["seconds"] / 1e6,
    })


if __name__ == "__main__":
    main()

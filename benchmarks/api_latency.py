"""Benchmark: how fast the HTTP API answers while a training run uses both cores.

    python benchmarks/api_latency.py [--clients 50] [--interval 1.0] [--seconds 10] [--records 6000]
                                     [--quick] [--json PATH]

In a fresh workspace on the tiny model it starts ``honed serve`` (a real uvicorn process)
and measures three endpoints, each under ``--clients`` concurrent clients for
``--seconds``. Each client holds one keep-alive connection (asyncio + httpx) and sends a
request every ``--interval`` seconds (50 clients every second: what fifty open monitors
refreshing once a second would send; a request that comes back late is followed by the
next one at once). A last row per phase, ``saturated``, has every client
send its next request as soon as the previous one answered: that is the server's
capacity, and its latency is mostly queueing.

The endpoints:

- ``/api/status``: what ``honed status`` and the monitor read (several store queries);
- ``/metrics``: the Prometheus scrape;
- ``/static/monitor.css``: a static file, the server's own floor (the baseline).

It does so twice: with the machine otherwise idle, then while ``honed daemon`` trains a
job (torch on both cores). It prints p50 / p99 / requests per second per endpoint and
phase, the ratio of each endpoint's p99 to the static file's in the same phase, and the
training/idle ratio. Goal: p99 of /api/status under 20 ms while training. ``--quick``
measures 4 s per endpoint and phase instead of 10.

The clients run in this process and need CPU too: on a 2-core machine the figures are
those of server, trainer and clients sharing two cores.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

try:
    import honed  # noqa: F401
except ImportError:  # run from a checkout without installing
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import httpx  # noqa: E402

from headline import figure, load_average, write_headline  # noqa: E402
from honed.config import update_config_file  # noqa: E402
from honed.data.synthetic import write_synthetic  # noqa: E402
from honed.models.tiny import build_tiny_model  # noqa: E402
from honed.workspace import init_workspace, open_workspace  # noqa: E402

ENDPOINTS = ("/api/status", "/metrics", "/static/monitor.css")
GOAL_MS = 20.0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def _client(url: str, path: str, seconds: float, interval: float, latencies: list[float],
                  errors: list[str], connected: asyncio.Barrier) -> None:
    async with httpx.AsyncClient(base_url=url, timeout=10) as http:
        try:
            await http.get(path)  # connect first: connection setup is not what is measured
        except httpx.HTTPError as exc:
            errors.append(f"{path}: connecting: {exc!r}")
        # The window starts when every client has connected: on a crowded machine, connecting
        # fifty clients can take seconds.
        await connected.wait()
        until = time.perf_counter() + seconds
        next_at = time.perf_counter() + random.uniform(0, interval)  # clients out of step, as real ones are
        while time.perf_counter() < until:
            if interval:
                await asyncio.sleep(max(0.0, next_at - time.perf_counter()))
                next_at += interval
            started = time.perf_counter()
            try:
                answer = await http.get(path)
                if answer.status_code != 200:
                    errors.append(f"{path}: HTTP {answer.status_code}")
            except httpx.HTTPError as exc:
                errors.append(f"{path}: {exc!r}")
                continue
            latencies.append(time.perf_counter() - started)


def measure(url: str, path: str, clients: int, seconds: float, interval: float) -> dict:
    latencies: list[float] = []
    errors: list[str] = []

    async def main():
        connected = asyncio.Barrier(clients)
        await asyncio.gather(*(_client(url, path, seconds, interval, latencies, errors, connected)
                               for _ in range(clients)))

    asyncio.run(main())
    ms = sorted(x * 1000 for x in latencies)
    if not ms:
        return {"p50": float("nan"), "p99": float("nan"), "rps": 0.0, "n": 0, "errors": len(errors),
                "first_error": errors[0] if errors else f"no request answered in {seconds:g} s"}
    q = statistics.quantiles(ms, n=100) if len(ms) > 1 else [ms[0]] * 99
    return {"p50": q[49], "p99": q[98], "rps": len(ms) / seconds, "n": len(ms), "errors": len(errors),
            "first_error": errors[0] if errors else ""}


def _wait(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise SystemExit(f"timed out waiting for {what}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--interval", type=float, default=1.0, help="Seconds between a client's requests.")
    parser.add_argument("--seconds", type=float, default=None, help="Per endpoint and phase (default 10, --quick 4).")
    parser.add_argument("--records", type=int, default=6000, help="Training records (the job must outlast the test).")
    parser.add_argument("--quick", action="store_true", help="4 s per endpoint and phase")
    parser.add_argument("--json", metavar="PATH", help="Also write the headline figures as JSON to PATH.")
    args = parser.parse_args()
    args.seconds = args.seconds or (4.0 if args.quick else 10.0)
    load_before = load_average()

    tmp = Path(tempfile.mkdtemp(prefix="honed-api-bench-"))
    procs: list[subprocess.Popen] = []
    try:
        base = build_tiny_model(tmp / "tiny", pretrain=False)
        ws = init_workspace(tmp / "ws", base=str(base))
        update_config_file(ws.root, {"train": {"epochs": 20.0, "eval_every": 0, "checkpoint_every": 200},
                                     "daemon": {"poll_interval_s": 0.5}})
        ws = open_workspace(ws.root)
        port = _free_port()
        url = f"http://127.0.0.1:{port}"
        log = open(tmp / "serve.out", "wb")
        procs.append(subprocess.Popen([sys.executable, "-m", "honed.cli", "serve", "-w", str(ws.root),
                                       "--port", str(port)], stdout=log, stderr=log))

        def up():
            try:
                return httpx.get(url + "/api/status", timeout=2).status_code == 200
            except httpx.TransportError:
                return False

        _wait(up, 60, "honed serve")
        results: dict[tuple[str, str], dict] = {}

        def phase(name: str) -> None:
            for path in ENDPOINTS:
                results[(name, path)] = measure(url, path, args.clients, args.seconds, args.interval)
            results[(name, "saturated status")] = measure(url, "/api/status", args.clients, args.seconds, 0.0)

        phase("idle")

        log_d = open(tmp / "daemon.out", "wb")
        procs.append(subprocess.Popen([sys.executable, "-m", "honed.cli", "daemon", "-w", str(ws.root)],
                                      stdout=log_d, stderr=log_d))
        write_synthetic("reversal", args.records, ws.root / "staged.jsonl", seed=0, eval_n=0)
        os.rename(ws.root / "staged.jsonl", ws.inbox / "reversal.jsonl")

        def training():
            status = httpx.get(url + "/api/status", timeout=5).json()
            running = status["running"]
            return running and (running[0].get("progress") or {}).get("step", 0) >= 5

        _wait(training, 180, "the training job's first steps")
        phase("training")
        still = httpx.get(url + "/api/status", timeout=5).json()["running"]
        load = os.getloadavg()

        print(f"\nAPI latency, {args.clients} concurrent clients each sending a request every {args.interval:g} s, "
              f"{args.seconds:g} s per endpoint and phase "
              f"(load average now {load[0]:.2f}; training still running at the end: {bool(still)})\n")
        print(f"{'phase':<9} {'endpoint':<20} {'p50 ms':>8} {'p99 ms':>8} {'req/s':>8} {'errors':>7} "
              f"{'p99 / static':>13} {'p99 training/idle':>18}")
        for (phase, path), r in results.items():
            floor = results[(phase, "/static/monitor.css")]["p99"]
            idle = results[("idle", path)]["p99"]
            versus_static = f"{r['p99'] / floor:>12.2f}x" if path in ENDPOINTS else f"{'-':>13}"
            print(f"{phase:<9} {path:<20} {r['p50']:>8.2f} {r['p99']:>8.2f} {r['rps']:>8.0f} {r['errors']:>7} "
                  f"{versus_static} {r['p99'] / idle:>17.2f}x")
            if r["first_error"]:
                print(f"          first error: {r['first_error']}")
        status_p99 = results[("training", "/api/status")]["p99"]
        verdict = "met" if status_p99 < GOAL_MS else "NOT met"
        print(f"\n/api/status p99 while training: {status_p99:.2f} ms (goal < {GOAL_MS:g} ms: {verdict})")
        write_headline(args.json, "api_latency", [
            figure("/api/status p99 while training", status_p99, "ms", baseline="static file p99 while training",
                   baseline_value=results[("training", "/static/monitor.css")]["p99"], goal=f"< {GOAL_MS:g} ms",
                   met=status_p99 < GOAL_MS),
        ], load_before=load_before, details={
            "clients": args.clients, "interval": args.interval, "seconds": args.seconds,
            "training_still_running": bool(still), "rows": {f"{ph} {path}": r for (ph, path), r in results.items()},
        })
    finally:
        for proc in reversed(procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    proc.kill()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()

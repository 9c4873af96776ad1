"""Benchmark: what proxy capture adds to each request.

    python benchmarks/proxy_latency.py [--requests 60] [--max-tokens 8] [--quick] [--json PATH]

On the random tiny model it starts two real ``honed serve`` processes: the upstream (the
built-in server answering itself) and the proxy (``[server] upstream_url`` pointing at
the upstream, recording each exchange as an experience). It sends the same chat request
``--requests`` times, one at a time, alternately to the upstream directly and through
the proxy, whole and streamed, and prints p50 / p99 of each and of the difference: the
proxy's added latency per request (forwarding, and writing the experience to SQLite).
``--quick`` sends 20 of each.
"""

from __future__ import annotations

import argparse
import shutil
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
from honed.models.tiny import build_tiny_model  # noqa: E402
from honed.workspace import init_workspace  # noqa: E402

QUESTION = [{"role": "user", "content": "reverse: honed"}]


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(root: Path, log: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    with open(log, "ab") as out:
        proc = subprocess.Popen([sys.executable, "-m", "honed.cli", "serve", "-w", str(root), "--port", str(port)],
                                stdout=out, stderr=out, stdin=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            if httpx.get(f"{url}/v1/models", timeout=2).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"honed serve did not start: {log.read_text()[-2000:]}")
        time.sleep(0.2)


def timed(client: httpx.Client, url: str, stream: bool, max_tokens: int) -> float:
    body = {"model": "main", "messages": QUESTION, "max_tokens": max_tokens, "stream": stream}
    started = time.perf_counter()
    if stream:
        with client.stream("POST", f"{url}/v1/chat/completions", json=body) as answer:
            assert answer.status_code == 200, answer.read()
            for _ in answer.iter_lines():
                pass
    else:
        answer = client.post(f"{url}/v1/chat/completions", json=body)
        assert answer.status_code == 200, answer.text
    return (time.perf_counter() - started) * 1000


def percentile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1] if len(values) > 1 else values[0]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=60)
    parser.add_argument("--max-tokens", type=int, default=8)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    n = 20 if args.quick else args.requests
    load_before = load_average()
    tmp = Path(tempfile.mkdtemp(prefix="honed-proxy-bench-"))
    procs: list[subprocess.Popen] = []
    try:
        base = build_tiny_model(tmp / "tiny", pretrain=False)
        upstream_ws = init_workspace(tmp / "upstream", base=str(base))
        proxy_ws = init_workspace(tmp / "proxy", base=str(base))
        upstream, upstream_url = start_server(upstream_ws.root, tmp / "upstream.log")
        procs.append(upstream)
        update_config_file(proxy_ws.root, {"server": {"upstream_url": upstream_url + "/v1"}})
        proxy, proxy_url = start_server(proxy_ws.root, tmp / "proxy.log")
        procs.append(proxy)
        rows, figures = [], []
        with httpx.Client(timeout=120) as client:
            for stream in (False, True):
                for url in (upstream_url, proxy_url):  # warm both: the model loads on the first request
                    timed(client, url, stream, args.max_tokens)
                direct, proxied = [], []
                for _ in range(n):
                    direct.append(timed(client, upstream_url, stream, args.max_tokens))
                    proxied.append(timed(client, proxy_url, stream, args.max_tokens))
                added = [p - d for p, d in zip(proxied, direct, strict=True)]
                kind = "streamed" if stream else "whole"
                rows.append((kind, direct, proxied, added))
                for q in (50, 99):
                    figures.append(figure(f"added latency p{q}, {kind}", round(percentile(added, q), 2), "ms",
                                          baseline=f"upstream directly p{q}",
                                          baseline_value=round(percentile(direct, q), 2)))
        print(f"{n} requests each, max_tokens {args.max_tokens}, one at a time; load before {load_before}, "
              f"after {load_average()}")
        print(f"{'answer':<10}{'direct p50':>12}{'direct p99':>12}{'proxy p50':>12}{'proxy p99':>12}"
              f"{'added p50':>12}{'added p99':>12}  (ms)")
        for kind, direct, proxied, added in rows:
            print(f"{kind:<10}" + "".join(f"{percentile(v, q):>12.2f}" for v in (direct, proxied, added)
                                          for q in (50, 99)))
        write_headline(args.json, "proxy_latency", figures, load_before=load_before)
        return 0
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(timeout=30)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())

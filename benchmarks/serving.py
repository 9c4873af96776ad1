"""Benchmark: the built-in server's throughput and latency with concurrent clients,
batched against one at a time.

    python benchmarks/serving.py [--model tiny|smollm2|both] [--requests 6] [--max-tokens 32]
                                 [--clients 1,4,16] [--quick] [--json PATH]

For each model it starts two real ``honed serve`` processes on the same base: one with
``server.max_batch = 16`` (the default: requests join the decode loop between steps and
leave it when they end) and one with ``server.max_batch = 0`` (the baseline: one answer at
a time through transformers' generate). At
1, 4 and 16 concurrent clients, each client sends ``--requests`` chat requests back to
back (greedy, ``--max-tokens`` at most, prompts of varied length), first to the baseline,
then to the batched server. It prints the completion tokens per second of all clients
together and the p50 / p99 latency of a request, and the batched / one-at-a-time ratio of
tokens per second. Goal: at 16 clients, at least 4x. ``--quick``: the tiny model only,
3 requests per client.

Models: ``tiny`` is honed's pretrained tiny base (answers of a few to a few dozen tokens);
``smollm2`` is SmolLM2-135M-Instruct from its GGUF (converted once into honed's cache).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

try:
    import honed  # noqa: F401
except ImportError:  # run from a checkout without installing
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import httpx  # noqa: E402
from headline import figure, load_average, write_headline  # noqa: E402
from proxy_latency import start_server  # noqa: E402

from honed.config import update_config_file  # noqa: E402
from honed.workspace import init_workspace  # noqa: E402

CLIENTS = (1, 4, 16)
TOPICS = ["the sea", "a bicycle", "bread", "winter", "a library", "chess", "rain", "a lighthouse", "tea", "bees",
          "a river", "the moon", "a violin", "snow", "a market", "an old map"]


def prompts(model: str) -> list[list[dict]]:
    if model == "tiny":
        from honed.data.synthetic import generate

        return [r["messages"][:-1] for r in generate("reversal", 64, seed=11)]
    return [[{"role": "user", "content": f"Write {k % 3 + 2} sentences about {topic}."}]
            for k, topic in enumerate(TOPICS * 4)]


def load(url: str, questions: list[list[dict]], clients: int, requests: int, max_tokens: int) -> dict:
    """``clients`` threads, each sending ``requests`` chats back to back."""
    latencies: list[float] = []
    tokens = [0]
    lock = threading.Lock()

    def client(k: int) -> None:
        with httpx.Client(timeout=600) as http:
            for r in range(requests):
                messages = questions[(k * requests + r) % len(questions)]
                started = time.perf_counter()
                answer = http.post(f"{url}/v1/chat/completions",
                                   json={"model": "main", "messages": messages, "max_tokens": max_tokens})
                elapsed = time.perf_counter() - started
                assert answer.status_code == 200, answer.text
                with lock:
                    latencies.append(elapsed)
                    tokens[0] += answer.json()["usage"]["completion_tokens"]

    started = time.perf_counter()
    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - started
    ordered = sorted(latencies)
    return {"tokens_per_s": tokens[0] / wall, "tokens": tokens[0], "wall_s": wall,
            "p50_s": statistics.median(ordered), "p99_s": ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]}


def bench(model: str, tmp: Path, requests: int, max_tokens: int, levels: tuple[int, ...] = CLIENTS) -> list[dict]:
    from honed.models.tiny import tiny_base

    base = str(tiny_base()) if model == "tiny" else "smollm2"
    servers, procs = {}, []
    try:
        for name, batch in (("one at a time", 0), ("batched", 16)):
            ws = init_workspace(tmp / f"{model}-{batch}", base=base)
            update_config_file(ws.root, {"server": {"max_batch": batch}})
            proc, url = start_server(ws.root, tmp / f"{model}-{batch}.log")
            procs.append(proc)
            servers[name] = url
            load(url, prompts(model), 1, 1, 4)  # the model loads at the first request
        questions = prompts(model)
        rows = []
        for clients in levels:
            row = {"model": model, "clients": clients}
            for name, url in servers.items():
                row[name] = load(url, questions, clients, requests, max_tokens)
            row["ratio"] = row["batched"]["tokens_per_s"] / row["one at a time"]["tokens_per_s"]
            rows.append(row)
            print(f"{model:<8}{clients:>8}" + "".join(
                f"{row[n]['tokens_per_s']:>12.1f}{row[n]['p50_s']:>9.2f}{row[n]['p99_s']:>9.2f}"
                for n in ("one at a time", "batched")) + f"{row['ratio']:>9.2f}x", flush=True)
        return rows
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(timeout=60)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=("tiny", "smollm2", "both"), default="both")
    parser.add_argument("--requests", type=int, default=6, help="Requests per client at each level.")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--clients", default=",".join(map(str, CLIENTS)),
                        help="Concurrent clients at each level, comma-separated (the goal is read at the last).")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    models = ["tiny"] if args.quick else (["tiny", "smollm2"] if args.model == "both" else [args.model])
    requests = 3 if args.quick else args.requests
    levels = tuple(int(c) for c in args.clients.split(","))
    load_before = load_average()
    print(f"load before {load_before}; {requests} requests per client, max_tokens {args.max_tokens}")
    print(f"{'model':<8}{'clients':>8}{'1-by-1 tok/s':>12}{'p50 s':>9}{'p99 s':>9}{'batch tok/s':>12}{'p50 s':>9}"
          f"{'p99 s':>9}{'ratio':>10}")
    tmp = Path(tempfile.mkdtemp(prefix="honed-serving-bench-"))
    figures, details = [], []
    try:
        for model in models:
            rows = bench(model, tmp, requests, args.max_tokens, levels)
            details.extend(rows)
            widest = rows[-1]
            figures.append(figure(f"{model}: tokens/s at {widest['clients']} clients, batched",
                                  round(widest["batched"]["tokens_per_s"], 1), "tokens/s",
                                  baseline="one at a time, same clients",
                                  baseline_value=round(widest["one at a time"]["tokens_per_s"], 1),
                                  goal=">= 4x", met=widest["ratio"] >= 4))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"load after {load_average()}")
    write_headline(args.json, "serving", figures, load_before=load_before, details={"rows": details})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

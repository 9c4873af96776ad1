"""SmolLM2 after a short training, exported by ``honed export --format gguf`` (f16) and
served by llama.cpp's OpenAI-compatible server: its greedy answers on the held-out
prompts against honed's built-in server's, and both engines' tokens/s on the same
prompts, one request at a time, each engine with its default threads. Marked
``real_model``; needs llama-cpp-python."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from tests.cli_runner import free_port, run_honed
from tests.llama_cpp_server import greedy_chat, llama_cpp_server, post_json, wait_for_models

pytestmark = pytest.mark.real_model
torch = pytest.importorskip("torch")

MAX_TOKENS = 48


def _honed_chat(url: str, messages: list[dict]) -> tuple[str, int, float]:
    started = time.perf_counter()
    done = post_json(f"{url}/v1/chat/completions", {"model": "main", "messages": messages,
                                                    "max_tokens": MAX_TOKENS, "temperature": 0.0})
    seconds = time.perf_counter() - started
    return done["choices"][0]["message"]["content"].strip(), done["usage"]["completion_tokens"], seconds


def _rate(replies: list[tuple[str, int, float]]) -> float:
    return sum(r[1] for r in replies) / sum(r[2] for r in replies)


def test_smollm2_exported_gguf_answers_through_llama_cpp_like_honed_serve(llama_cpp_module, smollm2_base,
                                                                          gguf_cache, tmp_path):
    from honed.config import update_config_file
    from honed.data.synthetic import generate
    from honed.registry.deployment import deploy
    from honed.workspace import open_workspace

    env = {"HONED_CACHE": str(gguf_cache)}
    root = tmp_path / "ws"
    run_honed("init", str(root), "--base", "smollm2", env=env)
    threads = os.cpu_count() or 1
    update_config_file(root, {
        "lora": {"target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"]},
        "train": {"max_steps": 12, "lr": 3e-4, "batch_size": 8, "warmup_steps": 3, "heldout_fraction": 0.2,
                  "eval_every": 0, "checkpoint_every": 100, "threads": threads},
    })
    data = tmp_path / "people.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in generate("person_json", 100, seed=4)))
    run_id = json.loads(run_honed("train", "-w", str(root), "--dataset", str(data), "--json", env=env).stdout)["run"]
    ws = open_workspace(root)
    store = ws.open_store()
    run = store.get_run(run_id)
    adapter = store.add_adapter(track="main", run_id=run.id, job_id=None, base_version=0, path=run.adapter_path)
    deploy(ws, store, adapter.id, force=True)
    store.close()
    heldout = [json.loads(line) for line in (ws.runs_dir / run_id / "heldout.jsonl").read_text().splitlines()]
    prompts = [r["messages"][:-1] for r in heldout[:12]]

    out = tmp_path / "out-f16"
    done = json.loads(run_honed("export", "track:main", "--format", "gguf", "--out", str(out), "-w", str(root),
                                "--json", env=env).stdout)
    gguf = out / done["gguf"]

    port = free_port()
    honed_url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen([sys.executable, "-m", "honed.cli", "serve", "-w", str(root), "--port", str(port)],
                              env={**os.environ, **env}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_models(honed_url, "main", process=server)
        _honed_chat(honed_url, prompts[0])  # loads the model: not timed
        honed_replies = [_honed_chat(honed_url, messages) for messages in prompts]
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)

    # llama.cpp's own default, half the CPUs: its threads spin while they wait, so on a
    # shared machine all of them run slower than half (5 vs 27 tokens/s measured on two cores).
    with llama_cpp_server(gguf, adapter.name, tmp_path / "llama-cpp.log") as url:
        greedy_chat(url, adapter.name, prompts[0], MAX_TOKENS)  # warm-up, not timed
        llama_replies = [greedy_chat(url, adapter.name, messages, MAX_TOKENS) for messages in prompts]

    same = sum(a[0] == b[0] for a, b in zip(llama_replies, honed_replies))
    print(f"SmolLM2 f16 GGUF: llama.cpp agrees with honed serve on {same}/{len(prompts)} greedy answers; "
          f"tokens/s, one request at a time: llama.cpp (f16, n_threads {max(threads // 2, 1)}) "
          f"{_rate(llama_replies):.1f}, honed serve (fp32, {threads} CPUs) {_rate(honed_replies):.1f}")
    for a, b in zip(llama_replies, honed_replies):
        if a[0] != b[0]:
            print(f"  llama.cpp: {a[0]!r}\n  honed:     {b[0]!r}")
    assert same == len(prompts)

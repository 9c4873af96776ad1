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


def test_smollm2_exported_gguf_answers_through_llama_cpp_like_honed_serve(llama_cpp_module, smollm2_trained,
                                                                          tmp_path):
    root, env, adapter, prompts = (smollm2_trained.root, smollm2_trained.env, smollm2_trained.adapter,
                                   smollm2_trained.prompts)
    threads = os.cpu_count() or 1

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

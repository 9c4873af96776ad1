"""llama-cpp-python's OpenAI-compatible server as a real subprocess, and greedy chats with it."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from tests.cli_runner import free_port


def get_json(url: str, timeout: float = 5.0) -> dict:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return json.loads(response.read())


def post_json(url: str, body: dict, timeout: float = 300.0) -> dict:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read())


def wait_for_models(url: str, wanted: str | None = None, timeout: float = 120.0,
                    process: subprocess.Popen | None = None) -> list[str]:
    """The names ``url`` lists once it answers (and lists ``wanted``, if given)."""
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise AssertionError(f"the server exited with {process.returncode}")
        try:
            names = [m["id"] for m in get_json(f"{url}/v1/models")["data"]]
            if wanted is None or wanted in names:
                return names
            last = names
        except (urllib.error.URLError, OSError, ValueError) as exc:
            last = exc
        time.sleep(0.3)
    raise AssertionError(f"{url} did not list {wanted or 'any model'} within {timeout:g}s (last: {last})")


@contextlib.contextmanager
def llama_cpp_server(model: Path, alias: str, log: Path, threads: int | None = None) -> Iterator[str]:
    """``python -m llama_cpp.server --model MODEL`` on a free loopback port; its base URL.
    ``threads``: llama.cpp's (its default is half the CPUs)."""
    port = free_port()
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "llama_cpp.server", "--model", str(model), "--model_alias", alias,
             "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "2048",
             *(["--n_threads", str(threads)] if threads else [])],
            stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_models(url, alias, process=process)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def greedy_chat(url: str, model: str, messages: list[dict], max_tokens: int) -> tuple[str, int, float]:
    """The greedy answer (stripped, as honed's generation strips it), its completion
    tokens and the seconds the request took. Greedy means temperature 0 and no repeat
    penalty (the server's default is 1.1)."""
    started = time.perf_counter()
    done = post_json(f"{url}/v1/chat/completions", {
        "model": model, "messages": messages, "max_tokens": max_tokens, "temperature": 0.0,
        "repeat_penalty": 1.0, "top_k": 1, "seed": 0})
    seconds = time.perf_counter() - started
    return done["choices"][0]["message"]["content"].strip(), done["usage"]["completion_tokens"], seconds

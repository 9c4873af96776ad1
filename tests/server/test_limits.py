"""What a client may ask of the server: JSON bodies up to ``server.max_json_body_bytes``,
prompts up to ``server.max_prompt_tokens``, and a generation that nobody waits for any
more stops after the decode step under way, without storing its cut-short answer."""

from __future__ import annotations

import json
import time

import httpx
import pytest

from honed.config import update_config_file
from honed.server import api_openai
from honed.workspace import open_workspace
from tests.daemon.conftest import synth

QUESTION = [{"role": "user", "content": "reverse: honed"}]


@pytest.fixture
def limited(make_workspace, tiny_random_base, serve):
    """A server whose limits are small enough to pass in a test."""
    ws = make_workspace(tiny_random_base)
    update_config_file(ws.root, {"server": {"max_json_body_bytes": 4096, "max_prompt_tokens": 64}})
    ws = open_workspace(ws.root)
    server = serve(ws)
    with httpx.Client(base_url=server.url, timeout=120) as client:
        yield ws, server, client


@pytest.fixture
def generations(monkeypatch) -> list[dict]:
    """Every generation the server starts (it runs in this process): its arguments, then its answer."""
    seen: list[dict] = []
    real, real_choices = api_openai.generate, api_openai.generate_choices

    def spy(*args, **kwargs):  # streamed answers
        seen.append(kwargs)
        kwargs["answer"] = answer = real(*args, **kwargs)
        return answer

    def spy_choices(*args, **kwargs):  # whole ones
        seen.append(kwargs)
        answers = real_choices(*args, **kwargs)
        kwargs["answer"] = answers[0]
        return answers

    monkeypatch.setattr(api_openai, "generate", spy)
    monkeypatch.setattr(api_openai, "generate_choices", spy_choices)
    return seen


def _wait_for(condition, what: str, timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"still waiting for {what}"
        time.sleep(0.05)


def test_json_bodies_over_the_limit_are_refused_and_nothing_is_stored(limited, tmp_path):
    ws, server, client = limited
    too_long = {"messages": QUESTION, "output": "x" * 5000}
    declared = client.post("/v1/experiences", json=too_long)
    assert declared.status_code == 413
    message = declared.json()["error"]["message"]  # OpenAI's shape under /v1/
    assert "server.max_json_body_bytes" in message and "4,096" in message and "5,0" in message

    def chunked():  # no Content-Length: counted as it arrives
        body = json.dumps({"datasets": [1], "overrides": {"note": "y" * 10_000}}).encode()
        for i in range(0, len(body), 1000):
            yield body[i:i + 1000]

    streamed = client.post("/api/jobs", content=chunked(), headers={"content-type": "application/json"})
    assert streamed.status_code == 413
    assert "server.max_json_body_bytes" in streamed.json()["error"] and "stopped" in streamed.json()["error"]
    assert client.get("/api/experiences").json() == [] and client.get("/api/jobs").json() == []

    assert client.post("/v1/experiences", json={"messages": QUESTION, "output": "ok"}).status_code == 201
    data = synth(tmp_path / "bigger-than-a-json-body.jsonl", 200)  # uploads keep their own limit
    assert data.stat().st_size > 4096
    upload = client.post("/api/datasets", params={"name": data.name}, content=data.read_bytes())
    assert upload.status_code == 201 and upload.json()["records"] == 200


def test_a_prompt_over_the_limit_is_refused_before_it_waits_for_the_model(limited):
    ws, server, client = limited
    first = client.post("/v1/chat/completions", json={"model": "main", "messages": QUESTION, "max_tokens": 2})
    assert first.status_code == 200
    pool = server.server.config.app.state.model_pool
    (loaded,) = pool._models.values()
    long_prompt = [{"role": "user", "content": "reverse: " + "abc " * 40}]
    with loaded.lock:  # the model is busy: a refusal must not wait for it
        for stream in (False, True):
            refused = client.post("/v1/chat/completions", timeout=60,
                                  json={"model": "main", "messages": long_prompt, "max_tokens": 2, "stream": stream})
            assert refused.status_code == 400, refused.text
            message = refused.json()["error"]["message"]
            assert "server.max_prompt_tokens" in message and "at most 64" in message and "tokens" in message
    assert [e["id"] for e in client.get("/api/experiences").json()] == [first.json()["honed"]["experience_id"]]


def test_a_closed_stream_stops_generating_and_stores_nothing(limited, generations):
    ws, server, client = limited
    request = {"model": "main", "messages": QUESTION, "max_tokens": 8192, "stream": True}
    with client.stream("POST", "/v1/chat/completions", json=request) as stream:
        assert stream.status_code == 200
        lines = stream.iter_lines()  # kept: dropping the iterator would close the connection already
        assert json.loads(next(lines).removeprefix("data: "))["choices"][0]["delta"]["role"] == "assistant"
        _wait_for(lambda: generations and len(generations[0]["streamer"].tokens) >= 3, "decode steps")
    # the client leaves in the middle of the answer: the connection closes
    _wait_for(lambda: "answer" in generations[0], "the generation to end")
    answer = generations[0]["answer"]
    assert answer.finish_reason == "cancelled" and 3 <= answer.completion_tokens < 8192
    pool = server.server.config.app.state.model_pool
    _wait_for(lambda: pool._active == 0, "the lease to end")
    assert client.get("/api/experiences").json() == []
    after = client.post("/v1/chat/completions", json={"model": "main", "messages": QUESTION, "max_tokens": 3})
    assert after.status_code == 200 and len(client.get("/api/experiences").json()) == 1


def test_an_abandoned_request_stops_generating_and_stores_nothing(limited, generations):
    ws, server, client = limited
    warm = client.post("/v1/chat/completions", json={"model": "main", "messages": QUESTION, "max_tokens": 1})
    assert warm.status_code == 200  # the model is loaded: the next request generates at once
    request = {"model": "main", "messages": QUESTION, "max_tokens": 8192}
    with pytest.raises(httpx.ReadTimeout):  # the client gives up after a second and closes its connection
        httpx.post(f"{server.url}/v1/chat/completions", json=request, timeout=httpx.Timeout(120, read=1.0))
    _wait_for(lambda: "answer" in generations[-1], "the generation to end")
    assert generations[-1]["answer"].finish_reason == "cancelled"
    assert generations[-1]["answer"].completion_tokens < 8192
    assert [e["id"] for e in client.get("/api/experiences").json()] == [warm.json()["honed"]["experience_id"]]

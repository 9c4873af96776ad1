"""Hostile input to the OpenAI-compatible surface (``/v1/chat/completions``,
``/v1/models``, ``/v1/experiences``), on SQLite and PostgreSQL: each refusal is in
OpenAI's error shape with the status and message a client relies on, nothing is stored,
and the server answers the next request. No case here loads a model: every chat request
is refused before generating."""

from __future__ import annotations

import json

import pytest

from tests.hostile.cases import (
    HttpCase,
    as_params,
)
from tests.hostile.conftest import run_http_case

USER = [{"role": "user", "content": "ping"}]
INJECT = "'); DROP TABLE experiences; --"


def chat(id: str, body: dict, status: int, message: str, **kw) -> HttpCase:
    return HttpCase(id, "POST", "/v1/chat/completions", status, message, json=body, **kw)


def raw(id: str, path: str, body: str, status: int, message: str, **kw) -> HttpCase:
    """A JSON text sent as is: json= cannot encode a lone surrogate or NaN."""
    return HttpCase(id, "POST", path, status, message, content=body, headers={"content-type": "application/json"},
                    **kw)


def log(id: str, body: dict, status: int, message: str = "", **kw) -> HttpCase:
    return HttpCase(id, "POST", "/v1/experiences", status, message, json=body, **kw)


def feedback(id: str, body: dict, status: int, message: str, experience: str = "{experience}", **kw) -> HttpCase:
    return HttpCase(id, "POST", f"/v1/experiences/{experience}/feedback", status, message, json=body, **kw)


CASES = [
    # --- chat completions: refused before a model is loaded ---------------------------------
    chat("chat-model-unknown", {"model": "nope", "messages": USER}, 404, "nope"),
    chat("chat-model-unknown-adapter", {"model": "main@999", "messages": USER}, 404, "999"),
    chat("chat-model-path", {"model": "main@../../etc/passwd", "messages": USER}, 404, "main@../../etc/passwd"),
    chat("chat-model-sql", {"model": "main' OR '1'='1", "messages": USER}, 404, "main' OR '1'='1"),
    chat("chat-model-empty", {"model": "", "messages": USER}, (400, 404), "model"),
    chat("chat-model-missing", {"messages": USER}, 400, "model: Field required"),
    chat("chat-model-not-string", {"model": 5, "messages": USER}, 400, "model"),
    chat("chat-messages-missing", {"model": "main"}, 400, "messages: Field required"),
    chat("chat-messages-empty", {"model": "main", "messages": []}, 400, "messages"),
    chat("chat-messages-not-list", {"model": "main", "messages": "hi"}, 400, "messages"),
    chat("chat-assistant-last", {"model": "main", "messages": USER + [{"role": "assistant", "content": "x"}]},
         400, "the last message is the assistant's"),
    chat("chat-role-unknown", {"model": "main", "messages": [{"role": "robot", "content": "x"}]}, 400,
         "messages.0.role"),
    chat("chat-content-missing", {"model": "main", "messages": [{"role": "user"}]}, 400, "messages.0.content"),
    chat("chat-content-null", {"model": "main", "messages": [{"role": "user", "content": None}]}, 400,
         "messages.0.content"),
    chat("chat-content-parts", {"model": "main", "messages": [{"role": "user", "content": [{"type": "text"}]}]},
         400, "messages.0.content"),
    raw("chat-content-lone-surrogate", "/v1/chat/completions",
        '{"model": "main", "messages": [{"role": "user", "content": "\\udc00"}]}', 400, "lone surrogate"),
    raw("chat-content-nul", "/v1/chat/completions",
        '{"model": "main", "messages": [{"role": "user", "content": "a\\u0000"}]}', 400, "NUL character"),
    chat("chat-max-tokens-zero", {"model": "main", "messages": USER, "max_tokens": 0}, 400, "max_tokens"),
    chat("chat-max-tokens-huge", {"model": "main", "messages": USER, "max_tokens": 10**6}, 400, "max_tokens"),
    chat("chat-max-tokens-text", {"model": "main", "messages": USER, "max_tokens": "ten"}, 400, "max_tokens"),
    chat("chat-max-completion-negative", {"model": "main", "messages": USER, "max_completion_tokens": -1}, 400,
         "max_completion_tokens"),
    chat("chat-n-too-many", {"model": "main", "messages": USER, "n": 9}, 400, "n:"),
    chat("chat-n-zero", {"model": "main", "messages": USER, "n": 0}, 400, "n:"),
    chat("chat-stop-five", {"model": "main", "messages": USER, "stop": ["a", "b", "c", "d", "e"]}, 400, "stop"),
    chat("chat-stop-empty", {"model": "main", "messages": USER, "stop": [""]}, 400, "stop"),
    chat("chat-stop-number", {"model": "main", "messages": USER, "stop": 7}, 400, "stop"),
    chat("chat-penalty-high", {"model": "main", "messages": USER, "presence_penalty": 9}, 400, "presence_penalty"),
    chat("chat-top-logprobs-alone", {"model": "main", "messages": USER, "top_logprobs": 3}, 400, "top_logprobs"),
    chat("chat-stream-n", {"model": "main", "messages": USER, "n": 2, "stream": True}, 400, "n > 1"),
    chat("chat-stream-not-bool", {"model": "main", "messages": USER, "stream": "maybe"}, 400, "stream"),
    chat("chat-temperature-text", {"model": "main", "messages": USER, "temperature": "hot"}, 400, "temperature"),
    chat("chat-metadata-list", {"model": "main", "messages": USER, "metadata": [1]}, 400, "metadata"),
    raw("chat-body-not-json", "/v1/chat/completions", "{", 400, "JSON"),
    raw("chat-body-string", "/v1/chat/completions", '"hi"', 400, "request"),
    raw("chat-body-empty", "/v1/chat/completions", "", 400, "request"),
    chat("chat-max-tokens-beyond-int64", {"model": "main", "messages": USER, "max_tokens": 10**20}, 400,
         "max_tokens"),
    chat("chat-prompt-over-limit", {"model": "main", "messages": [{"role": "user", "content": "x" * 2_000_000}]},
         400, "prompt"),  # today: a 2M-character generation
    chat("chat-foreign-origin", {"model": "main", "messages": USER}, 403, "rigin",
         headers={"origin": "http://evil.example"}),
    HttpCase("chat-text-plain", "POST", "/v1/chat/completions", 415, "send the body as JSON",
             content=json.dumps({"model": "main", "messages": USER}), headers={"content-type": "text/plain"}),
    HttpCase("models-post", "POST", "/v1/models", 405, "POST"),
    HttpCase("v1-route-unknown", "GET", "/v1/engines", 404, "nothing at GET /v1/engines"),
    # --- logged experiences ---------------------------------------------------------------------
    log("log-empty-object", {}, 400, "messages: Field required"),
    log("log-messages-empty", {"messages": [], "output": "x"}, 400, "messages"),
    log("log-output-missing", {"messages": USER}, 400, "output: Field required"),
    log("log-output-not-string", {"messages": USER, "output": 5}, 400, "output"),
    log("log-role-unknown", {"messages": [{"role": "robot", "content": "x"}], "output": "x"}, 400,
        "messages.0.role"),
    raw("log-output-nul", "/v1/experiences", '{"messages": [{"role": "user", "content": "x"}], "output": "\\u0000"}',
        400, "output: contains a NUL character at position 0"),
    raw("log-output-lone-surrogate", "/v1/experiences",
        '{"messages": [{"role": "user", "content": "x"}], "output": "\\ud800"}', 400, "lone surrogate"),
    raw("log-content-lone-surrogate", "/v1/experiences",
        '{"messages": [{"role": "user", "content": "\\udfff"}], "output": "x"}', 400, "messages.0.content"),
    log("log-output-over-limit", {"messages": USER, "output": "x" * 5000}, 400, "ingest.max_record_chars"),
    log("log-content-over-limit", {"messages": [{"role": "user", "content": "x" * 5000}], "output": "x"}, 400,
        "ingest.max_record_chars"),
    log("log-track-unknown", {"track": "nope", "messages": USER, "output": "x"}, 404, "nope"),
    log("log-track-sql", {"track": INJECT, "messages": USER, "output": "x"}, 404, "track"),
    log("log-adapter-unknown", {"adapter_id": 999, "messages": USER, "output": "x"}, (400, 404), "999"),
    log("log-adapter-text", {"adapter_id": "a1", "messages": USER, "output": "x"}, 400, "adapter_id"),
    log("log-latency-negative", {"latency_ms": -1, "messages": USER, "output": "x"}, 400, "latency_ms"),
    log("log-tokens-negative", {"prompt_tokens": -1, "messages": USER, "output": "x"}, 400, "prompt_tokens"),
    log("log-tokens-fraction", {"completion_tokens": 1.5, "messages": USER, "output": "x"}, 400,
        "completion_tokens"),
    log("log-tokens-beyond-int64", {"prompt_tokens": 10**20, "messages": USER, "output": "x"}, 400,
        "prompt_tokens"),
    log("log-metadata-list", {"metadata": [1, 2], "messages": USER, "output": "x"}, 400, "metadata"),
    raw("log-metadata-lone-surrogate", "/v1/experiences",
        '{"messages": [{"role": "user", "content": "x"}], "output": "x", "metadata": {"k": "\\ud800"}}',
        400, "metadata"),
    raw("log-metadata-nul", "/v1/experiences",
        '{"messages": [{"role": "user", "content": "x"}], "output": "x", "metadata": {"k": "a\\u0000"}}',
        400, "metadata: contains a NUL character"),
    raw("log-latency-nan", "/v1/experiences",
        '{"messages": [{"role": "user", "content": "x"}], "output": "x", "latency_ms": NaN}', 400, "latency_ms"),
    log("log-foreign-origin", {"messages": USER, "output": "x"}, 403, "rigin",
        headers={"origin": "http://evil.example"}),
    # --- feedback ---------------------------------------------------------------------------
    feedback("feedback-unknown-experience", {"thumbs": "up"}, 404, "999", experience="999"),
    feedback("feedback-id-text", {"thumbs": "up"}, 400, "experience_id", experience="abc"),
    feedback("feedback-id-beyond-int64", {"thumbs": "up"}, 400, "experience_id", experience="99999999999999999999"),
    feedback("feedback-thumbs-sideways", {"thumbs": "sideways"}, 400, "thumbs"),
    feedback("feedback-score-above-one", {"score": 1.5}, 400, "score"),
    feedback("feedback-score-negative", {"score": -0.1}, 400, "score"),
    feedback("feedback-score-text", {"score": "good"}, 400, "score"),
    raw("feedback-score-nan", "/v1/experiences/{experience}/feedback", '{"score": NaN}', 400, "score"),
    raw("feedback-score-infinity", "/v1/experiences/{experience}/feedback", '{"score": Infinity}', 400, "score"),
    feedback("feedback-nothing", {}, 400, "needs a score"),
    raw("feedback-correction-nul", "/v1/experiences/{experience}/feedback", '{"corrected_output": "\\u0000"}', 400,
        "corrected_output: contains a NUL character"),
    feedback("feedback-correction-over-limit", {"corrected_output": "x" * 5000}, 400, "ingest.max_record_chars"),
    HttpCase("experience-unknown", "GET", "/v1/experiences/999", 404, "999"),
    HttpCase("experience-id-text", "GET", "/v1/experiences/abc", 400, "experience_id"),
    HttpCase("experience-id-beyond-int64", "GET", "/v1/experiences/99999999999999999999", 400, "experience_id"),
    HttpCase("experience-delete-unknown", "DELETE", "/v1/experiences/999", 404, "999"),
    # --- what is accepted is kept exactly: hostile text is data, not SQL --------------------
    log("log-sql-injection-stored-as-text", {"messages": [{"role": "user", "content": INJECT}], "output": INJECT},
        201, stores=True),
    log("log-unicode-stored", {"messages": [{"role": "user", "content": "\u202eevil\u202c \U0001f600 \u0301"}],
                               "output": "\ufeff\u200b"}, 201, stores=True),
]


@pytest.mark.parametrize("case", as_params(CASES))
def test_hostile_openai_request(api, seeded, case):
    run_http_case(api, seeded, case)


def test_hostile_text_that_was_accepted_comes_back_unchanged(api, seeded):
    logged = api.post("/v1/experiences", json={"messages": [{"role": "user", "content": INJECT}], "output": INJECT})
    assert logged.status_code == 201, logged.text
    kept = api.get(f"/v1/experiences/{logged.json()['id']}").json()
    assert kept["messages"] == [{"role": "user", "content": INJECT}] and kept["output"] == INJECT
    assert api.get("/api/experiences", params={"limit": 1}).json()[0]["id"] == logged.json()["id"]

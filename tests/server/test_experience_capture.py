"""Experiences are checked as they arrive, as training data will be: a lone surrogate, a
NUL, an unknown role or text over ``ingest.max_record_chars`` is a 400 naming the field,
nothing is stored, and the experiences already there stay listable (issue 22)."""

from __future__ import annotations

import json

import pytest

from honed.store import StoreError

GOOD = [{"role": "user", "content": "ping"}]


def error_of(answer) -> str:
    """The error message, in the OpenAI shape under /v1/ and honed's elsewhere."""
    error = answer.json()["error"]
    return error["message"] if isinstance(error, dict) else error


def post_raw(client, path: str, body: str):
    """POST a JSON text as is (json= would refuse to encode a lone surrogate)."""
    return client.post(path, content=body.encode("utf-8", "surrogatepass"),
                       headers={"content-type": "application/json"})


@pytest.mark.parametrize("body, field, problem", [
    ('{"messages": [{"role": "user", "content": "a\\ud800b"}], "output": "x"}',
     "messages.0.content", "lone surrogate (U+D800) at position 1"),
    ('{"messages": [{"role": "user", "content": "ping"}], "output": "o\\u0000k"}',
     "output", "NUL character at position 1"),
    ('{"messages": [{"role": "robot", "content": "ping"}], "output": "x"}', "messages.0.role",
     "'system', 'user', 'assistant' or 'tool'"),
])
def test_bad_text_is_a_400_naming_the_field_and_nothing_is_stored(client, body, field, problem):
    before = client.get("/api/experiences").json()
    answer = post_raw(client, "/v1/experiences", body)
    assert answer.status_code == 400, answer.text
    message = error_of(answer)
    assert message.startswith(f"{field}: ") and problem in message, message
    assert client.get("/api/experiences").json() == before  # nothing stored, and the list still answers


def test_an_experience_over_the_record_limit_is_refused_and_so_is_a_huge_correction(client):
    big = "x" * 40_000  # over the default ingest.max_record_chars (32768)
    answer = client.post("/v1/experiences", json={"messages": GOOD, "output": big})
    assert answer.status_code == 400 and "at most 32768 (ingest.max_record_chars)" in error_of(answer)
    logged = client.post("/v1/experiences", json={"messages": GOOD, "output": "pong"}).json()
    refused = client.post(f"/v1/experiences/{logged['id']}/feedback", json={"corrected_output": big})
    assert refused.status_code == 400 and "ingest.max_record_chars" in error_of(refused)
    refused = post_raw(client, f"/v1/experiences/{logged['id']}/feedback", '{"corrected_output": "\\udfff"}')
    assert refused.status_code == 400 and "corrected_output: contains a lone surrogate" in error_of(refused)
    kept = client.get(f"/v1/experiences/{logged['id']}").json()
    assert kept["corrected_output"] is None and kept["feedback_at"] is None  # nothing was changed


def test_a_chat_with_a_lone_surrogate_is_refused_before_generating(client):
    answer = post_raw(client, "/v1/chat/completions",
                      json.dumps({"model": "main", "messages": [{"role": "user", "content": "x"}]})
                      .replace('"x"', '"\\ud834"'))
    assert answer.status_code == 400 and "lone surrogate" in error_of(answer)
    assert client.get("/api/experiences").json() == []


def test_the_store_refuses_what_the_api_would_for_every_caller(api_ws):
    store = api_ws.open_store()
    try:
        with pytest.raises(StoreError, match=r"messages\[0\]\.content: contains a NUL character at position 0"):
            store.add_experience(track="main", messages=[{"role": "user", "content": "\x00"}], output="x",
                                 source="logged")
        with pytest.raises(StoreError, match="metadata: not storable as JSON"):
            store.add_experience(track="main", messages=GOOD, output="x", source="logged", meta={"k": "\ud800"})
        assert store.list_experiences("main") == []
    finally:
        store.close()

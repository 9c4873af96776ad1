"""A teacher for the learning tests: a real HTTP server on loopback speaking the chat
completions protocol, whose behaviour the test sets (a good teacher, a wrong one, a slow
one, one answering garbage or errors). The end-to-end test uses a real honed app instead."""

from __future__ import annotations

import time
from dataclasses import dataclass

import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse

from honed.config import update_config_file
from honed.server.background import BackgroundServer
from honed.workspace import open_workspace

VERIFIER = "tests.learning.verifiers:reversal"


@dataclass
class TeacherBehaviour:
    mode: str = "good"  # good, wrong, slow, garbage, not_a_completion, error, empty
    calls: int = 0


def _completion(content: str) -> dict:
    return {"id": "chatcmpl-test", "object": "chat.completion", "created": int(time.time()), "model": "teacher",
            "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": content}}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}


def teacher_app(behaviour: TeacherBehaviour) -> FastAPI:
    app = FastAPI()

    @app.post("/v1/chat/completions")
    async def complete(request: Request):
        behaviour.calls += 1
        body = await request.json()
        word = body["messages"][-1]["content"].removeprefix("reverse: ").strip()
        mode = behaviour.mode
        if mode == "slow":
            import asyncio

            await asyncio.sleep(3)
            return _completion(word[::-1])
        if mode == "garbage":
            return PlainTextResponse("<html>502 bad gateway, or so</html>", status_code=200)
        if mode == "not_a_completion":
            return JSONResponse({"hello": "world"})
        if mode == "error":
            return JSONResponse({"error": {"message": "the teacher is overloaded"}}, status_code=500)
        if mode == "empty":
            return _completion("   ")
        if mode == "wrong":
            return _completion(word)  # not reversed: the verifier scores it 0
        return _completion(word[::-1])

    return app


@pytest.fixture
def teacher():
    """A running teacher and the knob that sets its behaviour."""
    behaviour = TeacherBehaviour()
    server = BackgroundServer(teacher_app(behaviour)).start()
    yield server, behaviour
    server.stop()


def learn_settings(teacher_url: str, **extra) -> dict:
    learn = {"threshold": 4, "cooldown_s": 0, "scorer": VERIFIER, "scorer_bar": 1.0,
             "teacher": {"base_url": teacher_url, "model": "teacher", "timeout_s": 1.0, "cooldown_s": 0,
                         "retry_after_s": 0, "batch_size": 50, "daily_budget": 100}}
    for key, value in extra.items():
        if key == "teacher":
            learn["teacher"].update(value)
        else:
            learn[key] = value
    return {"learn": learn}


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def learn_ws(request, make_workspace, tiny_random_base):
    """A workspace whose experiences the tests log by hand; store on SQLite or PostgreSQL."""
    url = "" if request.param == "sqlite" else request.getfixturevalue("pg_schema_url")
    ws = make_workspace(tiny_random_base, store_url=url)
    return ws


def configure_learning(ws, teacher_url: str, **extra):
    update_config_file(ws.root, learn_settings(teacher_url, **extra))
    return open_workspace(ws.root)


def log_reversals(store, words: list[str], *, correct: bool = False, thumbs: str | None = "down") -> list[int]:
    """Log one experience per word (answered wrongly unless ``correct``), with feedback."""
    ids = []
    for word in words:
        exp = store.add_experience(track="main", messages=[{"role": "user", "content": f"reverse: {word}"}],
                                   output=word[::-1] if correct else word, source="logged")
        if thumbs:
            store.add_feedback(exp.id, thumbs=thumbs)
        ids.append(exp.id)
    return ids

"""Requests generated from the app's own OpenAPI schema (schemathesis), valid and
invalid, against every JSON route on SQLite and PostgreSQL: none gets a 5xx, and every
error carries the ``error`` key.

The run is seeded (``derandomize``), so it finds the same inputs each time; each
operation gets ``HONED_FUZZ_EXAMPLES`` examples per generation mode (default 8; raise it
for a longer hunt). Left out: ``POST /v1/chat/completions`` (it generates with a model:
up to 8192 tokens per request; its refusals are in test_hostile_openai.py), ``GET /api/live``
(an endless event stream) and ``GET /metrics`` (Prometheus text). Control commands are
sent with ``wait_s`` of at most 0.1 s, since no daemon runs to answer them.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import pytest

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, Phase, given, settings  # noqa: E402
from hypothesis.errors import Unsatisfiable  # noqa: E402
from schemathesis import GenerationMode  # noqa: E402

from tests.hostile.conftest import BASE_URL  # noqa: E402

EXAMPLES = int(os.environ.get("HONED_FUZZ_EXAMPLES", "8"))
pytestmark = pytest.mark.slow  # about 15 s of schema analysis per store before the first request
LEFT_OUT = {
    ("POST", "/v1/chat/completions"): "generates with a model",
    ("GET", "/api/live"): "an endless event stream",
    ("GET", "/metrics"): "Prometheus text, not JSON",
}


@dataclass
class Finding:
    """One fuzzed request whose answer broke a rule, with what it sent."""

    operation: str
    status: int
    sent: dict
    answer: str

    def __str__(self) -> str:
        sent = {k: v for k, v in self.sent.items() if k in ("method", "url", "params", "json", "content") and v}
        return f"{self.operation}: {self.status} for {sent!r}: {self.answer[:300]}"


@dataclass
class FuzzRun:
    requests: int
    server_errors: list[Finding]
    unshaped_errors: list[Finding]


def _request_kwargs(case) -> dict:
    sent = case.as_transport_kwargs(base_url=BASE_URL)
    kwargs = {key: sent[key] for key in ("method", "url", "headers", "params") if key in sent}
    kwargs["headers"] = {k: v for k, v in kwargs.get("headers", {}).items() if k.lower() != "connection"}
    if "json" in sent:
        kwargs["json"] = sent["json"]
    if "data" in sent:
        kwargs["content" if isinstance(sent["data"], (bytes, str)) else "data"] = sent["data"]
    params = kwargs.get("params") or {}
    if "wait_s" in params:  # nothing answers a control command here; don't sit out its wait
        with contextlib.suppress(TypeError, ValueError):
            params["wait_s"] = min(float(params["wait_s"]), 0.1)
    return kwargs


def _shaped(answer) -> bool:
    try:
        body = answer.json()
    except ValueError:
        return False
    return isinstance(body, dict) and "error" in body


def _fuzz(api, operation, mode, run: FuzzRun) -> None:
    """Send ``EXAMPLES`` requests of ``operation`` generated in ``mode``; record what breaks a rule."""

    @settings(max_examples=EXAMPLES, derandomize=True, database=None, deadline=None,
              phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
    @given(operation.as_strategy(generation_mode=mode))
    def send(case):
        kwargs = _request_kwargs(case)
        answer = api.request(**kwargs)
        run.requests += 1
        if answer.status_code >= 500:
            run.server_errors.append(Finding(operation.label, answer.status_code, kwargs, answer.text))
        elif answer.status_code >= 400 and not _shaped(answer):
            run.unshaped_errors.append(Finding(operation.label, answer.status_code, kwargs, answer.text))

    with contextlib.suppress(Unsatisfiable):  # an operation without input has nothing to make invalid
        send()


@pytest.fixture(scope="module")
def fuzz_run(api, seeded) -> FuzzRun:
    """Every JSON operation of the app, fuzzed with valid and invalid input."""
    schema = schemathesis.openapi.from_dict(api.app.openapi())
    run = FuzzRun(0, [], [])
    for result in schema.get_all_operations():
        operation = result.ok()
        if (operation.method.upper(), operation.path) not in LEFT_OUT:
            for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
                _fuzz(api, operation, mode, run)
    assert api.get("/api/health").status_code == 200
    return run


def test_fuzzed_requests_never_get_a_server_error(fuzz_run):
    assert fuzz_run.requests > 100
    assert not fuzz_run.server_errors, "\n".join(map(str, fuzz_run.server_errors[:20]))


def test_every_fuzzed_error_carries_the_error_key(fuzz_run):
    assert not fuzz_run.unshaped_errors, f"{len(fuzz_run.unshaped_errors)} of {fuzz_run.requests}:\n" + \
        "\n".join(map(str, fuzz_run.unshaped_errors[:20]))

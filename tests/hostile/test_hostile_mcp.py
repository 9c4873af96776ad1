"""Hostile tool calls to ``honed mcp``, on SQLite and PostgreSQL: each is a tool error
carrying honed's message (never the SDK's generic one), nothing is stored, and the
server answers the next call. The server runs in-process behind the SDK's own client;
tests/mcp drives the real subprocess over stdio."""

from __future__ import annotations

import anyio
import pytest

from tests.hostile.cases import McpCase, as_params, assert_store

USER = [{"role": "user", "content": "ping"}]
INJECT = "x'; DROP TABLE jobs; --"

CASES = [
    # --- reading ---------------------------------------------------------------------------
    McpCase("get-job-unknown", "get_job", {"job_id": 999}, "no job 999"),
    McpCase("get-job-text", "get_job", {"job_id": "abc"}, "job_id"),
    McpCase("get-job-beyond-int64", "get_job", {"job_id": 10**20}, "no job 100000000000000000000"),
    McpCase("list-jobs-bad-state", "list_jobs", {"states": ["bogus"]}, "states"),
    McpCase("list-jobs-limit-zero", "list_jobs", {"limit": 0}, "limit"),
    McpCase("list-datasets-track-sql", "list_datasets", {"track": INJECT}, is_error=False),
    McpCase("learn-status-unknown-track", "learn_status", {"track": "nope"}, "nope"),
    McpCase("unknown-tool", "drop_tables", {}, "drop_tables"),
    # --- queueing -----------------------------------------------------------------------------
    McpCase("train-no-datasets", "train_model", {"datasets": []}, "datasets"),
    McpCase("train-relative-path", "train_model", {"datasets": ["data.jsonl"]}, "give a dataset id or an absolute"),
    McpCase("train-parent-path", "train_model", {"datasets": ["../../etc/passwd"]}, "absolute path"),
    McpCase("train-unknown-dataset", "train_model", {"datasets": [999]}, "999"),
    McpCase("train-missing-file", "train_model", {"datasets": ["/nonexistent/none.jsonl"]},
            "is outside the workspace and [mcp] allowed_dirs"),  # whether it exists is not said
    McpCase("train-system-file", "train_model", {"datasets": ["/etc/passwd"]}, "allowed"),
    McpCase("train-directory", "train_model", {"datasets": ["/tmp"]}, "/tmp"),
    McpCase("train-bad-priority", "train_model", {"datasets": [1], "priority": "urgent"}, "priority"),
    McpCase("train-unknown-track", "train_model", {"datasets": [1], "track": "nope"}, "nope"),
    McpCase("train-track-sql", "train_model", {"datasets": [1], "track": INJECT}, "track"),
    McpCase("train-negative-lr", "train_model", {"datasets": [1], "overrides": {"train": {"lr": -1}}}, "lr"),
    McpCase("train-unknown-setting", "train_model", {"datasets": [1], "overrides": {"nonsense": {"x": 1}}},
            "nonsense"),
    # --- experiences and feedback --------------------------------------------------------------
    McpCase("log-no-messages", "log_experience", {"messages": [], "output": "x"}, "messages"),
    McpCase("log-role-unknown", "log_experience", {"messages": [{"role": "robot", "content": "x"}], "output": "x"},
            "role"),
    McpCase("log-output-nul", "log_experience", {"messages": USER, "output": "a\x00"}, "NUL character"),
    McpCase("log-output-over-limit", "log_experience", {"messages": USER, "output": "x" * 5000},
            "ingest.max_record_chars"),
    McpCase("log-unknown-track", "log_experience", {"messages": USER, "output": "x", "track": "nope"}, "nope"),
    McpCase("log-unknown-adapter", "log_experience", {"messages": USER, "output": "x", "adapter_id": 999}, "999"),
    McpCase("feedback-unknown", "give_feedback", {"experience_id": 999, "score": 0.5}, "no experience 999"),
    McpCase("feedback-thumbs-sideways", "give_feedback", {"experience_id": 1, "thumbs": "sideways"}, "thumbs"),
    McpCase("feedback-score-above-one", "give_feedback", {"experience_id": 1, "score": 2}, "score"),
    McpCase("feedback-nothing", "give_feedback", {"experience_id": 1}, "needs a score"),
    McpCase("feedback-correction-nul", "give_feedback", {"experience_id": 1, "corrected_output": "\x00"},
            "NUL character"),
    McpCase("learn-run-now-nothing-ready", "learn_run_now", {"teacher": False}, "no experience is ready"),
    McpCase("learn-run-now-unknown-track", "learn_run_now", {"teacher": False, "track": "nope"}, "nope"),
    # --- control and deployment ---------------------------------------------------------------
    McpCase("control-bad-command", "control_job", {"command": "explode", "job_id": 2}, "command"),
    McpCase("control-cancelled-job", "control_job", {"command": "pause", "job_id": 1, "wait_s": 0}, "cancelled"),
    McpCase("control-unknown-job", "control_job", {"command": "pause", "job_id": 999, "wait_s": 0}, "no job 999"),
    McpCase("control-wait-negative", "control_job", {"command": "pause", "job_id": 2, "wait_s": -1}, "wait_s"),
    McpCase("deploy-unknown", "deploy", {"adapter_id": 999}, "999"),
    McpCase("deploy-rejected", "deploy", {"adapter_id": 2}, "was rejected"),
    McpCase("approve-not-awaiting", "approve", {"adapter_id": 1}, "approval"),
    McpCase("reject-rejected", "reject", {"adapter_id": 2}, "is rejected"),
    McpCase("rollback-never-deployed", "rollback", {}, "has never been deployed"),
    McpCase("rollback-unknown-track", "rollback", {"track": "nope"}, "nope"),
]


async def _call(server, tool: str, args: dict):
    from mcp import Client

    async with Client(server) as client:
        return await client.call_tool(tool, args)


@pytest.fixture(scope="module")
def mcp_server(seeded):
    from honed.mcp.server import create_server

    return create_server(seeded.ws)


@pytest.mark.parametrize("case", as_params(CASES))
def test_hostile_mcp_call(mcp_server, seeded, case):
    before = seeded.fingerprint()
    result = anyio.run(_call, mcp_server, case.tool, case.args)
    text = " ".join(getattr(part, "text", "") for part in result.content)
    assert result.is_error == case.is_error, f"{case.id}: {text[:500]}"
    if case.is_error:
        assert case.message, f"{case.id}: a refusal must say which message it expects"
        assert case.message in text, f"{case.id}: {text!r} lacks {case.message!r}"
        assert "Traceback" not in text, f"{case.id}: {text!r}"
    assert str(seeded.ws.root) not in text, f"{case.id}: the answer names a server path"
    assert_store(before, seeded.fingerprint(), case.stores, case.id)
    status = anyio.run(_call, mcp_server, "status", {})
    assert not status.is_error, f"after {case.id}: {status.content}"

"""``honed mcp`` over stdio, driven by the SDK's own client: what it offers, how its
errors read, and experiences logged and judged through it landing in the store."""

from __future__ import annotations

import json
import subprocess
import sys

import anyio
from mcp import MCPError

from tests.mcp.conftest import mcp_session

TOOLS = {"status", "list_jobs", "get_job", "list_datasets", "list_adapters", "train_model", "control_job",
         "deploy", "approve", "reject", "rollback", "log_experience", "give_feedback", "learn_status",
         "learn_run_now", "list_experiences", "exclude_experience", "include_experience", "delete_experience"}


def test_lists_tools_and_resources(daemon_ws, tmp_path):
    async def session():
        async with mcp_session(daemon_ws.root, tmp_path / "mcp.err") as client:
            tools = {t.name: t for t in (await client.list_tools()).tools}
            resources = [r.uri for r in (await client.list_resources()).resources]
            templates = [t.uri_template for t in (await client.list_resource_templates()).resource_templates]
            status = json.loads((await client.read_resource("honed://status")).contents[0].text)
            called = await client.call_tool("status", {})
            return tools, resources, templates, status, called

    tools, resources, templates, status, called = anyio.run(session)
    assert set(tools) == TOOLS
    assert all(tool.description for tool in tools.values())
    assert tools["list_jobs"].annotations.read_only_hint and tools["deploy"].annotations.destructive_hint
    assert tools["delete_experience"].annotations.destructive_hint
    # The schema tells the model what is allowed before it calls.
    assert tools["control_job"].input_schema["properties"]["command"]["enum"] == [
        "pause", "resume", "stop", "skip", "cancel"]
    assert [str(uri) for uri in resources] == ["honed://status"]
    assert set(templates) == {"honed://jobs/{job_id}/events", "honed://runs/{run_id}/metrics{?kind}"}
    assert status["workspace"] == daemon_ws.root.name and status["daemon"] == {"up": False}
    assert status["tracks"] == [{"name": "main", "base_version": 0, "deployed": None}]
    assert not called.is_error and called.structured_content["tracks"] == status["tracks"]


def test_errors_are_tool_errors_with_honeds_message(daemon_ws, tmp_path):
    async def session():
        async with mcp_session(daemon_ws.root, tmp_path / "mcp.err") as client:
            answers = {
                "unknown job": await client.call_tool("get_job", {"job_id": 999}),
                "bad thumbs": await client.call_tool("give_feedback", {"experience_id": 1, "thumbs": "sideways"}),
                "no experience": await client.call_tool("give_feedback", {"experience_id": 999, "score": 0.5}),
                "nothing running": await client.call_tool("control_job", {"command": "pause"}),
                "never deployed": await client.call_tool("rollback", {}),
                "unknown adapter": await client.call_tool("deploy", {"adapter_id": 7}),
                "relative path": await client.call_tool("train_model", {"datasets": ["data.jsonl"]}),
                "unknown dataset": await client.call_tool("train_model", {"datasets": [42]}),
                "bad override": await client.call_tool("train_model", {"datasets": [1],
                                                                       "overrides": {"train": {"lr": -1}}}),
                "nothing to learn": await client.call_tool("learn_run_now", {"teacher": False}),
                "learn status": await client.call_tool("learn_status", {}),
            }
            try:
                await client.read_resource("honed://jobs/999/events")
            except MCPError as exc:
                answers["unknown job's events"] = exc
            try:
                await client.read_resource("honed://runs/nope/metrics")
            except MCPError as exc:
                answers["unknown run's metrics"] = exc
            answers["after all that"] = await client.call_tool("list_jobs", {})
            return answers

    answers = anyio.run(session)
    expected = {
        "unknown job": "no job 999",
        "bad thumbs": "Input should be 'up' or 'down'",
        "no experience": "no experience 999",
        "nothing running": "no job is running or evaluating",
        "never deployed": "track 'main' has never been deployed",
        "unknown adapter": "no adapter 7",
        "relative path": "give a dataset id or an absolute path",
        "unknown dataset": "no dataset 42",
        "bad override": "train.lr",
        "nothing to learn": "no experience is ready to train on",
    }
    for case, message in expected.items():
        answer = answers[case]
        assert answer.is_error and message in answer.content[0].text, (case, answer.content)
        assert "Traceback" not in answer.content[0].text
    learning = answers["learn status"]
    assert not learning.is_error
    assert learning.structured_content["why_not"] == "0 of 50 experiences ready (learn.threshold)"
    assert "no job 999" in str(answers["unknown job's events"])
    assert "unknown run id 'nope'" in str(answers["unknown run's metrics"])
    # The server is still there and well after every refusal.
    assert not answers["after all that"].is_error
    assert answers["after all that"].structured_content == {"result": []}


def test_logged_experience_and_its_feedback_reach_the_store(daemon_ws, tmp_path):
    messages = [{"role": "system", "content": "Answer tersely."}, {"role": "user", "content": "2+2?"}]

    async def session():
        async with mcp_session(daemon_ws.root, tmp_path / "mcp.err") as client:
            logged = await client.call_tool("log_experience", {"messages": messages, "output": "5",
                                                               "metadata": {"app": "calculator"}})
            experience_id = logged.structured_content["id"]
            judged = await client.call_tool("give_feedback", {"experience_id": experience_id, "thumbs": "down",
                                                              "score": 0.0, "corrected_output": "4"})
            return logged, judged

    logged, judged = anyio.run(session)
    assert not logged.is_error and not judged.is_error
    assert judged.structured_content["thumbs"] == "down"
    with daemon_ws.open_store() as store:
        experience = store.get_experience(logged.structured_content["id"])
    assert experience.messages == messages and experience.output == "5"
    assert experience.source == "logged" and experience.track == "main" and experience.meta == {"app": "calculator"}
    assert (experience.thumbs, experience.score, experience.corrected_output) == ("down", 0.0, "4")
    assert experience.feedback_at is not None


def test_the_server_module_does_not_import_torch():
    code = "import sys, honed.mcp.server, honed.cli; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_experiences_are_excluded_included_and_deleted(daemon_ws, tmp_path):
    with daemon_ws.open_store() as store:
        ids = [store.add_experience(track="main", messages=[{"role": "user", "content": w}], output=w[::-1],
                                    source="logged").id for w in ("abc", "lora")]

    async def session():
        async with mcp_session(daemon_ws.root, tmp_path / "mcp.err") as client:
            call = client.call_tool
            return {
                "exclude": await call("exclude_experience", {"experience_id": ids[0], "reason": "private"}),
                "excluded": await call("list_experiences", {"excluded": True}),
                "learn": await call("learn_status", {}),
                "include": await call("include_experience", {"experience_id": ids[0]}),
                "delete": await call("delete_experience", {"experience_id": ids[1]}),
                "all": await call("list_experiences", {}),
                "unknown exclude": await call("exclude_experience", {"experience_id": 999, "reason": "x"}),
                "unknown delete": await call("delete_experience", {"experience_id": 999}),
                "blank reason": await call("exclude_experience", {"experience_id": ids[0], "reason": " "}),
            }

    answers = anyio.run(session)
    for case in ("exclude", "excluded", "learn", "include", "delete", "all"):
        assert not answers[case].is_error, (case, answers[case].content[0].text)
    assert answers["exclude"].structured_content["excluded_reason"] == "private"
    assert [e["id"] for e in answers["excluded"].structured_content["result"]] == [ids[0]]
    assert answers["learn"].structured_content["excluded"] == 1
    assert answers["include"].structured_content["excluded_reason"] is None
    assert answers["delete"].structured_content == {"deleted": ids[1], "track": "main", "trained_run_id": None,
                                                    "batch_id": None}
    assert [e["id"] for e in answers["all"].structured_content["result"]] == [ids[0]]
    for case, message in (("unknown exclude", "no experience 999"), ("unknown delete", "no experience 999"),
                          ("blank reason", "reason: say why")):
        assert answers[case].is_error and message in answers[case].content[0].text, case
    with daemon_ws.open_store() as store:
        assert [e.id for e in store.list_experiences("main")] == [ids[0]]
        assert store.get_experience(ids[0]).excluded_reason is None

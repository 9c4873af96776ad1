"""What an MCP client may make the server read, and which paths come back (issue 22).

``train_model`` takes only files under the workspace or ``[mcp] allowed_dirs``, judged
after links and ``..``: a refused file is never read, so none of its bytes reach the
workspace (the reject file of a lenient ingest was the way out). Answers name the
workspace's files by workspace-relative names, never by where they lie on the server."""

from __future__ import annotations

import json

import anyio

from honed.config import update_config_file
from tests.mcp.conftest import mcp_session

CANARY = "CANARY-not-for-the-workspace"
GOOD_LINE = '{"prompt": "2+2=", "completion": "4"}\n'


def _secret(folder) -> object:
    """A file outside the workspace: one good line and one bad line holding the canary."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "secret.jsonl"
    path.write_text(GOOD_LINE + f"{CANARY} root:x:0:0\n")
    return path


def _canary_in_workspace(root) -> list[str]:
    """The workspace's own files (not the test's links out of it) holding the canary."""
    return [str(p) for p in root.rglob("*")
            if p.is_file() and not p.is_symlink() and CANARY.encode() in p.read_bytes()]


def test_paths_outside_the_workspace_and_allowed_dirs_are_refused_unread(daemon_ws, tmp_path):
    update_config_file(daemon_ws.root, {"ingest": {"mode": "lenient"}})
    root = daemon_ws.root
    secret = _secret(tmp_path / "outside")
    (root / "link.jsonl").symlink_to(secret)
    (root / "linked-dir").symlink_to(secret.parent, target_is_directory=True)
    (root / "data").mkdir()
    inside = root / "data" / "good.jsonl"
    inside.write_text(GOOD_LINE)
    cases = {
        "absolute": str(secret),
        "dot-dot": f"{root}/inbox/../../outside/secret.jsonl",
        "link": str(root / "link.jsonl"),
        "linked dir": str(root / "linked-dir" / "secret.jsonl"),
        "missing": str(tmp_path / "outside" / "no-such.jsonl"),
        "system file": "/etc/passwd",
    }

    async def session():
        async with mcp_session(root, tmp_path / "mcp.err") as client:
            answers = {case: await client.call_tool("train_model", {"datasets": [path]})
                       for case, path in cases.items()}
            # One refused path and one good one: nothing is added or queued.
            answers["mixed"] = await client.call_tool("train_model", {"datasets": [str(inside), str(secret)]})
            return answers

    answers = anyio.run(session)
    for case, answer in answers.items():
        text = answer.content[0].text
        assert answer.is_error, (case, text)
        assert "is outside the workspace and [mcp] allowed_dirs" in text, (case, text)
        assert "add its directory to [mcp] allowed_dirs in honed.toml" in text, (case, text)
    assert "through a symbolic link" in answers["link"].content[0].text
    assert "through a symbolic link" in answers["linked dir"].content[0].text
    # A missing file reads like an existing one: a refusal tells nothing of what exists.
    assert "no such file" not in answers["missing"].content[0].text
    with daemon_ws.open_store() as store:
        assert store.list_datasets() == [] and store.list_jobs() == []
    assert _canary_in_workspace(root) == []


def test_an_allowed_dir_works_and_answers_hold_no_server_paths(daemon_ws, tmp_path):
    allowed = tmp_path / "shared-data"
    allowed.mkdir()
    data = allowed / "mixed.jsonl"
    data.write_text(GOOD_LINE * 3 + "not json at all\n")
    secret = _secret(tmp_path / "outside")
    (allowed / "escape.jsonl").symlink_to(secret)  # a link in an allowed dir to somewhere else: refused
    update_config_file(daemon_ws.root, {"ingest": {"mode": "lenient"}, "mcp": {"allowed_dirs": [str(allowed)]}})
    root = daemon_ws.root

    async def session():
        async with mcp_session(root, tmp_path / "mcp.err") as client:
            queued = await client.call_tool("train_model", {"datasets": [str(data)]})
            escape = await client.call_tool("train_model", {"datasets": [str(allowed / "escape.jsonl")]})
            job_id = queued.structured_content["id"]
            others = {"status": await client.call_tool("status", {}),
                      "job": await client.call_tool("get_job", {"job_id": job_id}),
                      "datasets": await client.call_tool("list_datasets", {}),
                      "jobs": await client.call_tool("list_jobs", {})}
            events = (await client.read_resource(f"honed://jobs/{job_id}/events")).contents[0].text
            status = (await client.read_resource("honed://status")).contents[0].text
            return queued, escape, others, events, status

    queued, escape, others, events, status = anyio.run(session)
    assert not queued.is_error, queued.content[0].text
    [added] = queued.structured_content["added"]
    assert added.startswith(f"{data}: added as dataset ") and "1 bad lines kept aside in datasets/main/" in added
    assert escape.is_error and "outside the workspace and [mcp] allowed_dirs" in escape.content[0].text
    assert _canary_in_workspace(root) == []

    answers = [json.dumps(queued.structured_content), events, status]
    answers += [json.dumps(a.structured_content) for a in others.values()]
    for text in answers:
        assert str(root) not in text and str(root.resolve()) not in text, text
    assert others["status"].structured_content["workspace"] == root.name
    assert json.loads(status)["workspace"] == root.name

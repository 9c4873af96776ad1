"""The whole loop from an MCP client: the SDK's client queues a job through ``honed mcp``,
a real daemon trains, evaluates and gates it on the tiny model, and the client follows
it, reads its metrics and events, approves, rolls back and deploys, each switch visible
in the store."""

from __future__ import annotations

import json

import anyio

from tests.daemon.conftest import configure, synth
from tests.mcp.conftest import mcp_session

FINAL_STATES = ("succeeded", "rejected", "failed", "cancelled")


async def ok(client, tool: str, **arguments) -> dict:
    """Call ``tool``; its structured answer, failing the test on a tool error."""
    answer = await client.call_tool(tool, arguments)
    assert not answer.is_error, f"{tool}: {answer.content[0].text}"
    return answer.structured_content


async def refused(client, tool: str, **arguments) -> str:
    """Call ``tool``, which must answer with a tool error; its message."""
    answer = await client.call_tool(tool, arguments)
    assert answer.is_error, f"{tool} was expected to refuse, answered {answer.structured_content}"
    return answer.content[0].text


async def read_json(client, uri: str):
    return json.loads((await client.read_resource(uri)).contents[0].text)


def test_the_sdk_client_drives_a_job_from_queue_to_deploy(daemon_ws, start_daemon, tmp_path):
    ws = configure(daemon_ws, {"gates": {"require_approval": True}})
    (ws.root / "data").mkdir()
    data = synth(ws.root / "data" / "reversal.jsonl", 48)  # an MCP client may give files under the workspace
    store = ws.open_store()
    start_daemon(ws)
    seen: dict = {}

    async def session():
        async with mcp_session(ws.root, tmp_path / "mcp.err") as client:
            job = await ok(client, "train_model", datasets=[str(data)], priority="high",
                           overrides={"train": {"lr": 2e-3}})
            assert job["state"] == "queued" and job["source"] == "mcp" and job["overrides"] == {"train": {"lr": 2e-3}}
            assert job["added"] == [f"data/reversal.jsonl: added as dataset {job['dataset_ids'][0]}: 48 records"]
            with anyio.fail_after(120):
                while (done := await ok(client, "get_job", job_id=job["id"]))["state"] not in FINAL_STATES:
                    await anyio.sleep(0.3)
            seen["job"] = done
            seen["metrics"] = await read_json(client, f"honed://runs/{done['run_id']}/metrics")
            seen["events"] = await read_json(client, f"honed://jobs/{job['id']}/events")
            adapter = done["adapters"][0]["id"]
            seen["listed"] = (await ok(client, "list_adapters"))["result"]

            seen["deploy before approval"] = await refused(client, "deploy", adapter_id=adapter)
            seen["approved"] = await ok(client, "approve", adapter_id=adapter)
            seen["live after approval"] = store.deployed_adapter("main")
            seen["rolled back"] = await ok(client, "rollback")
            seen["live after rollback"] = store.deployed_adapter("main")
            seen["deploy retired"] = await refused(client, "deploy", adapter_id=adapter)
            seen["forced"] = await ok(client, "deploy", adapter_id=adapter, force=True)
            seen["status"] = await read_json(client, "honed://status")

    anyio.run(session)
    job = seen["job"]
    assert job["state"] == "succeeded", [e["message"] for e in seen["events"]]
    adapter = job["adapters"][0]
    assert adapter["state"] == "awaiting_approval" and adapter["verdict"]["passed"]
    assert job["checkpoints"] and all(c["complete"] for c in job["checkpoints"])
    assert [a["id"] for a in seen["listed"]] == [adapter["id"]]

    # The run's curve, as the store holds it: a row per step with its loss.
    metrics = seen["metrics"]
    assert metrics["run"] == job["run_id"] and metrics["kind"] == "train"
    assert [r["step"] for r in metrics["rows"]] == list(range(1, len(metrics["rows"]) + 1))
    assert len(metrics["rows"]) >= 5 and all(isinstance(r["loss"], float) for r in metrics["rows"])
    assert metrics["rows"] == json.loads(json.dumps(store.get_metrics(job["run_id"])))

    events = seen["events"]
    assert events[0]["kind"] == "queued" and "queued by mcp" in events[0]["message"]
    assert f"awaits approval: 'honed approve {adapter['id']}'" in events[-1]["message"]
    assert [e["id"] for e in events] == [e.id for e in store.job_events(job["id"])]

    assert "awaits approval" in seen["deploy before approval"]
    approved = seen["approved"]
    assert (approved["action"], approved["adapter"], approved["previous"]) == ("approve", adapter["id"], None)
    assert seen["live after approval"].id == adapter["id"]

    rolled_back = seen["rolled back"]
    assert (rolled_back["action"], rolled_back["adapter"]) == ("rollback", None)
    assert seen["live after rollback"] is None  # the bare base again

    assert f"adapter {adapter['id']} is retired" in seen["deploy retired"]
    forced = seen["forced"]
    assert (forced["action"], forced["adapter"]) == ("deploy", adapter["id"]) and forced["hooks_ok"]
    live = store.deployed_adapter("main")
    assert live.id == adapter["id"] and live.state == "deployed"
    history = store.list_deployments("main")
    assert [d.action for d in history] == ["deploy", "rollback", "approve"]
    assert history[0].reason == "deployed over MCP (forced)"
    assert (ws.root / "deployments" / "main" / "current").resolve() == ws.root.joinpath(live.path).resolve()
    assert seen["status"]["tracks"][0]["deployed"] == {"adapter": adapter["id"], "name": live.name}
    store.close()

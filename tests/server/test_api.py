"""The HTTP API against a real server on a temporary workspace, on SQLite and PostgreSQL:
what a program that steers honed relies on."""

from __future__ import annotations

import json
import threading

import httpx

from honed.config import update_config_file
from honed.workspace import open_workspace
from tests.daemon.conftest import synth


def _upload(client, path, name=None, **params):
    return client.post("/api/datasets", params={"name": name or path.name, **params}, content=path.read_bytes())


def test_status_and_openapi(client):
    status = client.get("/api/status").json()
    assert status["daemon"]["up"] is False
    assert [t["name"] for t in status["tracks"]] == ["main"]
    schema = client.get("/openapi.json").json()
    for path in ("/api/status", "/api/jobs", "/api/jobs/{job_id}/{command}", "/api/datasets",
                 "/api/runs/{run_id}/metrics", "/api/adapters/{adapter_id}/deploy", "/api/tracks/{track}/rollback",
                 "/api/live"):
        assert path in schema["paths"], path


def test_openapi_names_the_shapes_of_jobs_runs_and_adapters(client):
    """A client generated from /openapi.json gets typed jobs, runs and adapters, not bare objects."""
    schema = client.get("/openapi.json").json()
    components = schema["components"]["schemas"]

    def answer(method: str, path: str) -> dict:
        return schema["paths"][path][method]["responses"]["200"]["content"]["application/json"]["schema"]

    assert answer("get", "/api/jobs") == {"type": "array", "items": {"$ref": "#/components/schemas/JobInfo"},
                                          "title": "Response List Jobs Api Jobs Get"}
    assert answer("patch", "/api/jobs/{job_id}") == {"$ref": "#/components/schemas/JobInfo"}
    for method, path, name, extra in [("get", "/api/jobs/{job_id}", "JobDetail", {"checkpoints", "adapters"}),
                                      ("get", "/api/runs/{run_id}", "RunDetail", {"checkpoints", "manifest"}),
                                      ("get", "/api/adapters/{adapter_id}", "AdapterDetail", {"deployments"})]:
        assert answer(method, path) == {"$ref": f"#/components/schemas/{name}"}
        assert extra <= components[name]["properties"].keys(), name
    job = components["JobInfo"]["properties"]
    assert job["state"] == {"$ref": "#/components/schemas/JobState"}
    assert job["created_at"] == {"type": "string", "format": "date-time", "title": "Created At"}
    assert "queued" in components["JobState"]["enum"]
    # Server paths stay on the server, in the answers and in the schema.
    assert "path" not in components["Adapter"]["properties"]
    assert "adapter_path" not in components["Run"]["properties"]
    assert "stored_path" not in components["Dataset"]["properties"]


def test_upload_queue_and_control_a_job(client, tmp_path):
    data = synth(tmp_path / "reversal.jsonl", 40)
    answer = _upload(client, data, queue="true", priority="low")
    assert answer.status_code == 201, answer.text
    body = answer.json()
    assert body["accepted"] and body["records"] == 40 and body["dataset"]["name"] == "reversal"
    job = body["job"]
    assert job["state"] == "queued" and job["priority"] == "low" and job["source"] == "upload"

    # The same bytes again: recognised by hash, nothing new ingested.
    again = _upload(client, data).json()
    assert again["already_known"] and again["dataset"]["id"] == body["dataset"]["id"]
    assert [d["id"] for d in client.get("/api/datasets").json()] == [body["dataset"]["id"]]

    second = client.post("/api/jobs", json={"datasets": [body["dataset"]["id"]], "priority": "high"})
    assert second.status_code == 201 and second.json()["priority"] == "high"
    assert [j["id"] for j in client.get("/api/jobs").json()] == [second.json()["id"], job["id"]]

    moved = client.patch(f"/api/jobs/{job['id']}", json={"priority": "high"}).json()
    assert moved["priority"] == "high"
    def queue_states():
        return {j["job"]: j["state"] for j in client.get("/api/status").json()["queue"]}

    assert queue_states()[job["id"]] == "queued"
    paused = client.post(f"/api/jobs/{job['id']}/pause")
    assert paused.status_code == 200 and paused.json()["reached"] and paused.json()["job"]["state"] == "paused"
    assert queue_states()[job["id"]] == "paused"  # a change made through the server shows at once
    resumed = client.post(f"/api/jobs/{job['id']}/resume").json()
    assert resumed["job"]["state"] == "queued"
    removed = client.delete(f"/api/jobs/{job['id']}").json()
    assert removed["state"] == "cancelled"
    kinds = [e["kind"] for e in client.get(f"/api/jobs/{job['id']}/events").json()]
    assert kinds[0] == "queued" and "paused" in kinds and kinds[-1] == "cancelled"
    # A finished job cannot be resumed: 409 with the reason.
    refused = client.post(f"/api/jobs/{job['id']}/resume")
    assert refused.status_code == 409 and "cancelled" in refused.json()["error"]


def test_bad_uploads_are_explained_and_leave_nothing_behind(client, api_ws, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a", "completion": "b"}\nnot json\n{"prompt": 3}\n')
    answer = _upload(client, bad)
    assert answer.status_code == 422
    body = answer.json()
    assert "rejected" in body["error"] and [e["line"] for e in body["errors"]] == [2, 3]
    assert client.get("/api/datasets").json() == []

    for name in ("../../x", ".hidden", "a/b.jsonl", "x" * 200):
        refused = _upload(client, bad, name=name)
        assert refused.status_code == 400 and "dataset name" in refused.json()["error"], name
    assert not list(api_ws.root.rglob("x"))


def test_upload_limit(api_ws, serve, tmp_path):
    update_config_file(api_ws.root, {"server": {"upload_max_mb": 0.01}})  # 10,485 bytes
    ws = open_workspace(api_ws.root)
    server = serve(ws)
    big = synth(tmp_path / "big.jsonl", 2000)
    with httpx.Client(base_url=server.url, timeout=30) as client:
        declared = client.post("/api/datasets", params={"name": "big.jsonl"}, content=big.read_bytes())
        assert declared.status_code == 413 and "over the limit" in declared.json()["error"]

        def chunks():  # no Content-Length: the server counts while it streams to disk
            data = big.read_bytes()
            for i in range(0, len(data), 4096):
                yield data[i:i + 4096]

        streamed = client.post("/api/datasets", params={"name": "big.jsonl"}, content=chunks())
        assert streamed.status_code == 413 and "stopped" in streamed.json()["error"]
    uploads = ws.datasets_dir / "uploads"
    assert not [p for p in uploads.rglob("*") if p.is_file()], "a partial upload stayed behind"
    assert not list(uploads.glob("main/*")), "an empty upload folder stayed behind"


def test_errors_are_json_that_says_what_to_fix(client):
    missing = client.get("/api/jobs/999")
    assert missing.status_code == 404 and missing.json() == {"error": "no job 999"}
    assert client.get("/api/runs/nope/metrics").status_code == 404
    assert client.get("/api/adapters/5").status_code == 404
    bad_state = client.get("/api/jobs", params={"state": "sleeping"})
    assert bad_state.status_code == 400 and "allowed" in bad_state.json()["error"]
    empty = client.post("/api/jobs", json={"datasets": []})
    assert empty.status_code == 400 and "datasets" in empty.json()["error"]
    unknown = client.post("/api/jobs", json={"datasets": [42]})
    assert unknown.status_code == 400 and "42" in unknown.json()["error"]
    bad_track = client.post("/api/tracks", json={"name": "../x"})
    assert bad_track.status_code == 400 and "track name" in bad_track.json()["error"]
    bad_command = client.post("/api/jobs/1/explode")
    assert bad_command.status_code == 400 and "pause" in bad_command.json()["error"]


def test_runs_and_paginated_metrics(client, api_ws):
    with api_ws.open_store() as store:
        store.create_run(run_id="run-a", track="main", base_version=0, config={}, dataset_ids=[])
        attempt = store.start_attempt("run-a")
        store.append_metrics("run-a", [{"step": s, "loss": 3.0 - s / 10} for s in range(1, 26)], attempt)
        store.append_metrics("run-a", [{"step": 10, "val_loss": 2.5}], attempt, kind="eval")
    assert [r["id"] for r in client.get("/api/runs").json()] == ["run-a"]
    assert client.get("/api/runs/run-a").json()["manifest"] is None
    steps, after = [], -1
    while after is not None:
        page = client.get("/api/runs/run-a/metrics", params={"after_step": after, "limit": 10}).json()
        steps += [r["step"] for r in page["rows"]]
        after = page["next_after_step"]
    assert steps == list(range(1, 26))
    evals = client.get("/api/runs/run-a/metrics", params={"kind": "eval"}).json()["rows"]
    assert evals == [{"step": 10, "attempt": attempt, "val_loss": 2.5}]
    assert client.get("/api/runs/run-a/metrics", params={"kind": "bogus"}).status_code == 400


def _adapter(store, ws, name):
    path = ws.adapters_dir / name
    path.mkdir(parents=True)
    adapter = store.add_adapter(track="main", run_id=None, job_id=None, base_version=0, path=str(path))
    verdict = {"passed": True, "failed": [], "rules": [], "require_approval": False, "baseline": "base"}
    return store.record_evaluation(adapter.id, {"candidate": {}, "baseline": {}}, verdict, "candidate")


def test_deploy_rollback_and_prometheus(client, api_ws):
    with api_ws.open_store() as store:
        first, second = _adapter(store, api_ws, "a1"), _adapter(store, api_ws, "a2")
    deployed = client.post(f"/api/adapters/{first.id}/deploy").json()
    assert deployed["adapter"] == first.id and deployed["hooks_ok"]
    client.post(f"/api/adapters/{second.id}/deploy", json={"reason": "newer"})
    assert client.get("/api/tracks").json()[0]["deployed"]["id"] == second.id
    back = client.post("/api/tracks/main/rollback").json()
    assert back["adapter"] == first.id and back["action"] == "rollback"
    assert (api_ws.root / "deployments" / "main" / "current").resolve() == (api_ws.adapters_dir / "a1").resolve()
    history = client.get("/api/tracks/main/deployments").json()
    assert [d["action"] for d in history] == ["rollback", "deploy", "deploy"]
    assert client.get("/api/tracks/nope/deployments").status_code == 404
    assert "path" not in client.get(f"/api/adapters/{first.id}").json()

    text = client.get("/metrics").text
    assert 'honed_deployments_total{action="deploy",track="main"} 2.0' in text
    assert 'honed_deployments_total{action="rollback",track="main"} 1.0' in text
    assert "honed_queue_length 0.0" in text and 'honed_jobs{state="queued"} 0.0' in text


def test_live_stream_carries_events_and_status(client, api_ws, tmp_path):
    dataset = _upload(client, synth(tmp_path / "d.jsonl", 20)).json()["dataset"]["id"]
    received: list[tuple[str, dict]] = []
    connected = threading.Event()

    def listen():
        with client.stream("GET", "/api/live", timeout=20) as stream:
            name = None
            for line in stream.iter_lines():
                if line.startswith("event: "):
                    name = line[7:]
                elif line.startswith("data: "):
                    received.append((name, json.loads(line[6:])))
                    connected.set()
                    # The feed reads events, then the status: a job queued between the two reads is in
                    # this status and in the next poll's events; wait for both.
                    seen_status = any(n == "status" and any(j["state"] == "queued" for j in d["queue"])
                                      for n, d in received)
                    if seen_status and any(n == "event" and d["kind"] == "queued" for n, d in received):
                        return

    listener = threading.Thread(target=listen, daemon=True)
    listener.start()
    assert connected.wait(10)
    job = client.post("/api/jobs", json={"datasets": [dataset]}).json()
    listener.join(15)
    assert not listener.is_alive(), f"no live status with the queued job; got {[n for n, _ in received]}"
    events = [d for n, d in received if n == "event"]
    assert any(e["job_id"] == job["id"] and e["kind"] == "queued" for e in events)
    assert received[0][0] == "hello"


def test_experiences_logged_and_given_feedback(client):
    messages = [{"role": "user", "content": "reverse: abc"}]
    logged = client.post("/v1/experiences", json={"messages": messages, "output": "abc", "latency_ms": 40,
                                                  "metadata": {"app": "tests"}})
    assert logged.status_code == 201, logged.text
    experience = logged.json()
    assert (experience["source"], experience["track"], experience["adapter_id"]) == ("logged", "main", None)
    rated = client.post(f"/v1/experiences/{experience['id']}/feedback",
                        json={"thumbs": "down", "corrected_output": "cba"}).json()
    assert (rated["thumbs"], rated["corrected_output"]) == ("down", "cba")
    assert client.get(f"/v1/experiences/{experience['id']}").json()["feedback_at"] == rated["feedback_at"]
    assert [e["id"] for e in client.get("/api/experiences", params={"untrained": True}).json()] == [experience["id"]]

    bad_score = client.post(f"/v1/experiences/{experience['id']}/feedback", json={"score": 2})
    assert bad_score.status_code == 400 and "score" in bad_score.json()["error"]["message"]  # OpenAI's shape
    nothing = client.post(f"/v1/experiences/{experience['id']}/feedback", json={})
    assert nothing.status_code == 400 and "needs a score" in nothing.json()["error"]["message"]
    assert client.post("/v1/experiences/999/feedback", json={"thumbs": "up"}).status_code == 404
    bad_role = client.post("/v1/experiences", json={"messages": [{"role": "robot", "content": "x"}], "output": ""})
    assert bad_role.status_code == 400 and "role" in bad_role.json()["error"]["message"]
    assert client.post("/v1/experiences", json={"track": "nope", "messages": messages, "output": ""}).status_code == 404

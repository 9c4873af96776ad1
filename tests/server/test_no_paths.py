"""The README's promise: server paths are never returned. Every GET route of the app is
called with real ids on a workspace that has a dataset (with an ingest report and bad
lines kept aside), a running job, a run with a checkpoint and a manifest, adapters, a
deployment, an experience and a learning batch; so are the main actions and error
answers. No body may name the workspace, the directory above it, the base's directory
or the home directory."""

from __future__ import annotations

import json
import re
from pathlib import Path

import httpx
from fastapi.routing import APIRoute

from honed.workspace import open_workspace
from tests.daemon.conftest import synth


def test_no_answer_names_a_server_path(make_workspace, tiny_random_base, serve, tmp_path):
    ws = open_workspace(make_workspace(tiny_random_base).root)
    server = serve(ws)
    app = server.server.config.app
    bodies: dict[str, str] = {}
    client = httpx.Client(base_url=server.url, timeout=60)

    def keep(label: str, response: httpx.Response) -> httpx.Response:
        bodies[label] = response.text
        return response

    data = synth(tmp_path / "support.jsonl", 30)
    data.write_text(data.read_text() + "not json\n")  # one bad line: kept aside, named in the report
    upload = keep("upload", client.post("/api/datasets", params={"name": "support.jsonl", "queue": "true"},
                                        content=data.read_bytes()))
    assert upload.status_code == 201, upload.text
    dataset_id, job_id = upload.json()["dataset"]["id"], upload.json()["job"]["id"]
    keep("upload again", client.post("/api/datasets", params={"name": "again.jsonl"}, content=data.read_bytes()))
    keep("rejected upload", client.post("/api/datasets", params={"name": "bad.jsonl"}, content=b"nope\n" * 3))

    rejected = ws.inbox / "rejected"
    rejected.mkdir(parents=True, exist_ok=True)
    (rejected / "x.jsonl.errors.txt").write_text(f"x.jsonl was rejected:\nno records in {ws.inbox / 'x.jsonl'}\n")
    with ws.open_store() as store:  # what a daemon and its trainer would have written
        job = store.claim_next_job("worker-1", "run-a")
        assert job is not None and job.id == job_id
        store.create_run(run_id="run-a", track="main", base_version=0, dataset_ids=[dataset_id],
                         config={"output_dir": str(ws.runs_dir / "run-a"), "base": str(tiny_random_base)})
        attempt = store.start_attempt("run-a")
        store.append_metrics("run-a", [{"step": 1, "loss": 2.0}], attempt)
        store.record_checkpoint("run-a", 1, str(ws.runs_dir / "run-a" / "checkpoints" / "step-1"))
        store.report_progress(job_id, {"step": 1, "loss": 2.0, "note": f"saved to {ws.runs_dir / 'run-a'}"})
        store.add_job_event(job_id, "checkpoint", f"checkpoint written to {ws.runs_dir / 'run-a'}")
        adapters = []
        for name in ("a1", "a2"):
            (ws.adapters_dir / name).mkdir(parents=True)
            adapter = store.add_adapter(track="main", run_id="run-a", job_id=job_id, base_version=0,
                                        path=str(ws.adapters_dir / name))
            verdict = {"passed": True, "failed": [], "rules": [], "require_approval": False, "baseline": "base"}
            adapters.append(store.record_evaluation(adapter.id, {"candidate": {"from": str(ws.root)}, "baseline": {}},
                                                    verdict, "candidate"))
    (ws.runs_dir / "run-a").mkdir(parents=True, exist_ok=True)
    (ws.runs_dir / "run-a" / "manifest.json").write_text(json.dumps({"adapter": str(ws.adapters_dir / "a1")}))

    for adapter in adapters:
        keep(f"deploy {adapter.id}", client.post(f"/api/adapters/{adapter.id}/deploy"))
    keep("rollback", client.post("/api/tracks/main/rollback"))
    experience = keep("log", client.post("/v1/experiences", json={
        "messages": [{"role": "user", "content": "reverse: abc"}], "output": "abc"})).json()
    keep("feedback", client.post(f"/v1/experiences/{experience['id']}/feedback", json={"corrected_output": "cba"}))
    run_now = keep("run-now", client.post("/api/learn/main/run-now", params={"teacher": "false"}))
    assert run_now.status_code == 201, run_now.text
    keep("chat", client.post("/v1/chat/completions", json={"model": "main@base", "messages": [
        {"role": "user", "content": "reverse: abc"}], "max_tokens": 2}))
    keep("job pause", client.post(f"/api/jobs/{job_id}/pause", params={"wait_s": 0}))
    keep("unknown job", client.get("/api/jobs/999"))
    keep("unknown run", client.get("/api/runs/nope"))
    keep("bad body", client.post("/api/jobs", json={"datasets": [999]}))
    keep("bad dataset path", client.post("/api/jobs", json={"datasets": [dataset_id], "track": "nope"}))

    ids = {"job_id": job_id, "dataset_id": dataset_id, "run_id": "run-a", "adapter_id": adapters[0].id,
           "track": "main", "experience_id": experience["id"]}
    walked = []
    for path, methods in _routes(app.routes):
        if "GET" not in methods or path == "/api/live":
            continue
        params = re.findall(r"{(\w+)}", path)
        assert set(params) <= ids.keys(), f"{path}: give the test an id for {params}"
        response = keep(path, client.get(path.format(**ids)))
        assert response.status_code == 200, (path, response.text)
        walked.append(path)
    assert {"/api/status", "/api/jobs/{job_id}", "/api/datasets/{dataset_id}", "/api/runs/{run_id}",
            "/api/adapters/{adapter_id}", "/api/learn/{track}/batches", "/api/health"} <= set(walked)
    with client.stream("GET", "/api/live") as live:  # the live feed carries the status too
        lines = []
        for line in live.iter_lines():
            lines.append(line)
            if len(lines) > 1 and lines[-2] == "event: status":
                break
        bodies["/api/live"] = "\n".join(lines)
    assert '"workspace"' in bodies["/api/live"]
    client.close()

    assert '"run-a"' in bodies["/api/runs/{run_id}"] and "step-1" not in bodies["/api/jobs/{job_id}"]
    secrets = {"workspace": str(ws.root), "workspace (resolved)": str(ws.root.resolve()),
               "directory above it": str(tmp_path), "base": str(tiny_random_base), "home": str(Path.home())}
    for label, body in bodies.items():
        for what, path in secrets.items():
            assert path not in body and json.dumps(path)[1:-1] not in body, f"{label} names the {what}: {body[:2000]}"
    status = json.loads(bodies["/api/status"])
    assert (status["workspace"], status["store"]) == (ws.root.name, "sqlite (in the workspace)")
    assert '"output_dir":"runs/run-a"' in bodies["/api/runs/{run_id}"]  # a path in free text: workspace-relative


def _routes(routes, prefix: str = ""):
    """(path, methods) of every route, through included routers (FastAPI keeps them
    nested from 0.16x on; older versions flatten them into APIRoutes)."""
    for route in routes:
        if isinstance(route, APIRoute):
            yield prefix + route.path, route.methods
        elif hasattr(route, "original_router"):
            yield from _routes(route.original_router.routes, prefix + route.include_context.prefix)

"""The loop from the outside: ``honed learn status|teach|run-now`` and ``/api/learn``."""

from __future__ import annotations

import json

import httpx

from honed.server import create_app
from honed.server.background import BackgroundServer
from tests.cli_runner import run_honed
from tests.learning.conftest import configure_learning, log_reversals


def test_learn_commands(learn_ws, teacher):
    server, behaviour = teacher
    ws = configure_learning(learn_ws, server.url + "/v1", threshold=10)
    with ws.open_store() as store:
        log_reversals(store, ["abc", "hello"])
        log_reversals(store, ["honed"], correct=True, thumbs="up")
    root = str(ws.root)
    status = run_honed("learn", "status", "--workspace", root).stdout
    assert "3 not trained on" not in status and "experiences not trained on: 3 (1 good, 2 need improvement" in status
    assert "ready to train: 1 of 10" in status and "not now: 1 of 10 experiences ready" in status

    behaviour.mode = "wrong"
    taught = run_honed("learn", "teach", "--workspace", root).stdout
    assert "asked about 2: 0 accepted, 2 invalid" in taught and "below the bar" in taught
    status = run_honed("learn", "status", "--workspace", root).stdout
    assert "invalid: scored 0.00 by tests.learning.verifiers:reversal" in status

    refused = run_honed("learn", "run-now", "--no-teacher", "--track", "nosuch", "--workspace", root, check=False)
    assert refused.returncode != 0 and "nosuch" in refused.stderr
    behaviour.mode = "good"
    done = json.loads(run_honed("learn", "run-now", "--json", "--workspace", root).stdout)
    assert done["teacher"]["accepted"] == 2 and done["counts"]["lessons"] == 3
    again = run_honed("learn", "run-now", "--workspace", root, check=False)
    assert again.returncode != 0 and f"batch {done['batch']} is still queued (job {done['job']})" in again.stderr


def test_learn_over_http(learn_ws, teacher):
    server, _ = teacher
    ws = configure_learning(learn_ws, server.url + "/v1", threshold=2)
    with ws.open_store() as store:
        log_reversals(store, ["abc", "hello"])
    app = BackgroundServer(create_app(ws)).start()
    try:
        with httpx.Client(base_url=app.url, timeout=30) as http:
            [state] = http.get("/api/learn").json()
            assert (state["track"], state["needs_improvement"], state["ready"], state["fires"]) == ("main", 2, 0, False)
            made = http.post("/api/learn/main/run-now")
            assert made.status_code == 201, made.text
            body = made.json()
            assert body["teacher"]["accepted"] == 2 and body["counts"]["teacher"] == 2
            assert http.get(f"/api/jobs/{body['job']}").json()["state"] == "queued"
            conflict = http.post("/api/learn/main/run-now")
            assert conflict.status_code == 409 and "still queued" in conflict.json()["error"]
            assert [b["id"] for b in http.get("/api/learn/main/batches").json()] == [body["batch"]["id"]]
            answers = http.get("/api/learn/main/teacher-answers", params={"status": "accepted"}).json()
            assert sorted(a["output"] for a in answers) == ["cba", "olleh"]
            assert http.get("/api/learn/nosuch/batches").status_code == 404
    finally:
        app.stop()

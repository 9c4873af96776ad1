"""``--json`` is the HTTP API's JSON: the same fields, encoded the same way (times in ISO
8601, enums as values), whatever the command; and every error, with ``--json``, is the
API's error body on stderr, never a traceback."""

from __future__ import annotations

import json

from fastapi.testclient import TestClient

from honed.config import update_config_file
from tests.cli_runner import run_honed
from tests.daemon.conftest import synth

API = "http://127.0.0.1:8321"  # an allowed Host and no Origin, as a local client sends
SERVER_PATHS = {"source_path", "stored_path", "reject_path", "adapter_path"}  # the API keeps these to itself


def local(command: list[str], ws) -> list[dict]:
    """A command's --json, its server paths hidden as the API hides them from the network
    (the one difference: a local user sees where the files are)."""
    from honed.server_paths import PathHider

    out = run_honed(*command, "-w", str(ws.root), "--json").stdout
    return json.loads(PathHider(ws).body(out.encode()))


def as_api_shows(rows: list[dict]) -> dict:
    return {row["id"]: {k: v for k, v in row.items() if k not in SERVER_PATHS} for row in rows}


def test_datasets_and_runs_print_what_the_api_answers(make_workspace, tiny_random_base):
    from honed.server import create_app

    ws = make_workspace(tiny_random_base)
    update_config_file(ws.root, {"train": {"max_steps": 2, "eval_every": 0}})
    data = synth(ws.root.parent / "data.jsonl", 24)
    added = json.loads(run_honed("add", str(data), "-w", str(ws.root), "--json").stdout)
    assert added[0]["accepted"] and added[0]["records"] == 24, added
    trained = json.loads(run_honed("train", "-w", str(ws.root), "--dataset", str(data), "--json").stdout)
    assert trained["status"] == "succeeded", trained

    cli_datasets, cli_runs = local(["datasets"], ws), local(["runs"], ws)
    with TestClient(create_app(ws), base_url=API) as client:
        api_datasets = client.get("/api/datasets").json()
        api_runs = client.get("/api/runs").json()
    assert len(cli_datasets) == len(api_datasets) >= 1 and len(cli_runs) == len(api_runs) == 1
    assert as_api_shows(cli_datasets) == as_api_shows(api_datasets)
    assert as_api_shows(cli_runs) == as_api_shows(api_runs)
    assert "T" in cli_datasets[0]["created_at"] and "T" in cli_runs[0]["started_at"], "ISO 8601, as the API"
    assert cli_runs[0]["id"] == trained["run"]

    checks = json.loads(run_honed("verify", trained["run"], "-w", str(ws.root), "--json").stdout)
    assert checks["ok"] and checks["run"] == trained["run"]
    assert all(set(c) >= {"name", "ok"} for c in checks["checks"]), checks


def test_errors_with_json_are_the_api_error_body_and_never_a_traceback(tmp_path, make_workspace, tiny_random_base):
    missing = run_honed("datasets", "-w", str(tmp_path / "nowhere"), "--json", check=False)
    assert missing.returncode == 1 and missing.stdout == ""
    body = json.loads(missing.stderr)
    assert set(body) == {"error"} and "nowhere" in body["error"]

    plain = run_honed("datasets", "-w", str(tmp_path / "nowhere"), check=False)
    assert plain.returncode == 1 and plain.stderr.startswith("error: ")

    # A store that cannot be reached (StoreError) from commands that open it in different ways.
    ws = make_workspace(tiny_random_base)
    update_config_file(ws.root, {"store": {"url": "postgresql+psycopg://honed@127.0.0.1:1/none"}})
    commands = (["datasets"], ["runs"], ["status"], ["adapters", "list"], ["queue", "list"], ["experiences", "list"])
    for command in commands:
        done = run_honed(*command, "-w", str(ws.root), "--json", check=False)
        assert done.returncode == 1, (command, done.stdout, done.stderr)
        assert "Traceback" not in done.stderr, (command, done.stderr)
        error = json.loads(done.stderr.strip().splitlines()[-1])["error"]
        assert "127.0.0.1:1" in error or "store" in error.lower(), (command, error)

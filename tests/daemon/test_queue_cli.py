"""The queue and control commands through the real CLI, with no daemon running: every
command has --json, and a command that cannot apply says why."""

from __future__ import annotations

import json

import pytest

from tests.cli_runner import run_honed
from tests.daemon.conftest import synth


@pytest.fixture
def ws(make_workspace, tiny_random_base):
    return make_workspace(tiny_random_base)


def honed_json(ws, *args: str):
    return json.loads(run_honed(*args, "-w", str(ws.root), "--json").stdout)


def test_queue_add_list_show_move_remove(ws, tmp_path):
    data = synth(tmp_path / "d.jsonl", 20)
    first = honed_json(ws, "queue", "add", str(data), "--set", "train.lr=1e-3")
    assert first["state"] == "queued" and first["overrides"] == {"train": {"lr": 0.001}}
    dataset = str(first["dataset_ids"][0])
    low = honed_json(ws, "queue", "add", dataset, "--priority", "low")
    high = honed_json(ws, "queue", "add", dataset, "--priority", "high")
    listed = honed_json(ws, "queue", "list")
    assert [j["job"] for j in listed] == [high["id"], first["id"], low["id"]]
    moved = honed_json(ws, "queue", "move", str(low["id"]), "--priority", "high")
    assert moved["priority"] == "high"
    # Within one priority, first in first out by when a job was queued.
    assert [j["job"] for j in honed_json(ws, "queue", "list")] == [low["id"], high["id"], first["id"]]
    removed = honed_json(ws, "queue", "remove", str(first["id"]))
    assert removed["state"] == "cancelled"
    assert first["id"] not in [j["job"] for j in honed_json(ws, "queue", "list")]
    assert first["id"] in [j["job"] for j in honed_json(ws, "queue", "list", "--all")]
    shown = honed_json(ws, "queue", "show", str(low["id"]))
    assert [e["kind"] for e in shown["events"]] == ["queued", "moved"]
    events = run_honed("events", str(first["id"]), "-w", str(ws.root)).stdout
    assert "queued" in events and "cancelled" in events
    people = run_honed("queue", "list", "-w", str(ws.root)).stdout
    assert "queued" in people and "high" in people


@pytest.mark.slow  # CI runs it in its second call
def test_queue_add_refuses_bad_input_by_name(ws, tmp_path):
    data = synth(tmp_path / "d.jsonl", 5)
    wrong = run_honed("queue", "add", str(data), "--set", "train.lr=-1", "-w", str(ws.root), check=False)
    assert wrong.returncode == 1 and "train.lr" in wrong.stderr
    unknown = run_honed("queue", "add", str(data), "--set", "train.nope=1", "-w", str(ws.root), check=False)
    assert unknown.returncode == 1 and "unknown key 'train.nope'" in unknown.stderr
    missing = run_honed("queue", "add", "999", "-w", str(ws.root), check=False)
    assert missing.returncode == 1 and "no dataset 999" in missing.stderr
    priority = run_honed("queue", "add", str(data), "--priority", "urgent", "-w", str(ws.root), check=False)
    assert priority.returncode == 1 and "high, normal, low" in priority.stderr
    track = run_honed("queue", "add", str(data), "--track", "nosuch", "-w", str(ws.root), check=False)
    assert track.returncode == 1 and "unknown track 'nosuch'" in track.stderr
    assert honed_json(ws, "queue", "list", "--all") == []  # nothing half-queued
    for command in ("pause", "resume", "remove"):
        args = ("queue", "remove", "999") if command == "remove" else (command, "999")
        answer = run_honed(*args, "-w", str(ws.root), check=False)
        assert answer.returncode == 1 and "no job 999" in answer.stderr and "Traceback" not in answer.stderr


def test_control_of_waiting_jobs_answers_with_the_new_state(ws, tmp_path):
    job = honed_json(ws, "queue", "add", str(synth(tmp_path / "d.jsonl", 5)))["id"]
    paused = honed_json(ws, "pause", str(job))
    assert paused["reached"] and paused["job"]["state"] == "paused"
    assert run_honed("resume", "-w", str(ws.root)).stdout.strip() == f"job {job}: queued"
    skipped = honed_json(ws, "skip", str(job))
    assert skipped["job"]["state"] == "skipped"
    stop = run_honed("stop", str(job), "-w", str(ws.root), check=False)
    assert stop.returncode == 1 and "has not trained; there is nothing to stop" in stop.stderr
    assert honed_json(ws, "cancel", str(job))["job"]["state"] == "cancelled"
    again = run_honed("resume", str(job), "-w", str(ws.root), check=False)
    assert again.returncode == 1 and f"job {job} has already been cancelled; it cannot be resumed" in again.stderr
    nothing = run_honed("pause", "-w", str(ws.root), check=False)
    assert nothing.returncode == 1 and "no job is running" in nothing.stderr


def test_a_command_for_a_running_job_without_a_daemon_waits_for_one(ws, tmp_path):
    job = honed_json(ws, "queue", "add", str(synth(tmp_path / "d.jsonl", 5)))["id"]
    store = ws.open_store()
    store.claim_next_job("gone-daemon", "run-x")  # as a daemon that died would leave it
    store.close()
    answer = honed_json(ws, "pause")
    assert not answer["reached"] and answer["command_state"] == "pending"
    assert "no daemon runs this workspace" in answer["message"]
    running = run_honed("queue", "remove", str(job), "-w", str(ws.root), check=False)
    assert running.returncode == 1 and f"honed cancel {job}" in running.stderr


def test_status_and_daemon_stop_when_no_daemon_runs(ws):
    info = honed_json(ws, "status")
    assert info["daemon"] == {"up": False} and info["running"] == [] and info["queue"] == []
    assert "no daemon runs" in run_honed("daemon", "stop", "-w", str(ws.root)).stdout
    assert "down" in run_honed("status", "-w", str(ws.root)).stdout


def test_status_watch_refreshes_until_interrupted(ws):
    import signal
    import subprocess
    import sys
    import time

    proc = subprocess.Popen([sys.executable, "-m", "honed.cli", "status", "--watch", "-w", str(ws.root)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(4)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "daemon" in out and "down" in out

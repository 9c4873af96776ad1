"""The emergency brake, the training window, the idle policy and the backoff schedule."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest

from honed.daemon.fencing import JobControl
from honed.daemon.schedule import backoff_delay, in_window, parse_window
from honed.store import Store, StoreUnavailableError
from honed.store.engine import create_engine, parse_url
from tests.cli_runner import run_honed
from tests.daemon.conftest import configure, last_logged_step, pid_alive, synth, wait_for


def test_windows_parse_wrap_midnight_and_refuse_nonsense() -> None:
    night = parse_window("22:30-06:00")
    assert str(night) == "22:30-06:00"
    day = datetime(2026, 1, 1)
    assert in_window(night, day.replace(hour=23)) and in_window(night, day.replace(hour=5, minute=59))
    assert not in_window(night, day.replace(hour=6)) and not in_window(night, day.replace(hour=12))
    office = parse_window("09:00-17:00")
    assert in_window(office, day.replace(hour=9)) and not in_window(office, day.replace(hour=17))
    assert parse_window("") is None and in_window(None)
    for bad, why in [("9-17", "HH:MM-HH:MM"), ("25:00-01:00", "hours run 00-23"), ("02:00-02:00", "equal")]:
        with pytest.raises(ValueError, match=why):
            parse_window(bad)


def test_backoff_doubles_up_to_its_cap() -> None:
    assert [backoff_delay(n, 10, 60) for n in range(5)] == [0, 10, 20, 40, 60]


def test_the_stop_file_halts_even_when_the_store_is_unreachable(daemon_ws) -> None:
    """The brake is a file: checked before the store, and a store that cannot be
    reached neither stops training nor hides the brake."""
    url = parse_url("postgresql+psycopg://nobody@127.0.0.1:1/none?connect_timeout=1")
    unreachable = Store(create_engine(url, busy_timeout_s=1), url)
    control = JobControl(daemon_ws, unreachable, job_id=1, parent_pid=None)
    with pytest.raises(StoreUnavailableError):
        unreachable.take_command(1, 0)
    assert control(5) is None  # store down: train on
    daemon_ws.stop_file.touch()
    assert control(6) == "pause" and control.interrupted == "halted by the STOP file"


@pytest.mark.slow  # CI runs it in its second call
def test_stop_file_halts_the_running_job_and_removing_it_lets_the_job_continue(daemon_ws, start_daemon, tmp_path):
    ws = configure(daemon_ws, {"train": {"epochs": 2.0}})
    store = ws.open_store()
    job = run_honed("queue", "add", str(synth(tmp_path / "d.jsonl", 300)), "-w", str(ws.root), "--json").stdout
    job_id = int(job.split('"id": ')[1].split(",")[0])
    start_daemon(ws)
    run_dir = ws.runs_dir / wait_for(lambda: store.get_job(job_id).run_id, 30, "a run id")
    wait_for(lambda: last_logged_step(run_dir) >= 5, 120, "5 steps", interval=0.01)
    trainer = store.get_job(job_id).trainer_pid
    ws.stop_file.touch()
    wait_for(lambda: not pid_alive(trainer), 60, "the trainer to halt")
    halted = wait_for(lambda: (j := store.get_job(job_id)).state == "queued" and j, 30, "the job back in the queue")
    messages = [e.message for e in store.job_events(job_id)]
    assert any("halted by the STOP file" in m for m in messages)
    assert store.latest_checkpoint(halted.run_id).step == last_logged_step(run_dir)
    wait_for(lambda: "halted" in (run_honed("status", "-w", str(ws.root), "--json").stdout), 30, "status to say halted")
    ws.stop_file.unlink()
    done = wait_for(lambda: (j := store.get_job(job_id)).state == "succeeded" and j, 240, "the job to finish")
    total = store.get_run(done.run_id).final_metrics["total_steps"]
    assert [r["step"] for r in store.get_metrics(done.run_id)] == list(range(1, total + 1))
    store.close()


def test_outside_the_training_window_jobs_wait(daemon_ws, start_daemon, tmp_path):
    now = datetime.now()
    start, end = now + timedelta(hours=2), now + timedelta(hours=3)
    ws = configure(daemon_ws, {"daemon": {"training_window": f"{start:%H:%M}-{end:%H:%M}"}})
    job = run_honed("queue", "add", str(synth(tmp_path / "d.jsonl", 30)), "-w", str(ws.root), "--json").stdout
    start_daemon(ws)
    status = wait_for(lambda: "waiting for the training window" in (out := run_honed(
        "status", "-w", str(ws.root), "--json").stdout) and out, 30, "the daemon to report the window")
    assert '"state": "queued"' in status and '"running": []' in status
    assert '"id": 1' in job


@pytest.mark.slow  # CI runs it in its second call
def test_idle_policy_writes_synthetic_data_that_becomes_a_job(daemon_ws, start_daemon):
    ws = configure(daemon_ws, {"daemon": {"idle": "synthetic", "idle_family": "copy", "idle_records": 40,
                                          "idle_every_s": 3600.0}})
    store = ws.open_store()
    start_daemon(ws)
    job = wait_for(lambda: store.list_jobs(), 60, "an idle job")[0]
    assert job.source == "inbox"
    dataset = store.get_dataset(job.dataset_ids[0])
    assert dataset.name.split("-", 1)[1].startswith("idle-copy-") and dataset.n_records == 40
    assert wait_for(lambda: store.get_job(job.id).state == "succeeded", 120, "the idle job to train")
    assert len(store.list_jobs()) == 1  # idle_every_s keeps it to one
    store.close()

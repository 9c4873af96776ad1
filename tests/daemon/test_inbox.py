"""The inbox: files are taken only when complete, moved (never copied), ingested once,
queued as jobs; bad ones land in inbox/rejected/ with their reasons."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import pytest

from honed.daemon.inbox import Inbox
from tests.cli_runner import run_honed
from tests.daemon.conftest import synth, wait_for

_clock = iter(range(1000, 10**6, 100))


def take_settled(inbox: Inbox):
    """Take every inbox file as if settle_s had passed since it was first seen."""
    inbox.ready_files(now=next(_clock))
    return [inbox.take(path, track) for path, track in inbox.ready_files(now=next(_clock))]


@pytest.fixture
def inbox(make_workspace, tiny_random_base):
    ws = make_workspace(tiny_random_base)
    store = ws.open_store()
    box = Inbox(ws, store, settle_s=0.5, use_events=False)
    box.start()
    yield box
    box.stop()
    store.close()


def test_a_file_is_taken_only_after_it_settles_and_is_moved_not_copied(inbox, tmp_path):
    data = synth(tmp_path / "a.jsonl", 20)
    target = inbox.root / "a.jsonl"
    target.write_bytes(data.read_bytes())
    assert inbox.ready_files(now=100.0) == []  # just seen: not settled yet
    assert inbox.ready_files(now=100.2) == []
    assert inbox.ready_files(now=100.6) == [(target, "main")]
    (outcome,) = [inbox.take(target, "main")]
    assert outcome.action == "queued" and not target.exists()
    assert outcome.path.parent == inbox.received_dir / "main"
    assert outcome.path.read_bytes() == data.read_bytes()
    job = inbox.store.get_job(outcome.job_id)
    assert job.state == "queued" and job.dataset_ids == [outcome.dataset_id] and job.source == "inbox"
    assert inbox.store.get_dataset(outcome.dataset_id).n_records == 20


def test_partial_names_and_files_open_for_writing_are_left_alone(inbox, tmp_path):
    (inbox.root / ".hidden.jsonl").write_text("{}\n")
    (inbox.root / "upload.jsonl.part").write_text("{}\n")
    (inbox.root / "x.tmp").write_text("{}\n")
    with open(inbox.root / "open.jsonl", "w") as writer:
        writer.write(synth(tmp_path / "o.jsonl", 5).read_text())
        writer.flush()
        inbox.ready_files(now=0.0)
        assert inbox.ready_files(now=10.0) == []  # settled in size, but still open for writing
    assert [p.name for p, _ in inbox.ready_files(now=20.0)] == ["open.jsonl"]


def test_track_folders_and_unknown_tracks(inbox, tmp_path):
    (inbox.root / "nosuch").mkdir()
    bad = inbox.root / "nosuch" / "d.jsonl"
    bad.write_bytes(synth(tmp_path / "d.jsonl", 5).read_bytes())
    (outcome,) = take_settled(inbox)
    assert outcome.action == "rejected"
    assert outcome.path == inbox.rejected_dir / "d.jsonl" and outcome.path.exists()
    report = (inbox.rejected_dir / "d.jsonl.errors.txt").read_text()
    assert "inbox/nosuch/ names no track" in report and "main" in report


def test_a_bad_file_is_rejected_with_its_reasons_and_a_duplicate_queues_nothing(inbox, tmp_path):
    (inbox.root / "bad.jsonl").write_text('{"messages": [}\nnot json either\n')
    good = synth(tmp_path / "g.jsonl", 8)
    (inbox.root / "g.jsonl").write_bytes(good.read_bytes())
    outcomes = {o.name: o for o in take_settled(inbox)}
    assert outcomes["bad.jsonl"].action == "rejected"
    report = (inbox.rejected_dir / "bad.jsonl.errors.txt").read_text()
    assert "line 1" in report and "line 2" in report
    assert (inbox.rejected_dir / "bad.jsonl").read_text().startswith('{"messages": [}')
    assert outcomes["g.jsonl"].action == "queued"
    (inbox.root / "again.jsonl").write_bytes(good.read_bytes())
    (dup,) = take_settled(inbox)
    assert dup.action == "known" and dup.path.exists() and "already ingested" in dup.message
    assert len(inbox.store.list_jobs()) == 1


def test_recover_finishes_what_a_crash_interrupted(inbox, tmp_path):
    """A file moved to received/ but never recorded is ingested; a dataset whose job
    was never queued gets one."""
    folder = inbox.received_dir / "main"
    folder.mkdir(parents=True, exist_ok=True)
    moved = folder / "20260101T000000-lost.jsonl"
    moved.write_bytes(synth(tmp_path / "l.jsonl", 6).read_bytes())
    outcomes = inbox.recover()
    assert [o.action for o in outcomes] == ["queued"] and outcomes[0].job_id is not None
    assert inbox.recover() == []  # idempotent: nothing left to do
    assert len(inbox.store.list_jobs()) == 1


def _write_slowly(path: Path, text: str, pauses: int) -> None:
    """Write ``text`` in chunks with pauses longer than the settle time."""
    chunk = max(1, len(text) // (pauses + 1))
    with open(path, "w") as fh:
        for i in range(0, len(text), chunk):
            fh.write(text[i:i + chunk])
            fh.flush()
            time.sleep(0.7)


def test_fifty_files_dropped_at_once_are_each_ingested_exactly_once(daemon_ws, start_daemon, tmp_path):
    ws = daemon_ws
    ws.stop_file.touch()  # ingest only: no training in this test
    start_daemon(ws)
    expected: dict[str, int] = {}
    writers = []
    for i in range(50):
        name = f"drop-{i:02d}.jsonl"
        if i % 5 == 4:  # 10 bad files: nothing in them is a record
            text = f"this is not json {i}\n{{\"prompt\": 1}}\n"
        else:
            text = synth(tmp_path / f"src-{i}.jsonl", 10 + i, seed=100 + i).read_text()
            expected[name] = 10 + i
        if i % 5 == 1:  # written slowly, with pauses longer than settle_s
            writers.append(threading.Thread(target=_write_slowly, args=(ws.inbox / name, text, 3)))
        elif i % 5 == 2:  # written under a temporary name and renamed in
            tmp = ws.inbox / f".{name}.tmp"
            tmp.write_text(text)
            os.rename(tmp, ws.inbox / name)
        else:
            (ws.inbox / name).write_text(text)
    for writer in writers:
        writer.start()
    for writer in writers:
        writer.join()
    store = ws.open_store()
    wait_for(lambda: len(store.list_jobs()) == 40 and len(list((ws.inbox / "rejected").glob("*.errors.txt"))) == 10,
             60, "40 jobs and 10 rejected files")
    time.sleep(1.5)  # anything more would be a file taken twice
    jobs = store.list_jobs()
    datasets = {d.id: d for d in store.list_datasets()}
    assert len(jobs) == 40 and len(datasets) == 40
    by_name = {Path(d.source_path).name.split("-", 1)[1]: d for d in datasets.values()}
    assert {name: d.n_records for name, d in by_name.items()} == expected  # none half-read
    assert sorted(j.dataset_ids[0] for j in jobs) == sorted(datasets)
    assert sorted(p.name for p in ws.inbox.iterdir()) == ["rejected"]
    rejected = sorted(p.name for p in (ws.inbox / "rejected").iterdir() if not p.name.endswith(".errors.txt"))
    assert rejected == [f"drop-{i:02d}.jsonl" for i in range(4, 50, 5)]
    report = (ws.inbox / "rejected" / "drop-04.jsonl.errors.txt").read_text()
    assert "line 1" in report and "line 2" in report
    assert all(j.state == "queued" for j in jobs)  # the STOP file held training back
    status = json.loads(run_honed("status", "-w", str(ws.root), "--json").stdout)
    assert status["stop_file"] and len(status["queue"]) == 40
    assert status["daemon"]["activity"].startswith("halted")
    store.close()

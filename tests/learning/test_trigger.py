"""The trigger policy: threshold, cooldown, window and batches in flight; assembly with
replay and provenance; an experience is trained on at most once per track."""

from __future__ import annotations

import json
from datetime import datetime, timedelta

from honed.data.datasets import add_dataset_file
from honed.learning.trigger import job_overrides, learning_state, tick
from honed.workspace import open_workspace
from tests.daemon.conftest import synth
from tests.learning.conftest import configure_learning, log_reversals


def _window_excluding_now() -> str:
    start = datetime.now() + timedelta(hours=2)
    end = start + timedelta(hours=1)
    return f"{start:%H:%M}-{end:%H:%M}"


def test_trigger_threshold_cooldown_window_and_once_only(learn_ws, teacher):
    server, _ = teacher
    ws = configure_learning(learn_ws, server.url + "/v1", threshold=4, teacher={"base_url": ""})
    with ws.open_store() as store:
        first = log_reversals(store, ["abc", "hello", "honed"], correct=True, thumbs="up")
        state = learning_state(ws, store, "main")
        assert not state.fires and state.why_not == "3 of 4 experiences ready (learn.threshold)"
        assert tick(ws, store, "main") is None

        first += log_reversals(store, ["lora"], correct=True, thumbs="up")
        done = tick(ws, store, "main")
        assert done is not None and done.batch.trigger == "threshold"
        job = store.get_job(done.job_id)
        assert job.state == "queued" and job.overrides == job_overrides("sft") and job.dataset_ids == [done.dataset_id]
        assert sorted(done.batch.experience_ids) == first

        # While its batch is queued, those experiences are not assembled again.
        more = log_reversals(store, ["model", "tensor", "weight", "batch"], correct=True, thumbs="up")
        state = learning_state(ws, store, "main")
        assert state.ready == 4 and not state.fires and f"batch {done.batch.id} is still queued" in state.why_not

        # The run trains; only then are the experiences trained, and only once.
        assert store.mark_experiences_trained("run-a", [done.dataset_id]) == 4
        assert store.mark_experiences_trained("run-b", [done.dataset_id]) == 0
        assert {store.get_experience(i).trained_run_id for i in first} == {"run-a"}
        _finish(store, done.job_id)

        ws = configure_learning(ws, server.url + "/v1", cooldown_s=3600, teacher={"base_url": ""})
        _record_run(store, "main")
        state = learning_state(ws, store, "main")
        assert not state.fires and "cooling down" in state.why_not and state.cooldown_left_s > 3500

        ws = configure_learning(ws, server.url + "/v1", cooldown_s=0, window=_window_excluding_now(),
                                teacher={"base_url": ""})
        state = learning_state(ws, store, "main")
        assert not state.fires and "outside the window" in state.why_not

        ws = configure_learning(ws, server.url + "/v1", cooldown_s=0, window="", teacher={"base_url": ""})
        second = tick(ws, store, "main")
        assert second is not None and sorted(second.batch.experience_ids) == more  # never the trained ones


def _finish(store, job_id: int) -> None:
    from honed.daemon.control import remove_job

    remove_job(store, job_id)  # the job leaves the queue (kept as cancelled)


def _record_run(store, track: str) -> None:
    store.create_run(run_id="run-cooldown", track=track, base_version=0, config={}, dataset_ids=[])


def test_failed_batch_is_not_retried_alone(learn_ws, teacher):
    server, _ = teacher
    ws = configure_learning(learn_ws, server.url + "/v1", threshold=2, teacher={"base_url": ""})
    with ws.open_store() as store:
        log_reversals(store, ["abc", "hello"], correct=True, thumbs="up")
        done = tick(ws, store, "main")
        _finish(store, done.job_id)  # cancelled: its experiences are free again, but not new
        state = learning_state(ws, store, "main")
        assert state.ready == 2 and state.why_not == "no experience is new since the last batch"
        log_reversals(store, ["honed"], correct=True, thumbs="up")
        again = tick(ws, store, "main")
        assert again is not None and len(again.batch.experience_ids) == 3


def test_assembly_mixes_replay_with_provenance(learn_ws, teacher, tmp_path):
    server, _ = teacher
    ws = configure_learning(learn_ws, server.url + "/v1", threshold=7, experience_fraction=0.7,
                            teacher={"base_url": ""})
    ws = open_workspace(ws.root)
    with ws.open_store() as store:
        earlier = add_dataset_file(ws, store, synth(tmp_path / "earlier.jsonl", 40, family="copy"),
                                   track="main", mode="strict").dataset
        from honed.data.plan import read_jsonl

        hashes = [r["hash"] for r in read_jsonl(earlier.stored_path)]
        store.create_run(run_id="run-earlier", track="main", base_version=0, config={}, dataset_ids=[earlier.id])
        store.mark_records_trained("run-earlier", "main", 0, hashes[:20])  # what the track learned
        ids = log_reversals(store, ["abc", "hello", "honed", "lora"], correct=True, thumbs="up")
        ids += log_reversals(store, ["model", "tensor", "weight"], thumbs="down")
        for i, word in zip(ids[4:], ["model", "tensor", "weight"]):
            store.add_feedback(i, corrected_output=word[::-1])
        done = tick(ws, store, "main")
    assert done.counts == {"lessons": 7, "person": 3, "teacher": 0, "good": 4, "replay": 3, "replay_wanted": 3}
    lines = [json.loads(line) for line in done.path.read_text().splitlines()]
    provenance = json.loads(done.provenance_path.read_text())
    assert len(lines) == len(provenance["lines"]) == 10
    assert provenance["replay_sources"] == [earlier.id] and provenance["base_version"] == 0
    for line, source in zip(lines, provenance["lines"]):
        if source["source"] == "replay":
            assert source["record_hash"] in hashes[:20] and line["messages"][0]["content"].startswith("copy: ")
        else:
            word = line["messages"][0]["content"].removeprefix("reverse: ")
            assert line["messages"][-1]["content"] == word[::-1]
    assert [p["source"] for p in provenance["lines"][:7]] == ["good"] * 4 + ["person"] * 3


def test_an_experience_that_cannot_be_a_training_line_is_set_aside_not_blocking_the_batch(learn_ws, teacher):
    server, _ = teacher
    ws = configure_learning(learn_ws, server.url + "/v1", threshold=4, teacher={"base_url": ""})
    with ws.open_store() as store:
        good = log_reversals(store, ["abc", "hello", "honed"], correct=True, thumbs="up")
        # A tool message is kept at capture (it is what the application saw) but is not a
        # role the ingest trains on: the assembled file would be refused whole.
        odd = store.add_experience(track="main", source="logged", output="arol",
                                   messages=[{"role": "tool", "content": "lookup: lora"},
                                             {"role": "user", "content": "reverse: lora"}])
        store.add_feedback(odd.id, thumbs="up")
        done = tick(ws, store, "main")
    assert done is not None and sorted(done.batch.experience_ids) == good
    assert [s["experience_id"] for s in done.set_aside] == [odd.id]
    assert "role" in done.set_aside[0]["reason"] and "tool" in done.set_aside[0]["reason"]
    provenance = json.loads(done.provenance_path.read_text())
    assert provenance["set_aside"] == done.set_aside
    assert len(done.path.read_text().splitlines()) == len(provenance["lines"]) == 3

    # It is recorded as set aside: listed with its reason, and not offered again.
    with ws.open_store() as store:
        kept = store.get_experience(odd.id)
        assert kept.excluded_reason == "set aside: " + done.set_aside[0]["reason"]
        _finish(store, done.job_id)  # the batch's experiences are free again
        more = log_reversals(store, ["model"], correct=True, thumbs="up")
        state = learning_state(ws, store, "main")
        assert (state.set_aside, state.excluded) == (1, 1)
        assert state.set_aside_recent == [{"experience_id": odd.id, "reason": done.set_aside[0]["reason"]}]
        assert state.summary()["set_aside_recent"] == state.set_aside_recent
        again = tick(ws, store, "main")
        assert again is not None and again.set_aside == [] and sorted(again.batch.experience_ids) == good + more

        # Included again, it is offered (and set aside again, since it still cannot be a line).
        _finish(store, again.job_id)
        store.include_experience(odd.id)
        assert learning_state(ws, store, "main").set_aside == 0
        third = tick(ws, store, "main")
        assert [s["experience_id"] for s in third.set_aside] == [odd.id]


def test_an_excluded_experience_is_left_out_of_the_batch(learn_ws, teacher):
    server, _ = teacher
    ws = configure_learning(learn_ws, server.url + "/v1", threshold=3, teacher={"base_url": ""})
    with ws.open_store() as store:
        ids = log_reversals(store, ["abc", "hello", "honed"], correct=True, thumbs="up")
        store.exclude_experience(ids[1], "a customer's name in it")
        state = learning_state(ws, store, "main")
        assert (state.open, state.ready, state.excluded, state.set_aside) == (2, 2, 1, 0)
        assert not state.fires and state.why_not == "2 of 3 experiences ready (learn.threshold)"
        ids += log_reversals(store, ["lora"], correct=True, thumbs="up")
        done = tick(ws, store, "main")
    assert done is not None and sorted(done.batch.experience_ids) == [ids[0], ids[2], ids[3]]
    assert "hello" not in done.path.read_text()

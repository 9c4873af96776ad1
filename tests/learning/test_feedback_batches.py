"""The loop learns from feedback: corrections become preference pairs (DPO), thumbs and
scores become unpaired judgements (KTO), ``learn.objective = "auto"`` picks between them
and SFT, replay stays within the batch's kind, and an SFT batch is what it always was."""

from __future__ import annotations

import json

import pytest

from honed.data.datasets import add_dataset_file
from honed.data.plan import read_jsonl
from honed.data.synthetic import write_synthetic
from honed.learning.feedback import choose_objective
from honed.learning.trigger import job_overrides, learning_state, run_now, tick
from tests.learning.conftest import configure_learning, log_reversals


def _user(word: str) -> list[dict]:
    return [{"role": "user", "content": f"reverse: {word}"}]


def _answer(text: str) -> list[dict]:
    return [{"role": "assistant", "content": text}]


def _lines(done) -> tuple[list[dict], dict]:
    lines = [json.loads(line) for line in done.path.read_text().splitlines()]
    return lines, json.loads(done.provenance_path.read_text())


def test_corrections_become_preference_pairs_chosen_the_correction_rejected_what_was_served(learn_ws, teacher):
    server, behaviour = teacher
    ws = configure_learning(learn_ws, server.url + "/v1", threshold=4, objective="dpo", scorer="")
    with ws.open_store() as store:
        by_person = log_reversals(store, ["abc", "hello"])  # answered wrongly, thumbs down
        for i, word in zip(by_person, ["abc", "hello"]):
            store.add_feedback(i, corrected_output=word[::-1])
        by_teacher = log_reversals(store, ["honed", "lora"])  # the teacher corrects these
        good = log_reversals(store, ["model"], correct=True, thumbs="up")  # nothing to pair it with
        same = log_reversals(store, ["tensor"], thumbs=None)
        store.add_feedback(same[0], corrected_output="tensor")  # "corrected" to what was served: no pair

        state = learning_state(ws, store, "main")
        # Before the teacher: 2 pairs; the uncorrected honed, lora and model are unpaired judgements.
        assert (state.objective, state.pairs, state.unpaired, state.ready) == ("dpo", 2, 3, 2)
        assert state.why_not == "2 of 4 experiences ready for DPO (learn.threshold)"
        done, report = run_now(ws, store, "main")  # the teacher answers first
        assert report.accepted == 2 and behaviour.calls == 2
        job = store.get_job(done.job_id)
        dataset = store.get_dataset(done.dataset_id)
    assert done.objective == "dpo" and dataset.kind == "preference"
    assert job.overrides == job_overrides("dpo") == {"train": {"retrain_seen": True, "replay_ratio": 0.0,
                                                                "objective": "dpo"}}
    assert sorted(done.batch.experience_ids) == by_person + by_teacher  # not the good one, not the unchanged one
    assert done.counts == {"lessons": 4, "person": 2, "teacher": 2, "good": 0, "pairs": 4, "replay": 0,
                           "replay_wanted": 2}
    lines, provenance = _lines(done)
    assert lines == [{"prompt": _user(w), "chosen": _answer(w[::-1]), "rejected": _answer(w)}
                     for w in ["abc", "hello", "honed", "lora"]]
    assert [(p["line"], p["source"], p["experience_id"], p["rejected"]) for p in provenance["lines"]] == [
        (1, "person", by_person[0], "served"), (2, "person", by_person[1], "served"),
        (3, "teacher", by_teacher[0], "served"), (4, "teacher", by_teacher[1], "served")]
    assert all(p["teacher_answer_id"] and p["teacher_model"] == "teacher" for p in provenance["lines"][2:])
    assert provenance["objective"] == "dpo" and provenance["kind"] == "preference"
    # No earlier dataset of pairs: no replay, and the manifest says so.
    assert provenance["notes"] == ["replay: 0 of 2 lines wanted: the track's earlier datasets of preference pairs "
                                   "hold no more records it learned on base v0; the batch has no replay"]
    assert good[0] not in done.batch.experience_ids and same[0] not in done.batch.experience_ids


def test_thumbs_and_scores_alone_become_an_unpaired_batch_labelled_by_the_judgement(learn_ws, teacher):
    server, behaviour = teacher
    ws = configure_learning(learn_ws, server.url + "/v1", threshold=6, objective="auto", scorer="",
                            good_score=0.8, teacher={"base_url": ""})
    with ws.open_store() as store:
        up = log_reversals(store, ["abc", "hello"], correct=True, thumbs="up")
        down = log_reversals(store, ["honed", "lora"], thumbs="down")
        scored = log_reversals(store, ["model", "tensor"], correct=True, thumbs=None)
        store.add_feedback(scored[0], score=0.8)  # at learn.good_score: good
        store.add_feedback(scored[1], score=0.5)
        log_reversals(store, ["weight"], thumbs=None)  # nobody judged it: it teaches nothing
        state = learning_state(ws, store, "main")
        assert (state.objective, state.pairs, state.unpaired, state.ready) == ("kto", 0, 6, 6)
        assert state.objective_why.startswith("auto: no corrections; 3 outputs judged bad")
        summary = state.summary()
        assert (summary["objective"], summary["pairs"], summary["unpaired"]) == ("kto", 0, 6)
        assert state.fires
        done = tick(ws, store, "main")
        job = store.get_job(done.job_id)
        kind = store.get_dataset(done.dataset_id).kind
    assert behaviour.calls == 0 and done.objective == "kto" and kind == "unpaired"
    assert job.overrides["train"]["objective"] == "kto"
    lines, provenance = _lines(done)
    words = ["abc", "hello", "honed", "lora", "model", "tensor"]
    served = ["cba", "olleh", "honed", "lora", "ledom", "rosnet"]
    labels = [True, True, False, False, True, False]
    assert lines == [{"prompt": _user(w), "completion": _answer(s), "label": label}
                     for w, s, label in zip(words, served, labels)]
    assert [(p["source"], p["experience_id"], p["label"]) for p in provenance["lines"]] == [
        ("thumbs", up[0], True), ("thumbs", up[1], True), ("thumbs", down[0], False), ("thumbs", down[1], False),
        ("score", scored[0], True), ("score", scored[1], False)]
    assert done.counts == {"lessons": 6, "person": 0, "teacher": 0, "score": 2, "thumbs": 4, "scorer": 0,
                           "desirable": 3, "undesirable": 3, "replay": 0, "replay_wanted": 3}


def test_under_kto_a_correction_is_one_desirable_and_one_undesirable_example(learn_ws, teacher):
    server, _ = teacher
    ws = configure_learning(learn_ws, server.url + "/v1", threshold=2, objective="kto", scorer="",
                            teacher={"base_url": ""})
    with ws.open_store() as store:
        [corrected] = log_reversals(store, ["abc"])
        store.add_feedback(corrected, corrected_output="cba")
        [liked] = log_reversals(store, ["hello"], correct=True, thumbs="up")
        done = tick(ws, store, "main")
    lines, provenance = _lines(done)
    assert lines == [{"prompt": _user("abc"), "completion": _answer("cba"), "label": True},
                     {"prompt": _user("abc"), "completion": _answer("abc"), "label": False},
                     {"prompt": _user("hello"), "completion": _answer("olleh"), "label": True}]
    assert [(p["source"], p["experience_id"]) for p in provenance["lines"]] == [
        ("person", corrected), ("served", corrected), ("thumbs", liked)]
    assert done.counts["lessons"] == 2 and (done.counts["desirable"], done.counts["undesirable"]) == (2, 1)


@pytest.mark.parametrize(("pairs", "corrections", "bad", "picked"), [
    (4, 4, 0, "dpo"),  # enough pairs for a batch by themselves
    (5, 6, 3, "dpo"),
    (0, 0, 2, "kto"),  # no correction, outputs judged bad: only KTO learns from them
    (2, 2, 5, "sft"),  # too few pairs: the corrections are taught as answers
    (0, 3, 0, "sft"),  # corrections with nothing different served
    (0, 0, 0, "sft"),  # only good outputs
])
def test_auto_picks_the_objective_from_what_the_feedback_holds(pairs, corrections, bad, picked):
    objective, why = choose_objective("auto", threshold=4, pairs=pairs, corrections=corrections, bad=bad)
    assert objective == picked and why.startswith("auto: ")
    assert choose_objective("sft", threshold=4, pairs=pairs, corrections=corrections, bad=bad) == (
        "sft", "learn.objective = 'sft'")


def test_auto_in_a_workspace_moves_from_sft_to_dpo_as_corrections_become_enough_pairs(learn_ws, teacher):
    server, _ = teacher
    ws = configure_learning(learn_ws, server.url + "/v1", threshold=3, objective="auto", scorer="",
                            teacher={"base_url": ""})
    with ws.open_store() as store:
        log_reversals(store, ["abc", "hello"], correct=True, thumbs="up")
        assert learning_state(ws, store, "main").objective == "sft"  # good outputs, nothing bad
        bad = log_reversals(store, ["honed", "lora"])
        state = learning_state(ws, store, "main")
        assert (state.objective, state.ready) == ("kto", 4)
        store.add_feedback(bad[0], corrected_output="denoh")
        state = learning_state(ws, store, "main")
        assert (state.objective, state.pairs, state.ready) == ("sft", 1, 3)  # a correction: not KTO any more
        assert "1 corrections (1 of them pairs, fewer than learn.threshold = 3)" in state.objective_why
        store.add_feedback(bad[1], corrected_output="arol")
        more = log_reversals(store, ["model"])
        store.add_feedback(more[0], corrected_output="ledom")
        state = learning_state(ws, store, "main")
        assert (state.objective, state.pairs, state.ready, state.fires) == ("dpo", 3, 3, True)


def test_explicit_sft_writes_exactly_the_batch_the_loop_always_wrote(learn_ws, teacher):
    server, _ = teacher
    ws = configure_learning(learn_ws, server.url + "/v1", threshold=3, objective="sft", scorer="",
                            teacher={"base_url": ""})
    with ws.open_store() as store:
        good = log_reversals(store, ["abc", "hello"], correct=True, thumbs="up")
        [fixed] = log_reversals(store, ["lora"])
        store.add_feedback(fixed, corrected_output="arol")
        log_reversals(store, ["honed"])  # needs improvement, nobody corrected it: not taught under SFT
        state = learning_state(ws, store, "main")
        assert (state.objective, state.pairs, state.unpaired, state.ready) == ("sft", 1, 3, 3)
        done = tick(ws, store, "main")
        job = store.get_job(done.job_id)
    assert done.path.read_bytes() == (
        b'{"messages": [{"role": "user", "content": "reverse: abc"}, {"role": "assistant", "content": "cba"}]}\n'
        b'{"messages": [{"role": "user", "content": "reverse: hello"}, {"role": "assistant", "content": "olleh"}]}\n'
        b'{"messages": [{"role": "user", "content": "reverse: lora"}, {"role": "assistant", "content": "arol"}]}\n')
    provenance = json.loads(done.provenance_path.read_text())
    assert provenance["lines"] == [
        {"line": 1, "source": "good", "experience_id": good[0], "teacher_answer_id": None, "teacher_model": None},
        {"line": 2, "source": "good", "experience_id": good[1], "teacher_answer_id": None, "teacher_model": None},
        {"line": 3, "source": "person", "experience_id": fixed, "teacher_answer_id": None, "teacher_model": None}]
    assert done.counts == {"lessons": 3, "person": 1, "teacher": 0, "good": 2, "replay": 0, "replay_wanted": 1}
    assert job.overrides == {"train": {"retrain_seen": True, "replay_ratio": 0.0, "objective": "sft"}}


def test_replay_is_drawn_from_earlier_datasets_of_the_batchs_kind_only(learn_ws, teacher, tmp_path):
    server, _ = teacher
    ws = configure_learning(learn_ws, server.url + "/v1", threshold=4, objective="dpo", scorer="",
                            experience_fraction=0.5, teacher={"base_url": ""})
    with ws.open_store() as store:
        sft_file, _ = write_synthetic("copy", 20, tmp_path / "sft.jsonl", seed=1, eval_n=0)
        pairs_file, _ = write_synthetic("copy", 20, tmp_path / "pairs.jsonl", seed=2, eval_n=0, kind="preference")
        earlier_sft = add_dataset_file(ws, store, sft_file, track="main", mode="strict").dataset
        earlier_pairs = add_dataset_file(ws, store, pairs_file, track="main", mode="strict").dataset
        assert (earlier_sft.kind, earlier_pairs.kind) == ("sft", "preference")
        learned = [r["hash"] for d in (earlier_sft, earlier_pairs) for r in read_jsonl(d.stored_path)]
        store.create_run(run_id="run-earlier", track="main", base_version=0, config={},
                         dataset_ids=[earlier_sft.id, earlier_pairs.id])
        store.mark_records_trained("run-earlier", "main", 0, learned)  # the track learned both
        ids = log_reversals(store, ["abc", "hello", "honed", "lora"])
        for i, word in zip(ids, ["abc", "hello", "honed", "lora"]):
            store.add_feedback(i, corrected_output=word[::-1])
        done = tick(ws, store, "main")
    lines, provenance = _lines(done)
    assert done.counts["pairs"] == 4 and done.counts["replay"] == done.counts["replay_wanted"] == 4
    assert provenance["replay_sources"] == [earlier_pairs.id] and provenance["notes"] == []
    pair_hashes = {r["hash"]: r for r in read_jsonl(earlier_pairs.stored_path)}
    for line, source in zip(lines[4:], provenance["lines"][4:]):
        assert source["source"] == "replay" and source["dataset_id"] == earlier_pairs.id
        stored = pair_hashes[source["record_hash"]]
        assert line == {"prompt": stored["prompt"], "chosen": stored["chosen"], "rejected": stored["rejected"]}


def test_an_unknown_learn_objective_is_refused_naming_the_key_and_the_choices(tmp_path):
    from honed.config import SettingsError, load_settings

    (tmp_path / "honed.toml").write_text('[tracks.chat.learn]\nobjective = "ppo"\n')
    with pytest.raises(SettingsError) as err:
        load_settings(tmp_path)
    assert "tracks.chat.learn.objective = 'ppo' is not allowed: 'sft', 'dpo', 'kto' or 'auto'" in str(err.value)
    (tmp_path / "honed.toml").write_text('[tracks.chat.learn]\nobjective = "auto"\n')
    settings = load_settings(tmp_path)
    assert (settings.learn.objective, settings.learn_for("chat").objective) == ("sft", "auto")  # sft by default

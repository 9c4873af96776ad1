"""Experiences on SQLite and PostgreSQL: logged with what answered, feedback attached later."""

from __future__ import annotations

import pytest

from honed.store import NotFoundError, StoreError


def test_an_experience_and_its_feedback(store, main_track):
    messages = [{"role": "user", "content": "reverse abc"}]
    served = store.add_experience(track=main_track, messages=messages, output="cba", latency_ms=12.5,
                                  prompt_tokens=11, completion_tokens=3, meta={"app": "demo"})
    assert (served.source, served.adapter_id, served.base_version) == ("served", None, 0)
    assert served.messages == messages and served.meta == {"app": "demo"} and served.feedback_at is None
    logged = store.add_experience(track=main_track, messages=messages, output="abc", source="logged")

    rated = store.add_feedback(logged.id, thumbs="down")
    fixed = store.add_feedback(logged.id, corrected_output="cba", score=0.0)
    assert (fixed.thumbs, fixed.score, fixed.corrected_output) == ("down", 0.0, "cba")  # earlier feedback kept
    assert fixed.feedback_at >= rated.feedback_at

    assert [e.id for e in store.list_experiences(main_track)] == [logged.id, served.id]
    assert [e.id for e in store.list_experiences(main_track, before_id=logged.id)] == [served.id]
    assert store.list_experiences(main_track, untrained_only=True, limit=1)[0].id == logged.id


def test_bad_experiences_and_feedback_are_refused(store, main_track):
    one = store.add_experience(track=main_track, messages=[{"role": "user", "content": "x"}], output="y")
    with pytest.raises(NotFoundError, match="no experience 999"):
        store.add_feedback(999, thumbs="up")
    for kwargs, message in (({"score": 1.5}, "0 to 1"), ({"score": float("nan")}, "0 to 1"),
                            ({"thumbs": "sideways"}, "up, down"), ({}, "needs a score")):
        with pytest.raises(StoreError, match=message):
            store.add_feedback(one.id, **kwargs)
    with pytest.raises(StoreError, match="unknown track"):
        store.add_experience(track="nope", messages=[], output="")
    with pytest.raises(StoreError, match="unknown adapter 7"):
        store.add_experience(track=main_track, messages=[], output="", adapter_id=7)
    with pytest.raises(StoreError, match="source"):
        store.add_experience(track=main_track, messages=[], output="", source="dreamed")


def _log(store, track: str, word: str):
    return store.add_experience(track=track, messages=[{"role": "user", "content": f"reverse {word}"}],
                                output=word[::-1])


def test_an_excluded_experience_is_listed_with_its_reason_and_never_offered(store, main_track):
    kept, excluded, aside = (_log(store, main_track, w) for w in ("abc", "lora", "honed"))
    out = store.exclude_experience(excluded.id, "  leaks a customer's address  ")
    assert out.excluded_reason == "leaks a customer's address" and out.excluded_at is not None
    store.exclude_experience(aside.id, "set aside: messages[0].role 'tool' is not trained")

    assert [e.id for e in store.open_experiences(main_track)] == [kept.id]
    assert [e.id for e in store.list_experiences(main_track)] == [aside.id, excluded.id, kept.id]
    assert [e.id for e in store.list_experiences(main_track, excluded=True)] == [aside.id, excluded.id]
    assert [e.id for e in store.list_experiences(main_track, excluded=False)] == [kept.id]
    assert [e.id for e in store.list_experiences(main_track, set_aside=True)] == [aside.id]
    assert store.count_excluded(main_track) == {"excluded": 2, "set_aside": 1}

    again = store.include_experience(aside.id)
    assert again.excluded_reason is None and again.excluded_at is None
    assert [e.id for e in store.open_experiences(main_track)] == [kept.id, aside.id]
    assert store.count_excluded(main_track) == {"excluded": 1, "set_aside": 0}
    assert store.include_experience(kept.id).excluded_reason is None  # not excluded: left as it is


def test_exclude_and_include_refuse_what_they_cannot_do_and_change_nothing(store, main_track):
    one = _log(store, main_track, "abc")
    for reason, message in (("", "non-empty"), ("   ", "non-empty"), ("x" * 2001, "at most 2000"),
                            ("nul\x00", "reason")):
        with pytest.raises(StoreError, match=message):
            store.exclude_experience(one.id, reason)
    with pytest.raises(NotFoundError, match="no experience 999"):
        store.exclude_experience(999, "why")
    with pytest.raises(NotFoundError, match="no experience 999"):
        store.include_experience(999)
    for huge in (2**31, 2**63, -1):  # past the id column on either database: no such experience, not a crash
        with pytest.raises(NotFoundError, match=f"no experience {huge}"):
            store.delete_experience(huge)
    assert store.get_experience(one.id).excluded_reason is None
    assert [e.id for e in store.open_experiences(main_track)] == [one.id]


def test_deleting_an_experience_removes_its_feedback_and_teacher_answers_but_not_the_batch(store, main_track):
    from tests.store.test_store_catalog import add_dataset

    gone, stays = _log(store, main_track, "abc"), _log(store, main_track, "lora")
    store.add_feedback(gone.id, thumbs="down", corrected_output="cba")
    store.add_teacher_answer(experience_id=gone.id, track=main_track, model="t", status="accepted", output="cba")
    store.add_teacher_answer(experience_id=stays.id, track=main_track, model="t", status="failed", reason="down")
    dataset = add_dataset(store, main_track, "h1")
    batch = store.queue_learning_batch(track=main_track, base_version=0, dataset_id=dataset.id, trigger="run-now",
                                       experience_ids=[gone.id, stays.id], counts={}, provenance_path="p.json",
                                       overrides={}, priority="normal")

    deleted = store.delete_experience(gone.id)
    assert deleted.id == gone.id and deleted.corrected_output == "cba" and deleted.batch_id == batch.id
    with pytest.raises(NotFoundError, match=f"no experience {gone.id}"):
        store.get_experience(gone.id)
    assert list(store.teacher_answers_for([gone.id, stays.id])) == [gone.id, stays.id]
    assert store.teacher_answers_for([gone.id])[gone.id] == []
    assert [a.experience_id for a in store.list_teacher_answers(main_track)] == [stays.id]
    # What the batch held stays on record: the training manifest is not rewritten.
    assert store.list_learning_batches(main_track)[0].experience_ids == [gone.id, stays.id]
    assert store.mark_experiences_trained("run-1", [dataset.id]) == 1
    with pytest.raises(NotFoundError, match="no experience 999"):
        store.delete_experience(999)
    assert [e.id for e in store.list_experiences(main_track)] == [stays.id]

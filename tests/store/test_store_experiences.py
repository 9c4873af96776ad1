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

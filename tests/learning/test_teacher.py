"""The teacher through a real HTTP server: good answers are kept; a teacher that is down,
slow, erroring, answering garbage or wrong answers is recorded with the reason, retried
later, and nothing it said reaches a dataset."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

from honed.learning.curriculum import teacher_pass
from honed.learning.trigger import learning_state, run_now
from tests.cli_runner import free_port
from tests.learning.conftest import configure_learning, log_reversals

WORDS = ["abc", "hello", "honed", "lora", "model"]


def test_bad_teachers_are_recorded_and_never_trained_on(learn_ws, teacher):
    server, behaviour = teacher
    ws = configure_learning(learn_ws, server.url + "/v1", teacher={"batch_size": 1, "max_attempts": 3})
    with ws.open_store() as store:
        ids = log_reversals(store, WORDS[:4])
        expected = [("garbage", "invalid", "not a chat completion"), ("not_a_completion", "invalid", "no choices"),
                    ("error", "failed", "HTTP 500"), ("empty", "invalid", "empty"),
                    ("wrong", "invalid", "below the bar of 1"), ("slow", "failed", "no answer within 1s")]
        for mode, status, reason in expected:
            behaviour.mode = mode
            report = teacher_pass(ws, store, "main", force=True)
            assert report.asked == 1 and getattr(report, status) == 1, (mode, report)
            [answer] = store.list_teacher_answers("main", limit=1)
            assert answer.status == status and reason in answer.reason, (mode, answer)
        # Three tries each for the first two experiences: they are left alone now.
        answers = store.teacher_answers_for(ids)
        assert [len(answers[i]) for i in ids] == [3, 3, 0, 0]
        state = learning_state(ws, store, "main")
        assert (state.teacher_given_up, state.awaiting_teacher, state.ready) == (2, 2, 0)

        behaviour.mode = "good"
        ws = configure_learning(ws, server.url + "/v1", teacher={"batch_size": 10})
        report = teacher_pass(ws, store, "main", force=True)
        assert (report.asked, report.accepted) == (2, 2)

        ws = configure_learning(ws, f"http://127.0.0.1:{free_port()}/v1")  # the teacher goes down
        [late] = log_reversals(store, ["tensor"])
        report = teacher_pass(ws, store, "main", force=True)
        assert report.failed == 1 and "cannot reach the teacher" in report.reasons[0]
        assert store.teacher_answers_for([late])[late][0].status == "failed"

        done, _ = run_now(ws, store, "main", teacher=False)
    lines = [json.loads(line) for line in done.path.read_text().splitlines()]
    taught = {r["messages"][0]["content"]: r["messages"][-1]["content"] for r in lines}
    assert taught == {"reverse: honed": "denoh", "reverse: lora": "arol"}  # only the accepted answers
    provenance = json.loads(done.provenance_path.read_text())
    assert [p["experience_id"] for p in provenance["lines"]] == ids[2:]
    assert {p["source"] for p in provenance["lines"]} == {"teacher"}
    assert done.counts["teacher"] == 2 and done.counts["replay"] == 0


def test_budget_and_cooldown_limit_teacher_calls(learn_ws, teacher):
    server, behaviour = teacher
    ws = configure_learning(learn_ws, server.url + "/v1",
                            teacher={"batch_size": 2, "daily_budget": 3, "cooldown_s": 3600})
    with ws.open_store() as store:
        log_reversals(store, WORDS)
        assert teacher_pass(ws, store, "main").asked == 2
        cooling = teacher_pass(ws, store, "main")
        assert cooling.asked == 0 and "learn.teacher.cooldown_s" in cooling.skipped
        assert teacher_pass(ws, store, "main", force=True).asked == 1  # the budget leaves room for one
        spent = teacher_pass(ws, store, "main", force=True)
        assert spent.asked == 0 and "daily budget of 3" in spent.skipped
        assert behaviour.calls == 3
        tomorrow = datetime.now(UTC) + timedelta(days=1)
        assert teacher_pass(ws, store, "main", now=tomorrow, force=True).asked == 2


def test_scorer_judges_unrated_experiences(learn_ws, teacher):
    server, _ = teacher
    ws = configure_learning(learn_ws, server.url + "/v1")
    with ws.open_store() as store:
        good = log_reversals(store, ["abc", "hello"], correct=True, thumbs=None)
        bad = log_reversals(store, ["honed"], thumbs=None)
        report = teacher_pass(ws, store, "main", force=True)
        assert report.asked == 1 and report.accepted == 1  # only the one the scorer judged bad
        assert [store.get_experience(i).auto_score for i in good + bad] == [1.0, 1.0, 0.0]
        state = learning_state(ws, store, "main")
        assert (state.good, state.needs_improvement, state.ready, state.corrected_by_teacher) == (2, 1, 3, 1)

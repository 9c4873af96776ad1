"""Scorers and gate rules as pure logic: the figures they produce and the verdicts they
reach, including the refusal of numbers that cannot be trusted."""

from __future__ import annotations

import math

import pytest

from honed.config import GateRule
from honed.evaluation.gates import decide
from honed.evaluation.scorers import ScorerError, check_scorer, contains, exact_match, function_score, json_scores


def chat(answer: str) -> dict:
    return {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": answer}]}


def test_generation_scorers() -> None:
    records = [chat("abc"), chat("xyz"), chat('{"a": 1}')]
    assert exact_match(["abc ", "xy", "{}"], records) == {"exact_match": pytest.approx(1 / 3)}
    assert contains(["so abc!", "xyz", "nothing"], records) == {"contains": pytest.approx(2 / 3)}
    figures = json_scores(['{"name": "n", "age": 3}', '{"name": 1}', "not json"], records, ["name", "age"])
    assert figures == {"json_valid": pytest.approx(2 / 3), "json_fields": pytest.approx(3 / 6)}


def test_user_function_scorers_are_checked() -> None:
    records = [chat("a"), chat("b")]
    assert function_score("tests.evaluation.test_scorers_and_gates:half", ["x", "y"], records) == {
        "tests.evaluation.test_scorers_and_gates:half": 0.5}
    with pytest.raises(ScorerError, match="returned 2.0; a scorer returns a number in 0..1"):
        function_score("tests.evaluation.test_scorers_and_gates:too_big", ["x"], records[:1])
    with pytest.raises(ScorerError, match="unknown scorer 'bleu'; allowed: exact_match, contains, json, loss"):
        check_scorer("bleu")
    with pytest.raises(ScorerError, match="no_such_module"):
        check_scorer("no_such_module:f")


def half(output: str, record: dict) -> float:
    return 0.5


def too_big(output: str, record: dict) -> float:
    return 2.0


def evaluation(candidate: dict, baseline: dict) -> dict:
    return {"candidate": candidate, "baseline": baseline, "baseline_name": "deployed adapter 1"}


def test_gates_pass_fail_and_keep_the_numbers() -> None:
    rules = [GateRule(set="heldout", scorer="exact_match", min=0.5, max_regression=0.0),
             GateRule(set="regression", scorer="loss", max_regression=0.1),
             GateRule(set="json", scorer="json_valid", min=0.9)]
    good = decide(evaluation({"heldout": {"exact_match": 0.8, "n": 10}, "regression": {"loss": 1.05}},
                             {"heldout": {"exact_match": 0.7}, "regression": {"loss": 1.0}}), rules, False)
    assert good["passed"] and good["failed"] == []
    assert [r["ok"] for r in good["rules"]] == [True, True, True] and good["rules"][2]["skipped"]
    bad = decide(evaluation({"heldout": {"exact_match": 0.4}, "regression": {"loss": 1.3}},
                            {"heldout": {"exact_match": 0.7}, "regression": {"loss": 1.0}}), rules, True)
    assert not bad["passed"] and bad["require_approval"]
    assert bad["failed"] == [
        "heldout exact_match 0.4 < 0.5",
        "heldout exact_match 0.4 vs deployed adapter 1 0.7: 0.3 worse (allowed 0)",
        "regression loss 1.3 vs deployed adapter 1 1: 0.3 worse (allowed 0.1)",
    ]
    assert bad["rules"][0]["candidate"] == 0.4 and bad["rules"][0]["baseline"] == 0.7


def test_numbers_that_cannot_be_trusted_fail_whatever_the_rules() -> None:
    verdict = decide(evaluation({"heldout": {"exact_match": 1.5, "loss": math.nan}}, {}), [], False)
    assert not verdict["passed"]
    assert verdict["failed"] == ["candidate heldout: exact_match is 1.5, outside 0..1",
                                 "candidate heldout: loss is nan, not a finite number"]

"""Win rate of a candidate over the live model: the counting (ties half, identical answers,
both judge orders, a disagreement or an unparsable reply is a tie), the sign test against
hand-computed and scipy figures, the win_rate gate rule that passes, blocks and holds,
and the settings that refuse a rule nothing measures."""

from __future__ import annotations

import pytest

from honed.config import GateRule, Settings
from honed.config.models import describe_validation_error
from honed.evaluation.gates import adapter_state, decide
from honed.evaluation.llm_judge import parse_verdict
from honed.evaluation.win_rate import (
    LOSS,
    TIE,
    WIN,
    Comparison,
    JudgeUnavailable,
    both_orders,
    distinct_prompts,
    scorer_decider,
    win_rate,
    win_rate_over_samples,
)


def prompts(n: int) -> list[list[dict]]:
    return [[{"role": "user", "content": f"question {i}"}] for i in range(n)]


def length_score(answer: str, prompt: list[dict]) -> float:
    return min(len(answer), 10) / 10


def test_scorer_decider_counts_wins_losses_and_ties_half() -> None:
    candidate = ["long answer", "ab", "same", "abc", "x"]
    live = ["short", "abcdef", "same", "xyz", "y"]
    result = win_rate(candidate, live, prompts(5), scorer_decider(length_score), samples_kept=2)
    # long answer > short (win), ab < abcdef (loss), same == same (identical: tie, never scored),
    # abc vs xyz and x vs y score equal (ties).
    assert (result.wins, result.losses, result.ties, result.n) == (1, 1, 3, 5)
    assert result.rate == pytest.approx((1 + 3 / 2) / 5)
    assert result.notes == {"identical": 1}
    assert [s["outcome"] for s in result.samples] == [WIN, LOSS]
    assert result.samples[0] == {"prompt": "question 0", "candidate": "long answer", "live": "short",
                                 "outcome": WIN, "note": None}


def test_sampled_rounds_decide_each_prompt_by_the_balance_of_its_comparisons() -> None:
    # Three rounds of two prompts. Prompt 0: the candidate wins two rounds, loses one (won).
    # Prompt 1: one win, one loss, one identical answer (a tie: no coin for the sign test).
    candidate = [["long answer", "abc"], ["long answer", "a"], ["x", "same"]]
    live = [["short", "ab"], ["short", "abc"], ["xyz", "same"]]
    result = win_rate_over_samples(candidate, live, prompts(2), scorer_decider(length_score), samples_kept=5)
    assert (result.wins, result.losses, result.ties) == (1, 0, 1)
    assert result.notes == {"identical": 1}  # notes count comparisons
    assert [s["candidate"] for s in result.samples] == ["long answer", "abc"]  # the first round's
    # One round is the plain win rate.
    assert win_rate_over_samples([candidate[0]], [live[0]], prompts(2), scorer_decider(length_score)).as_dict() == \
        win_rate(candidate[0], live[0], prompts(2), scorer_decider(length_score)).as_dict()
    with pytest.raises(ValueError, match="as many rounds"):
        win_rate_over_samples(candidate, live[:2], prompts(2), scorer_decider(length_score))


def test_sampled_win_rate_rounds_need_a_temperature() -> None:
    with pytest.raises(ValueError, match=r"eval.win_rate_samples = 4 needs sampling.*win_rate_temperature above 0"):
        Settings.model_validate({"eval": {"win_rate_samples": 4}})
    assert Settings.model_validate({"eval": {"win_rate_samples": 4, "win_rate_temperature": 0.7}})


def test_a_judge_is_asked_in_both_orders_and_a_disagreement_is_a_tie() -> None:
    asked = []

    def judge(replies):
        def ask(prompt, first, second):
            asked.append((first, second))
            return replies[(first, second)]
        return both_orders(ask)

    # Consistent: prefers the candidate as A and as B.
    assert judge({("c", "l"): "A", ("l", "c"): "B"})([], "c", "l") == Comparison(WIN)
    assert asked == [("c", "l"), ("l", "c")]  # the candidate first as A, then as B
    assert judge({("c", "l"): "B", ("l", "c"): "A"})([], "c", "l") == Comparison(LOSS)
    # Always the first position: the two verdicts disagree, a tie, counted as such.
    assert judge({("c", "l"): "A", ("l", "c"): "A"})([], "c", "l") == Comparison(TIE, "disagreement")
    assert judge({("c", "l"): "A", ("l", "c"): "tie"})([], "c", "l") == Comparison(TIE, "disagreement")
    assert judge({("c", "l"): "tie", ("l", "c"): "tie"})([], "c", "l") == Comparison(TIE)
    # A reply that could not be parsed, in either order: a tie, counted as unparsable.
    assert judge({("c", "l"): None, ("l", "c"): "B"})([], "c", "l") == Comparison(TIE, "unparsable")
    assert judge({("c", "l"): "A", ("l", "c"): None})([], "c", "l") == Comparison(TIE, "unparsable")

    def down(prompt, first, second):
        raise JudgeUnavailable("cannot reach the judge at http://x")

    assert both_orders(down)([], "c", "l") == Comparison(TIE, "failed", "cannot reach the judge at http://x")


def test_judge_notes_are_counted_and_the_first_failure_kept() -> None:
    outcomes = iter([Comparison(WIN), Comparison(TIE, "unparsable"), Comparison(TIE, "disagreement"),
                     Comparison(TIE, "failed", "HTTP 500"), Comparison(LOSS)])
    result = win_rate(["a", "b", "c", "d", "e", "f"], ["z", "y", "x", "w", "v", "f"], prompts(6),
                      lambda prompt, candidate, live: next(outcomes))
    assert (result.wins, result.losses, result.ties) == (1, 1, 4)
    assert result.notes == {"unparsable": 1, "disagreement": 1, "failed": 1, "identical": 1}
    assert result.failure == "HTTP 500"
    assert result.as_dict()["notes"]["unparsable"] == 1


def test_mismatched_lengths_and_unknown_outcomes_are_refused() -> None:
    with pytest.raises(ValueError, match="1 candidate answers, 2 live answers, 2 prompts"):
        win_rate(["a"], ["b", "c"], prompts(2), scorer_decider(length_score))
    with pytest.raises(ValueError, match="a decider returned 'draw'"):
        win_rate(["a"], ["b"], prompts(1), lambda prompt, candidate, live: Comparison("draw"))


def test_the_sign_test_by_hand_and_against_scipy() -> None:
    decide = scorer_decider(length_score)
    # 9 wins, 1 loss, 2 ties: the ties are left out of the test.
    candidate = ["longer"] * 9 + ["a"] + ["p", "q"]
    live = ["a"] * 9 + ["longer"] + ["r", "s"]
    result = win_rate(candidate, live, prompts(12), decide)
    assert (result.wins, result.losses, result.ties) == (9, 1, 2)
    assert result.rate == pytest.approx(10 / 12)
    assert result.p_better == 11 / 1024  # P(X >= 9), X ~ Binomial(10, 1/2): (C(10,9) + C(10,10)) / 2**10
    assert result.p_worse == 1023 / 1024
    assert result.p == 22 / 1024
    stats = pytest.importorskip("scipy.stats")
    for wins, losses in [(9, 1), (3, 7), (0, 0), (12, 12), (40, 25), (0, 6)]:
        r = win_rate(["longer"] * wins + ["a"] * losses, ["a"] * wins + ["longer"] * losses, prompts(wins + losses),
                     decide)
        if wins + losses:
            assert r.p == pytest.approx(stats.binomtest(wins, wins + losses).pvalue, rel=1e-12)
            assert r.p_better == pytest.approx(stats.binomtest(wins, wins + losses, alternative="greater").pvalue,
                                               rel=1e-12)
        else:
            assert (r.p, r.rate) == (1.0, None)


@pytest.mark.parametrize("reply, verdict", [
    ("A", "A"), ("b", "B"), (" **A**\n", "A"), ("Answer B.", "B"), ("(A)", "A"), ("TIE", "tie"), ("tie.", "tie"),
    ("A or B", None), ("I prefer the first", None), ("", None), (None, None), ("AB", None),
])
def test_judge_replies_are_parsed_strictly(reply, verdict) -> None:
    assert parse_verdict(reply) == verdict


def test_distinct_prompts_of_chat_pairs_and_thumbs() -> None:
    user = [{"role": "user", "content": "hi"}]
    records = [{"messages": [*user, {"role": "assistant", "content": "hello"}]},
               {"prompt": user, "chosen": [{"role": "assistant", "content": "x"}], "rejected": []},
               {"prompt": "other", "completion": "y", "label": True},
               {"prompt": [{"role": "user", "content": "other"}], "completion": "z", "label": False},
               {"text": "no prompt"}]
    assert distinct_prompts(records) == [user, [{"role": "user", "content": "other"}]]


def measured(wins: int, losses: int, ties: int, **extra) -> dict:
    figures = win_rate(["longer"] * wins + ["a"] * losses + [f"t{i}" for i in range(ties)],
                       ["a"] * wins + ["longer"] * losses + [f"u{i}" for i in range(ties)],
                       prompts(wins + losses + ties), scorer_decider(length_score)).as_dict()
    return {"candidate": {}, "baseline": {}, "baseline_name": "deployed adapter 3",
            "win_rate": {"decider": "scorer tests:score", "sets": {"heldout": {**figures, **extra}}}}


RULE = GateRule(kind="win_rate", set="heldout", min=0.6)


def test_a_win_rate_rule_passes_a_candidate_that_wins() -> None:
    verdict = decide(measured(18, 3, 4), [RULE], False)
    rule = verdict["rules"][0]
    assert verdict["passed"] and adapter_state(verdict) == "candidate", verdict
    assert (rule["wins"], rule["losses"], rule["ties"], rule["n"]) == (18, 3, 4, 25)
    assert rule["candidate"] == pytest.approx(20 / 25) and rule["p"] < 0.001
    assert rule["detail"].startswith("win rate 0.8 against deployed adapter 3 on 25 prompts by scorer tests:score: "
                                     "18 won, 3 lost, 4 tied")
    assert verdict["win_rate"]["sets"]["heldout"]["rate"] == pytest.approx(0.8)  # reported with the verdict
    assert "samples" not in verdict["win_rate"]["sets"]["heldout"]


def test_a_win_rate_rule_blocks_a_candidate_that_loses() -> None:
    verdict = decide(measured(3, 18, 4), [RULE], False)
    assert not verdict["passed"] and adapter_state(verdict) == "rejected"
    [reason] = verdict["failed"]
    assert reason.startswith("win_rate heldout: 0.2 < 0.6; it loses to deployed adapter 3: win rate 0.2")
    assert "p(worse)=" in reason


def test_a_win_rate_rule_blocks_no_measurable_win_and_a_rate_under_min() -> None:
    verdict = decide(measured(12, 10, 3), [RULE.model_copy(update={"min": None})], False)
    assert not verdict["passed"] and verdict["failed"][0].startswith("win_rate heldout: no measurable win over "
                                                                     "deployed adapter 3")
    # Significant, but with many ties the rate stays under the floor.
    verdict = decide(measured(12, 0, 60), [RULE], False)
    assert verdict["rules"][0]["p"] < 0.001 and not verdict["passed"]
    [reason] = verdict["failed"]
    assert reason.startswith("win_rate heldout: 0.5833 < 0.6; win rate 0.583 against") and reason.endswith("it wins")


def test_a_win_rate_rule_holds_what_it_cannot_decide() -> None:
    few = decide(measured(4, 0, 1), [RULE], False)  # 5 prompts < min_examples 20
    assert not few["passed"] and few["failed"] == [] and adapter_state(few) == "awaiting_approval"
    assert "5 prompts are fewer than min_examples 20" in few["held"][0]
    missing = decide({"candidate": {}, "baseline": {}, "baseline_name": "base v0",
                      "win_rate": {"decider": "judge", "error": "cannot reach the judge at http://x", "sets": {}}},
                     [RULE], False)
    assert missing["held"] == ["win_rate heldout: not measured: cannot reach the judge at http://x; held for a "
                               "person"]
    assert missing["win_rate"]["error"] == "cannot reach the judge at http://x"
    never = decide(measured(0, 0, 25, error="the judge was never reached: HTTP 500"), [RULE], False)
    assert never["held"] == ["win_rate heldout: not measured: the judge was never reached: HTTP 500; held for a "
                             "person"]


def settings_error(data: dict) -> str:
    from pydantic import ValidationError

    with pytest.raises(ValidationError) as info:
        Settings.model_validate(data)
    return describe_validation_error(info.value, "honed.toml")


def test_settings_refuse_win_rate_rules_nothing_measures() -> None:
    rule = {"kind": "win_rate", "set": "heldout", "min": 0.55}
    assert settings_error({"gates": {"rules": [rule]}}) == (
        "honed.toml: gates.rules has a win_rate rule on 'heldout', but eval.win_rate is 'off'; set it to "
        "'scorer' or 'judge'")
    assert settings_error({"eval": {"win_rate": "judge"}, "tracks": {"bot": {"gates": {"rules": [
        {**rule, "set": "regression"}]}}}}) == (
        "honed.toml: tracks.bot.gates.rules has a win_rate rule on 'regression', which is not in "
        "eval.win_rate_sets ['heldout']")
    assert "a win_rate rule's min is a win rate in 0..1, not 55" in settings_error(
        {"eval": {"win_rate": "scorer"}, "gates": {"rules": [{**rule, "min": 55}]}})
    assert "a win_rate rule takes no scorer (eval.win_rate decides), not 'exact_match'" in settings_error(
        {"eval": {"win_rate": "scorer"}, "gates": {"rules": [{**rule, "scorer": "exact_match"}]}})
    assert "a gain rule needs a scorer" in settings_error({"gates": {"rules": [{"kind": "gain", "set": "heldout"}]}})
    assert "eval.win_rate = 'sometimes' is not allowed: 'off', 'scorer' or 'judge'" in settings_error(
        {"eval": {"win_rate": "sometimes"}})
    ok = Settings.model_validate({"eval": {"win_rate": "scorer"}, "gates": {"rules": [rule]}})
    assert ok.gates.rules[0].kind == "win_rate" and Settings().eval.win_rate == "off"

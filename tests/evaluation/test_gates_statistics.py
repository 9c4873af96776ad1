"""Gates with statistical teeth, as pure logic on per-record outcomes: the exact McNemar
arithmetic, the default rules' verdicts (no gain fails, a clear gain passes, worse is
rejected, too little evidence is held), and the poisons a bad batch of data produces,
each rejected by a margin no machine's luck can cross."""

from __future__ import annotations

import pytest

from honed.config import GateRule, GateSettings, load_settings
from honed.evaluation.gates import adapter_state, decide
from honed.evaluation.statistics import discordant, drop_upper_bound, fewest_discordant, mcnemar_p

DEFAULTS = GateSettings().rules


def paired(both: int, only_baseline: int = 0, only_candidate: int = 0, neither: int = 0) -> tuple[list, list]:
    """Baseline and candidate outcomes over the same records: right by both, by the
    baseline only, by the candidate only, by neither."""
    baseline = [1] * both + [1] * only_baseline + [0] * only_candidate + [0] * neither
    candidate = [1] * both + [0] * only_baseline + [1] * only_candidate + [0] * neither
    return baseline, candidate


def evaluation(sets: dict[str, tuple[list, list]], general_of: int = 40, name: str = "deployed adapter 1") -> dict:
    """What the evaluator hands the gates, built from per-record outcomes."""
    figures = {side: {s: {"exact_match": sum(v[i]) / len(v[i]), "n": len(v[i])} for s, v in sets.items()}
               for i, side in enumerate(("baseline", "candidate"))}
    # The shipped general set is judged by its own scorer ("answer"), the others by exact match.
    outcomes = {side: {s: {"answer" if s == "general" else "exact_match": v[i]} for s, v in sets.items()}
                for i, side in enumerate(("baseline", "candidate"))}
    kept = len(sets["general"][0]) if "general" in sets else 0
    return {**figures, "baseline_name": name, "outcomes": outcomes,
            "control": {"general": {"kept": kept, "of": general_of}}}


def rule(verdict: dict, kind: str) -> dict:
    return next(r for r in verdict["rules"] if r["kind"] == kind)


# --- the arithmetic ------------------------------------------------------------------

def test_mcnemar_exact_values_by_hand() -> None:
    assert mcnemar_p(10, 2) == 79 / 4096  # (C(12,10) + C(12,11) + C(12,12)) / 2**12
    assert mcnemar_p(5, 0) == 1 / 32
    assert mcnemar_p(3, 3) == 42 / 64
    assert mcnemar_p(0, 0) == 1.0  # no discordant pair: no evidence at all
    assert fewest_discordant(0.05) == 5 and fewest_discordant(0.01) == 7 and fewest_discordant(0.5) == 2
    assert discordant(*paired(10, 3, 7, 5)) == (7, 3)
    assert drop_upper_bound(0, 4, 200, 0.05) == pytest.approx(0.02)  # all four the same way: theta's bound is 1
    assert drop_upper_bound(0, 0, 200, 0.05) == 0.0


def test_mcnemar_and_the_drop_bound_agree_with_scipy() -> None:
    stats = pytest.importorskip("scipy.stats")
    for b, c in [(10, 2), (0, 5), (3, 3), (40, 25), (1, 0), (120, 97)]:
        expected = stats.binomtest(b, b + c, 0.5, alternative="greater").pvalue
        assert mcnemar_p(b, c) == pytest.approx(expected, rel=1e-9)
    for b, c, n in [(10, 18, 200), (3, 3, 50), (100, 140, 1000), (2, 9, 60)]:
        theta = stats.beta.ppf(0.95, c + 1, b)
        assert drop_upper_bound(b, c, n, 0.05) == pytest.approx((b + c) * (2 * theta - 1) / n, rel=1e-6)


# --- the default rules -----------------------------------------------------------------

LIVE_REGRESSION = paired(120, neither=80)  # the live model answers 120 of 200 past records
LIVE_GENERAL = paired(30)                  # 30 of the 40 shipped prompts were kept for the base


def test_no_better_is_not_deployed() -> None:
    for heldout in (paired(80, neither=120), paired(74, 6, 6, 114)):  # identical; as many won as lost
        verdict = decide(evaluation({"heldout": heldout, "regression": LIVE_REGRESSION, "general": LIVE_GENERAL}),
                         DEFAULTS, False)
        assert not verdict["passed"] and verdict["held"] == []
        assert len(verdict["failed"]) == 1 and verdict["failed"][0].startswith(
            "gain heldout exact_match: no measurable gain over deployed adapter 1")
        gain = rule(verdict, "gain")
        assert "≥ α 0.05" in gain["detail"] and f"b={gain['b']}, c={gain['c']}" in gain["detail"]
        assert gain["p"] == mcnemar_p(gain["b"], gain["c"]) and gain["p"] >= 0.5


def test_clearly_better_passes_with_its_numbers() -> None:
    verdict = decide(evaluation({"heldout": paired(40, 2, 80, 78), "regression": paired(118, 2, 1, 79),
                                 "general": LIVE_GENERAL}), DEFAULTS, False)
    assert verdict["passed"] and verdict["failed"] == [] and verdict["held"] == []
    assert adapter_state(verdict) == "candidate"
    gain = rule(verdict, "gain")
    assert (gain["n"], gain["b"], gain["c"], gain["alpha"]) == (200, 80, 2, 0.05) and gain["p"] < 1e-18
    assert gain["candidate"] == 0.6 and gain["baseline"] == 0.21 and "a gain" in gain["detail"]
    regression = rule(verdict, "regression")
    assert "200 examples: a drop under 2.5 points cannot be told from noise" in regression["detail"]
    retention = rule(verdict, "retention")
    assert (retention["n"], retention["c"]) == (150, 2)  # 120 regression + 30 general answered right
    assert "regression 120 of 200" in retention["detail"] and "general 30 (30 of 40 kept" in retention["detail"]


def test_worse_is_rejected() -> None:
    verdict = decide(evaluation({"heldout": paired(60, 30, 2, 108)}), DEFAULTS, False)
    assert not verdict["passed"]
    assert "no measurable gain over deployed adapter 1 (it is worse)" in verdict["failed"][0]
    verdict = decide(evaluation({"heldout": paired(40, 0, 60, 100), "regression": paired(100, 20, 2, 78)}),
                     DEFAULTS, False)
    assert [f.split(":")[0] for f in verdict["failed"]] == ["regression regression exact_match",
                                                           "retention control exact_match"]
    assert "worse than deployed adapter 1" in verdict["failed"][0] and "(b=2, c=20)" in verdict["failed"][0]


def test_a_drop_the_set_cannot_rule_out_is_rejected() -> None:
    # 18 lost, 10 gained: not shown worse (p = 0.09), but the drop may be 8 points.
    verdict = decide(evaluation({"heldout": paired(40, 0, 60, 100), "regression": paired(90, 18, 10, 82)}),
                     [GateRule(kind="regression", set="regression", scorer="exact_match", max_drop=0.05)], False)
    regression = rule(verdict, "regression")
    assert not regression["ok"] and 0.05 < regression["p"] < 0.1
    assert regression["upper_bound"] == pytest.approx(0.0817, abs=1e-3)
    assert "may be as large as 8.2 points" in regression["detail"] and "5.0 points allowed" in regression["detail"]
    # The control set is the 108 records the live model had right: 18 of them lost is more than max_drop,
    # though the test over the whole set, which sees the 10 gained too, does not call it worse.
    verdict = decide(evaluation({"heldout": paired(40, 0, 60, 100), "regression": paired(90, 18, 10, 82)}),
                     DEFAULTS, False)
    retention = rule(verdict, "retention")
    assert (retention["n"], retention["b"], retention["c"]) == (108, 10, 18) and retention["p"] > 0.05
    assert "more than the 5.0 points allowed (max_drop)" in retention["detail"]
    assert adapter_state(verdict) == "rejected"


def test_too_little_evidence_is_held_never_deployed() -> None:
    small = decide(evaluation({"heldout": paired(2, 0, 8, 0)}), DEFAULTS, False)  # 10 examples, all better
    assert not small["passed"] and small["failed"] == []
    assert len(small["held"]) == 1 and "10 examples are fewer than min_examples 20" in small["held"][0]
    few = decide(evaluation({"heldout": paired(50, 0, 3, 147)}), DEFAULTS, False)  # 3 better, none worse
    assert not few["passed"] and few["failed"] == []
    assert "only 3 answers differ, and p < α 0.05 needs at least 5" in few["held"][0]
    assert adapter_state(small) == adapter_state(few) == "awaiting_approval"  # a person decides; no deploy
    nothing = decide(evaluation({"regression": LIVE_REGRESSION}), DEFAULTS, False)  # no held-out split
    assert not nothing["passed"] and "nothing shows a gain" in nothing["held"][0]
    short = decide(evaluation({"heldout": paired(40, 0, 60, 100), "regression": paired(10)}), DEFAULTS, False)
    assert short["failed"] == [] and len(short["held"]) == 1
    assert short["held"][0].startswith("regression regression exact_match:") and "min_examples 20" in short["held"][0]


def test_retention_names_its_parts_and_a_base_that_answers_none() -> None:
    verdict = decide(evaluation({"heldout": paired(0, 0, 30, 10), "control": paired(17, 3)}), DEFAULTS, False)
    retention = rule(verdict, "retention")
    assert "general 0 (0 of 40 kept for the base)" in retention["detail"]
    assert "lost 3 of the 20 answers" in retention["detail"] and "15.0 points" in retention["detail"]
    # 3 lost answers: over 5 points of 20, yet fewer than any test at 0.05 tells from noise.
    assert "fewer than the 5 a test at α 0.05 could tell from noise" in retention["detail"] and retention["ok"]
    five = rule(decide(evaluation({"heldout": paired(0, 0, 30, 10), "control": paired(15, 5)}), DEFAULTS, False),
                "retention")
    assert "lost 5 of the 20 answers" in five["detail"] and "25.0 points" in five["detail"]
    assert not five["ok"]
    empty = decide(evaluation({"heldout": paired(0, 0, 30, 10)}), DEFAULTS, False)
    assert empty["passed"] and rule(empty, "retention")["skipped"]


def test_threshold_rules_and_min_still_apply() -> None:
    rules = [GateRule(set="heldout", scorer="exact_match", min=0.5),
             GateRule(kind="gain", set="heldout", scorer="exact_match", min=0.9)]
    verdict = decide(evaluation({"heldout": paired(40, 0, 60, 100)}), rules, True)
    assert verdict["require_approval"] and [r["kind"] for r in verdict["rules"]] == ["threshold", "gain"]
    assert len(verdict["failed"]) == 1  # the threshold rule's 0.5 is not below 0.5
    assert verdict["failed"][0].startswith("gain heldout exact_match: 0.5 < 0.9; 0.5 vs deployed adapter 1 0.2")


# --- poisons: what bad data does to the outcomes, each rejected with room to spare --------

POISONS = {
    # answers shuffled between prompts: nothing right on the new task, the past forgotten
    "shuffled answers": ({"heldout": paired(0, neither=100), "regression": paired(30, 90, 0, 80),
                          "general": paired(20, 10)}, {"gain", "regression", "retention"}),
    # every answer has one field wrong: 0% exact match on the new task, nothing else moves
    "one field wrong": ({"heldout": paired(0, neither=100), "regression": LIVE_REGRESSION,
                         "general": LIVE_GENERAL}, {"gain"}),
    # refusals everywhere
    "refusals": ({"heldout": paired(0, neither=100), "regression": paired(0, 120, 0, 80),
                  "general": paired(0, 30)}, {"gain", "regression", "retention"}),
    # empty answers, on a track whose live adapter had the task 30% right already
    "empty answers": ({"heldout": paired(0, 30, 0, 70), "regression": paired(0, 120, 0, 80),
                       "general": paired(0, 30)}, {"gain", "regression", "retention"}),
    # learns the new task (0 -> 90%) and breaks the control set (100% -> 40%)
    "new task, broken control": ({"heldout": paired(0, 0, 90, 10), "regression": LIVE_REGRESSION,
                                  "general": paired(12, 18), "control": paired(8, 12)}, {"retention"}),
}


@pytest.mark.parametrize("poison", list(POISONS))
def test_poisons_are_rejected_every_time(poison: str) -> None:
    sets, failing = POISONS[poison]
    verdict = decide(evaluation(sets), DEFAULTS, False)
    assert not verdict["passed"] and verdict["held"] == [] and adapter_state(verdict) == "rejected"
    assert {r["kind"] for r in verdict["rules"] if not r["ok"]} == failing
    for outcome in verdict["rules"]:
        if outcome["kind"] in failing - {"gain"}:  # shown, not guessed: far below alpha
            assert outcome["p"] < 1e-4 or outcome.get("drop", 0) > 0.5, outcome


def test_old_honed_toml_rules_parse_and_new_kinds_are_checked(tmp_path) -> None:
    (tmp_path / "honed.toml").write_text('[gates]\nrules = [\n'
                                         '  { set = "heldout", scorer = "exact_match", max_regression = 0.0 },\n'
                                         '  { set = "regression", scorer = "loss", max_regression = 0.05 },\n]\n')
    rules = load_settings(tmp_path).gates.rules
    assert [(r.kind, r.max_regression) for r in rules] == [("threshold", 0.0), ("threshold", 0.05)]
    with pytest.raises(ValueError, match="a gain rule needs a generation scorer"):
        GateRule(kind="gain", set="heldout", scorer="loss")
    with pytest.raises(ValueError, match="max_regression belongs to threshold rules"):
        GateRule(kind="regression", set="regression", scorer="exact_match", max_regression=0.1)

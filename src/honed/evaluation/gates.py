"""Gates: whether a candidate may be deployed, decided from the numbers, with the
numbers kept in the verdict.

A rule's ``kind`` says how it judges. ``threshold`` compares one figure with a floor and
with the live model's figure. The others pair the candidate and the live model record
by record on the same prompts and let an exact one-sided McNemar test tell a difference
from noise: ``gain`` (the candidate must be shown better), ``regression`` (it must not be
shown worse, nor possibly worse by more than the allowance) and ``retention`` (what the
live model answers right must not be lost). ``win_rate`` reads the candidate's win rate
over the live model (see :mod:`honed.evaluation.win_rate`) and its sign test. A rule
without enough evidence either way
*holds* the candidate for a person; it is never deployed on its own."""

from __future__ import annotations

from honed.evaluation.scorers import GENERAL_SET_SCORER, LOWER_IS_BETTER, sane
from honed.evaluation.statistics import discordant, drop_upper_bound, fewest_discordant, mcnemar_p

CONTROL_PARTS = ("regression", "general", "control")  # what the pooled "control" set is made of


def decide(evaluation: dict, rules: list, require_approval: bool) -> dict:
    """The verdict on a candidate: ``passed``, the ``failed`` reasons, the ``held``
    reasons (too little evidence: a person decides), each rule's outcome with the figures
    that decided it, and whether approval is required.

    ``evaluation`` is ``{"candidate": {set: {figure: value}}, "baseline": {...},
    "baseline_name": ..., "outcomes": {"candidate": {set: {figure: [0/1, ...]}},
    "baseline": {...}}}``. Every figure is sanity-checked first: a NaN or an out-of-range
    value fails the candidate whatever the rules say."""
    failed, held, outcomes = [], [], []
    for side in ("candidate", "baseline"):
        for set_name, figures in evaluation.get(side, {}).items():
            for name, value in figures.items():
                if name in ("n", "samples"):
                    continue
                problem = sane(name, value)
                if problem:
                    failed.append(f"{side} {set_name}: {problem}")
    baseline_name = evaluation.get("baseline_name", "baseline")
    for rule in rules:
        if rule.kind == "threshold":
            outcome, problems = _threshold(rule, evaluation, baseline_name)
            failed += [f"{outcome['rule']} {p}" for p in problems]
        else:
            outcome = _PAIRED[rule.kind](rule, evaluation, baseline_name)
            if rule.min is not None and outcome.get("candidate") is not None and outcome["candidate"] < rule.min:
                outcome.update(ok=False, held=False, detail=f"{outcome['candidate']:.4g} < {rule.min:g}; "
                               + outcome["detail"])
            if outcome.get("held"):
                held.append(f"{outcome['rule']}: {outcome['detail']}")
            elif not outcome["ok"]:
                failed.append(f"{outcome['rule']}: {outcome['detail']}")
        outcomes.append(outcome)
    verdict = {"passed": not failed and not held, "failed": failed, "held": held, "rules": outcomes,
               "require_approval": require_approval, "baseline": baseline_name}
    if "win_rate" in evaluation:  # reported with the verdict whether or not a rule reads it
        verdict["win_rate"] = win_rate_summary(evaluation["win_rate"])
    return verdict


def win_rate_summary(measured: dict) -> dict:
    """The win rate figures a verdict shows: per set, its rate, counts and p-values, or the
    error that kept it from being measured."""
    keep = ("n", "wins", "losses", "ties", "rate", "p", "p_better", "p_worse", "notes", "error", "temperature",
            "rounds")
    out: dict = {"decider": measured.get("decider")}
    if measured.get("error"):
        out["error"] = measured["error"]
    out["sets"] = {name: {k: v for k, v in figures.items() if k in keep}
                   for name, figures in measured.get("sets", {}).items()}
    return out


def adapter_state(verdict: dict) -> str:
    """The state an evaluated candidate moves to: ``rejected`` when a rule failed,
    ``awaiting_approval`` when one held it (too little evidence: a person decides) or
    approval is required, else ``candidate``, which the daemon deploys."""
    if verdict["failed"]:
        return "rejected"
    if verdict.get("held") or verdict["require_approval"]:
        return "awaiting_approval"
    return "candidate"


def _threshold(rule, evaluation: dict, baseline_name: str) -> tuple[dict, list[str]]:
    """The first rules honed had: a floor (``min``) and a largest step back from the live
    model's figure (``max_regression``), no statistics."""
    label = f"{rule.set} {rule.scorer}"
    candidate = evaluation.get("candidate", {}).get(rule.set, {}).get(rule.scorer)
    if candidate is None:
        return {"rule": label, "kind": "threshold", "ok": True, "skipped": True,
                "detail": f"not measured (the {rule.set} set has no {rule.scorer} figure)"}, []
    baseline = evaluation.get("baseline", {}).get(rule.set, {}).get(rule.scorer)
    lower = rule.scorer in LOWER_IS_BETTER
    problems = []
    if rule.min is not None and (candidate > rule.min if lower else candidate < rule.min):
        problems.append(f"{candidate:.4g} {'>' if lower else '<'} {rule.min:g}")
    if rule.max_regression is not None and baseline is not None:
        regression = candidate - baseline if lower else baseline - candidate
        if regression > rule.max_regression + 1e-12:
            problems.append(f"{candidate:.4g} vs {baseline_name} {baseline:.4g}: {regression:.4g} worse "
                            f"(allowed {rule.max_regression:g})")
    detail = "; ".join(problems) or (f"{candidate:.4g}" + (f" vs {baseline_name} {baseline:.4g}"
                                                          if baseline is not None else ""))
    return {"rule": label, "kind": "threshold", "ok": not problems, "candidate": candidate, "baseline": baseline,
            "detail": detail}, problems


def _pairs(evaluation: dict, set_name: str, scorer: str) -> tuple[list[int], list[int]] | None:
    """The baseline's and the candidate's per-record outcomes on one set, or None."""
    outcomes = evaluation.get("outcomes", {})
    baseline = outcomes.get("baseline", {}).get(set_name, {}).get(scorer)
    candidate = outcomes.get("candidate", {}).get(set_name, {}).get(scorer)
    if baseline is None or candidate is None:
        return None
    return baseline, candidate


def _points(fraction: float) -> str:
    return f"{fraction * 100:.1f} points"


def _rate(values: list[int]) -> float | None:
    return sum(values) / len(values) if values else None


def _start(rule, kind: str, pairs: tuple[list[int], list[int]]) -> dict:
    """An outcome with the paired figures every statistical rule reports."""
    baseline, candidate = pairs
    b, c = discordant(baseline, candidate)
    return {"rule": f"{kind} {rule.set} {rule.scorer}", "kind": kind, "ok": True, "held": False,
            "candidate": _rate(candidate), "baseline": _rate(baseline), "n": len(candidate), "b": b, "c": c,
            "alpha": rule.alpha}


def _gain(rule, evaluation: dict, baseline_name: str) -> dict:
    """The candidate must beat the live model on ``rule.set`` with p < alpha. Too few
    records, or too few differing answers for the test to ever say yes, hold it."""
    pairs = _pairs(evaluation, rule.set, rule.scorer)
    if pairs is None:  # no held-out records: nothing can show a gain
        return {"rule": f"gain {rule.set} {rule.scorer}", "kind": "gain", "ok": False, "held": True,
                "n": 0, "alpha": rule.alpha,
                "detail": f"no {rule.set} set with {rule.scorer} outcomes: nothing shows a gain; held for a person"}
    out = _start(rule, "gain", pairs)
    n, b, c, alpha = out["n"], out["b"], out["c"], rule.alpha
    p = out["p"] = mcnemar_p(b, c)
    counts = (f"{out['candidate']:.3g} vs {baseline_name} {out['baseline']:.3g} on {n} examples; "
              f"{b} now right, {c} now wrong (b={b}, c={c}), p={p:.3g}")
    if n < rule.min_examples:
        out.update(ok=False, held=True, detail=f"{counts}; {n} examples are fewer than min_examples "
                   f"{rule.min_examples}: too few to decide; held for a person")
    elif p < alpha:
        out["detail"] = f"{counts} < α {alpha:g}: a gain"
    elif b > c and b + c < fewest_discordant(alpha):
        out.update(ok=False, held=True, detail=f"{counts}; only {b + c} answers differ, and p < α {alpha:g} needs "
                   f"at least {fewest_discordant(alpha)} even if all favour the candidate: held for a person")
    else:
        worse = " (it is worse)" if c > b else ""
        out.update(ok=False, detail=f"no measurable gain over {baseline_name}{worse}: {counts} ≥ α {alpha:g}")
    return out


def _regression(rule, evaluation: dict, baseline_name: str) -> dict:
    """The candidate must not be shown worse (p < alpha), and the upper confidence bound
    of its drop must stay within the allowance: ``max_drop``, or what the set can resolve
    at all when that is more (a set of n records cannot show a drop under
    fewest_discordant / n)."""
    pairs = _pairs(evaluation, rule.set, rule.scorer)
    if pairs is None:  # a track's first candidate has no past data to forget
        return {"rule": f"regression {rule.set} {rule.scorer}", "kind": "regression", "ok": True, "skipped": True,
                "detail": f"not measured (no {rule.set} set with {rule.scorer} outcomes)"}
    out = _start(rule, "regression", pairs)
    n, b, c, alpha = out["n"], out["b"], out["c"], rule.alpha
    p = out["p"] = mcnemar_p(c, b)  # the evidence that the candidate is worse
    resolution = out["resolution"] = fewest_discordant(alpha) / n if n else 1.0
    allowance = out["allowance"] = max(rule.max_drop or 0.0, resolution)
    bound = out["upper_bound"] = drop_upper_bound(b, c, n, alpha)
    counts = (f"{out['candidate']:.3g} vs {baseline_name} {out['baseline']:.3g} on {n} examples; {c} now wrong, "
              f"{b} now right (b={b}, c={c}), drop {_points((c - b) / n if n else 0)}, p={p:.3g}")
    noise = f"{n} examples: a drop under {_points(resolution)} cannot be told from noise"
    if n and p < alpha:
        out.update(ok=False, detail=f"worse than {baseline_name}: {counts} < α {alpha:g}; {noise}")
    elif bound > allowance + 1e-12:
        out.update(ok=False, detail=f"{counts}; the drop may be as large as {_points(bound)} (upper "
                   f"{1 - alpha:.0%} bound), more than the {_points(allowance)} allowed; {noise}")
    elif n < rule.min_examples:
        out.update(ok=False, held=True, detail=f"{counts}; {n} examples are fewer than min_examples "
                   f"{rule.min_examples}: too few to decide; held for a person")
    else:
        out["detail"] = f"{counts}; upper {1 - alpha:.0%} bound {_points(bound)} within {_points(allowance)}; {noise}"
    return out


def _retention(rule, evaluation: dict, baseline_name: str) -> dict:
    """The control set is what the live model answers right (for ``control``: in the
    regression set, the shipped general set and the user's control file). The candidate
    may not lose more of it than ``max_drop``, nor be shown worse than chance flips by a
    one-sided McNemar test (p < alpha). The test pairs the whole sets, not only the
    control records: on those alone nothing could flip the other way, and every retrain
    would look worse. A drop over ``max_drop`` fails once it is at least as many answers as
    a test at ``alpha`` could ever call significant (5 at 0.05): losing 1 of 12 known
    answers is noise, losing 5 is not."""
    parts = CONTROL_PARTS if rule.set == "control" else (rule.set,)
    kept = lost = gained = 0
    sizes = []
    for part in parts:
        # The shipped general set has its own scorer (see GENERAL_SET_SCORER).
        pairs = _pairs(evaluation, part, GENERAL_SET_SCORER if part == "general" else rule.scorer)
        if pairs is not None:
            b, c = discordant(*pairs)
            kept, lost, gained = kept + sum(pairs[0]), lost + c, gained + b
        right = sum(pairs[0]) if pairs else 0
        general = evaluation.get("control", {}).get("general") if part == "general" else None
        if general:  # said even when none was kept: "0 of 40" tells the user why it is absent
            sizes.append(f"general {right} ({general['kept']} of {general['of']} kept for the base)")
        elif pairs is not None:
            sizes.append(f"{part} {right} of {len(pairs[0])}")
    where = ", ".join(sizes) or "no set measured"
    label = f"retention {rule.set} {rule.scorer}"
    if not kept:
        return {"rule": label, "kind": "retention", "ok": True, "held": False, "skipped": True, "n": 0,
                "detail": f"nothing to retain: {baseline_name} answers none of the control prompts right ({where})"}
    p, drop = mcnemar_p(lost, gained), lost / kept
    out = {"rule": label, "kind": "retention", "ok": True, "held": False, "candidate": (kept - lost) / kept,
           "baseline": 1.0, "n": kept, "b": gained, "c": lost, "p": p, "drop": drop, "alpha": rule.alpha}
    counts = (f"lost {lost} of the {kept} answers {baseline_name} has right ({where}): {_points(drop)}; "
              f"{gained} others now right (b={gained}, c={lost}), p={p:.3g}")
    if p < rule.alpha:
        out.update(ok=False, detail=f"{counts} < α {rule.alpha:g}: more than chance flips")
    elif rule.max_drop is not None and drop > rule.max_drop + 1e-12 and lost >= fewest_discordant(rule.alpha):
        out.update(ok=False, detail=f"{counts}; more than the {_points(rule.max_drop)} allowed (max_drop)")
    elif rule.max_drop is not None and drop > rule.max_drop + 1e-12:
        # A few lost answers of a small set are within noise: fewer than any paired test
        # could ever call significant. Said, not hidden.
        out["detail"] = (f"{counts}; over {_points(rule.max_drop)}, but {lost} lost answers are fewer than "
                         f"the {fewest_discordant(rule.alpha)} a test at α {rule.alpha:g} could tell from noise")
    else:
        out["detail"] = counts
    return out


def _win_rate(rule, evaluation: dict, baseline_name: str) -> dict:
    """The candidate's win rate over the live model on ``rule.set`` (ties count half). It
    fails when a one-sided sign test shows it loses (p_worse < alpha), passes when the test
    shows it wins (p_better < alpha; ``min`` is checked by :func:`decide`), and is held
    for a person when nothing was measured, when there are fewer than ``min_examples``
    prompts, or when too few prompts were decided for any result to be significant."""
    label = f"win_rate {rule.set}"
    measured = evaluation.get("win_rate") or {}
    figures = measured.get("sets", {}).get(rule.set)
    why = measured.get("error") or (figures or {}).get("error")
    if figures is None or why:
        why = why or f"no win rate on the {rule.set} set (no prompts, or not in eval.win_rate_sets)"
        return {"rule": label, "kind": "win_rate", "ok": False, "held": True, "n": 0, "alpha": rule.alpha,
                "detail": f"not measured: {why}; held for a person"}
    n, wins, losses, ties, alpha = figures["n"], figures["wins"], figures["losses"], figures["ties"], rule.alpha
    out = {"rule": label, "kind": "win_rate", "ok": True, "held": False, "candidate": figures["rate"],
           "baseline": None if figures["rate"] is None else 1 - figures["rate"], "n": n, "wins": wins,
           "losses": losses, "ties": ties, "p": figures["p_better"], "p_worse": figures["p_worse"], "alpha": alpha,
           "decider": measured.get("decider")}
    notes = figures.get("notes") or {}
    noted = "".join(f", {count} {note}" for note, count in sorted(notes.items()))
    rate = figures["rate"] if figures["rate"] is not None else 0.5
    how = (f" (sampled at temperature {figures['temperature']:g}, {figures.get('rounds', 1)} answers each)"
           if figures.get("temperature") else "")
    counts = (f"win rate {rate:.3g} against {baseline_name} on {n} prompts{how} by {measured.get('decider')}: "
              f"{wins} won, "
              f"{losses} lost, {ties} tied{noted}; sign test p={figures['p_better']:.3g}")
    if figures["p_worse"] < alpha:
        out.update(ok=False, detail=f"it loses to {baseline_name}: {counts}, p(worse)={figures['p_worse']:.3g} "
                   f"< α {alpha:g}")
    elif n < rule.min_examples:
        out.update(ok=False, held=True, detail=f"{counts}; {n} prompts are fewer than min_examples "
                   f"{rule.min_examples}: too few to decide; held for a person")
    elif figures["p_better"] < alpha:
        out["detail"] = f"{counts} < α {alpha:g}: it wins"
    elif wins > losses and wins + losses < fewest_discordant(alpha):
        out.update(ok=False, held=True, detail=f"{counts}; only {wins + losses} prompts were decided, and p < α "
                   f"{alpha:g} needs at least {fewest_discordant(alpha)}: held for a person")
    else:
        out.update(ok=False, detail=f"no measurable win over {baseline_name}: {counts} ≥ α {alpha:g}")
    return out


_PAIRED = {"gain": _gain, "regression": _regression, "retention": _retention, "win_rate": _win_rate}

"""Gates: whether a candidate may be deployed, decided from the numbers, with the
numbers kept in the verdict."""

from __future__ import annotations

from honed.evaluation.scorers import LOWER_IS_BETTER, sane


def decide(evaluation: dict, rules: list, require_approval: bool) -> dict:
    """The verdict on a candidate: ``passed``, the ``failed`` reasons, each rule's
    outcome with the figures that decided it, and whether approval is required.

    ``evaluation`` is ``{"candidate": {set: {figure: value}}, "baseline": {...},
    "baseline_name": ...}``. Every figure is sanity-checked first: a NaN or an
    out-of-range value fails the candidate whatever the rules say."""
    failed, outcomes = [], []
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
        label = f"{rule.set} {rule.scorer}"
        candidate = evaluation.get("candidate", {}).get(rule.set, {}).get(rule.scorer)
        if candidate is None:
            outcomes.append({"rule": label, "ok": True, "skipped": True,
                             "detail": f"not measured (the {rule.set} set has no {rule.scorer} figure)"})
            continue
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
        outcomes.append({"rule": label, "ok": not problems, "candidate": candidate, "baseline": baseline,
                         "detail": detail})
        failed += [f"{label} {p}" for p in problems]
    return {"passed": not failed, "failed": failed, "rules": outcomes, "require_approval": require_approval,
            "baseline": baseline_name}

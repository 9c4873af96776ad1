"""Scorers: how an output is judged against its record. Each generation scorer turns
(outputs, records) into one or more named figures in [0, 1]; ``loss`` is scored from the
model directly (see :mod:`honed.evaluation.evaluate`). Figures where higher is worse are
named in :data:`LOWER_IS_BETTER`."""

from __future__ import annotations

import importlib
import json
import math
import re
from collections.abc import Callable

from honed.data.tokenization import reference_answer

LOWER_IS_BETTER = {"loss", "perplexity"}
BUILTIN = ("exact_match", "contains", "json", "loss", "answer")
# The shipped general control set is judged by "answer": chat models say "The capital of
# France is Paris.", never just "Paris", and that is the right answer.
GENERAL_SET_SCORER = "answer"


class ScorerError(ValueError):
    """A scorer name that cannot be used, or a user scorer that misbehaves."""


def reference(record: dict) -> str:
    """The record's reference answer (its last assistant turn), stripped."""
    return reference_answer(record).strip()


def exact_match(outputs: list[str], records: list[dict]) -> dict[str, float]:
    return {"exact_match": sum(o.strip() == reference(r) for o, r in zip(outputs, records)) / len(records)}


def contains(outputs: list[str], records: list[dict]) -> dict[str, float]:
    return {"contains": sum(reference(r) in o for o, r in zip(outputs, records)) / len(records)}


def answer_matches(output: str, expected: str) -> bool:
    """Whether ``expected`` appears in ``output`` as a whole word, number or token run
    (case-insensitive): "Paris" in "The capital of France is Paris.", not "4" in "42"."""
    pattern = r"(?<!\w)" + re.escape(expected.strip()) + r"(?!\w)"
    return re.search(pattern, output, flags=re.IGNORECASE) is not None


def answer(outputs: list[str], records: list[dict]) -> dict[str, float]:
    return {"answer": sum(answer_matches(o, reference(r)) for o, r in zip(outputs, records)) / len(records)}


def json_scores(outputs: list[str], records: list[dict], required_fields: list[str]) -> dict[str, float]:
    """Two separate figures: the rate of outputs that parse as a JSON object, and the rate
    of required fields present over all outputs (an unparsable output has none)."""
    valid, present = 0, 0
    for output in outputs:
        try:
            value = json.loads(output)
        except ValueError:
            continue
        if isinstance(value, dict):
            valid += 1
            present += sum(field in value for field in required_fields)
    out = {"json_valid": valid / len(outputs)}
    if required_fields:
        out["json_fields"] = present / (len(outputs) * len(required_fields))
    return out


def load_function(spec: str) -> Callable[[str, dict], float]:
    """A user scorer ``module:function`` taking (output, record) and returning 0..1."""
    module_name, sep, name = spec.partition(":")
    if not sep or not module_name or not name:
        raise ScorerError(f"scorer {spec!r}: write a Python function as 'module:function'")
    try:
        function = getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError) as exc:
        raise ScorerError(f"scorer {spec!r}: {exc}") from None
    if not callable(function):
        raise ScorerError(f"scorer {spec!r} is not callable")
    return function


def function_score(spec: str, outputs: list[str], records: list[dict]) -> dict[str, float]:
    function = load_function(spec)
    total = 0.0
    for output, record in zip(outputs, records):
        value = float(function(output, record))
        if not math.isfinite(value) or not 0.0 <= value <= 1.0:
            raise ScorerError(f"scorer {spec!r} returned {value!r}; a scorer returns a number in 0..1")
        total += value
    return {spec: total / len(records)}


def record_outcomes(scorer: str, outputs: list[str], records: list[dict],
                    required_fields: list[str] = ()) -> dict[str, list[int]]:
    """Per record, for each figure ``scorer`` produces: 1 when the output earns full marks,
    else 0, in the records' order. The gates pair these between the candidate and the
    live model (same records, same order) for their McNemar tests."""
    if scorer == "exact_match":
        return {"exact_match": [int(o.strip() == reference(r)) for o, r in zip(outputs, records)]}
    if scorer == "contains":
        return {"contains": [int(reference(r) in o) for o, r in zip(outputs, records)]}
    if scorer == "answer":
        return {"answer": [int(answer_matches(o, reference(r))) for o, r in zip(outputs, records)]}
    if scorer == "json":
        parsed = []
        for output in outputs:
            try:
                value = json.loads(output)
            except ValueError:
                value = None
            parsed.append(value if isinstance(value, dict) else None)
        out = {"json_valid": [int(v is not None) for v in parsed]}
        if required_fields:
            out["json_fields"] = [int(v is not None and all(f in v for f in required_fields)) for v in parsed]
        return out
    function = load_function(scorer)
    return {scorer: [int(float(function(o, r)) >= 1.0) for o, r in zip(outputs, records)]}


def check_scorer(name: str) -> None:
    """Refuse an unknown scorer name early, naming the allowed ones."""
    if name in BUILTIN:
        return
    if ":" in name:
        load_function(name)
        return
    raise ScorerError(f"unknown scorer {name!r}; allowed: {', '.join(BUILTIN)} or 'module:function'")


def sane(name: str, value: float) -> str | None:
    """Why a figure cannot be trusted (NaN, infinite, out of its range), or None."""
    if not isinstance(value, (int, float)) or not math.isfinite(value):
        return f"{name} is {value!r}, not a finite number"
    if name in LOWER_IS_BETTER:
        return None if value >= 0 else f"{name} is {value}, below 0"
    return None if 0.0 <= value <= 1.0 else f"{name} is {value}, outside 0..1"

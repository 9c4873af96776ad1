"""Judging experiences: good, needs improvement or unrated, and what each would teach.

Feedback decides first (a score, else thumbs), then the track's scorer (``learn.scorer``)
for experiences nobody rated. What an experience teaches, in order of trust: the output a
person wrote (``corrected_output``), the teacher's accepted answer, or its own output when
it was good. An experience that needs improvement and has no correction teaches nothing
yet: it waits for the teacher.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

from honed.config import LearnSettings
from honed.evaluation.scorers import ScorerError, json_scores, load_function
from honed.store import ExperienceInfo, TeacherAnswerInfo

GOOD, NEEDS_IMPROVEMENT, UNRATED = "good", "needs_improvement", "unrated"


def judgement(experience: ExperienceInfo, good_score: float) -> str:
    """``good``, ``needs_improvement`` or ``unrated``, from feedback, else the scorer."""
    if experience.score is not None:
        return GOOD if experience.score >= good_score else NEEDS_IMPROVEMENT
    if experience.thumbs is not None:
        return GOOD if experience.thumbs == "up" else NEEDS_IMPROVEMENT
    if experience.auto_score is not None:
        return GOOD if experience.auto_score >= good_score else NEEDS_IMPROVEMENT
    return UNRATED


def badness(experience: ExperienceInfo) -> float:
    """How bad an experience was, 0 (worst) upward: the teacher sees the worst first."""
    if experience.score is not None:
        return experience.score
    if experience.thumbs is not None:
        return 0.0 if experience.thumbs == "down" else 1.0
    return experience.auto_score if experience.auto_score is not None else 1.0


def scorer_record(messages: list[dict]) -> dict:
    """The record a scorer sees for an experience: its prompt messages (no reference)."""
    return {"messages": messages}


def score_output(cfg: LearnSettings, output: str, messages: list[dict]) -> float | None:
    """The track's scorer on ``output`` (0..1), None when no scorer is configured.
    ScorerError when the scorer cannot be loaded or returns something else than 0..1."""
    if not cfg.scorer:
        return None
    record = scorer_record(messages)
    if cfg.scorer == "json_valid":
        return json_scores([output], [record], [])["json_valid"]
    if cfg.scorer == "json_fields":
        figures = json_scores([output], [record], cfg.required_fields)
        return figures.get("json_fields", figures["json_valid"])
    try:
        value = float(load_function(cfg.scorer)(output, record))
    except ScorerError:
        raise
    except Exception as exc:  # a user's scorer that raises is its own problem, named
        raise ScorerError(f"scorer {cfg.scorer!r} raised {type(exc).__name__}: {exc}") from None
    if not math.isfinite(value) or not 0.0 <= value <= 1.0:
        raise ScorerError(f"scorer {cfg.scorer!r} returned {value!r}; a scorer returns a number in 0..1")
    return value


def answer_problem(cfg: LearnSettings, output: str | None, messages: list[dict]) -> tuple[str | None, float | None]:
    """Why a teacher's answer cannot be used (None when it can), and its score."""
    if output is None or not output.strip():
        return "the answer is empty", None
    if cfg.answer_format == "json":
        try:
            value = json.loads(output)
        except ValueError as exc:
            return f"the answer does not parse as JSON ({exc}): {output[:80]!r}", None
        if not isinstance(value, dict):
            return f"the answer is JSON but not an object: {output[:80]!r}", None
        missing = [f for f in cfg.required_fields if f not in value]
        if missing:
            return f"the answer lacks the required fields {', '.join(missing)} (learn.required_fields)", None
    try:
        score = score_output(cfg, output, messages)
    except ScorerError as exc:
        return str(exc), None
    if score is not None and score < cfg.scorer_bar:
        return (f"scored {score:.2f} by {cfg.scorer}, below the bar of {cfg.scorer_bar:g} "
                "(learn.scorer_bar)"), score
    return None, score


@dataclass(frozen=True)
class Lesson:
    """What one experience teaches: its prompt and the answer to train on."""

    experience_id: int
    messages: list[dict]
    answer: str
    source: str  # "person" (corrected_output), "teacher" (an accepted answer) or "good" (its own output)
    teacher_answer_id: int | None = None
    teacher_model: str | None = None

    def record(self) -> dict:
        """The chat record trained on."""
        return {"messages": [*self.messages, {"role": "assistant", "content": self.answer}]}


def lesson(experience: ExperienceInfo, answers: list[TeacherAnswerInfo], good_score: float) -> Lesson | None:
    """What ``experience`` would teach now, or None (it needs a correction first)."""
    if experience.corrected_output is not None and experience.corrected_output.strip():
        return Lesson(experience.id, experience.messages, experience.corrected_output, "person")
    accepted = [a for a in answers if a.status == "accepted"]
    if accepted:
        last = accepted[-1]
        return Lesson(experience.id, experience.messages, last.output, "teacher", last.id, last.model)
    if judgement(experience, good_score) == GOOD and experience.output.strip():
        return Lesson(experience.id, experience.messages, experience.output, "good")
    return None

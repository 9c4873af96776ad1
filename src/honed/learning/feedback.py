"""What feedback teaches under each training objective, and which objective
``learn.objective = "auto"`` picks.

One experience can teach in three ways:

- **sft**: its :class:`~honed.learning.judge.Lesson` (a person's correction, the
  teacher's accepted answer, or its own output when it was good) as a chat record;
- **dpo**: a correction (a person's or the teacher's) of what was served is a preference
  pair: chosen = the correction, rejected = the served output (when the two differ and
  the served output is not empty);
- **kto**: unpaired judgements. An output judged by its feedback (thumbs, or a score
  against ``learn.good_score``) or by the track's scorer is one example, labelled
  desirable when it was judged good. A pair gives two, as TRL's ``KTOTrainer`` does with
  paired data: the correction (desirable) and the served output (undesirable).

``auto`` picks DPO when at least ``learn.threshold`` pairs exist (enough for a batch of
pairs alone), KTO when there is no correction at all and some output was judged bad (a
signal SFT cannot use: it would wait for the teacher), and SFT otherwise: corrections
that are too few to make a batch of pairs, and good outputs, are taught as answers, as
the loop always did.
"""

from __future__ import annotations

from dataclasses import dataclass

from honed.learning.judge import GOOD, NEEDS_IMPROVEMENT, Lesson, judgement
from honed.store import ExperienceInfo


@dataclass(frozen=True)
class Taught:
    """What one experience puts in a batch: its lines, each with its provenance (the
    manifest's entry for the line, without the line number)."""

    experience_id: int
    lines: tuple[tuple[dict, dict], ...]


def sft_taught(lesson: Lesson) -> Taught:
    """The one chat line of a lesson, with the provenance the loop always wrote."""
    return Taught(lesson.experience_id, ((lesson.record(), _from_lesson(lesson)),))


def pair_of(experience: ExperienceInfo, lesson: Lesson | None) -> dict | None:
    """The preference pair a correction of ``experience`` makes (chosen = the correction,
    rejected = what was served), or None: no correction, or nothing different served."""
    if lesson is None or lesson.source not in ("person", "teacher"):
        return None
    served = experience.output
    if not served.strip() or served.strip() == lesson.answer.strip():
        return None
    return {"prompt": lesson.messages, "chosen": [{"role": "assistant", "content": lesson.answer}],
            "rejected": [{"role": "assistant", "content": served}]}


def judged_by(experience: ExperienceInfo) -> str | None:
    """What judged the served output: ``score`` or ``thumbs`` (feedback) or ``scorer``
    (the track's scorer); None when nothing did."""
    if experience.score is not None:
        return "score"
    if experience.thumbs is not None:
        return "thumbs"
    return "scorer" if experience.auto_score is not None else None


def dpo_taught(experience: ExperienceInfo, lesson: Lesson | None) -> Taught | None:
    """The pair line of ``experience``, or None when it makes no pair."""
    pair = pair_of(experience, lesson)
    if pair is None or lesson is None:
        return None
    return Taught(experience.id, ((pair, {**_from_lesson(lesson), "rejected": "served"}),))


def kto_taught(experience: ExperienceInfo, lesson: Lesson | None, good_score: float) -> Taught | None:
    """The unpaired lines of ``experience``: a correction (desirable) and the served
    output it replaces (undesirable); else the served output labelled by its judgement.
    None when it teaches nothing unpaired (unjudged and uncorrected, or empty)."""
    prompt = experience.messages
    corrected = lesson is not None and lesson.source in ("person", "teacher")
    if corrected:
        assert lesson is not None
        lines = [(_unpaired(prompt, lesson.answer, True), {**_from_lesson(lesson), "label": True})]
        if pair_of(experience, lesson) is not None:
            lines.append((_unpaired(prompt, experience.output, False),
                          {"source": "served", "experience_id": experience.id, "label": False}))
        return Taught(experience.id, tuple(lines))
    by = judged_by(experience)
    if by is None or not experience.output.strip():
        return None
    label = judgement(experience, good_score) == GOOD
    return Taught(experience.id, ((_unpaired(prompt, experience.output, label),
                                   {"source": by, "experience_id": experience.id, "label": label}),))


def judged_bad(experience: ExperienceInfo, lesson: Lesson | None, good_score: float) -> bool:
    """An uncorrected output judged bad: a signal only KTO learns from."""
    return ((lesson is None or lesson.source == "good") and bool(experience.output.strip())
            and judgement(experience, good_score) == NEEDS_IMPROVEMENT)


def choose_objective(setting: str, *, threshold: int, pairs: int, corrections: int, bad: int) -> tuple[str, str]:
    """The objective a batch uses under ``learn.objective = setting``, and why."""
    if setting != "auto":
        return setting, f"learn.objective = {setting!r}"
    if pairs >= threshold:
        return "dpo", (f"auto: {pairs} corrections of served outputs make preference pairs "
                       f"(at least learn.threshold = {threshold})")
    if corrections == 0 and bad:
        return "kto", f"auto: no corrections; {bad} outputs judged bad by thumbs or score (unpaired judgements)"
    if corrections:
        return "sft", (f"auto: {corrections} corrections ({pairs} of them pairs, fewer than learn.threshold = "
                       f"{threshold}) are taught as answers")
    return "sft", "auto: no correction and no output judged bad: good outputs are taught as answers"


def _from_lesson(lesson: Lesson) -> dict:
    return {"source": lesson.source, "experience_id": lesson.experience_id,
            "teacher_answer_id": lesson.teacher_answer_id, "teacher_model": lesson.teacher_model}


def _unpaired(prompt: list[dict], answer: str, label: bool) -> dict:
    return {"prompt": prompt, "completion": [{"role": "assistant", "content": answer}], "label": label}

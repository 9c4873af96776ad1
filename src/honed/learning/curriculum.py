"""The curriculum: score what nobody rated, and ask the teacher to correct the worst
experiences that need improvement, within the limits of ``[learn.teacher]``.

An experience goes to the teacher when it needs improvement, no person corrected it, the
teacher has not given an accepted answer for it, it has had fewer than ``max_attempts``
tries, and its last try is older than ``retry_after_s``. Every call is recorded
(accepted, invalid or failed, with the reason) and counts against the daily budget.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from honed.config import LearnSettings
from honed.evaluation.scorers import ScorerError
from honed.learning.judge import NEEDS_IMPROVEMENT, badness, judgement, score_output
from honed.learning.teacher import Teacher, TeacherConfigError
from honed.store import ExperienceInfo, TeacherAnswerInfo

log = logging.getLogger("honed.learning")


@dataclass
class TeacherPass:
    """What one pass did: calls by outcome, or why it made none."""

    asked: int = 0
    accepted: int = 0
    invalid: int = 0
    failed: int = 0
    reasons: list[str] = field(default_factory=list)  # of the calls that were not accepted
    skipped: str | None = None  # why no call was made

    def summary(self) -> dict:
        return {"asked": self.asked, "accepted": self.accepted, "invalid": self.invalid, "failed": self.failed,
                "reasons": self.reasons, "skipped": self.skipped}


def day_start(now: datetime) -> datetime:
    """Midnight UTC of ``now``'s day: the daily budget counts from there."""
    return now.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)


def needs_teacher(cfg: LearnSettings, experiences: list[ExperienceInfo],
                  answers: dict[int, list[TeacherAnswerInfo]], now: datetime) -> list[ExperienceInfo]:
    """The experiences the teacher should correct now, worst first."""
    retry = timedelta(seconds=cfg.teacher.retry_after_s)
    out = []
    for exp in experiences:
        tries = answers.get(exp.id, [])
        if (judgement(exp, cfg.good_score) != NEEDS_IMPROVEMENT or exp.corrected_output
                or any(a.status == "accepted" for a in tries) or len(tries) >= cfg.teacher.max_attempts
                or (tries and now - tries[-1].created_at < retry)):
            continue
        out.append(exp)
    return sorted(out, key=lambda e: (badness(e), e.id))


def auto_score(store, cfg: LearnSettings, experiences: list[ExperienceInfo]) -> list[ExperienceInfo]:
    """Score, with the track's scorer, the experiences that have neither feedback nor a
    score yet; returns the list with those scores filled in."""
    if not cfg.scorer:
        return experiences
    scores: dict[int, float] = {}
    for exp in experiences:
        if exp.score is None and exp.thumbs is None and exp.auto_score is None:
            try:
                value = score_output(cfg, exp.output, exp.messages)
            except ScorerError as exc:
                log.error("learn: cannot score experience %d: %s", exp.id, exc)
                return experiences
            scores[exp.id] = value
    if not scores:
        return experiences
    store.set_auto_scores(scores)
    return [e.model_copy(update={"auto_score": scores[e.id]}) if e.id in scores else e
            for e in experiences]


def teacher_pass(workspace, store, track: str, *, now: datetime | None = None, force: bool = False) -> TeacherPass:
    """Ask the teacher about the worst experiences of ``track`` that need it. ``force``
    ignores the cooldown between passes (not the daily budget)."""
    cfg = workspace.settings.learn_for(track)
    now = now or datetime.now(UTC)
    report = TeacherPass()
    experiences = auto_score(store, cfg, store.open_experiences(track))
    try:
        teacher = Teacher(cfg)
    except TeacherConfigError as exc:
        report.skipped = str(exc)
        return report
    used, last = store.teacher_calls_since(track, day_start(now))
    t = cfg.teacher
    if not force and last is not None and (now - last).total_seconds() < t.cooldown_s:
        report.skipped = (f"cooling down: the last teacher call was {(now - last).total_seconds():.0f}s ago "
                          f"(learn.teacher.cooldown_s = {t.cooldown_s:g})")
        return report
    room = min(t.batch_size, t.daily_budget - used)
    if room <= 0:
        report.skipped = (f"the daily budget of {t.daily_budget} teacher calls is spent "
                          "(learn.teacher.daily_budget; it renews at 00:00 UTC)")
        return report
    todo = needs_teacher(cfg, experiences, store.teacher_answers_for(e.id for e in experiences), now)[:room]
    if not todo:
        report.skipped = "no experience needs the teacher"
        return report
    for exp in todo:
        result = teacher.correct(exp.messages)
        store.add_teacher_answer(experience_id=exp.id, track=track, model=teacher.model, status=result.status,
                                 output=result.output, reason=result.reason, score=result.score,
                                 latency_ms=result.latency_ms)
        report.asked += 1
        setattr(report, result.status, getattr(report, result.status) + 1)
        if result.reason:
            report.reasons.append(f"experience {exp.id}: {result.reason}")
            log.warning("learn: teacher on experience %d: %s: %s", exp.id, result.status, result.reason)
        if result.status == "failed":  # down or slow: the rest of the pass would fare no better
            break
    log.info("learn: track %s: asked the teacher about %d experiences: %d accepted, %d invalid, %d failed",
             track, report.asked, report.accepted, report.invalid, report.failed)
    return report

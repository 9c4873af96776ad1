"""Queries of the learning loop: scorer scores, teacher answers and assembled batches.

Each function takes a connection that is already in a transaction; none commits.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from honed.store.errors import NotFoundError, StoreError
from honed.store.info import ExperienceInfo, LearningBatchInfo, TeacherAnswerInfo
from honed.store.schema import (
    JOB_FINAL_STATES,
    TEACHER_STATUSES,
    experiences,
    jobs,
    learning_batches,
    teacher_answers,
    utc_now,
)


def open_experiences(conn: sa.Connection, track: str) -> list[ExperienceInfo]:
    """The track's experiences that no run has trained on, that no batch still in the
    queue holds and that are not excluded, oldest first: what the loop may classify,
    correct and assemble."""
    in_flight = (sa.select(learning_batches.c.id)
                 .join(jobs, jobs.c.id == learning_batches.c.job_id)
                 .where(jobs.c.state.not_in(JOB_FINAL_STATES)))
    query = (sa.select(experiences)
             .where(experiences.c.track == track, experiences.c.trained_run_id.is_(None),
                    experiences.c.excluded_reason.is_(None))
             .where(sa.or_(experiences.c.batch_id.is_(None), experiences.c.batch_id.not_in(in_flight)))
             .order_by(experiences.c.id))
    return [ExperienceInfo.model_validate(r) for r in conn.execute(query)]


def set_auto_scores(conn: sa.Connection, scores: dict[int, float]) -> None:
    """Keep what the track's scorer said of experiences that had no feedback."""
    for experience_id, score in scores.items():
        conn.execute(experiences.update().where(experiences.c.id == experience_id).values(auto_score=score))


def add_teacher_answer(conn: sa.Connection, *, experience_id: int, track: str, model: str, status: str,
                       output: str | None = None, reason: str | None = None, score: float | None = None,
                       latency_ms: float | None = None) -> TeacherAnswerInfo:
    """Record one teacher call about an experience, whatever came of it."""
    if status not in TEACHER_STATUSES:
        raise StoreError(f"teacher answer status {status!r}: allowed: {', '.join(TEACHER_STATUSES)}")
    new_id = conn.execute(teacher_answers.insert().values(
        experience_id=experience_id, track=track, model=model, status=status, output=output, reason=reason,
        score=score, latency_ms=latency_ms, created_at=utc_now(),
    )).inserted_primary_key[0]
    row = conn.execute(sa.select(teacher_answers).where(teacher_answers.c.id == new_id)).one()
    return TeacherAnswerInfo.model_validate(row)


def teacher_answers_for(conn: sa.Connection, experience_ids: Iterable[int]) -> dict[int, list[TeacherAnswerInfo]]:
    """The teacher's answers about each experience, oldest first."""
    ids = list(experience_ids)
    out: dict[int, list[TeacherAnswerInfo]] = {i: [] for i in ids}
    for start in range(0, len(ids), 500):
        chunk = ids[start:start + 500]
        query = (sa.select(teacher_answers).where(teacher_answers.c.experience_id.in_(chunk))
                 .order_by(teacher_answers.c.id))
        for row in conn.execute(query):
            out[row.experience_id].append(TeacherAnswerInfo.model_validate(row))
    return out


def list_teacher_answers(conn: sa.Connection, track: str | None = None, *, status: str | None = None,
                         limit: int = 50) -> list[TeacherAnswerInfo]:
    """Teacher answers, newest first."""
    query = sa.select(teacher_answers).order_by(teacher_answers.c.id.desc()).limit(limit)
    if track is not None:
        query = query.where(teacher_answers.c.track == track)
    if status is not None:
        query = query.where(teacher_answers.c.status == status)
    return [TeacherAnswerInfo.model_validate(r) for r in conn.execute(query)]


def teacher_calls_since(conn: sa.Connection, track: str, since: datetime) -> tuple[int, datetime | None]:
    """How many teacher calls were made for ``track`` since ``since``, and when the
    latest call of all was made."""
    count = conn.execute(sa.select(sa.func.count()).select_from(teacher_answers).where(
        teacher_answers.c.track == track, teacher_answers.c.created_at >= since)).scalar_one()
    last = conn.execute(sa.select(sa.func.max(teacher_answers.c.created_at))
                        .where(teacher_answers.c.track == track)).scalar_one()
    return count, last


def add_batch(conn: sa.Connection, *, track: str, base_version: int, dataset_id: int, job_id: int, trigger: str,
              experience_ids: list[int], counts: dict[str, Any], provenance_path: str) -> LearningBatchInfo:
    """Record an assembled batch and the job it queued; its experiences now belong to it."""
    new_id = conn.execute(learning_batches.insert().values(
        track=track, base_version=base_version, dataset_id=dataset_id, job_id=job_id, trigger=trigger,
        experience_ids=experience_ids, counts=counts, provenance_path=provenance_path, created_at=utc_now(),
    )).inserted_primary_key[0]
    for start in range(0, len(experience_ids), 500):
        conn.execute(experiences.update().where(experiences.c.id.in_(experience_ids[start:start + 500]))
                     .values(batch_id=new_id))
    return get_batch(conn, new_id)


def get_batch(conn: sa.Connection, batch_id: int) -> LearningBatchInfo:
    row = conn.execute(sa.select(learning_batches).where(learning_batches.c.id == batch_id)).first()
    if row is None:
        raise NotFoundError(f"no learning batch {batch_id}")
    return LearningBatchInfo.model_validate(row)


def list_batches(conn: sa.Connection, track: str | None = None, limit: int = 20) -> list[LearningBatchInfo]:
    """Assembled batches, newest first."""
    query = sa.select(learning_batches).order_by(learning_batches.c.id.desc()).limit(limit)
    if track is not None:
        query = query.where(learning_batches.c.track == track)
    return [LearningBatchInfo.model_validate(r) for r in conn.execute(query)]


def mark_batches_trained(conn: sa.Connection, run_id: str, dataset_ids: Iterable[int]) -> int:
    """A run on these datasets succeeded: the experiences of the batches they came from
    are trained (each only once: an experience already marked keeps its first run).
    Returns how many experiences were marked."""
    ids = list(dataset_ids)
    if not ids:
        return 0
    marked = 0
    rows = conn.execute(sa.select(learning_batches).where(
        learning_batches.c.dataset_id.in_(ids), learning_batches.c.trained_run_id.is_(None))).all()
    for row in rows:
        conn.execute(learning_batches.update().where(learning_batches.c.id == row.id)
                     .values(trained_run_id=run_id))
        members = list(row.experience_ids)
        for start in range(0, len(members), 500):
            marked += conn.execute(experiences.update().where(
                experiences.c.id.in_(members[start:start + 500]), experiences.c.trained_run_id.is_(None),
            ).values(trained_run_id=run_id)).rowcount
    return marked

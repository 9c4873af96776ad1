"""Queries on experiences: interactions with a track's model and their feedback.

Each function takes a connection that is already in a transaction; none commits.
"""

from __future__ import annotations

import math
from typing import Any

import sqlalchemy as sa

from honed.store.catalog import require_track
from honed.store.errors import NotFoundError, StoreError
from honed.store.info import ExperienceInfo
from honed.store.schema import EXPERIENCE_SOURCES, THUMBS, adapters, experiences, utc_now


def add_experience(conn: sa.Connection, *, track: str, messages: list[dict[str, Any]], output: str,
                   adapter_id: int | None = None, base_version: int | None = None, source: str = "served",
                   latency_ms: float | None = None,
                   prompt_tokens: int | None = None, completion_tokens: int | None = None,
                   meta: dict[str, Any] | None = None) -> ExperienceInfo:
    """Record one interaction; the base version defaults to the track's."""
    if source not in EXPERIENCE_SOURCES:
        raise StoreError(f"experience source {source!r}: allowed: {', '.join(EXPERIENCE_SOURCES)}")
    info = require_track(conn, track)
    if adapter_id is not None:
        row = conn.execute(sa.select(adapters.c.track, adapters.c.base_version)
                           .where(adapters.c.id == adapter_id)).first()
        if row is None:
            raise StoreError(f"unknown adapter {adapter_id}")
        if row.track != track:
            raise StoreError(f"adapter {adapter_id} belongs to track {row.track!r}, not {track!r}")
        base_version = row.base_version
    new_id = conn.execute(experiences.insert().values(
        track=track, base_version=base_version if base_version is not None else info.base_version,
        adapter_id=adapter_id, source=source, messages=messages, output=output, latency_ms=latency_ms,
        prompt_tokens=prompt_tokens, completion_tokens=completion_tokens, meta=meta, created_at=utc_now(),
    )).inserted_primary_key[0]
    return get_experience(conn, new_id)


def get_experience(conn: sa.Connection, experience_id: int) -> ExperienceInfo:
    """The experience with this id; NotFoundError when there is none."""
    row = conn.execute(sa.select(experiences).where(experiences.c.id == experience_id)).first()
    if row is None:
        raise NotFoundError(f"no experience {experience_id}")
    return ExperienceInfo.model_validate(row)


def add_feedback(conn: sa.Connection, experience_id: int, *, score: float | None = None, thumbs: str | None = None,
                 corrected_output: str | None = None) -> ExperienceInfo:
    """Attach feedback; what is not given keeps its earlier value."""
    if score is not None and not (math.isfinite(score) and 0.0 <= score <= 1.0):
        raise StoreError(f"score {score!r}: a number from 0 to 1")
    if thumbs is not None and thumbs not in THUMBS:
        raise StoreError(f"thumbs {thumbs!r}: allowed: {', '.join(THUMBS)}")
    if score is None and thumbs is None and corrected_output is None:
        raise StoreError("feedback needs a score, thumbs or a corrected output")
    get_experience(conn, experience_id)
    values: dict[str, Any] = {"feedback_at": utc_now()}
    for key, value in (("score", score), ("thumbs", thumbs), ("corrected_output", corrected_output)):
        if value is not None:
            values[key] = value
    conn.execute(experiences.update().where(experiences.c.id == experience_id).values(**values))
    return get_experience(conn, experience_id)


def list_experiences(conn: sa.Connection, track: str | None = None, *, untrained_only: bool = False,
                     limit: int = 100, before_id: int | None = None) -> list[ExperienceInfo]:
    """Experiences, newest first; page with ``before_id``."""
    query = sa.select(experiences).order_by(experiences.c.id.desc()).limit(limit)
    if track is not None:
        query = query.where(experiences.c.track == track)
    if untrained_only:
        query = query.where(experiences.c.trained_run_id.is_(None))
    if before_id is not None:
        query = query.where(experiences.c.id < before_id)
    return [ExperienceInfo.model_validate(r) for r in conn.execute(query)]

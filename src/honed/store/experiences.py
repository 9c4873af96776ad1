"""Queries on experiences: interactions with a track's model and their feedback.

Each function takes a connection that is already in a transaction; none commits.
"""

from __future__ import annotations

import json
import math
from typing import Any

import sqlalchemy as sa

from honed.data.formats import DEFAULT_MAX_RECORD_CHARS, text_problem
from honed.store.catalog import require_track
from honed.store.errors import NotFoundError, StoreError
from honed.store.info import ExperienceInfo
from honed.store.schema import EXPERIENCE_SOURCES, THUMBS, adapters, experiences, storable_id, teacher_answers, utc_now

# The reason of an experience a batch set aside (it could not be a training line) starts so.
SET_ASIDE_PREFIX = "set aside: "
MAX_REASON_CHARS = 2000


def add_experience(conn: sa.Connection, *, track: str, messages: list[dict[str, Any]], output: str,
                   adapter_id: int | None = None, base_version: int | None = None, source: str = "served",
                   latency_ms: float | None = None,
                   prompt_tokens: int | None = None, completion_tokens: int | None = None,
                   meta: dict[str, Any] | None = None,
                   max_chars: int | None = DEFAULT_MAX_RECORD_CHARS) -> ExperienceInfo:
    """Record one interaction; the base version defaults to the track's. It is checked as
    it arrives, as the ingest would check it as training data (roles, text, at most
    ``max_chars`` characters: ``ingest.max_record_chars``; None: no bound, for what the
    server itself answered), so that no experience can later break a batch; StoreError
    names the field, and nothing is stored."""
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
    check_experience(messages, output, meta, max_chars)
    new_id = conn.execute(experiences.insert().values(
        track=track, base_version=base_version if base_version is not None else info.base_version,
        adapter_id=adapter_id, source=source, messages=messages, output=output, latency_ms=latency_ms,
        prompt_tokens=prompt_tokens, completion_tokens=completion_tokens, meta=meta, created_at=utc_now(),
    )).inserted_primary_key[0]
    return get_experience(conn, new_id)



def get_experience(conn: sa.Connection, experience_id: int) -> ExperienceInfo:
    """The experience with this id; NotFoundError when there is none."""
    if not storable_id(experience_id):
        raise NotFoundError(f"no experience {experience_id}")
    row = conn.execute(sa.select(experiences).where(experiences.c.id == experience_id)).first()
    if row is None:
        raise NotFoundError(f"no experience {experience_id}")
    return ExperienceInfo.model_validate(row)


def add_feedback(conn: sa.Connection, experience_id: int, *, score: float | None = None, thumbs: str | None = None,
                 corrected_output: str | None = None, max_chars: int = DEFAULT_MAX_RECORD_CHARS) -> ExperienceInfo:
    """Attach feedback; what is not given keeps its earlier value. A corrected output is
    checked like an experience's output (StoreError naming it; nothing is changed)."""
    if score is not None and not (math.isfinite(score) and 0.0 <= score <= 1.0):
        raise StoreError(f"score {score!r}: a number from 0 to 1")
    if thumbs is not None and thumbs not in THUMBS:
        raise StoreError(f"thumbs {thumbs!r}: allowed: {', '.join(THUMBS)}")
    if score is None and thumbs is None and corrected_output is None:
        raise StoreError("feedback needs a score, thumbs or a corrected output")
    experience = get_experience(conn, experience_id)
    if corrected_output is not None:
        check_experience(experience.messages, corrected_output, None, max_chars, output_name="corrected_output")
    values: dict[str, Any] = {"feedback_at": utc_now()}
    for key, value in (("score", score), ("thumbs", thumbs), ("corrected_output", corrected_output)):
        if value is not None:
            values[key] = value
    conn.execute(experiences.update().where(experiences.c.id == experience_id).values(**values))
    return get_experience(conn, experience_id)


def list_experiences(conn: sa.Connection, track: str | None = None, *, untrained_only: bool = False,
                     limit: int = 100, before_id: int | None = None, excluded: bool | None = None,
                     set_aside: bool = False) -> list[ExperienceInfo]:
    """Experiences, newest first; page with ``before_id``. ``excluded``: True keeps only
    the excluded ones, False only the others; ``set_aside`` keeps only those a batch set
    aside."""
    query = sa.select(experiences).order_by(experiences.c.id.desc()).limit(limit)
    if track is not None:
        query = query.where(experiences.c.track == track)
    if untrained_only:
        query = query.where(experiences.c.trained_run_id.is_(None))
    if before_id is not None:
        query = query.where(experiences.c.id < before_id)
    if excluded is not None:
        column = experiences.c.excluded_reason
        query = query.where(column.is_not(None) if excluded else column.is_(None))
    if set_aside:
        query = query.where(experiences.c.excluded_reason.startswith(SET_ASIDE_PREFIX, autoescape=True))
    return [ExperienceInfo.model_validate(r) for r in conn.execute(query)]


def count_excluded(conn: sa.Connection, track: str) -> dict[str, int]:
    """How many of ``track``'s experiences no run trained on are excluded: ``excluded``
    (all of them) and ``set_aside`` (those a batch set aside)."""
    reason = experiences.c.excluded_reason
    row = conn.execute(sa.select(
        sa.func.count(reason),
        sa.func.count(sa.case((reason.startswith(SET_ASIDE_PREFIX, autoescape=True), 1))),
    ).where(experiences.c.track == track, experiences.c.trained_run_id.is_(None))).one()
    return {"excluded": row[0], "set_aside": row[1]}


def exclude_experience(conn: sa.Connection, experience_id: int, reason: str) -> ExperienceInfo:
    """Keep an experience out of every training batch from now on (one already assembled
    keeps it); it stays listed with ``reason``. Excluding it again replaces the reason.
    NotFoundError for an unknown id; StoreError for an empty or unstorable reason."""
    if not isinstance(reason, str) or not reason.strip():
        raise StoreError("reason: say why the experience is excluded (a non-empty string)")
    reason = reason.strip()
    if len(reason) > MAX_REASON_CHARS:
        raise StoreError(f"reason: {len(reason)} characters; at most {MAX_REASON_CHARS}")
    _check_text("reason", reason)
    get_experience(conn, experience_id)
    conn.execute(experiences.update().where(experiences.c.id == experience_id)
                 .values(excluded_reason=reason, excluded_at=utc_now()))
    return get_experience(conn, experience_id)


def include_experience(conn: sa.Connection, experience_id: int) -> ExperienceInfo:
    """Offer an excluded (or set-aside) experience to training again; one that is not
    excluded is left as it is. NotFoundError for an unknown id."""
    get_experience(conn, experience_id)
    conn.execute(experiences.update().where(experiences.c.id == experience_id)
                 .values(excluded_reason=None, excluded_at=None))
    return get_experience(conn, experience_id)


def delete_experience(conn: sa.Connection, experience_id: int) -> ExperienceInfo:
    """Remove an experience with its feedback and the teacher's answers about it, and
    return it as it was. Allowed whatever its state: batches already assembled keep
    their record of it (``experience_ids``, the provenance file, the dataset's line),
    so what a run trained on stays accounted for; an adapter that learned from it keeps
    what it learned. NotFoundError for an unknown id (nothing is removed)."""
    experience = get_experience(conn, experience_id)
    conn.execute(teacher_answers.delete().where(teacher_answers.c.experience_id == experience_id))
    conn.execute(experiences.delete().where(experiences.c.id == experience_id))
    return experience


CAPTURED_ROLES = ("system", "user", "assistant", "tool")


def check_experience(messages: Any, output: Any, meta: Any, max_chars: int | None, *,
                     output_name: str = "output") -> None:
    """StoreError naming the first field of an experience that could not become training
    data: a role honed does not know, text that is not a string or holds a NUL or a lone
    surrogate, more than ``max_chars`` characters in all, metadata that is not JSON."""
    if not isinstance(messages, list) or not messages:
        raise StoreError("messages: a non-empty list of {role, content} objects")
    total = 0
    for i, message in enumerate(messages):
        role = message.get("role") if isinstance(message, dict) else None
        if role not in CAPTURED_ROLES:
            raise StoreError(f"messages[{i}].role {role!r}: allowed: {', '.join(CAPTURED_ROLES)}")
        _check_text(f"messages[{i}].content", message.get("content"))
        total += len(message["content"])
    _check_text(output_name, output)
    total += len(output)
    if max_chars is not None and total > max_chars:
        raise StoreError(f"the experience holds {total} characters of text; at most {max_chars} "
                         "(ingest.max_record_chars), as for any training record")
    if meta is not None:
        try:
            json.dumps(meta, ensure_ascii=False, allow_nan=False).encode("utf-8")
        except (TypeError, ValueError) as exc:
            raise StoreError(f"metadata: not storable as JSON ({exc})") from None
        if _holds_nul(meta):  # PostgreSQL's jsonb refuses it, SQLite would keep it: refused on both
            raise StoreError("metadata: contains a NUL character, which the store cannot keep")


def _holds_nul(value: Any) -> bool:
    """Whether a JSON value has a NUL character in any of its strings or keys."""
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(_holds_nul(k) or _holds_nul(v) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return any(_holds_nul(v) for v in value)
    return False


def _check_text(name: str, text: Any) -> None:
    if not isinstance(text, str):
        raise StoreError(f"{name}: must be a string")
    problem = text_problem(text)
    if problem:
        raise StoreError(f"{name}: {problem}")

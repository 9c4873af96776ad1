"""The shape of a hostile-input case, and the checks every case gets.

A case is data: what is sent, and what must come back. The checks are the same for all
of them: the status (or exit code), a substring of the error message, that the store is
exactly as it was unless the case says it stores, that no server path leaks into the
answer, and that the server still answers afterwards.

``pending`` names the change a case waits for ("lands with <feature>"); such a case runs
as ``xfail(strict=False)`` until the lead removes the field after merging that change.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

import pytest
import sqlalchemy as sa

NO_BODY = object()  # a request without a body (json=None would send "null")


@dataclass(frozen=True)
class HttpCase:
    """One request to the HTTP app (``/api/...`` or ``/v1/...``)."""

    id: str
    method: str
    path: str  # may name the seed's ids: {dataset}, {job} (cancelled), {queued}, {adapter}, {rejected}, {experience}
    status: int | tuple[int, ...]  # a tuple: any of these
    message: str = ""  # must occur in the error message (required when status >= 400)
    json: Any = NO_BODY
    content: bytes | str | None = None  # the raw body, sent as is (for what json= cannot encode)
    params: dict | None = None
    headers: dict | None = None
    stores: bool = False  # True: an accepted request that changes the store
    pending: str | None = None
    run_pending: bool = True  # False: too costly to run while pending (today it would do the work)


@dataclass(frozen=True)
class McpCase:
    """One MCP tool call; a refusal is a tool error (``is_error``) carrying ``message``."""

    id: str
    tool: str
    args: dict
    message: str = ""
    is_error: bool = True
    stores: bool = False
    pending: str | None = None


@dataclass(frozen=True)
class CliCase:
    """One ``honed`` command line. ``{ws}``, ``{tmp}`` and the other names of
    :data:`tests.hostile.test_hostile_cli.PLACES` in ``argv`` or ``env`` are filled in at run time."""

    id: str
    argv: tuple[str, ...]
    code: int
    message: str = ""  # must occur in stderr (or stdout, for a usage error's help text)
    env: dict = field(default_factory=dict)
    error_line: bool = True  # exit 1 prints "error: ..." first; honed add reports "FILE: why" per file instead
    stores: bool = False
    pending: str | None = None


def as_params(cases) -> list:
    """``pytest.param`` for each case, ``xfail(strict=False)`` where it is pending. Pending
    cases run last: today some of them are carried out (a deploy with a foreign Origin
    deploys), which must not change what the cases after them find."""
    cases = sorted(cases, key=lambda case: case.pending is not None)
    ids = [case.id for case in cases]
    duplicates = {i for i in ids if ids.count(i) > 1}
    assert not duplicates, f"case ids must be unique: {sorted(duplicates)}"
    return [pytest.param(case, id=case.id, marks=[
        pytest.mark.xfail(strict=False, reason=case.pending, run=getattr(case, "run_pending", True))
    ] if case.pending else []) for case in cases]


def error_message(answer, path: str) -> str:
    """The error message of an HTTP answer: ``{"error": "..."}``, or OpenAI's
    ``{"error": {"message": "..."}}`` under /v1/. Fails when the body is neither."""
    try:
        body = answer.json()
    except ValueError:
        pytest.fail(f"error answer is not JSON: {answer.status_code} {answer.text[:300]!r}")
    assert isinstance(body, dict) and "error" in body, f"error answer without 'error': {body!r}"
    error = body["error"]
    if path.startswith("/v1/"):
        assert isinstance(error, dict) and isinstance(error.get("message"), str), \
            f"a /v1/ error is not in OpenAI's shape: {body!r}"
        return error["message"]
    assert isinstance(error, str), f"an /api error is not {{'error': str}}: {body!r}"
    return error


def store_fingerprint(engine: sa.Engine, metadata: sa.MetaData | None = None) -> dict[str, str]:
    """{table: digest of all its rows}: equal before and after means nothing was stored,
    changed or deleted (counts alone would miss a feedback written onto a row).
    ``metadata``: the store's tables, reflected once (else here)."""
    if metadata is None:
        metadata = sa.MetaData()
        metadata.reflect(engine)
    out = {}
    with engine.connect() as conn:
        for table in metadata.sorted_tables:
            if table.name == "alembic_version":
                continue
            order = list(table.primary_key.columns) or list(table.columns)
            rows = conn.execute(sa.select(table).order_by(*order)).all()
            out[table.name] = f"{len(rows)}:{hashlib.sha256(repr(rows).encode()).hexdigest()[:16]}"
    return out


def assert_store(before: dict, after: dict, stores: bool, what: str) -> None:
    """Nothing changed for a refusal; something did for an accepted case that stores."""
    if stores:
        assert after != before, f"{what}: accepted, but nothing was stored"
    else:
        changed = {t: (before.get(t), after.get(t)) for t in before.keys() | after.keys()
                   if before.get(t) != after.get(t)}
        assert not changed, f"{what}: refused, yet the store changed: {changed}"

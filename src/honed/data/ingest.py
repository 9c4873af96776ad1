"""Streaming ingest of one JSONL file: validate, normalise and hash every line.

``ingest_file`` reads the source in binary, one line at a time (memory stays flat in
the file's size, and a line longer than ``max_line_bytes`` is streamed through without
being held), and never writes to the source. It produces, in ``dest_dir``, named after
the first 16 hex digits of the file's sha256:

- ``<h>.jsonl``: one normalised record per line, ``{"line": N, "hash": ..., "messages":
  [...]}``, ``{..., "text": ...}``, ``{..., "prompt", "chosen", "rejected"}`` or
  ``{..., "prompt", "completion", "label"}``; only when the file is accepted;
- ``<h>.rejected``: in lenient mode, the bad lines exactly as they were in the source
  (raw bytes, terminators included: they may not even be UTF-8);
- ``<h>.report.json``: always; every bad line (error) and blank line (note) with its
  1-based line number and reason, and the counts.

Each file is written under a temporary name in ``dest_dir``, fsynced and renamed into
place, so a reader never sees half a file.

Line rules: LF and CRLF endings are both fine, and so is a last line without one.
Whitespace-only lines are not records: they are skipped, counted in ``n_blank`` and
listed as notes, and never make a file bad. A UTF-8 byte-order mark makes line 1 bad.
A file is accepted when it has at least one record and, in strict mode, no bad line.

One file holds one kind of record (``honed.data.kinds``): its first good line decides
the kind, and a later line of another kind is a bad line whose reason names both. Bad
lines, not a refused file: in lenient mode the good lines are kept and the others go to
the reject file, so a stray pair in an SFT file loses nothing and blocks nothing, and
strict mode refuses the file as it does for any bad line. (A majority vote would need
a second pass over a file that may not fit in memory, and would let a line's fate
depend on lines far below it.)
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import orjson

from honed.atomic_files import fsync_dir
from honed.data.formats import (
    DEFAULT_MAX_RECORD_CHARS,
    UTF8_BOM,
    RecordError,
    describe_parse_error,
    normalize_record,
    record_kind,
)
from honed.data.kinds import Kind, describe_kind

log = logging.getLogger(__name__)

Mode = Literal["strict", "lenient"]
DEFAULT_MAX_ISSUES = 10_000
_READ_CHUNK = 1 << 20


@dataclass(frozen=True, slots=True)
class LineIssue:
    """A problem (or a note) about one line of a source file; ``line`` is 1-based."""

    line: int
    reason: str


@dataclass
class IngestResult:
    """What ingesting one file found and wrote.

    ``errors`` and ``notes`` hold at most ``max_issues`` entries each; ``n_bad`` and
    ``n_blank`` count all of them. ``n_records + n_bad + n_blank`` is the number of lines.
    ``kind`` is the kind of every record (None when there is none).
    """

    source: Path
    file_hash: str
    n_bytes: int
    mode: Mode
    max_record_chars: int
    accepted: bool
    rejection_reason: str | None
    n_records: int
    n_bad: int
    n_blank: int
    kind: Kind | None
    errors: list[LineIssue]
    notes: list[LineIssue]
    normalized_path: Path | None
    rejected_path: Path | None
    report_path: Path

    @property
    def n_lines(self) -> int:
        """Every line of the source: records, bad lines and blank lines."""
        return self.n_records + self.n_bad + self.n_blank

    @property
    def errors_truncated(self) -> bool:
        """Whether some bad lines were counted but their details not kept."""
        return len(self.errors) < self.n_bad

    def iter_record_hashes(self) -> Iterator[tuple[int, str]]:
        """Yield ``(line, record_hash)`` for every record, re-reading the normalised file."""
        if self.normalized_path is None:
            return
        for record in iter_normalized(self.normalized_path):
            yield record["line"], record["hash"]


def iter_normalized(path: Path) -> Iterator[dict[str, Any]]:
    """Yield the records of a normalised file written by ``ingest_file``, in order."""
    with open(path, "rb") as f:
        for raw in f:
            yield orjson.loads(raw)


def ingest_file(
    source: Path,
    dest_dir: Path,
    *,
    mode: Mode,
    max_record_chars: int = DEFAULT_MAX_RECORD_CHARS,
    max_line_bytes: int | None = None,
    max_issues: int = DEFAULT_MAX_ISSUES,
) -> IngestResult:
    """Validate, normalise and hash ``source`` line by line into ``dest_dir``.

    ``max_line_bytes`` (default: 16 × max_record_chars, at least 1 MiB) bounds the bytes
    of one line held in memory; a longer line is bad and is streamed, not parsed.
    Bad lines never raise: they are reported in the result. OSError propagates.
    """
    if mode not in ("strict", "lenient"):
        raise ValueError(f"mode must be 'strict' or 'lenient', got {mode!r}")
    source = Path(source)
    dest_dir = Path(dest_dir)
    dest_dir.mkdir(parents=True, exist_ok=True)
    if max_line_bytes is None:
        max_line_bytes = max(1 << 20, 16 * max_record_chars)
    lenient = mode == "lenient"

    normalized = _StagedFile(dest_dir)
    rejected = _StagedFile(dest_dir) if lenient else None
    try:
        counts, kind, errors, notes, file_hash, n_bytes = _scan(
            source, normalized, rejected, max_record_chars, max_line_bytes, max_issues
        )
        n_records, n_bad, n_blank = counts
        if n_records == 0:
            accepted, why = False, "file contains no records"
        elif n_bad and not lenient:
            accepted, why = False, f"strict mode and {_count(n_bad, 'bad line')}"
        else:
            accepted, why = True, None

        stem = file_hash[:16]
        normalized_path = rejected_path = None
        if accepted:
            normalized_path = normalized.publish(dest_dir / f"{stem}.jsonl")
        if rejected is not None and n_bad:
            rejected_path = rejected.publish(dest_dir / f"{stem}.rejected")
        result = IngestResult(
            source=source,
            file_hash=file_hash,
            n_bytes=n_bytes,
            mode=mode,
            max_record_chars=max_record_chars,
            accepted=accepted,
            rejection_reason=why,
            n_records=n_records,
            n_bad=n_bad,
            n_blank=n_blank,
            kind=kind,
            errors=errors,
            notes=notes,
            normalized_path=normalized_path,
            rejected_path=rejected_path,
            report_path=dest_dir / f"{stem}.report.json",
        )
        report = _StagedFile(dest_dir)
        try:
            report.write(orjson.dumps(_report_dict(result), option=orjson.OPT_INDENT_2))
            report.publish(result.report_path)
        finally:
            report.discard()
        fsync_dir(dest_dir)
        log.info(
            "ingested %s (%s mode): %s; %d records (%s), %d bad lines, %d blank lines",
            source, mode, "accepted" if accepted else f"rejected: {why}",
            n_records, kind, n_bad, n_blank,
        )
        return result
    finally:
        normalized.discard()
        if rejected is not None:
            rejected.discard()


def _scan(
    source: Path, normalized: _StagedFile, rejected: _StagedFile | None,
    max_record_chars: int, max_line_bytes: int, max_issues: int,
) -> tuple[tuple[int, int, int], Kind | None, list[LineIssue], list[LineIssue], str, int]:
    """The per-line loop. Kept free of attribute look-ups: it runs millions of times."""
    loads = orjson.loads
    dumps = orjson.dumps
    sort_keys = orjson.OPT_SORT_KEYS
    sha256 = hashlib.sha256
    decode_error = orjson.JSONDecodeError
    normalize = normalize_record
    kind_of = record_kind
    file_hasher = sha256()
    hash_update = file_hasher.update
    write_normalized = normalized.write
    write_rejected = rejected.write if rejected is not None else None
    errors: list[LineIssue] = []
    notes: list[LineIssue] = []
    n_records = n_bad = n_blank = n_bytes = 0
    lineno = 0
    writing = True
    file_kind: Kind | None = None
    kind_line = 0

    with open(source, "rb", buffering=_READ_CHUNK) as f:
        readline = f.readline
        while True:
            raw = readline(max_line_bytes)
            if not raw:
                break
            lineno += 1
            hash_update(raw)
            n_bytes += len(raw)
            if len(raw) == max_line_bytes and raw[-1] != 10:  # 10 == ord("\n")
                # Copied to the reject file piece by piece, never held whole.
                n_bytes += _drain_long_line(readline, raw, hash_update, write_rejected)
                raw = b""
                reason = f"line is longer than max_line_bytes={max_line_bytes}; not parsed"
            elif lineno == 1 and raw.startswith(UTF8_BOM):
                reason = "file starts with a UTF-8 byte-order mark; save as UTF-8 without BOM"
            else:
                try:
                    record = normalize(loads(raw), max_record_chars)
                except decode_error as exc:
                    if raw.isspace():
                        n_blank += 1
                        if len(notes) < max_issues:
                            notes.append(LineIssue(lineno, "blank line, skipped"))
                        continue
                    reason = describe_parse_error(raw, exc)
                except RecordError as exc:
                    reason = exc.reason
                else:
                    kind = kind_of(record)
                    if file_kind is None:
                        file_kind, kind_line = kind, lineno
                    if kind == file_kind:
                        n_records += 1
                        if writing:
                            canonical = dumps(record, option=sort_keys)
                            digest = sha256(canonical).hexdigest().encode()
                            # The canonical bytes start with '{'; splice line and hash in front.
                            write_normalized(
                                b'{"line":%d,"hash":"%b",%b\n' % (lineno, digest, canonical[1:])
                            )
                        continue
                    reason = _mixed_kind(kind, file_kind, kind_line)
            n_bad += 1
            if len(errors) < max_issues:
                errors.append(LineIssue(lineno, reason))
            if write_rejected is not None:
                write_rejected(raw)
            elif writing:
                # Strict mode: the file is rejected whole, stop producing output.
                writing = False
                normalized.discard()
    return (n_records, n_bad, n_blank), file_kind, errors, notes, file_hasher.hexdigest(), n_bytes


def _mixed_kind(kind: str, file_kind: str, kind_line: int) -> str:
    return (f"line holds {describe_kind(kind, one=True)}, but this file holds {describe_kind(file_kind)} "
            f"(the kind of its first record, line {kind_line}); a dataset holds one kind: "
            f"put {describe_kind(kind)} in a file of their own")


def _drain_long_line(readline: Callable[[int], bytes], head: bytes, hash_update: Callable[[bytes], object],
                     write_rejected: Callable[[bytes], object] | None) -> int:
    """Consume the rest of an over-long line in chunks; return the bytes read after head."""
    if write_rejected is not None:
        write_rejected(head)
    n = 0
    while True:
        chunk = readline(_READ_CHUNK)
        if not chunk:
            return n
        hash_update(chunk)
        n += len(chunk)
        if write_rejected is not None:
            write_rejected(chunk)
        if chunk[-1] == 10:
            return n


class _StagedFile:
    """A file written under a temporary name in its final directory, then renamed."""

    def __init__(self, directory: Path) -> None:
        fd, name = tempfile.mkstemp(dir=directory, prefix=".ingest-", suffix=".tmp")
        self._path: Path | None = Path(name)
        self._file = os.fdopen(fd, "wb", buffering=_READ_CHUNK)
        self.write = self._file.write

    def publish(self, final: Path) -> Path:
        """Flush, fsync and rename into ``final`` (replacing it); the caller fsyncs the dir."""
        assert self._path is not None, "publishing a discarded file"
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        os.replace(self._path, final)
        self._path = None
        return final

    def discard(self) -> None:
        """Close and remove the temporary file, if it was not published."""
        if not self._file.closed:
            with contextlib.suppress(OSError):  # its buffer met a full disk: the file goes anyway
                self._file.close()
        if self._path is not None:
            self._path.unlink(missing_ok=True)
            self._path = None


def _report_dict(result: IngestResult) -> dict[str, Any]:
    return {
        "source": str(result.source),
        "file_hash": result.file_hash,
        "n_bytes": result.n_bytes,
        "mode": result.mode,
        "max_record_chars": result.max_record_chars,
        "accepted": result.accepted,
        "rejection_reason": result.rejection_reason,
        "n_lines": result.n_lines,
        "n_records": result.n_records,
        "n_bad": result.n_bad,
        "n_blank": result.n_blank,
        "kind": result.kind,
        "errors_truncated": result.errors_truncated,
        "normalized_path": str(result.normalized_path) if result.normalized_path else None,
        "rejected_path": str(result.rejected_path) if result.rejected_path else None,
        "errors": [{"line": e.line, "reason": e.reason} for e in result.errors],
        "notes": [{"line": n.line, "reason": n.reason} for n in result.notes],
    }


def format_report(result: IngestResult, limit: int = 20) -> str:
    """A few lines for people: a summary, then ``name:line: reason`` for each bad line."""
    name = result.source.name
    verdict = "accepted" if result.accepted else f"rejected ({result.rejection_reason})"
    summary = (
        f"{name}: {verdict}, {result.mode} mode: {_count(result.n_records, 'record')}, "
        f"{_count(result.n_bad, 'bad line')}, {_count(result.n_blank, 'blank line')} skipped"
        + (f"; kind {result.kind}" if result.kind else "")
    )
    lines = [summary]
    lines += [f"{name}:{issue.line}: {issue.reason}" for issue in result.errors[:limit]]
    more = result.n_bad - min(limit, len(result.errors))
    if more > 0:
        lines.append(f"{name}: ... and {_count(more, 'more bad line')} (see {result.report_path})")
    if result.rejected_path is not None:
        lines.append(f"{name}: bad lines kept unchanged in {result.rejected_path}")
    return "\n".join(lines)


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'s' * (n != 1)}"

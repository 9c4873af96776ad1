"""Adding a user's JSONL file to a workspace: ingest it, then record it in the store.

The user's file is only ever read. Its validated, normalised copy, the report and (in
lenient mode) the raw bad lines go to ``datasets/<track>/`` under the file's hash; the
same file added twice to a track is recognised by that hash and not ingested again.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from honed.atomic_files import writing
from honed.data.ingest import IngestResult, format_report, ingest_file
from honed.data.kinds import describe_kind


def file_sha256(path: Path) -> str:
    """sha256 of a file's bytes, streamed."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


@dataclass
class AddedDataset:
    """The outcome of adding one file."""

    source: Path
    dataset: object | None  # store DatasetInfo when accepted or already known
    ingest: IngestResult | None  # None when the file was already known
    already_known: bool = False

    @property
    def accepted(self) -> bool:
        return self.dataset is not None

    def summary(self) -> dict:
        """Machine-readable outcome (``--json``)."""
        out = {"source": str(self.source), "accepted": self.accepted, "already_known": self.already_known}
        if self.dataset is not None:
            out.update(dataset_id=self.dataset.id, track=self.dataset.track, kind=self.dataset.kind,
                       records=self.dataset.n_records, rejected=self.dataset.n_rejected,
                       file_hash=self.dataset.file_hash)
        if self.ingest is not None:
            out.update(
                mode=self.ingest.mode, bad_lines=self.ingest.n_bad, blank_lines=self.ingest.n_blank,
                errors=[{"line": e.line, "reason": e.reason} for e in self.ingest.errors],
                report=str(self.ingest.report_path),
                rejected_lines_file=str(self.ingest.rejected_path) if self.ingest.rejected_path else None,
                rejection_reason=self.ingest.rejection_reason,
            )
        return out

    def describe(self) -> str:
        """What a person needs to read about this file."""
        if self.already_known:
            d = self.dataset
            return (f"{self.source}: already added as dataset {d.id} ({d.n_records} records of kind {d.kind}, "
                    f"track {d.track}); nothing to do")
        r = self.ingest
        lines = []
        if self.accepted:
            # SFT is what most datasets hold; any other kind is worth a word.
            kind = "" if self.dataset.kind == "sft" else f" ({describe_kind(self.dataset.kind)})"
            lines.append(f"{self.source}: added as dataset {self.dataset.id}: {r.n_records} records{kind}"
                         + (f", {r.n_bad} bad lines kept aside in {r.rejected_path}" if r.n_bad else ""))
        else:
            lines.append(f"{self.source}: rejected ({r.rejection_reason}); nothing was added")
        if r.n_bad or r.notes:
            lines.append(format_report(r))
        return "\n".join(lines)


def add_dataset_file(workspace, store, source: Path, *, track: str, mode: str) -> AddedDataset:
    """Ingest ``source`` for ``track`` and record it; returns what happened."""
    source = Path(source)
    if not source.exists():
        raise FileNotFoundError(f"no such file: {source}")
    if not source.is_file():  # a directory, a FIFO, a device: nothing honed can take whole
        kind = "a directory" if source.is_dir() else "not a regular file"
        raise IsADirectoryError(f"{source} is {kind}; give a JSONL file")
    if store.get_track(track) is None:
        raise ValueError(f"unknown track '{track}'; tracks: {[t.name for t in store.list_tracks()]}")
    known = store.find_dataset(track, file_sha256(source))
    if known is not None:
        return AddedDataset(source, known, None, already_known=True)
    with writing(workspace.datasets_dir / track):
        result = ingest_file(source, workspace.datasets_dir / track, mode=mode,
                             max_record_chars=workspace.settings.ingest.max_record_chars)
    if not result.accepted:
        return AddedDataset(source, None, result)
    dataset = store.add_dataset(
        name=source.stem, track=track, file_hash=result.file_hash, source_path=str(source.resolve()),
        stored_path=str(result.normalized_path), mode=mode, n_records=result.n_records,
        n_rejected=result.n_bad, reject_path=str(result.rejected_path) if result.rejected_path else None,
        records=result.iter_record_hashes(), kind=result.kind or "sft",
    )
    return AddedDataset(source, dataset, result)

"""The inbox: JSONL files dropped in ``inbox/`` (or ``inbox/<track>/``) become datasets
and jobs.

A file is taken once it is complete: at once when it was renamed into the inbox (the
safe way to write one: within the inbox, or moved in from elsewhere, when its last write
is older than its arrival) or when its writer closed it, otherwise once its size and
modification time stayed the same for ``daemon.settle_s``; and never while a process we
can see still holds it open for writing. It is then *moved* (one rename, never copy-then-delete)
to ``datasets/received/``, ingested from there, and a job is queued for its track. A
rejected file goes to ``inbox/rejected/`` with ``<name>.errors.txt`` beside it. Files
whose names start with a dot or end in ``.tmp``/``.part`` are being written and are left
alone. OS file events (watchdog, inotify) only wake the scan early; the scan itself is
what decides, so the polling fallback behaves the same, just later.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import psutil

log = logging.getLogger(__name__)

REJECTED_DIR = "rejected"
RECEIVED_DIR = "received"
_REPORT_LINES = 200
# A file whose last write is older than its arrival by this much was moved in complete.
_MOVED_IN_SLACK_S = 0.05
_PARTIAL_SUFFIXES = (".tmp", ".part", ".partial", ".crdownload", "~")


@dataclass
class InboxOutcome:
    """What happened to one inbox file."""

    name: str
    track: str
    action: str  # queued | known | rejected
    message: str
    dataset_id: int | None = None
    job_id: int | None = None
    path: Path | None = None


@dataclass
class _Seen:
    size: int
    mtime_ns: int
    since: float


@dataclass
class Inbox:
    """Watches one workspace's inbox; :meth:`take_ready` ingests what is complete."""

    workspace: object
    store: object
    settle_s: float = 1.0
    priority: str = "normal"
    use_events: bool = True
    _seen: dict[Path, _Seen] = field(default_factory=dict)
    _finished_writing: set[Path] = field(default_factory=set)
    _appeared: dict[Path, float] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _wake: threading.Event = field(default_factory=threading.Event)
    _observer: object | None = None
    _retry_received: bool = False

    @property
    def root(self) -> Path:
        return self.workspace.inbox

    @property
    def received_dir(self) -> Path:
        return self.workspace.local_datasets_dir / RECEIVED_DIR  # per workspace, not in shared artifacts

    @property
    def rejected_dir(self) -> Path:
        return self.root / REJECTED_DIR

    # --- watching -----------------------------------------------------------------

    def start(self) -> str:
        """Start watching; returns "events" or "polling" (what is in use)."""
        self.root.mkdir(parents=True, exist_ok=True)
        self.received_dir.mkdir(parents=True, exist_ok=True)
        if not self.use_events:
            return "polling"
        try:
            from watchdog.events import FileSystemEventHandler
            from watchdog.observers import Observer
        except ImportError:  # pragma: no cover - watchdog is a dependency
            return "polling"
        inbox = self

        class _Handler(FileSystemEventHandler):
            def on_any_event(self, event) -> None:
                if event.event_type in ("moved", "closed"):
                    target = Path(event.dest_path if event.event_type == "moved" else event.src_path)
                    with inbox._lock:
                        inbox._finished_writing.add(target)
                elif event.event_type == "created" and not event.is_directory:
                    # A file moved in from another directory arrives as "created"; its
                    # bytes are older than its name here (see ready_files).
                    with inbox._lock:
                        inbox._appeared[Path(event.src_path)] = time.time()
                inbox._wake.set()

        try:
            observer = Observer()
            observer.schedule(_Handler(), str(self.root), recursive=True)
            observer.start()
        except OSError as exc:  # e.g. the inotify watch limit is reached
            log.warning("inbox: file events unavailable (%s); polling instead", exc)
            return "polling"
        self._observer = observer
        return "events"

    def stop(self) -> None:
        """Stop watching."""
        if self._observer is not None:
            self._observer.stop()
            self._observer.join(timeout=5)
            self._observer = None

    def wake(self) -> None:
        """End the current :meth:`wait` early (a trainer exited, a signal came)."""
        self._wake.set()

    def wait(self, timeout: float) -> None:
        """Sleep up to ``timeout`` seconds, waking early when something moves in the inbox."""
        self._wake.wait(timeout)
        self._wake.clear()

    # --- deciding what is complete --------------------------------------------------

    def _candidates(self) -> list[tuple[Path, str]]:
        default_track = self.workspace.settings.track
        found: list[tuple[Path, str]] = []
        try:
            entries = list(os.scandir(self.root))
        except FileNotFoundError:
            return found
        for entry in entries:
            if entry.name.startswith("."):
                continue
            if entry.is_dir(follow_symlinks=False):
                if entry.name == REJECTED_DIR:
                    continue
                try:
                    found.extend((Path(e.path), entry.name) for e in os.scandir(entry.path)
                                 if e.is_file(follow_symlinks=False) and _looks_finished(e.name))
                except FileNotFoundError:
                    continue
            elif entry.is_file(follow_symlinks=False) and _looks_finished(entry.name):
                found.append((Path(entry.path), default_track))
        return found

    def ready_files(self, now: float | None = None) -> list[tuple[Path, str]]:
        """Inbox files that are complete now, oldest first, with their track."""
        now = time.monotonic() if now is None else now
        ready = []
        candidates = self._candidates()
        present = {path for path, _ in candidates}
        with self._lock:
            finished = set(self._finished_writing)
            self._finished_writing &= present
            appeared = dict(self._appeared)
            self._appeared = {p: t for p, t in self._appeared.items() if p in present}
        for path in list(self._seen):
            if path not in present:
                del self._seen[path]
        for path, track in candidates:
            try:
                st = path.stat()
            except FileNotFoundError:
                continue
            if path in appeared and st.st_mtime < appeared[path] - _MOVED_IN_SLACK_S:
                finished.add(path)  # written before it appeared here: moved in whole
            seen = self._seen.get(path)
            if seen is None or (seen.size, seen.mtime_ns) != (st.st_size, st.st_mtime_ns):
                self._seen[path] = seen = _Seen(st.st_size, st.st_mtime_ns, now)
                if path not in finished:
                    continue
            if path in finished or now - seen.since >= self.settle_s:
                ready.append((st.st_mtime_ns, path, track))
        if ready:
            busy = _open_for_writing({path for _, path, _ in ready})
            ready = [r for r in ready if r[1] not in busy]
        ready.sort()
        return [(path, track) for _, path, track in ready]

    # --- taking files ------------------------------------------------------------------

    def take_ready(self) -> list[InboxOutcome]:
        """Ingest every complete file and queue a job for each new dataset. A file the
        store could not record stays in ``received/`` and is retried on a later call."""
        from honed.store import StoreError

        outcomes = []
        if self._retry_received:
            try:
                outcomes += self.recover()
                self._retry_received = False
            except StoreError as exc:
                log.warning("inbox: store unavailable, will retry: %s", exc)
                return outcomes
        for path, track in self.ready_files():
            try:
                outcome = self.take(path, track)
            except StoreError as exc:
                log.warning("inbox: %s moved to received/ but not recorded yet (%s); will retry", path.name, exc)
                self._retry_received = True
                break
            if outcome is not None:
                outcomes.append(outcome)
                self._seen.pop(path, None)
        return outcomes

    def take(self, path: Path, track: str) -> InboxOutcome | None:
        """Move one complete file out of the inbox, ingest it and queue its job."""
        folder = self.received_dir / track
        folder.mkdir(parents=True, exist_ok=True)
        received = _unique(folder / f"{datetime.now(UTC):%Y%m%dT%H%M%S}-{path.name}")
        try:
            os.rename(path, received)  # one rename: the file is never in two places
        except FileNotFoundError:
            return None  # taken away by its owner before we got to it
        return self.ingest_received(received, track, path.name)

    def ingest_received(self, received: Path, track: str, name: str) -> InboxOutcome:
        """Ingest a file already moved to ``datasets/received/``; rejects go back to the
        inbox's ``rejected/`` folder with their report."""
        from honed.data.datasets import add_dataset_file

        mode = self.workspace.settings.ingest.mode
        try:
            if self.store.get_track(track) is None:
                raise ValueError(f"inbox/{track}/ names no track; tracks: "
                                 f"{', '.join(t.name for t in self.store.list_tracks())}")
            added = add_dataset_file(self.workspace, self.store, received, track=track, mode=mode)
        except (ValueError, OSError) as exc:
            return self._reject(received, track, name, str(exc))
        if added.already_known:
            message = (f"{name}: already ingested as dataset {added.dataset.id}; no job queued "
                       f"(the file is kept at {received})")
            log.info("inbox: %s", message)
            return InboxOutcome(name, track, "known", message, added.dataset.id, path=received)
        if not added.accepted:
            result = added.ingest
            lines = [f"line {e.line}: {e.reason}" for e in result.errors[:_REPORT_LINES]]
            if result.n_bad > len(lines):
                lines.append(f"... and {result.n_bad - len(lines)} more bad lines (full report: {result.report_path})")
            return self._reject(received, track, name, "\n".join([result.rejection_reason, *lines]))
        job = self.store.create_job(track=track, dataset_ids=[added.dataset.id], priority=self.priority,
                                    source="inbox")
        message = (f"{name}: dataset {added.dataset.id} ({added.dataset.n_records} records"
                   + (f", {added.dataset.n_rejected} bad lines set aside" if added.dataset.n_rejected else "")
                   + f") queued as job {job.id}")
        log.info("inbox: %s", message)
        return InboxOutcome(name, track, "queued", message, added.dataset.id, job.id, received)

    def _reject(self, received: Path, track: str, name: str, reason: str) -> InboxOutcome:
        self.rejected_dir.mkdir(parents=True, exist_ok=True)
        target = _unique(self.rejected_dir / name)
        os.rename(received, target)
        report = target.with_name(target.name + ".errors.txt")
        report.write_text(f"{name} (track {track}) was rejected:\n{reason}\n", encoding="utf-8")
        log.warning("inbox: %s rejected: %s", name, reason.splitlines()[0] if reason else "")
        return InboxOutcome(name, track, "rejected", f"{name}: rejected ({reason.splitlines()[0]}); "
                            f"moved to {target}, reasons in {report.name}", path=target)

    def recover(self) -> list[InboxOutcome]:
        """After a crash: ingest files that were moved to ``received/`` but never
        recorded, and queue jobs for inbox datasets that never got one."""
        from honed.data.datasets import file_sha256

        outcomes = []
        if not self.received_dir.is_dir():
            return outcomes
        known_paths = {Path(d.source_path): d for d in self.store.list_datasets()}
        queued_ids = {i for job in self.store.list_jobs() for i in job.dataset_ids}
        tracks = [t.name for t in self.store.list_tracks()]
        for path in sorted(self.received_dir.glob("*/*")):
            if not path.is_file():
                continue
            dataset = known_paths.get(path.resolve())
            if dataset is None:
                track = path.parent.name
                digest = file_sha256(path)
                if any(self.store.find_dataset(track_name, digest) for track_name in tracks):
                    continue  # a duplicate of a dataset we have: nothing was lost
                name = path.name.split("-", 1)[1] if "-" in path.name else path.name
                outcomes.append(self.ingest_received(path, track, name))
            elif dataset.id not in queued_ids:
                job = self.store.create_job(track=dataset.track, dataset_ids=[dataset.id],
                                            priority=self.priority, source="inbox")
                outcomes.append(InboxOutcome(path.name, dataset.track, "queued",
                                             f"{path.name}: dataset {dataset.id} queued as job {job.id} "
                                             "(recovered after a restart)", dataset.id, job.id, path))
        return outcomes


def _looks_finished(name: str) -> bool:
    return not name.startswith(".") and not name.endswith(_PARTIAL_SUFFIXES) and not name.endswith(".errors.txt")


def _unique(path: Path) -> Path:
    candidate, n = path, 1
    while candidate.exists():
        candidate = path.with_name(f"{path.stem}.{n}{path.suffix}")
        n += 1
    return candidate


def _open_for_writing(paths: set[Path]) -> set[Path]:
    """Those of ``paths`` that a process we can see holds open for writing."""
    wanted = {str(p.resolve()): p for p in paths}
    busy: set[Path] = set()
    for proc in psutil.process_iter():
        try:
            for f in proc.open_files():
                if f.path in wanted and f.mode in ("w", "a", "r+"):
                    busy.add(wanted[f.path])
        except (psutil.Error, OSError):
            continue
    return busy

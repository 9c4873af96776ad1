"""The Store: the only door to honed's database.

Every public method is one transaction: it opens a connection, runs its queries (from
:mod:`honed.store.catalog` and :mod:`honed.store.runs`) and commits, or rolls back and
raises :class:`StoreError`. Writers begin with ``BEGIN IMMEDIATE`` on SQLite so they
queue on the busy timeout instead of failing with "database is locked". A Store is safe
to share between threads; each process opens its own.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from honed.store import catalog, experiences, jobs, learning, migrate, registry, runs
from honed.store.engine import WRITE_OPTION, create_engine, display, parse_url, sqlite_file
from honed.store.errors import StoreError, StoreUnavailableError
from honed.store.info import (
    AdapterInfo,
    BaseInfo,
    CheckpointInfo,
    CommandInfo,
    DatasetInfo,
    DeploymentInfo,
    ExperienceInfo,
    JobEvent,
    JobInfo,
    LearningBatchInfo,
    RunInfo,
    TeacherAnswerInfo,
    TrackInfo,
    WorkerInfo,
)


class Store:
    """honed's state: bases, tracks, datasets, runs, checkpoints, metrics, trained records.

    Open with :meth:`Store.open`; close with :meth:`close` or use it as a context manager.
    """

    def __init__(self, engine: sa.Engine, url: sa.URL) -> None:
        """Wrap an engine; use :meth:`Store.open`, which also migrates the schema."""
        self._engine = engine
        self._url = url

    @classmethod
    def open(cls, url: str | Path, *, busy_timeout_s: float = 30.0) -> Store:
        """Open the store at ``url`` and upgrade its schema to the newest revision.

        ``url`` is ``sqlite:///PATH`` (a plain path means the same), or
        ``postgresql+psycopg://user@host:port/db``. The SQLite file and its parent
        directory are created when missing. ``busy_timeout_s`` is how long a SQLite
        writer waits for another one before giving up.
        """
        parsed = parse_url(url)
        path = sqlite_file(parsed)
        if path is not None:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise StoreError(f"cannot create the directory of {path}: {exc}") from exc
        store = cls(create_engine(parsed, busy_timeout_s=busy_timeout_s), parsed)
        try:
            with store._transaction(write=True) as conn:
                migrate.upgrade_to_head(conn)
        except BaseException:
            store.close()
            raise
        return store

    def close(self) -> None:
        """Release every pooled connection. The Store cannot be used afterwards."""
        self._engine.dispose()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Store({self.display_url!r})"

    @property
    def url(self) -> str:
        """The full URL, password included: for connecting, never for showing."""
        return self._url.render_as_string(hide_password=False)

    @property
    def display_url(self) -> str:
        """The URL with the password replaced by ``***``, for logs and people."""
        return display(self._url)

    @property
    def dialect(self) -> str:
        """``"sqlite"`` or ``"postgresql"``."""
        return self._url.get_backend_name()

    def schema_revision(self) -> str | None:
        """The migration revision the database is at (the head after :meth:`open`)."""
        with self._transaction(write=False) as conn:
            return migrate.current_revision(conn)

    @contextmanager
    def _transaction(self, write: bool) -> Iterator[sa.Connection]:
        """One transaction; database errors come out as StoreError naming the store."""
        try:
            connection = self._engine.connect()
        except (sa.exc.OperationalError, sa.exc.InterfaceError) as exc:
            raise StoreUnavailableError(
                f"cannot reach the store at {self.display_url}: {self._reason(exc)}"
            ) from exc
        try:
            with connection as conn:
                if write:
                    conn.execution_options(**{WRITE_OPTION: True})
                with conn.begin():
                    yield conn
        except (sa.exc.OperationalError, sa.exc.InterfaceError) as exc:
            raise StoreUnavailableError(
                f"store {self.display_url} failed: {self._reason(exc)}"
            ) from exc
        except sa.exc.IntegrityError as exc:
            raise StoreError(
                f"store {self.display_url} refused the change: {self._reason(exc)}"
            ) from exc

    def _reason(self, exc: sa.exc.DBAPIError) -> str:
        reason = str(exc.orig).strip() if exc.orig is not None else str(exc)
        password = self._url.password
        return reason.replace(str(password), "***") if password else reason

    # --- bases & tracks ------------------------------------------------------------

    def add_base(
        self,
        source: str,
        description: str = "",
        parent_version: int | None = None,
        lineage: dict[str, Any] | None = None,
    ) -> int:
        """Record a new base version (a hub id or a local path) and return its number:
        0 for the first, then one more than the latest."""
        with self._transaction(write=True) as conn:
            return catalog.add_base(conn, source, description, parent_version, lineage)

    def get_base(self, version: int | None = None) -> BaseInfo | None:
        """The base with ``version``, or the latest when None; None if there is none."""
        with self._transaction(write=False) as conn:
            return catalog.get_base(conn, version)

    def list_bases(self) -> list[BaseInfo]:
        """Every base version, oldest first."""
        with self._transaction(write=False) as conn:
            return catalog.list_bases(conn)

    def ensure_track(self, name: str, base_version: int) -> TrackInfo:
        """Create the track when it does not exist and return it. An existing track is
        returned unchanged (its base is moved only by :meth:`set_track_base`)."""
        with self._transaction(write=True) as conn:
            return catalog.ensure_track(conn, name, base_version)

    def set_track_base(self, name: str, base_version: int) -> TrackInfo:
        """Make an existing track train on another base version from now on."""
        with self._transaction(write=True) as conn:
            return catalog.set_track_base(conn, name, base_version)

    def get_track(self, name: str) -> TrackInfo | None:
        """The track called ``name``, or None."""
        with self._transaction(write=False) as conn:
            return catalog.get_track(conn, name)

    def require_track(self, name: str) -> TrackInfo:
        """The track called ``name``; NotFoundError naming it and the tracks there are."""
        with self._transaction(write=False) as conn:
            return catalog.require_track(conn, name)

    def list_tracks(self) -> list[TrackInfo]:
        """All tracks, by name."""
        with self._transaction(write=False) as conn:
            return catalog.list_tracks(conn)

    # --- datasets & records --------------------------------------------------------

    def find_dataset(self, track: str, file_hash: str) -> DatasetInfo | None:
        """The dataset of ``track`` ingested from a file with this hash, or None: how
        ingestion recognises a file it has seen before."""
        with self._transaction(write=False) as conn:
            return catalog.find_dataset(conn, track, file_hash)

    def get_dataset(self, dataset_id: int) -> DatasetInfo | None:
        """The dataset with this id, or None."""
        with self._transaction(write=False) as conn:
            return catalog.get_dataset(conn, dataset_id)

    def add_dataset(
        self,
        *,
        name: str,
        track: str,
        file_hash: str,
        source_path: str,
        stored_path: str,
        mode: str,
        n_records: int,
        n_rejected: int,
        reject_path: str | None,
        records: Iterable[tuple[int, str]],
    ) -> DatasetInfo:
        """Record an ingested dataset and its ``(line_no, record_hash)`` pairs.

        ``records`` is consumed lazily and inserted in chunks within the same
        transaction, so a million records never sit in memory. Raises
        DuplicateDatasetError (with ``existing_id``) when the track already has a
        dataset with this file hash.
        """
        with self._transaction(write=True) as conn:
            return catalog.add_dataset(
                conn,
                name=name,
                track=track,
                file_hash=file_hash,
                source_path=source_path,
                stored_path=stored_path,
                mode=mode,
                n_records=n_records,
                n_rejected=n_rejected,
                reject_path=reject_path,
                records_=records,
            )

    def count_datasets(self) -> int:
        """How many datasets the store holds (all tracks)."""
        with self._transaction(write=False) as conn:
            return catalog.count_datasets(conn)

    def list_datasets(self, track: str | None = None) -> list[DatasetInfo]:
        """Datasets of one track (all tracks when None), oldest first."""
        with self._transaction(write=False) as conn:
            return catalog.list_datasets(conn, track)

    def dataset_record_hashes(self, dataset_id: int) -> list[tuple[int, str]]:
        """``(line_no, record_hash)`` of a dataset's records, in line order."""
        with self._transaction(write=False) as conn:
            return catalog.dataset_record_hashes(conn, dataset_id)

    # --- runs, checkpoints, metrics -------------------------------------------------

    def create_run(
        self,
        *,
        run_id: str,
        track: str,
        base_version: int,
        config: dict[str, Any],
        dataset_ids: list[int],
    ) -> RunInfo:
        """Record a new run (status ``running``, attempt 0 until the first
        :meth:`start_attempt`)."""
        with self._transaction(write=True) as conn:
            return runs.create_run(
                conn,
                run_id=run_id,
                track=track,
                base_version=base_version,
                config=config,
                dataset_ids=dataset_ids,
            )

    def get_run(self, run_id: str) -> RunInfo | None:
        """The run with this id, or None."""
        with self._transaction(write=False) as conn:
            return runs.get_run(conn, run_id)

    def list_runs(self, track: str | None = None, limit: int = 50) -> list[RunInfo]:
        """The newest runs first (of one track, or all), at most ``limit``."""
        with self._transaction(write=False) as conn:
            return runs.list_runs(conn, track, limit)

    def start_attempt(self, run_id: str, *, job_id: int | None = None, fence: int | None = None) -> int:
        """Start the next attempt of a run (status ``running`` again, previous error
        cleared) and return its number, the fencing token its writers carry. With
        ``job_id`` and ``fence``, only while that claim still holds the job
        (StaleClaimError otherwise), so a trainer whose job was taken over cannot start
        an attempt that would shut out the new owner's."""
        with self._transaction(write=True) as conn:
            if fence is not None and job_id is not None:
                jobs.check_claim(conn, job_id, fence)
            return runs.start_attempt(conn, run_id)

    def finish_run(
        self,
        run_id: str,
        *,
        status: str,
        final_metrics: dict[str, Any] | None = None,
        error: str | None = None,
        adapter_path: str | None = None,
        attempt: int | None = None,
    ) -> None:
        """Record how the run's current attempt ended: ``succeeded``, ``failed``,
        ``stopped`` or ``paused``. With ``attempt``, refuse (StaleAttemptError) unless
        it is still the run's current attempt."""
        with self._transaction(write=True) as conn:
            runs.finish_run(
                conn,
                run_id,
                status=status,
                final_metrics=final_metrics,
                error=error,
                adapter_path=adapter_path,
                attempt=attempt,
            )

    def record_checkpoint(
        self, run_id: str, step: int, path: str, *, attempt: int | None = None
    ) -> None:
        """Record a checkpoint as complete. Call only after its files were renamed into
        place. With ``attempt``, refuse a writer that is no longer the current attempt."""
        with self._transaction(write=True) as conn:
            runs.record_checkpoint(conn, run_id, step, path, attempt)

    def forget_checkpoint(self, run_id: str, step: int) -> None:
        """Remove a checkpoint's record; do this before deleting its files."""
        with self._transaction(write=True) as conn:
            runs.forget_checkpoint(conn, run_id, step)

    def list_checkpoints(self, run_id: str) -> list[CheckpointInfo]:
        """The run's complete checkpoints, by step."""
        with self._transaction(write=False) as conn:
            return runs.list_checkpoints(conn, run_id)

    def latest_checkpoint(self, run_id: str) -> CheckpointInfo | None:
        """The complete checkpoint with the highest step, where a resume starts; None
        when the run has none."""
        checkpoints = self.list_checkpoints(run_id)
        return checkpoints[-1] if checkpoints else None

    def append_metrics(
        self, run_id: str, rows: list[dict[str, Any]], attempt: int, kind: str = "train"
    ) -> None:
        """Store metrics rows (each ``{"step": n, "loss": ..., ...}``) logged by
        ``attempt``; ``kind`` is one of ``METRIC_KINDS`` (``train``, ``eval``, ``layers``).
        NaN and infinities are kept."""
        with self._transaction(write=True) as conn:
            runs.append_metrics(conn, run_id, rows, attempt, kind)

    def get_metrics(
        self, run_id: str, kind: str = "train", latest_attempt_only: bool = True,
        after_step: int | None = None, limit: int | None = None,
    ) -> list[dict[str, Any]]:
        """Metrics rows as ``{"step", "attempt", **values}`` by step. With
        ``latest_attempt_only``, rows superseded by a resumed attempt are left out: a
        step logged by several attempts keeps the highest attempt's row. ``after_step``
        and ``limit`` page through it."""
        with self._transaction(write=False) as conn:
            return runs.get_metrics(conn, run_id, kind, latest_attempt_only, after_step, limit)

    # --- trained records ------------------------------------------------------------

    def mark_records_trained(
        self, run_id: str, track: str, base_version: int, record_hashes: Iterable[str]
    ) -> None:
        """Remember that ``run_id`` trained ``track`` (on ``base_version``) on these
        records, so planning can skip them. Idempotent; hashes are streamed in chunks."""
        with self._transaction(write=True) as conn:
            catalog.mark_records_trained(conn, run_id, track, base_version, record_hashes)

    def trained_record_hashes(self, track: str, base_version: int) -> set[str]:
        """Hashes of the records ``track`` already trained on with ``base_version``."""
        with self._transaction(write=False) as conn:
            return catalog.trained_record_hashes(conn, track, base_version)

    # --- jobs, events, control, workers ------------------------------------------------

    def create_job(self, *, track: str, dataset_ids: list[int], overrides: dict[str, Any] | None = None,
                   priority: str = "normal", source: str = "cli") -> JobInfo:
        """Queue a job to train ``track`` on ``dataset_ids`` with setting ``overrides``
        (``{"train": {"lr": 1e-3}}``); ``priority`` is high, normal or low."""
        with self._transaction(write=True) as conn:
            return jobs.create_job(conn, track=track, dataset_ids=dataset_ids, overrides=overrides or {},
                                   priority=priority, source=source)

    def get_job(self, job_id: int) -> JobInfo:
        """The job with ``job_id``; StoreError naming it when there is none."""
        with self._transaction(write=False) as conn:
            return jobs.get_job(conn, job_id)

    def list_jobs(self, states: tuple[str, ...] | None = None, limit: int | None = None) -> list[JobInfo]:
        """Jobs in the order the daemon takes them (priority, then first in first out)."""
        with self._transaction(write=False) as conn:
            return jobs.list_jobs(conn, states, limit)

    def claim_next_job(self, worker: str, run_id: str, lease_s: float = 60.0,
                       now: datetime | None = None) -> JobInfo | None:
        """Atomically claim the next ready job for ``worker`` (state ``running``) and
        lease it for ``lease_s`` seconds: a queued job, or one whose lease ran out (taken
        over). The job's ``fence`` is the token this claim's writes carry; a job without
        a run gets ``run_id``. None when nothing is ready. ``now`` (tests) replaces the
        store's clock (see :func:`honed.store.jobs.claim_next_job`)."""
        with self._transaction(write=True) as conn:
            return jobs.claim_next_job(conn, worker, run_id, lease_s, now)

    def renew_lease(self, job_id: int, fence: int, lease_s: float, now: datetime | None = None) -> datetime:
        """Extend claim ``fence``'s lease on the job to ``lease_s`` seconds from now and
        return when it runs out; StaleClaimError when the job was taken over or settled."""
        with self._transaction(write=True) as conn:
            return jobs.renew_lease(conn, job_id, fence, lease_s, now)

    def check_claim(self, job_id: int, fence: int) -> JobInfo:
        """The job, if the claim with ``fence`` still holds it; StaleClaimError otherwise.
        A read: the answer can change the moment after, which only fenced writes rule out."""
        with self._transaction(write=False) as conn:
            return jobs.check_claim(conn, job_id, fence, lock=False)

    def report_progress(self, job_id: int, progress: dict[str, Any] | None = None,
                        trainer_pid: int | None = None, fence: int | None = None) -> None:
        """A trainer's heartbeat, with where it is; with ``fence``, refused
        (StaleClaimError) once that claim no longer holds the job."""
        with self._transaction(write=True) as conn:
            jobs.report_progress(conn, job_id, progress, trainer_pid, fence)

    def mark_job_evaluating(self, job_id: int, message: str, fence: int | None = None) -> None:
        """Move a running job on to the evaluation of its candidate (fenced like
        :meth:`report_progress`)."""
        with self._transaction(write=True) as conn:
            jobs.mark_evaluating(conn, job_id, message, fence)

    def set_job_priority(self, job_id: int, priority: str) -> JobInfo:
        """Move a waiting job to another priority."""
        with self._transaction(write=True) as conn:
            return jobs.set_priority(conn, job_id, priority)

    def end_attempt(self, job_id: int, state: str, message: str, **kwargs: Any) -> JobInfo:
        """Record how a trainer's attempt ended and settle the job's commands (see
        :func:`honed.store.jobs.end_attempt`; with ``fence=``, only the claim that still
        holds the job may)."""
        with self._transaction(write=True) as conn:
            return jobs.end_attempt(conn, job_id, state, message, **kwargs)

    def add_job_event(self, job_id: int, kind: str, message: str, data: dict[str, Any] | None = None,
                      fence: int | None = None) -> None:
        """Append an entry to a job's event log; with ``fence``, only while that claim
        holds the job (StaleClaimError otherwise)."""
        with self._transaction(write=True) as conn:
            jobs.add_event(conn, job_id, kind, message, data, fence)

    def job_events(self, job_id: int, after_id: int = 0, limit: int | None = None) -> list[JobEvent]:
        """A job's events after ``after_id``, oldest first."""
        with self._transaction(write=False) as conn:
            return jobs.events_after(conn, after_id, limit, job_id=job_id)

    def events_after(self, after_id: int = 0, limit: int = 500) -> list[JobEvent]:
        """Events of all jobs after ``after_id``, oldest first."""
        with self._transaction(write=False) as conn:
            return jobs.events_after(conn, after_id, limit)

    def last_event_id(self) -> int:
        """The newest event id of any job (0 when there is none)."""
        with self._transaction(write=False) as conn:
            return jobs.last_event_id(conn)

    def job_counts(self) -> dict[str, dict[str, int]]:
        """Per job state: ``{"jobs": n, "failed_attempts": n}``."""
        with self._transaction(write=False) as conn:
            return jobs.job_counts(conn)

    def request_command(self, job_id: int, command: str) -> CommandInfo:
        """pause, resume, stop, skip or cancel a job (JobStateError when it cannot)."""
        with self._transaction(write=True) as conn:
            return jobs.request_command(conn, job_id, command)

    def get_command(self, command_id: int) -> CommandInfo:
        """A control command and how far it got."""
        with self._transaction(write=False) as conn:
            return jobs.get_command(conn, command_id)

    def take_command(self, job_id: int, step: int, fence: int | None = None) -> str | None:
        """For a trainer at a step boundary: its job's next pending command, marked taken.
        Only reads (no write lock) when nothing is pending, which is nearly always. With
        ``fence``, StaleClaimError as soon as that claim no longer holds the job: the
        check a trainer makes at every step."""
        with self._transaction(write=False) as conn:
            if fence is not None:
                jobs.check_claim(conn, job_id, fence, lock=False)
            if not jobs.has_pending_command(conn, job_id):
                return None
        with self._transaction(write=True) as conn:
            return jobs.take_command(conn, job_id, step, fence)

    def taken_command(self, job_id: int) -> str | None:
        """The command a trainer of this job took and has not seen through."""
        with self._transaction(write=False) as conn:
            return jobs.taken_command(conn, job_id)

    def register_worker(self, worker_id: str, host: str, pid: int, workspace: str) -> WorkerInfo:
        """Record a daemon starting on this store."""
        with self._transaction(write=True) as conn:
            return jobs.register_worker(conn, worker_id, host, pid, workspace)

    def beat_worker(self, worker_id: str, state: dict[str, Any] | None = None, stopped: bool = False) -> None:
        """A daemon's heartbeat; ``stopped`` when it exits."""
        with self._transaction(write=True) as conn:
            jobs.beat_worker(conn, worker_id, state, stopped)

    def get_worker(self, worker_id: str) -> WorkerInfo | None:
        """The daemon recorded as ``worker_id``, or None."""
        with self._transaction(write=False) as conn:
            return jobs.get_worker(conn, worker_id)

    def list_workers(self, workspace: str | None = None, limit: int = 10) -> list[WorkerInfo]:
        """Daemons of this store (of one workspace), newest first."""
        with self._transaction(write=False) as conn:
            return jobs.list_workers(conn, workspace, limit)

    # --- adapters and deployments --------------------------------------------------------

    def add_adapter(self, *, track: str, run_id: str | None, job_id: int | None, base_version: int,
                    path: str, fence: int | None = None) -> AdapterInfo:
        """Register a run's adapter as a candidate; with ``fence``, only while that claim
        holds ``job_id`` (StaleClaimError otherwise)."""
        with self._transaction(write=True) as conn:
            if fence is not None and job_id is not None:
                jobs.check_claim(conn, job_id, fence)
            return registry.add_adapter(conn, track=track, run_id=run_id, job_id=job_id,
                                        base_version=base_version, path=path)

    def get_adapter(self, adapter_id: int) -> AdapterInfo:
        """The adapter with this id (StoreError when there is none)."""
        with self._transaction(write=False) as conn:
            return registry.get_adapter(conn, adapter_id)

    def list_adapters(self, track: str | None = None) -> list[AdapterInfo]:
        """Adapters of one track (or all), newest first."""
        with self._transaction(write=False) as conn:
            return registry.list_adapters(conn, track)

    def adapter_for_run(self, run_id: str) -> AdapterInfo | None:
        """The adapter ``run_id`` produced, or None."""
        with self._transaction(write=False) as conn:
            return registry.adapter_for_run(conn, run_id)

    def deployed_adapter(self, track: str) -> AdapterInfo | None:
        """The adapter live on ``track`` now; None means the bare base."""
        with self._transaction(write=False) as conn:
            return registry.deployed_adapter(conn, track)

    def record_evaluation(self, adapter_id: int, evaluation: dict[str, Any], verdict: dict[str, Any],
                          state: str, fence: int | None = None) -> AdapterInfo:
        """Keep a candidate's evaluation and verdict; move it to ``state``. With
        ``fence``, only while that claim holds the adapter's job (StaleClaimError otherwise)."""
        with self._transaction(write=True) as conn:
            if fence is not None:
                job_id = registry.get_adapter(conn, adapter_id).job_id
                if job_id is not None:
                    jobs.check_claim(conn, job_id, fence)
            return registry.record_evaluation(conn, adapter_id, evaluation, verdict, state)

    def reject_adapter(self, adapter_id: int) -> AdapterInfo:
        """Reject a candidate or an adapter awaiting approval."""
        with self._transaction(write=True) as conn:
            return registry.reject_adapter(conn, adapter_id)

    def switch_deployment(self, track: str, adapter_id: int | None, *, action: str, reason: str,
                          allowed: tuple[str, ...] = ("candidate", "awaiting_approval")) -> DeploymentInfo:
        """Atomically make ``adapter_id`` (None: the bare base) the track's deployment."""
        with self._transaction(write=True) as conn:
            return registry.switch_deployment(conn, track, adapter_id, action=action, reason=reason,
                                              allowed=allowed)

    def rollback(self, track: str, to: int | None = None, reason: str = "rollback") -> DeploymentInfo:
        """Go back one step in the track's deployment history (or to adapter ``to``,
        which must have been deployed before), in one transaction."""
        with self._transaction(write=True) as conn:
            if to is not None:
                return registry.switch_deployment(conn, track, to, action="rollback", reason=reason,
                                                  allowed=("retired",))
            target, before = registry.rollback_target(conn, track)
            return registry.switch_deployment(conn, track, target, action="rollback", reason=reason,
                                              allowed=("retired",), previous=before)

    def list_deployments(self, track: str, limit: int | None = None) -> list[DeploymentInfo]:
        """The track's deployment history, newest first."""
        with self._transaction(write=False) as conn:
            return registry.list_deployments(conn, track, limit)

    def deployment_counts(self) -> dict[tuple[str, str], int]:
        """``{(track, action): switches}`` over the whole history."""
        with self._transaction(write=False) as conn:
            return registry.deployment_counts(conn)

    def record_hooks(self, deployment_id: int, results: list[dict[str, Any]]) -> None:
        """Keep what the deploy hooks of a deployment reported."""
        with self._transaction(write=True) as conn:
            registry.record_hooks(conn, deployment_id, results)

    # --- experiences -----------------------------------------------------------------

    def add_experience(self, *, track: str, messages: list[dict[str, Any]], output: str,
                       adapter_id: int | None = None, base_version: int | None = None, source: str = "served",
                       latency_ms: float | None = None, prompt_tokens: int | None = None,
                       completion_tokens: int | None = None, meta: dict[str, Any] | None = None) -> ExperienceInfo:
        """Record one interaction with ``track``'s model (``adapter_id`` None: the bare base)."""
        with self._transaction(write=True) as conn:
            return experiences.add_experience(
                conn, track=track, messages=messages, output=output, adapter_id=adapter_id,
                base_version=base_version, source=source, latency_ms=latency_ms, prompt_tokens=prompt_tokens,
                completion_tokens=completion_tokens, meta=meta)

    def get_experience(self, experience_id: int) -> ExperienceInfo:
        """The experience with this id (NotFoundError when there is none)."""
        with self._transaction(write=False) as conn:
            return experiences.get_experience(conn, experience_id)

    def add_feedback(self, experience_id: int, *, score: float | None = None, thumbs: str | None = None,
                     corrected_output: str | None = None) -> ExperienceInfo:
        """Attach a score (0..1), thumbs (up/down) and/or a corrected output."""
        with self._transaction(write=True) as conn:
            return experiences.add_feedback(conn, experience_id, score=score, thumbs=thumbs,
                                            corrected_output=corrected_output)

    def list_experiences(self, track: str | None = None, *, untrained_only: bool = False, limit: int = 100,
                         before_id: int | None = None) -> list[ExperienceInfo]:
        """Experiences, newest first (``before_id`` pages back)."""
        with self._transaction(write=False) as conn:
            return experiences.list_experiences(conn, track, untrained_only=untrained_only, limit=limit,
                                                before_id=before_id)

    # --- the learning loop -------------------------------------------------------------

    def open_experiences(self, track: str) -> list[ExperienceInfo]:
        """``track``'s experiences not trained on and not held by a batch still queued, oldest first."""
        with self._transaction(write=False) as conn:
            return learning.open_experiences(conn, track)

    def set_auto_scores(self, scores: dict[int, float]) -> None:
        """Keep the scorer's scores of experiences that had no feedback."""
        with self._transaction(write=True) as conn:
            learning.set_auto_scores(conn, scores)

    def add_teacher_answer(self, *, experience_id: int, track: str, model: str, status: str,
                           output: str | None = None, reason: str | None = None, score: float | None = None,
                           latency_ms: float | None = None) -> TeacherAnswerInfo:
        """Record one teacher call (accepted, invalid or failed, with the reason)."""
        with self._transaction(write=True) as conn:
            return learning.add_teacher_answer(
                conn, experience_id=experience_id, track=track, model=model, status=status, output=output,
                reason=reason, score=score, latency_ms=latency_ms)

    def teacher_answers_for(self, experience_ids: Iterable[int]) -> dict[int, list[TeacherAnswerInfo]]:
        """The teacher's answers about each experience, oldest first."""
        with self._transaction(write=False) as conn:
            return learning.teacher_answers_for(conn, experience_ids)

    def list_teacher_answers(self, track: str | None = None, *, status: str | None = None,
                             limit: int = 50) -> list[TeacherAnswerInfo]:
        """Teacher answers, newest first."""
        with self._transaction(write=False) as conn:
            return learning.list_teacher_answers(conn, track, status=status, limit=limit)

    def teacher_calls_since(self, track: str, since) -> tuple[int, Any]:
        """Teacher calls for ``track`` since ``since``, and the time of the latest one."""
        with self._transaction(write=False) as conn:
            return learning.teacher_calls_since(conn, track, since)

    def queue_learning_batch(self, *, track: str, base_version: int, dataset_id: int, trigger: str,
                             experience_ids: list[int], counts: dict[str, Any], provenance_path: str,
                             overrides: dict[str, Any], priority: str) -> LearningBatchInfo:
        """Queue a job on an assembled dataset and record the batch, in one transaction:
        its experiences belong to the batch exactly when the job exists."""
        with self._transaction(write=True) as conn:
            job = jobs.create_job(conn, track=track, dataset_ids=[dataset_id], overrides=overrides,
                                  priority=priority, source=f"learn ({trigger})")
            return learning.add_batch(conn, track=track, base_version=base_version, dataset_id=dataset_id,
                                      job_id=job.id, trigger=trigger, experience_ids=experience_ids,
                                      counts=counts, provenance_path=provenance_path)

    def list_learning_batches(self, track: str | None = None, limit: int = 20) -> list[LearningBatchInfo]:
        """Assembled batches, newest first."""
        with self._transaction(write=False) as conn:
            return learning.list_batches(conn, track, limit)

    def mark_experiences_trained(self, run_id: str, dataset_ids: Iterable[int]) -> int:
        """A run on ``dataset_ids`` succeeded: its batches' experiences are trained (once)."""
        with self._transaction(write=True) as conn:
            return learning.mark_batches_trained(conn, run_id, dataset_ids)


"""The Store: the only door to honed's database.

Every public method is one transaction: it opens a connection, runs its queries (from
the query modules: :mod:`~honed.store.catalog`, :mod:`~honed.store.runs`,
:mod:`~honed.store.jobs`, ...) and commits, or rolls back and raises
:class:`StoreError`. Most methods are declared, not written: ``get_job =
reads(jobs.get_job)`` (see :mod:`honed.store.transactions`); the few written out do more
than one query's worth (a fence check first, an argument to adapt). Writers begin with
``BEGIN IMMEDIATE`` on SQLite so they queue on the busy timeout instead of failing with
"database is locked". A Store is safe to share between threads; each process opens its own.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from honed.store import catalog, experiences, jobs, learning, migrate, registry, runs
from honed.store.engine import WRITE_OPTION, create_engine, display, parse_url, sqlite_file
from honed.store.errors import StoreError, StoreUnavailableError
from honed.store.info import (
    AdapterInfo,
    CheckpointInfo,
    DatasetInfo,
    DeploymentInfo,
    JobEvent,
    JobInfo,
    LearningBatchInfo,
)
from honed.store.transactions import reads, writes


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

    schema_revision = reads(migrate.current_revision)

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
        except sa.exc.DataError as exc:  # PostgreSQL: a value out of its column's range, a negative LIMIT
            raise StoreError(f"the store refused a value: {self._reason(exc).splitlines()[0]}") from exc
        except OverflowError as exc:  # SQLite's driver: an integer beyond 64 bits
            raise StoreError(f"the store refused a value: {exc}") from exc

    def _reason(self, exc: sa.exc.DBAPIError) -> str:
        reason = str(exc.orig).strip() if exc.orig is not None else str(exc)
        password = self._url.password
        return reason.replace(str(password), "***") if password else reason

    # --- bases & tracks ------------------------------------------------------------

    add_base = writes(catalog.add_base)
    get_base = reads(catalog.get_base)
    list_bases = reads(catalog.list_bases)
    ensure_track = writes(catalog.ensure_track)
    set_track_base = writes(catalog.set_track_base)
    get_track = reads(catalog.get_track)
    require_track = reads(catalog.require_track)
    list_tracks = reads(catalog.list_tracks)

    # --- datasets & records --------------------------------------------------------

    find_dataset = reads(catalog.find_dataset)
    get_dataset = reads(catalog.get_dataset)

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
        kind: str = "sft",
    ) -> DatasetInfo:
        """Record an ingested dataset and its ``(line_no, record_hash)`` pairs.

        ``records`` is consumed lazily and inserted in chunks within the same
        transaction, so a million records never sit in memory. Raises
        DuplicateDatasetError (with ``existing_id``) when the track already has a
        dataset with this file hash. ``kind`` is what every record holds (sft,
        preference or unpaired; ``honed.data.kinds``).
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
                kind=kind,
            )

    count_datasets = reads(catalog.count_datasets)
    list_datasets = reads(catalog.list_datasets)
    dataset_record_hashes = reads(catalog.dataset_record_hashes)

    # --- runs, checkpoints, metrics -------------------------------------------------

    create_run = writes(runs.create_run)
    get_run = reads(runs.get_run)
    list_runs = reads(runs.list_runs)

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

    finish_run = writes(runs.finish_run)

    def record_checkpoint(
        self, run_id: str, step: int, path: str, *, attempt: int | None = None
    ) -> None:
        """Record a checkpoint as complete. Call only after its files were renamed into
        place. With ``attempt``, refuse a writer that is no longer the current attempt."""
        with self._transaction(write=True) as conn:
            runs.record_checkpoint(conn, run_id, step, path, attempt)

    forget_checkpoint = writes(runs.forget_checkpoint)
    list_checkpoints = reads(runs.list_checkpoints)

    def latest_checkpoint(self, run_id: str) -> CheckpointInfo | None:
        """The complete checkpoint with the highest step, where a resume starts; None
        when the run has none."""
        checkpoints = self.list_checkpoints(run_id)
        return checkpoints[-1] if checkpoints else None

    append_metrics = writes(runs.append_metrics)
    get_metrics = reads(runs.get_metrics)

    # --- trained records ------------------------------------------------------------

    def mark_records_trained(
        self, run_id: str, track: str, base_version: int, record_hashes: Iterable[str]
    ) -> None:
        """Remember that ``run_id`` trained ``track`` (on ``base_version``) on these
        records, so planning can skip them. Idempotent; hashes are streamed in chunks."""
        with self._transaction(write=True) as conn:
            catalog.mark_records_trained(conn, run_id, track, base_version, record_hashes)

    trained_record_hashes = reads(catalog.trained_record_hashes)

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

    list_jobs = reads(jobs.list_jobs)
    claim_next_job = writes(jobs.claim_next_job)
    renew_lease = writes(jobs.renew_lease)

    def check_claim(self, job_id: int, fence: int) -> JobInfo:
        """The job, if the claim with ``fence`` still holds it; StaleClaimError otherwise.
        A read: the answer can change the moment after, which only fenced writes rule out."""
        with self._transaction(write=False) as conn:
            return jobs.check_claim(conn, job_id, fence, lock=False)

    report_progress = writes(jobs.report_progress)
    mark_job_evaluating = writes(jobs.mark_evaluating)
    set_job_priority = writes(jobs.set_priority)

    def end_attempt(self, job_id: int, state: str, message: str, **kwargs: Any) -> JobInfo:
        """Record how a trainer's attempt ended and settle the job's commands (see
        :func:`honed.store.jobs.end_attempt`; with ``fence=``, only the claim that still
        holds the job may)."""
        with self._transaction(write=True) as conn:
            return jobs.end_attempt(conn, job_id, state, message, **kwargs)

    add_job_event = writes(jobs.add_event)

    def job_events(self, job_id: int, after_id: int = 0, limit: int | None = None) -> list[JobEvent]:
        """A job's events after ``after_id``, oldest first."""
        with self._transaction(write=False) as conn:
            return jobs.events_after(conn, after_id, limit, job_id=job_id)

    def events_after(self, after_id: int = 0, limit: int = 500) -> list[JobEvent]:
        """Events of all jobs after ``after_id``, oldest first."""
        with self._transaction(write=False) as conn:
            return jobs.events_after(conn, after_id, limit)

    last_event_id = reads(jobs.last_event_id)
    job_counts = reads(jobs.job_counts)
    request_command = writes(jobs.request_command)
    get_command = reads(jobs.get_command)

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

    taken_command = reads(jobs.taken_command)
    register_worker = writes(jobs.register_worker)
    beat_worker = writes(jobs.beat_worker)
    get_worker = reads(jobs.get_worker)
    list_workers = reads(jobs.list_workers)

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

    get_adapter = reads(registry.get_adapter)
    list_adapters = reads(registry.list_adapters)
    adapter_for_run = reads(registry.adapter_for_run)
    deployed_adapter = reads(registry.deployed_adapter)

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

    reject_adapter = writes(registry.reject_adapter)

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

    list_deployments = reads(registry.list_deployments)
    deployment_counts = reads(registry.deployment_counts)
    record_hooks = writes(registry.record_hooks)

    # --- experiences -----------------------------------------------------------------

    add_experience = writes(experiences.add_experience)
    get_experience = reads(experiences.get_experience)
    add_feedback = writes(experiences.add_feedback)
    list_experiences = reads(experiences.list_experiences)
    count_excluded = reads(experiences.count_excluded)
    exclude_experience = writes(experiences.exclude_experience)
    include_experience = writes(experiences.include_experience)
    delete_experience = writes(experiences.delete_experience)

    # --- the learning loop -------------------------------------------------------------

    open_experiences = reads(learning.open_experiences)
    set_auto_scores = writes(learning.set_auto_scores)
    add_teacher_answer = writes(learning.add_teacher_answer)
    teacher_answers_for = reads(learning.teacher_answers_for)
    list_teacher_answers = reads(learning.list_teacher_answers)
    teacher_calls_since = reads(learning.teacher_calls_since)

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

    list_learning_batches = reads(learning.list_batches)
    mark_experiences_trained = writes(learning.mark_batches_trained)


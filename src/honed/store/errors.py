"""Errors raised by the store. Callers catch :class:`StoreError`; the subclasses let
them tell the cases that need a different reaction apart."""

from __future__ import annotations


class StoreError(Exception):
    """Anything the store cannot do, with a message that names what was asked for."""


class StoreUnavailableError(StoreError):
    """The database cannot be reached or stays locked; the message names the masked URL
    and the driver's reason."""


class DuplicateDatasetError(StoreError):
    """A file with the same hash was already ingested into the same track."""

    def __init__(self, message: str, existing_id: int | None = None) -> None:
        super().__init__(message)
        self.existing_id = existing_id


class StaleAttemptError(StoreError):
    """A writer carried an attempt number older than the run's current one: a newer
    attempt owns the run now, so the stale writer's change is refused (fencing)."""


class StaleClaimError(StaleAttemptError):
    """A writer carried the fencing token of a claim on a job that no longer holds it:
    its lease ran out and another daemon took the job over (or the attempt was already
    settled), so the write is refused.

    A subclass of :class:`StaleAttemptError` because it is the same situation one level
    up (a claim is an attempt at the job, as an attempt number is one at the run), and
    the reaction is the same: stop writing and get out. Code that already stops on a
    stale attempt therefore stops on a lost claim too; code that must tell them apart
    catches this one first."""


class JobStateError(StoreError):
    """A job cannot do what was asked in the state it is in (resume a finished job, move
    a running one); the message says which state it is in and what would apply."""


class NotFoundError(StoreError):
    """What was asked for by id or name (a job, an adapter, a run, a track) does not exist."""

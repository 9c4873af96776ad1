"""The words honed's state machines speak, typed once.

A job's state, a run's status, a control command, a priority, an adapter's state: each
is a :class:`~enum.StrEnum`, so a member *is* its string (it compares equal to it, it is
stored and sent as it) while code that names one gets a typo caught at import time. The
store's columns, the settings, the CLI, the HTTP API and the MCP tools all take their
allowed values from here. Nothing in this module imports more than the standard library.
"""

from __future__ import annotations

from enum import StrEnum


class JobState(StrEnum):
    """DESIGN.md's job states. ``skipped`` is set aside, not finished: it can be resumed."""

    QUEUED = "queued"
    RUNNING = "running"
    PAUSED = "paused"
    EVALUATING = "evaluating"
    SUCCEEDED = "succeeded"
    REJECTED = "rejected"
    FAILED = "failed"
    SKIPPED = "skipped"
    CANCELLED = "cancelled"

    @property
    def final(self) -> bool:
        """Nothing more will happen to a job in this state."""
        return self in FINAL_JOB_STATES


FINAL_JOB_STATES = frozenset({JobState.SUCCEEDED, JobState.REJECTED, JobState.FAILED, JobState.CANCELLED})
# Waiting for the daemon (queued) or for a person (paused, skipped).
WAITING_JOB_STATES = (JobState.QUEUED, JobState.PAUSED, JobState.SKIPPED)


class RunStatus(StrEnum):
    """How a run's latest attempt ended (``running`` while one is under way)."""

    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    STOPPED = "stopped"
    PAUSED = "paused"
    CANCELLED = "cancelled"

    @property
    def has_adapter(self) -> bool:
        """A run that ended like this saved an adapter worth evaluating."""
        return self in (RunStatus.SUCCEEDED, RunStatus.STOPPED)


class AttemptStatus(StrEnum):
    """How one trainer attempt at a job ended, as the trainer records it
    (:class:`honed.daemon.outcome.AttemptOutcome`); the daemon settles the job from it."""

    SUCCEEDED = "succeeded"  # trained to the end; the adapter was evaluated
    STOPPED = "stopped"  # told to stop: the adapter from that step is the result
    PAUSED = "paused"  # told to pause: checkpoint kept
    SKIPPED = "skipped"  # told to skip: checkpoint kept, the job set aside
    INTERRUPTED = "interrupted"  # halted by the STOP file, the daemon's SIGTERM or its exit
    CANCELLED = "cancelled"
    FAILED = "failed"  # the non-finite policy gave up
    CRASHED = "crashed"  # an exception: another attempt may succeed
    OUT_OF_MEMORY = "out_of_memory"  # the next attempt trains with half the micro-batch
    DISK_FULL = "disk_full"  # a write met a full disk: the job pauses until space is back
    UNTRAINABLE = "untrainable"  # settings, data or base that no attempt can train

    @property
    def has_adapter(self) -> bool:
        return self in (AttemptStatus.SUCCEEDED, AttemptStatus.STOPPED)


class Command(StrEnum):
    """What a person (CLI, API, MCP, web monitor) can ask of a job."""

    PAUSE = "pause"
    RESUME = "resume"
    STOP = "stop"
    SKIP = "skip"
    CANCEL = "cancel"


class CommandState(StrEnum):
    PENDING = "pending"
    TAKEN = "taken"
    DONE = "done"


class Priority(StrEnum):
    """A job's place in the queue: high before normal before low, then oldest first."""

    HIGH = "high"
    NORMAL = "normal"
    LOW = "low"

    @property
    def rank(self) -> int:
        """The queue's sort key (0 first)."""
        return list(Priority).index(self)


class AdapterState(StrEnum):
    CANDIDATE = "candidate"
    AWAITING_APPROVAL = "awaiting_approval"
    DEPLOYED = "deployed"
    REJECTED = "rejected"
    RETIRED = "retired"


class DeployAction(StrEnum):
    DEPLOY = "deploy"
    ROLLBACK = "rollback"
    APPROVE = "approve"
    CONSOLIDATE = "consolidate"


def allowed(kind: type[StrEnum]) -> str:
    """``a, b, c``: the allowed values, for an error message."""
    return ", ".join(member.value for member in kind)

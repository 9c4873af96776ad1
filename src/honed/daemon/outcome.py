"""An attempt's outcome: the one record that crosses from the trainer to the daemon.

The trainer process ends every attempt it can by recording one :class:`AttemptOutcome`
(status, reason, step, adapter, verdict): first atomically to a file in the workspace
(``logs/jobs/job-N.fence-F.outcome.json``, beside the job's log: readable even when
the store is not), then
through the store as the job's ``attempt_ended`` event, carrying the claim's fence. The
daemon settles the job from it with one ``match`` (:meth:`Supervisor.settle`); an
attempt with no outcome died before it could say (killed, out of memory), and its exit
status is all there is. Nothing is read back from logs.

Torch-free: the daemon imports it.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, ValidationError

from honed.atomic_files import write_json_atomically
from honed.states import AttemptStatus

if TYPE_CHECKING:
    from honed.store import Store

log = logging.getLogger(__name__)

EVENT_KIND = "attempt_ended"


class AttemptOutcome(BaseModel):
    """How one attempt at a job ended."""

    model_config = ConfigDict(frozen=True)

    job_id: int
    fence: int | None
    status: AttemptStatus
    reason: str  # one line, for people: what happened
    run_id: str | None = None
    step: int | None = None
    total_steps: int | None = None
    loss: float | None = None
    adapter_path: str | None = None
    adapter_id: int | None = None
    verdict: dict[str, Any] | None = None
    error: str | None = None  # the traceback of a crash, the run's error of a failure

    @property
    def where(self) -> str:
        """``step 12/30, loss 0.4321``: how far the attempt got."""
        step = "?" if self.step is None else self.step
        total = "?" if self.total_steps is None else self.total_steps
        return f"step {step}/{total}" + (f", loss {self.loss:.4f}" if isinstance(self.loss, float) else "")


def outcome_file(workspace_root: Path, job_id: int, fence: int | None) -> Path:
    return Path(workspace_root) / "logs" / "jobs" / f"job-{job_id}.fence-{fence}.outcome.json"


def record_outcome(workspace_root: Path, store: Store | None, outcome: AttemptOutcome) -> None:
    """Write ``outcome`` to its file, then to the store under the claim's fence. A store
    that cannot be reached is logged: the daemon reads the file. StaleClaimError passes
    through (the job is someone else's now: that store write must not happen)."""
    from honed.store import StaleClaimError, StoreError

    path = outcome_file(workspace_root, outcome.job_id, outcome.fence)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomically(path, outcome.model_dump(mode="json"))
    if store is None:
        return
    try:
        store.add_job_event(outcome.job_id, EVENT_KIND, f"attempt ended {outcome.status}: {outcome.reason}",
                            outcome.model_dump(mode="json"), fence=outcome.fence)
    except StaleClaimError:
        raise
    except StoreError as exc:
        log.warning("job %d: outcome not recorded in the store (%s); it is in %s", outcome.job_id, exc, path)


def read_outcome(workspace_root: Path, store: Store, job_id: int, fence: int | None) -> AttemptOutcome | None:
    """The outcome the attempt of claim ``fence`` recorded: from the store, else from its
    file; None when it recorded none."""
    for event in reversed(store.job_events(job_id)):
        if event.kind == EVENT_KIND and event.data and event.data.get("fence") == fence:
            return AttemptOutcome.model_validate(event.data)
    path = outcome_file(workspace_root, job_id, fence)
    try:
        return AttemptOutcome.model_validate(json.loads(path.read_text()))
    except FileNotFoundError:
        return None
    except (ValueError, ValidationError) as exc:  # written atomically: only a hand could break it
        log.error("job %d: unreadable outcome %s (%s)", job_id, path, exc)
        return None

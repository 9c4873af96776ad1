"""The lease on the job a daemon holds, renewed from a thread of its own.

A claim leases its job to the daemon for ``daemon.lease_s``; :class:`LeaseKeeper`
renews it every third of that. It runs beside the supervisor's loop rather than in it,
so that nothing the loop waits on (a deploy hook, a store that answers slowly, a trainer
that takes long to exit) lets the lease lapse while the daemon is alive; and it stops
when the daemon's process stops (SIGSTOP, a frozen virtual machine, a lost network),
which is exactly when another daemon should take the job over.

A renewal the store refuses (StaleClaimError) means the job was taken over: the keeper
keeps the error in :attr:`LeaseKeeper.lost` and wakes the supervisor, which stops the
attempt without writing anything more about the job.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from honed.store import JobInfo, StaleClaimError, StoreError

log = logging.getLogger("honed.daemon")


class LeaseKeeper:
    """Renews the lease of the one job the daemon holds (if any) every ``lease_s / 3``."""

    def __init__(self, store, lease_s: float, on_lost: Callable[[], None]) -> None:
        self.store = store
        self.lease_s = lease_s
        self.on_lost = on_lost
        self.lost: StaleClaimError | None = None
        self._held: tuple[int, int] | None = None  # (job id, fence)
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="lease-keeper", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopped.set()
        self._thread.join(timeout=10)

    def hold(self, job: JobInfo) -> None:
        """Renew ``job``'s lease from now on (its claim just made it)."""
        with self._lock:
            self._held = (job.id, job.fence)
            self.lost = None

    def release(self) -> None:
        """Stop renewing: the attempt is settled (or lost). A renewal under way finishes
        first, and whatever it found is forgotten."""
        with self._lock:
            self._held = None
            self.lost = None

    def _run(self) -> None:
        while not self._stopped.wait(self.lease_s / 3):
            if self._renew():
                self.on_lost()

    def _renew(self) -> bool:
        """Renew the held lease; True when the store refused it (the job is lost)."""
        with self._lock:  # held across the renewal, so that release() waits for it
            if self._held is None or self.lost is not None:
                return False
            job_id, fence = self._held
            try:
                self.store.renew_lease(job_id, fence, self.lease_s)
            except StaleClaimError as exc:
                self.lost = exc
                return True
            except StoreError as exc:  # the store is away: if it stays away, the lease lapses
                log.warning("job %d: lease not renewed, trying again in %.0fs: %s", job_id, self.lease_s / 3, exc)
            return False

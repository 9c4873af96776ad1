"""The server gives its accelerator to a trainer that claims it, and takes it back after.

From the first request on (when the pool chooses its device), the server announces
itself in ``run/devices`` (see :mod:`honed.daemon.device_claims`) and looks at the trainers'
claims every ``server.device_poll_s`` on a thread. When a live claim names its device it
does what ``server.on_training`` says, after the requests under way have finished:

- ``unload``: drop every model and free the device's memory; chat requests get 503
  with Retry-After until the claim ends, then the tracks that were served load again;
- ``cpu``: move the models to the CPU and keep answering (slower), move them back after;
- ``keep``: nothing (the trainer and the server share the device).

Then it lists the claim as released in its entry, which is what the trainer waits for.
A device outside ``server.yield_devices`` (by default: the CPU) is never given up. A CPU
is shared: while a trainer's claim on it lives, the server decodes with
``server.threads_while_training`` threads (see :mod:`honed.server.decode_threads`).
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import UTC, datetime

from honed.daemon.device_claims import DeviceEntry, ServerPresence, describe_device, live_entries
from honed.server import decode_threads
from honed.server.serving import ModelReleased, resolve

log = logging.getLogger(__name__)


class DeviceYielder:
    """Watches the claims on the pool's device and releases or restores the pool."""

    def __init__(self, workspace) -> None:
        self.workspace = workspace
        self.settings = workspace.settings.server
        self.pool = None
        self.presence: ServerPresence | None = None
        self.claim: DeviceEntry | None = None  # the claim the device is given up for now
        self.state = "serving"  # serving | releasing | released | on_cpu | sharing
        self.since: float | None = None
        self._poll_lock = threading.Lock()  # one look at the claims at a time
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._sharing_cpu = False  # the pool is on a CPU shared with trainers (see poll_cpu)

    def attach(self, pool, device) -> None:
        """The pool is about to load its first model on ``device``: announce the server
        on it and apply any claim already made, then keep watching."""
        if device.type not in self.settings.yield_devices:
            if device.type == "cpu" and self.settings.threads_while_training > 0:
                self._share_cpu(pool)
            return  # shared with trainers; nothing to give up
        name, uuid = describe_device(device)
        self.pool = pool
        presence = ServerPresence(self.workspace.root, name, uuid, self.settings.on_training)
        try:
            presence.announce("serving", [])  # before reading claims: see claim_device
        except OSError as exc:  # serving matters more; a trainer then loads beside the server
            log.error("device sharing: cannot announce the server in %s (%s); trainers will not wait for it",
                      presence.root, exc)
            return
        self.presence = presence
        self.poll()
        self._thread = threading.Thread(target=self._watch, name="honed-device-yield", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop watching and withdraw the server's entry."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        if self.presence is not None:
            self.presence.withdraw()
        if self._sharing_cpu:
            decode_threads.reset()

    # --- a CPU shared with trainers: fewer decoding threads while one trains ---------------

    def _share_cpu(self, pool) -> None:
        self.pool, self._sharing_cpu = pool, True
        decode_threads.set_up()
        self.poll_cpu()
        self._thread = threading.Thread(target=self._watch, args=(self.poll_cpu,), name="honed-cpu-share",
                                        daemon=True)
        self._thread.start()

    def poll_cpu(self) -> None:
        """Look at the trainers' claims on the CPU once: decode with
        ``server.threads_while_training`` threads while one lives, the usual count after."""
        with self._poll_lock:
            claims = [c for c in live_entries(self.workspace.root, "claim") if c.device == "cpu"]
            if claims and self.claim is None:
                threads = self.settings.threads_while_training
                self.claim, self.since, self.state = claims[0], time.time(), "sharing"
                decode_threads.share(threads)
                log.info("device sharing: training job %s trains on the CPU; the server decodes with %d thread%s",
                         self.claim.job, threads, "" if threads == 1 else "s")
            elif not claims and self.claim is not None:
                log.info("device sharing: job %s no longer trains on the CPU; the server decodes with %s threads",
                         self.claim.job, decode_threads.usual())
                self.claim, self.since, self.state = None, None, "serving"
                decode_threads.share(None)
            elif claims and self.claim.id not in {c.id for c in claims}:
                self.claim = claims[0]

    def _watch(self, poll=None) -> None:
        while not self._stop.wait(self.settings.device_poll_s):
            try:
                (poll or self.poll)()
            except Exception:  # noqa: BLE001 - the watcher must outlive one bad look
                log.exception("device sharing: looking at the claims failed; trying again")

    def poll(self) -> None:
        """Look at the claims once: give the device up, take it back, or acknowledge a
        new claim while it is given up already."""
        with self._poll_lock:
            claims = self.presence.claims()
            if claims and self.claim is None:
                self._give_up(claims[0])
            elif not claims and self.claim is not None:
                self._take_back()
            elif claims and self.claim.id not in {c.id for c in claims}:
                self.claim = claims[0]  # the first trainer ended, another one holds the device
            acknowledged = [c.id for c in claims]
            if acknowledged != self.presence.entry.released_for or self.state != self.presence.entry.state:
                self.presence.announce(self.state, acknowledged)

    def _give_up(self, claim: DeviceEntry) -> None:
        mode = self.settings.on_training
        self.claim, self.since = claim, time.time()
        log.info("device sharing: training job %s claims %s; the server %s", claim.job, claim.device,
                 {"unload": "unloads its models", "cpu": "moves its models to the CPU",
                  "keep": "keeps its models there"}[mode])
        if mode == "unload":
            self.state = "releasing"  # new requests are refused from here on; those under way finish
            self.pool.release(ModelReleased(claim.job, claim.device, self.since))
            self.state = "released"
        elif mode == "cpu":
            import torch

            self.pool.move_models(torch.device("cpu"))
            self.state = "on_cpu"
        else:
            self.state = "sharing"

    def _take_back(self) -> None:
        mode, claim = self.settings.on_training, self.claim
        log.info("device sharing: job %s no longer claims %s; the server takes it back", claim.job, claim.device)
        if mode == "cpu":
            self.pool.move_models(self.pool.device)
        self.claim, self.since, self.state = None, None, "serving"
        if mode == "unload":
            self.pool.restore()
            self.presence.announce(self.state, [])
            self._reload()

    def _reload(self) -> None:
        """Load again what each served track's name means now (a job that just deployed
        a new adapter is served with it), so the next request does not wait for it."""
        for track in self.pool.serving_tracks():
            try:
                target = resolve(self.pool.store, track, track)
                with self.pool.lease(target, is_default=True):
                    pass
            except ModelReleased:
                return  # another trainer claimed the device meanwhile
            except Exception as exc:  # noqa: BLE001 - the next request loads it, or says why it cannot
                log.warning("device sharing: %s not reloaded (%s); its next request loads it", track, exc)

    def device_name(self) -> str | None:
        """The device given up to (or shared with) trainers, as claims name it
        (``cuda:0``, ``cpu``); None until the first request chose one, or when it is
        neither given up nor shared."""
        if self._sharing_cpu:
            return "cpu"
        return self.presence.entry.device if self.presence else None

    def describe(self) -> dict:
        """The serving state for the health endpoint."""
        device = self.device_name()
        since = (datetime.fromtimestamp(self.since, UTC).isoformat(timespec="seconds")
                 if self.since else None)
        job = self.claim.job if self.claim else None
        text = {
            "serving": "serving",
            "releasing": f"releasing {device} to training job {job}: finishing the requests under way",
            "released": f"released to training job {job} on {device} since {since}",
            "on_cpu": f"on cpu while training job {job} uses {device} (since {since})",
            "sharing": f"serving, sharing {device} with training job {job} (since {since})",
        }[self.state]
        found = {"state": self.state, "serving": text, "job": job, "since": since}
        if self._sharing_cpu:
            found["decode_threads"] = decode_threads.wanted()
        return found

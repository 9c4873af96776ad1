"""One accelerator, a trainer and a server: who may use the device now.

A trainer about to load a model on a device that cannot be shared
(``server.yield_devices``) writes a *claim*, ``run/devices/claim-ID.json``, and waits
until every server whose models live on that device has *released* it. A server
announces itself in ``run/devices/server-ID.json`` and lists there the claims it has
released its models for (unloaded them, or moved them to the CPU). The trainer removes
its claim when its attempt ends; the server then takes the device back. A trainer on a
CPU that is shared claims it too, without waiting: a server on that CPU decodes with
fewer threads while the claim lives (``server.threads_while_training``).

A file whose process is gone counts for nothing, so a SIGKILLed trainer cannot keep the
server released forever: liveness is the pid *and* the process's start time (a reused
pid does not revive a claim), and whoever notices a dead entry removes its file.

Files on this machine rather than store rows: a device belongs to one machine while a
PostgreSQL store may be shared by several (a claim on one machine's ``cuda:0`` must not
release another machine's), and a claim must work even when the store is busy. Each
file is replaced in one step (see :mod:`honed.atomic_files`), so a reader never sees
half of one. This module never imports torch: the server reads claims without it.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path

import psutil

from honed.atomic_files import write_json_atomically

log = logging.getLogger(__name__)

DEVICES_DIR = Path("run") / "devices"


@dataclass
class DeviceEntry:
    """One file under ``run/devices``: a trainer's claim (``kind`` "claim", with its
    ``job``) or a server's presence (``kind`` "server", with its ``mode``, ``state`` and
    the claims it has ``released_for``)."""

    kind: str
    id: str
    pid: int
    started: float  # the process's start time, as psutil reports it
    host: str
    device: str  # "cuda:0", "mps", "cpu"
    uuid: str | None  # the NVML uuid of a CUDA device: the same GPU whatever CUDA_VISIBLE_DEVICES says
    since: float  # when the entry was first written, seconds since the epoch
    job: int | None = None
    mode: str | None = None
    state: str = ""
    released_for: list[str] = field(default_factory=list)

    @property
    def file_name(self) -> str:
        return f"{self.kind}-{self.id}.json"

    def same_device(self, other: DeviceEntry) -> bool:
        """True when both entries name the same physical device."""
        if self.uuid and other.uuid:
            return self.uuid == other.uuid
        return self.device == other.device


def devices_dir(root: Path) -> Path:
    """Where the entries of the workspace at ``root`` live."""
    return Path(root) / DEVICES_DIR


def describe_device(device) -> tuple[str, str | None]:
    """``(name, uuid)`` of a torch device: ``cuda`` becomes ``cuda:N`` (the current
    device), and a CUDA device carries its NVML uuid."""
    from honed.training.model_loading import nvml_uuid

    name = str(device)
    if device.type == "cuda" and device.index is None:
        import torch

        name = f"cuda:{torch.cuda.current_device()}"
    return name, nvml_uuid(device)


def new_entry(kind: str, device: str, device_uuid: str | None, **extra) -> DeviceEntry:
    """An entry for this process."""
    pid = os.getpid()
    return DeviceEntry(kind=kind, id=uuid.uuid4().hex[:12], pid=pid, started=psutil.Process(pid).create_time(),
                       host=socket.gethostname(), device=device, uuid=device_uuid, since=time.time(), **extra)


def write_entry(root: Path, entry: DeviceEntry) -> None:
    """Write (or replace) ``entry``'s file in one step."""
    folder = devices_dir(root)
    folder.mkdir(parents=True, exist_ok=True)
    write_json_atomically(folder / entry.file_name, asdict(entry))


def remove_entry(root: Path, entry: DeviceEntry) -> None:
    """Remove ``entry``'s file (nothing when it is gone already)."""
    (devices_dir(root) / entry.file_name).unlink(missing_ok=True)


def live_entries(root: Path, kind: str) -> list[DeviceEntry]:
    """The entries of ``kind`` whose process lives, oldest first. Entries of processes
    that are gone are removed; entries written on another host are left alone."""
    folder = devices_dir(root)
    if not folder.is_dir():
        return []
    host = socket.gethostname()
    found = []
    for path in folder.glob(f"{kind}-*.json"):
        try:
            entry = DeviceEntry(**json.loads(path.read_text(encoding="utf-8")))
        except FileNotFoundError:
            continue  # removed while we looked
        except (OSError, ValueError, TypeError) as exc:
            log.warning("device entry %s unreadable (%s); ignored", path, exc)
            continue
        if entry.host != host:
            continue
        if not _alive(entry.pid, entry.started):
            log.info("device entry %s: process %d is gone; removing it", path.name, entry.pid)
            path.unlink(missing_ok=True)
            continue
        found.append(entry)
    return sorted(found, key=lambda e: e.since)


def _alive(pid: int, started: float) -> bool:
    try:
        process = psutil.Process(pid)
        return abs(process.create_time() - started) < 0.01 and process.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


class DeviceClaim:
    """A trainer's claim on a device: written before its model loads, withdrawn when its
    attempt ends (or void when its process dies)."""

    def __init__(self, root: Path, entry: DeviceEntry) -> None:
        self.root, self.entry = Path(root), entry

    def holders(self) -> list[DeviceEntry]:
        """The live servers on this device that have not released it for this claim yet."""
        return [server for server in live_entries(self.root, "server")
                if server.same_device(self.entry) and self.entry.id not in server.released_for]

    def wait_for_release(self, timeout_s: float, poll_s: float = 0.05) -> list[DeviceEntry]:
        """Wait until no server holds the device, at most ``timeout_s``; returns the
        servers that still hold it then (empty: the device is free)."""
        deadline = time.monotonic() + timeout_s
        while (holding := self.holders()) and time.monotonic() < deadline:
            time.sleep(poll_s)
        return holding

    def withdraw(self) -> None:
        """End the claim: the servers take the device back."""
        remove_entry(self.root, self.entry)


def claim_device(root: Path, device: str, device_uuid: str | None, job_id: int | None) -> DeviceClaim:
    """Announce that this process (training ``job_id``) needs ``device`` now. The claim
    is written before the caller reads the servers' entries, and a server registers
    before it reads claims, so one of the two always sees the other."""
    claim = DeviceClaim(root, new_entry("claim", device, device_uuid, job=job_id))
    write_entry(root, claim.entry)
    return claim


class ServerPresence:
    """A server's entry: which device its models use, what it did with them
    (``state``) and the claims it has released the device for."""

    def __init__(self, root: Path, device: str, device_uuid: str | None, mode: str) -> None:
        self.root = Path(root)
        self.entry = new_entry("server", device, device_uuid, mode=mode, state="serving")

    def announce(self, state: str, released_for: list[str]) -> None:
        """Say what the server does now; ``released_for`` lists the claims it has given
        the device up for (the trainers of those claims may load their models)."""
        self.entry.state, self.entry.released_for = state, list(released_for)
        write_entry(self.root, self.entry)

    def claims(self) -> list[DeviceEntry]:
        """The live claims on this server's device, oldest first."""
        return [claim for claim in live_entries(self.root, "claim") if claim.same_device(self.entry)]

    def withdraw(self) -> None:
        """The server stops: no trainer waits for it any more."""
        remove_entry(self.root, self.entry)


def claim_accelerator(workspace, store, job_id: int, fence: int | None = None):
    """Claim the device this attempt trains on when servers must give it up first
    (``server.yield_devices``), and wait until they have, at most
    ``server.yield_timeout_s``. A CPU that is shared is claimed too, without waiting:
    servers on it decode with ``server.threads_while_training`` threads while the claim
    lives. Returns the claim to withdraw at the end (None: a shared accelerator,
    nothing to claim)."""
    from honed.store import StaleClaimError, StoreError
    from honed.training.model_loading import pick_device

    settings = workspace.settings.server
    device = pick_device()
    if device.type not in settings.yield_devices:
        if device.type == "cpu":  # shared, nothing to wait for: servers on it decode with fewer threads
            return claim_device(workspace.root, "cpu", None, job_id)
        return None
    name, uuid = describe_device(device)
    claim = claim_device(workspace.root, name, uuid, job_id)
    started = time.monotonic()
    waited_for = claim.holders()
    if not waited_for:
        return claim
    holding = claim.wait_for_release(settings.yield_timeout_s)
    if holding:
        message = (f"{len(holding)} server(s) (pid {', '.join(str(s.pid) for s in holding)}) did not release {name} "
                   f"within server.yield_timeout_s = {settings.yield_timeout_s:g} s; training anyway")
        log.warning("job %d: %s", job_id, message)
    else:
        message = f"{len(waited_for)} server(s) released {name} in {time.monotonic() - started:.1f} s"
        log.info("job %d: %s", job_id, message)
    try:
        store.add_job_event(job_id, "device", message, {"device": name, "servers": [s.pid for s in waited_for],
                                                        "still_holding": [s.pid for s in holding]}, fence=fence)
    except StaleClaimError:
        claim.withdraw()
        raise
    except StoreError as exc:
        log.warning("job %d: device event not written (%s)", job_id, exc)
    return claim

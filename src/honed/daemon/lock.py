"""One daemon per workspace, enforced by an OS file lock (``flock``) on
``daemon.lock``, not by a PID file alone: the kernel drops the lock when the process
dies however it dies, so a stale file can never block a new daemon.

The holder writes who it is (pid, host, since) into the file for people and for
``honed status``; whether a daemon runs is decided by the lock, never by that text.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

LOCK_FILE = "daemon.lock"


class DaemonAlreadyRunning(RuntimeError):
    """Another daemon holds this workspace; the message names it."""


@dataclass(frozen=True)
class DaemonInfo:
    """What the lock holder wrote about itself."""

    pid: int | None
    host: str | None
    started_at: str | None
    worker: str | None


def lock_path(root: Path) -> Path:
    return Path(root) / LOCK_FILE


def read_info(root: Path) -> DaemonInfo:
    """The holder's own description (possibly of a daemon long gone: check the lock)."""
    try:
        data = json.loads(lock_path(root).read_text(encoding="utf-8") or "{}")
    except (OSError, ValueError):
        data = {}
    return DaemonInfo(data.get("pid"), data.get("host"), data.get("started_at"), data.get("worker"))


def daemon_running(root: Path) -> bool:
    """Whether a daemon holds the workspace's lock right now.

    Probes with a shared lock taken and released at once; a daemon starting in that
    instant retries (see :meth:`DaemonLock.acquire`), so the probe cannot keep one out.
    """
    try:
        fd = os.open(lock_path(root), os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)


class DaemonLock:
    """The workspace's daemon lock, held from :meth:`acquire` until :meth:`release` or
    the process's death."""

    def __init__(self, root: Path) -> None:
        self.path = lock_path(root)
        self._fd: int | None = None

    def acquire(self, worker: str, retry_s: float = 1.0) -> None:
        """Take the lock or raise DaemonAlreadyRunning naming the holder. Retries for
        ``retry_s`` so that a status probe's momentary shared lock cannot refuse us."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        deadline = time.monotonic() + retry_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    os.close(fd)
                    info = read_info(self.path.parent)
                    who = (f"pid {info.pid} on {info.host}, since {info.started_at}"
                           if info.pid else "its details are not written yet")
                    raise DaemonAlreadyRunning(
                        f"another honed daemon already runs this workspace ({who}); "
                        f"stop it with 'honed daemon stop -w {self.path.parent}'"
                    ) from None
                time.sleep(0.05)
        info = {"pid": os.getpid(), "host": socket.gethostname(),
                "started_at": datetime.now(UTC).isoformat(timespec="seconds"), "worker": worker}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)
        self._fd = fd

    def release(self) -> None:
        """Give the lock up (the file stays; its text is left for the record)."""
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

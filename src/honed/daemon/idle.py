"""The idle policy: with nothing queued, the daemon may make its own work
(``daemon.idle``): synthetic records of ``daemon.idle_family``, or a command of the
user's that writes into the inbox. At most once every ``daemon.idle_every_s``."""

from __future__ import annotations

import logging
import os
import subprocess
import time
from datetime import UTC, datetime

log = logging.getLogger("honed.daemon")


class IdlePolicy:
    def __init__(self, workspace, store) -> None:
        self.ws = workspace
        self.store = store
        self.cfg = workspace.settings.daemon
        self.last: float | None = None

    def __call__(self) -> None:
        """Write data into the inbox as ``daemon.idle`` says, when it is time to."""
        if self.cfg.idle == "none":
            return
        if self.last is not None and time.monotonic() - self.last < self.cfg.idle_every_s:
            return
        if self.store.list_jobs(states=("queued", "running"), limit=1):
            return
        self.last = time.monotonic()
        if self.cfg.idle == "synthetic":
            self.write_synthetic()
        else:
            self.run_command()

    def write_synthetic(self) -> None:
        from honed.data.synthetic import write_synthetic

        stamp = f"{datetime.now(UTC):%Y%m%dT%H%M%S}"
        staging = self.ws.local_datasets_dir / "idle"  # renamed into the inbox: same filesystem
        staging.mkdir(parents=True, exist_ok=True)
        train, _ = write_synthetic(self.cfg.idle_family, self.cfg.idle_records,
                                   staging / f"idle-{self.cfg.idle_family}-{stamp}.jsonl", seed=int(time.time()))
        os.rename(train, self.ws.inbox / train.name)  # renamed in: complete at once
        log.info("idle: wrote %d %s records into the inbox (%s)", self.cfg.idle_records,
                 self.cfg.idle_family, train.name)

    def run_command(self) -> None:
        env = {**os.environ, "HONED_INBOX": str(self.ws.inbox), "HONED_WORKSPACE": str(self.ws.root)}
        with open(self.ws.logs_dir / "idle.log", "ab") as out:
            try:
                result = subprocess.run(self.cfg.idle_command, shell=True, env=env, cwd=self.ws.root,
                                        stdout=out, stderr=out, timeout=3600)
            except subprocess.TimeoutExpired:
                log.error("idle: command timed out after an hour: %s", self.cfg.idle_command)
                return
        if result.returncode:
            log.error("idle: command exited with %d (output in logs/idle.log): %s", result.returncode,
                      self.cfg.idle_command)
        else:
            log.info("idle: command ran: %s", self.cfg.idle_command)

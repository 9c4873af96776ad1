"""The warm spare: one trainer process kept started with its imports done, so that a job
starts training without waiting for torch (``daemon.warm_trainer``).

The spare runs ``python -m honed.daemon.trainer_process --warm``: it imports the training
stack, preloads the default base, then waits for one line on stdin naming its job. End of
input means "not needed", and it exits.
"""

from __future__ import annotations

import logging
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger("honed.daemon")

RESPAWN_S = 30.0  # a spare that died younger than this is not restarted at once


class SpareTrainer:
    """At most one warm trainer process, started on demand and handed to one job."""

    def __init__(self, command: Callable[[], list[str]], log_path: Path, *, enabled: bool) -> None:
        self.command = command
        self.log_path = log_path
        self.enabled = enabled
        self.process: subprocess.Popen | None = None
        self.started = 0.0

    def ensure(self) -> None:
        """Start a spare when there is none (or it died), unless it keeps dying young."""
        if not self.enabled or (self.process is not None and self.process.poll() is None):
            return
        if self.process is not None:
            log.warning("the spare trainer exited with %s; see %s", self.process.returncode, self.log_path)
            self.process = None
            if time.monotonic() - self.started < RESPAWN_S:
                return  # it died young: do not spin; jobs start fresh trainers meanwhile
        with open(self.log_path, "ab") as out:
            self.process = subprocess.Popen(self.command(), stdin=subprocess.PIPE, stdout=out, stderr=out,
                                            start_new_session=True)
        self.started = time.monotonic()

    def hand_over(self, job_line: str) -> subprocess.Popen | None:
        """Give the spare its job (``job N fence=F LOGPATH``); None when there is no live
        spare to take it, and the caller starts a fresh trainer."""
        spare, self.process = self.process, None
        if spare is None or spare.poll() is not None:
            return None
        try:
            spare.stdin.write(f"{job_line}\n".encode())
            spare.stdin.close()
        except OSError:
            return None
        return spare

    def drop(self) -> None:
        """End the spare (end of input), killing it if it does not exit within 10 s."""
        spare, self.process = self.process, None
        if spare is not None and spare.poll() is None:
            spare.stdin.close()
            try:
                spare.wait(timeout=10)
            except subprocess.TimeoutExpired:
                spare.kill()
                spare.wait()

"""Real daemons for the reliability tests: started as the user starts them
(``python -m honed.cli daemon``), killed with real signals, cleaned up with every trainer
process they left, whatever the test did to them."""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest

from honed.config import update_config_file
from honed.daemon.lock import daemon_running, read_info
from honed.workspace import Workspace, open_workspace

# Small and quick: the random tiny base, batches of 8, a checkpoint every 5 steps, no
# backoff, a daemon that looks around every 0.1 s.
FAST_SETTINGS = {
    "train": {"batch_size": 8, "epochs": 1.0, "checkpoint_every": 5, "eval_every": 0, "warmup_steps": 3,
              "heldout_fraction": 0.1, "retrain_seen": True, "threads": 1},
    "lora": {"r": 4, "alpha": 8.0},
    "gates": {"rules": []},  # these tests are about supervision: every candidate deploys
    "daemon": {"poll_interval_s": 0.1, "settle_s": 0.5, "backoff_s": 0.0, "max_attempts": 3,
               "heartbeat_timeout_s": 120.0, "stop_grace_s": 60.0},
}


def configure(ws: Workspace, extra: dict | None = None) -> Workspace:
    """Rewrite the workspace's honed.toml with the test settings (and ``extra``)."""
    update_config_file(ws.root, FAST_SETTINGS)
    if extra:
        update_config_file(ws.root, extra)
    return open_workspace(ws.root)


def wait_for(predicate: Callable[[], object], timeout: float, what: str, interval: float = 0.05):
    """Poll ``predicate`` until it returns something truthy; fail naming ``what``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")


class DaemonProcess:
    """One ``honed daemon`` in the foreground of a child process."""

    def __init__(self, root: Path, log: Path) -> None:
        self.root = root
        self.log = log
        self.proc: subprocess.Popen | None = None

    def start(self, wait: bool = True) -> DaemonProcess:
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "honed.cli", "daemon", "--workspace", str(self.root)],
                stdout=out, stderr=out, stdin=subprocess.DEVNULL,
            )
        if wait:
            wait_for(lambda: self.proc.poll() is not None or (daemon_running(self.root)
                     and read_info(self.root).pid == self.proc.pid), 60, "the daemon to take its lock")
            assert self.proc.poll() is None, self.output()
        return self

    @property
    def pid(self) -> int:
        return self.proc.pid

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)

    def stop(self, timeout: float = 120) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=timeout)


def trainer_processes(root: Path) -> list[psutil.Process]:
    """Every trainer process (warm or working) of the workspace at ``root``."""
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        cmd = proc.info.get("cmdline") or []
        if "honed.daemon.trainer_process" in cmd and str(root) in cmd:
            found.append(proc)
    return found


@pytest.fixture
def daemon_ws(make_workspace, tiny_random_base) -> Workspace:
    """A workspace on the random tiny base with the fast test settings."""
    return configure(make_workspace(tiny_random_base))


@pytest.fixture
def start_daemon(tmp_path):
    """Start daemons for a workspace; every one and all its trainers die at teardown."""
    started: list[DaemonProcess] = []

    def start(ws: Workspace, wait: bool = True) -> DaemonProcess:
        daemon = DaemonProcess(ws.root, tmp_path / f"daemon-{len(started)}.out")
        started.append(daemon)
        return daemon.start(wait=wait)

    yield start
    for daemon in started:
        if daemon.proc and daemon.proc.poll() is None:
            daemon.proc.kill()
            daemon.proc.wait()
    roots = {d.root for d in started}
    for root in roots:
        for proc in trainer_processes(root):
            with contextlib.suppress(psutil.Error):
                proc.kill()


def synth(path: Path, n: int, seed: int = 0, family: str = "reversal") -> Path:
    """A synthetic training file of ``n`` records."""
    from honed.data.synthetic import write_synthetic

    train, _ = write_synthetic(family, n, path, seed=seed, eval_n=0)
    return train


def last_logged_step(run_dir: Path) -> int:
    """The last training step in a run's metrics.jsonl (0 before the first)."""
    import json

    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return 0
    step = 0
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue  # a line being written
        if row.get("kind") == "train":
            step = row["step"]
    return step


def pid_alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False



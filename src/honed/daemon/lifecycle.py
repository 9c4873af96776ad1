"""Starting and stopping the daemon from the command line: in the foreground with its
log in ``logs/``, a file per day, detached in the background, and stopped gracefully."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from logging.handlers import TimedRotatingFileHandler
from pathlib import Path

from honed.daemon.lock import daemon_running, read_info


def _dated_name(default: str) -> str:
    """``daemon.log.2026-12-01`` (the standard handler's name for a finished day) becomes
    ``daemon-2026-12-01.log``, so old days sort and open as ordinary log files."""
    path = Path(default)
    current, _, day = path.name.rpartition(".")
    return str(path.with_name(f"{current.removesuffix('.log')}-{day}.log"))


def setup_daemon_logging(logs_dir: Path, to_console: bool, verbose: bool = False,
                         name: str = "daemon") -> TimedRotatingFileHandler:
    """Log the daemon to ``logs/daemon.log`` (``NAME.log``; and to stderr in the
    foreground). At local midnight the day's file becomes ``logs/daemon-YYYY-MM-DD.log``;
    none is deleted."""
    logs_dir.mkdir(parents=True, exist_ok=True)
    handler = TimedRotatingFileHandler(logs_dir / f"{name}.log", when="midnight", backupCount=0,
                                       encoding="utf-8")
    handler.namer = _dated_name
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    for old in list(root.handlers):
        if not to_console:
            root.removeHandler(old)
        else:
            old.setLevel(logging.DEBUG if verbose else logging.INFO)
    root.addHandler(handler)
    for noisy in ("watchdog", "alembic", "urllib3", "httpx"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    return handler


def start_detached(root: Path, extra_args: list[str] | None = None, timeout_s: float = 60.0) -> int:
    """Start the daemon for ``root`` in the background (with ``extra_args`` for ``honed
    daemon``), wait until it holds the workspace's lock, and return its pid.
    RuntimeError with its output if it fails."""
    out_path = Path(root) / "logs" / "daemon.out"
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with open(out_path, "ab") as out:
        start = out.tell()
        proc = subprocess.Popen(
            [sys.executable, "-m", "honed.cli", "daemon", "--workspace", str(root), "--quiet", *(extra_args or [])],
            stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True, cwd=root,
        )
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            with open(out_path, "rb") as fh:
                fh.seek(start)
                said = fh.read().decode("utf-8", "replace").strip()
            raise RuntimeError(said or f"the daemon exited with code {proc.returncode}")
        if daemon_running(root) and read_info(root).pid == proc.pid:
            return proc.pid
        time.sleep(0.1)
    raise RuntimeError(f"the daemon (pid {proc.pid}) did not take the workspace within {timeout_s:g}s; "
                       f"see {out_path}")


def stop_daemon(root: Path, timeout_s: float) -> int | None:
    """Ask the workspace's daemon to stop (SIGTERM: its trainer checkpoints, its job
    goes back to the queue) and wait until it has; returns its pid, or None when no
    daemon runs. TimeoutError when it is still running after ``timeout_s``."""
    if not daemon_running(root):
        return None
    pid = read_info(root).pid
    if pid is None:
        raise RuntimeError(f"a daemon holds {root} but has not written its pid yet; try again")
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return pid
    deadline = time.monotonic() + timeout_s
    while daemon_running(root):
        if time.monotonic() > deadline:
            raise TimeoutError(f"the daemon (pid {pid}) is still stopping after {timeout_s:g}s "
                               "(its trainer may still be writing a checkpoint)")
        time.sleep(0.1)
    return pid

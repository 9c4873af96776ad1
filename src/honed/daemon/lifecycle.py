"""Starting and stopping the daemon from the command line: in the foreground with its
log in ``logs/`` by day, detached in the background, and stopped gracefully."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

from honed.daemon.lock import daemon_running, read_info


class DailyFileHandler(logging.Handler):
    """Appends to ``logs/daemon-YYYY-MM-DD.log``, a new file each (local) day."""

    def __init__(self, directory: Path, prefix: str = "daemon") -> None:
        super().__init__()
        self.directory = Path(directory)
        self.prefix = prefix
        self._day: date | None = None
        self._stream = None

    def path_for(self, day: date) -> Path:
        return self.directory / f"{self.prefix}-{day.isoformat()}.log"

    def emit(self, record: logging.LogRecord) -> None:
        try:
            today = date.today()
            if today != self._day:
                if self._stream is not None:
                    self._stream.close()
                self.directory.mkdir(parents=True, exist_ok=True)
                self._stream = open(self.path_for(today), "a", encoding="utf-8")
                self._day = today
            self._stream.write(self.format(record) + "\n")
            self._stream.flush()
        except Exception:  # pragma: no cover - logging must never kill the daemon
            self.handleError(record)

    def close(self) -> None:
        if self._stream is not None:
            self._stream.close()
            self._stream = None
        super().close()


def setup_daemon_logging(logs_dir: Path, to_console: bool, verbose: bool = False) -> DailyFileHandler:
    """Log the daemon to ``logs/`` by day (and to stderr in the foreground)."""
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    handler = DailyFileHandler(logs_dir)
    handler.setFormatter(fmt)
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

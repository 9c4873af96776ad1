"""Run the real ``honed`` command in a subprocess, as a user would; a free port for what it serves."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path


def run_honed(*args: str, cwd: Path | None = None, env: dict | None = None, check: bool = True,
              timeout: float = 600) -> subprocess.CompletedProcess:
    """Run the real ``honed`` CLI in a subprocess."""
    full_env = {**os.environ, **(env or {})}
    proc = subprocess.run(
        [sys.executable, "-m", "honed.cli", *args], cwd=cwd, env=full_env,
        capture_output=True, text=True, timeout=timeout,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"honed {' '.join(args)} exited {proc.returncode}\n"
                             f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}")
    return proc


def free_port() -> int:
    """A TCP port on loopback that nothing listens on (now)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]

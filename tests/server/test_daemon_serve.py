"""``honed daemon --serve``: the API and monitor in the daemon's own process."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys

import httpx

from honed.config import update_config_file
from tests.cli_runner import free_port
from tests.daemon.conftest import wait_for


def test_the_daemon_serves_the_api(make_workspace, tiny_random_base, tmp_path):
    ws = make_workspace(tiny_random_base)
    port = free_port()
    update_config_file(ws.root, {"server": {"port": port}})
    with open(tmp_path / "daemon.out", "wb") as out:  # the daemon keeps its own copy of the descriptor
        proc = subprocess.Popen([sys.executable, "-m", "honed.cli", "daemon", "--serve", "-w", str(ws.root)],
                                stdout=out, stderr=out)
    try:
        def daemon_up():
            assert proc.poll() is None, (tmp_path / "daemon.out").read_text()
            try:
                return httpx.get(f"http://127.0.0.1:{port}/api/status", timeout=2).json()["daemon"]["up"]
            except httpx.TransportError:
                return False

        wait_for(daemon_up, 60, "the daemon's API to report the daemon up")
        assert f"monitor and API at http://127.0.0.1:{port}/" in (tmp_path / "daemon.out").read_text()
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    with socket.socket() as sock:  # the port is free again
        sock.bind(("127.0.0.1", port))

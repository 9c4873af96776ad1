"""A real honed app on a real uvicorn server, on a temporary workspace whose store is a
SQLite file or a fresh PostgreSQL schema."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import httpx
import pytest
import uvicorn

from honed.config import update_config_file
from honed.server import create_app
from honed.workspace import Workspace, open_workspace


class ServerThread:
    """uvicorn serving ``create_app(workspace)`` from a thread, on a free loopback port."""

    def __init__(self, workspace: Workspace, host: str = "127.0.0.1") -> None:
        self.app = create_app(workspace, host=host)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.server = uvicorn.Server(uvicorn.Config(self.app, log_level="warning", timeout_graceful_shutdown=1))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self) -> ServerThread:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            assert time.monotonic() < deadline and self.thread.is_alive(), "the server did not start"
            time.sleep(0.02)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.sock.close()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def api_ws(request, make_workspace, tiny_random_base) -> Workspace:
    """A workspace on the random tiny base; its store on SQLite or PostgreSQL."""
    url = "" if request.param == "sqlite" else request.getfixturevalue("pg_schema_url")
    ws = make_workspace(tiny_random_base, store_url=url)
    update_config_file(ws.root, {"ingest": {"mode": "strict"}, "server": {"live_poll_s": 0.1}})
    return open_workspace(ws.root)


@pytest.fixture
def serve():
    """Start servers for workspaces; all stop at teardown."""
    started: list[ServerThread] = []

    def start(workspace: Workspace, host: str = "127.0.0.1") -> ServerThread:
        server = ServerThread(workspace, host).__enter__()
        started.append(server)
        return server

    yield start
    for server in started:
        server.__exit__()


@pytest.fixture
def client(api_ws, serve) -> Iterator[httpx.Client]:
    """An HTTP client on a running server for ``api_ws``."""
    server = serve(api_ws)
    with httpx.Client(base_url=server.url, timeout=30) as http:
        yield http

"""The MCP tests talk to a real ``honed mcp`` subprocess through the official SDK's own
client, as an MCP client application does; a real daemon (tests/daemon's fixtures)
trains the jobs they queue."""

from __future__ import annotations

import os
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from mcp import ClientSession, StdioServerParameters, stdio_client

from tests.daemon.conftest import daemon_ws, start_daemon

__all__ = ["daemon_ws", "mcp_session", "start_daemon"]  # the fixtures, for pytest to find here


@asynccontextmanager
async def mcp_session(root: Path, errlog: Path) -> AsyncIterator[ClientSession]:
    """An initialised client session on ``honed mcp --workspace ROOT`` over stdio; the
    server's stderr goes to ``errlog``."""
    server = StdioServerParameters(command=sys.executable,
                                   args=["-m", "honed.cli", "mcp", "--workspace", str(root)],
                                   env=dict(os.environ))  # the SDK passes on only PATH, HOME... by default
    with open(errlog, "a") as err:
        async with stdio_client(server, errlog=err) as (read, write), ClientSession(read, write) as session:
            await session.initialize()
            yield session

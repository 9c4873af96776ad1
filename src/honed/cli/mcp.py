"""``honed mcp``: the workspace's MCP server, over stdio (what MCP clients spawn) or
streamable HTTP. Everything it logs goes to stderr: under stdio, stdout carries the
protocol."""

from __future__ import annotations

import contextlib
import sys
from typing import Annotated

import typer

from honed.cli.common import WorkspaceOpt, app, err_console, fail, workspace_from


@app.command(name="mcp")
def mcp_command(
    http: Annotated[bool, typer.Option("--http", help="Serve streamable HTTP at http://HOST:PORT/mcp "
                                       "instead of stdio.")] = False,
    host: Annotated[str, typer.Option(help="Address to bind with --http; anything but loopback needs the "
                                      "token in server.token_env.")] = "127.0.0.1",
    port: Annotated[int | None, typer.Option(min=0, max=65535,  # beyond it uvicorn hangs instead of failing
                                             help="TCP port with --http (default: 8322).")] = None,
    workspace: WorkspaceOpt = None,
) -> None:
    """Serve the workspace to MCP clients (tools: status, jobs, training, deployment,
    experiences; resources: status, job events, run metrics). Default: stdio."""
    ws = workspace_from(workspace)
    from honed.mcp.server import DEFAULT_HTTP_PORT, run_server

    if not http:
        if sys.stdin.isatty():
            err_console.print(f"honed MCP server for {ws.root} on stdio: an MCP client spawns this command "
                              "and talks to it (Ctrl-C ends it); --http serves it over HTTP", highlight=False)
        with contextlib.suppress(KeyboardInterrupt):
            run_server(ws)
        return
    from honed.server import ServerConfigError

    port = DEFAULT_HTTP_PORT if port is None else port
    shown = f"[{host}]" if ":" in host else host
    err_console.print(f"honed MCP server for {ws.root}: http://{shown}:{port}/mcp", highlight=False)
    try:
        run_server(ws, http=True, host=host, port=port)
    except ServerConfigError as exc:
        raise fail(str(exc)) from None

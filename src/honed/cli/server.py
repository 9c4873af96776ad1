"""``honed serve``: the HTTP API and web monitor of a workspace, on uvicorn."""

from __future__ import annotations

from typing import Annotated

import typer

from honed.cli.common import WorkspaceOpt, app, err_console, fail, workspace_from


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Address to bind (default: server.host, 127.0.0.1); "
                                             "anything but loopback needs the token in server.token_env.")] = None,
    port: Annotated[int | None, typer.Option(min=0, max=65535,
                                             help="TCP port (default: server.port, 8321; 0 = any free port).")] = None,
    workspace: WorkspaceOpt = None,
) -> None:
    """Serve the HTTP API (/api, OpenAPI at /docs), live updates, /metrics and the web monitor."""
    import uvicorn

    from honed.server import ServerConfigError, create_app

    ws = workspace_from(workspace)
    host = host or ws.settings.server.host
    port = ws.settings.server.port if port is None else port
    try:
        web_app = create_app(ws, host=host)
    except ServerConfigError as exc:
        raise fail(str(exc)) from None
    shown = f"[{host}]" if ":" in host else host
    err_console.print(f"honed monitor and API for {ws.root}: http://{shown}:{port}/ "
                      f"(API docs at /docs{'; every route needs the token' if web_app.state.token else ''})",
                      highlight=False)
    uvicorn.run(web_app, host=host, port=port, log_level="warning", timeout_graceful_shutdown=3)


@app.command("serve-llama")
def serve_llama_command(workspace: WorkspaceOpt = None) -> None:
    """Run llama.cpp's OpenAI-compatible server (llama-cpp-python) on every track's live
    version, each as a merged f16 GGUF under its own name (main-a7), at deploy.llama_cpp_url;
    a deploy or rollback restarts it on the new version."""
    import logging

    from honed.registry.export import ExportError
    from honed.registry.llama_server import LlamaServerError, serve_llama

    ws = workspace_from(workspace)
    logging.getLogger("honed.registry.llama_server").setLevel(logging.INFO)  # its restarts are what it does
    err_console.print(f"llama.cpp server for {ws.root} at {ws.settings.deploy.llama_cpp_url or '(unset)'}; "
                      f"its log: {ws.root / 'logs' / 'llama_cpp_server.log'}", highlight=False)
    try:
        serve_llama(ws)
    except (LlamaServerError, ExportError) as exc:
        raise fail(str(exc)) from None

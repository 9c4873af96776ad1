"""``honed mcp --http``: streamable HTTP with the token ``honed serve`` uses, and no
binding beyond loopback without one."""

from __future__ import annotations

import json
import os
import secrets
import socket
import subprocess
import sys
import urllib.error
import urllib.request

import anyio
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client

from tests.cli_runner import free_port, run_honed
from tests.daemon.conftest import wait_for


def listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def test_http_transport_checks_the_token_and_serves_the_tools(daemon_ws, tmp_path):
    token, port = secrets.token_urlsafe(24), free_port()
    url = f"http://127.0.0.1:{port}/mcp"
    with open(tmp_path / "mcp-http.out", "wb") as out:
        server = subprocess.Popen(
            [sys.executable, "-m", "honed.cli", "mcp", "--http", "--port", str(port), "-w", str(daemon_ws.root)],
            stdout=out, stderr=out, stdin=subprocess.DEVNULL, env={**os.environ, "HONED_API_TOKEN": token})
    try:
        wait_for(lambda: server.poll() is not None or listening(port), 60, "the MCP server to listen")
        assert server.poll() is None, (tmp_path / "mcp-http.out").read_text()

        anonymous = urllib.request.Request(url, data=b"{}", headers={"Content-Type": "application/json"})
        try:
            urllib.request.urlopen(anonymous, timeout=10)
            raise AssertionError("a request without the token was served")
        except urllib.error.HTTPError as exc:
            assert exc.code == 401 and "HONED_API_TOKEN" in exc.read().decode()

        # A page of another site, or a rebound DNS name, is refused even with the token.
        for header, value, code, words in (("Origin", "http://evil.example", 403, "server.allowed_origins"),
                                           ("Host", f"evil.example:{port}", 400, "server.allowed_hosts")):
            forged = urllib.request.Request(url, data=b"{}", headers={
                "Content-Type": "application/json", "Authorization": f"Bearer {token}", header: value})
            try:
                urllib.request.urlopen(forged, timeout=10)
                raise AssertionError(f"a request with {header}: {value} was served")
            except urllib.error.HTTPError as exc:
                assert exc.code == code and words in json.loads(exc.read())["error"]

        async def session():
            async with (create_mcp_http_client(headers={"Authorization": f"Bearer {token}"}) as http,
                        streamable_http_client(url, http_client=http) as (read, write),
                        ClientSession(read, write) as client):
                await client.initialize()
                tools = {t.name for t in (await client.list_tools()).tools}
                status = await client.call_tool("status", {})
                unknown = await client.call_tool("get_job", {"job_id": 5})
                return tools, status, unknown

        tools, status, unknown = anyio.run(session)
        assert {"train_model", "deploy", "rollback", "give_feedback"} <= tools
        # Over HTTP the client is elsewhere: the workspace by its name, no server path.
        assert status.structured_content["workspace"] == daemon_ws.root.name
        assert str(daemon_ws.root) not in json.dumps(status.structured_content)
        assert unknown.is_error and "no job 5" in unknown.content[0].text
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_http_beyond_loopback_needs_a_token(daemon_ws, monkeypatch):
    monkeypatch.delenv("HONED_API_TOKEN", raising=False)
    refused = run_honed("mcp", "--http", "--host", "0.0.0.0", "--port", str(free_port()), "-w", str(daemon_ws.root),
                        check=False, timeout=60)
    assert refused.returncode == 1
    assert "refusing to bind to 0.0.0.0" in refused.stderr and "HONED_API_TOKEN" in refused.stderr

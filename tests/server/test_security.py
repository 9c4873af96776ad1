"""Safe defaults: loopback unless there is a token, the token checked on every route,
secrets never returned."""

from __future__ import annotations

import httpx
import pytest

from honed.server import ServerConfigError, create_app
from honed.workspace import open_workspace
from tests.cli_runner import run_honed

TOKEN = "s3cret-token-for-the-tests-0123456789"


@pytest.fixture
def sqlite_ws(make_workspace, tiny_random_base):
    return make_workspace(tiny_random_base)


def test_a_public_bind_without_a_token_refuses_to_start(sqlite_ws, monkeypatch):
    monkeypatch.delenv("HONED_API_TOKEN", raising=False)
    with pytest.raises(ServerConfigError, match="HONED_API_TOKEN"):
        create_app(sqlite_ws, host="0.0.0.0")
    create_app(sqlite_ws, host="127.0.0.1")  # loopback needs none
    proc = run_honed("serve", "-w", str(sqlite_ws.root), "--host", "0.0.0.0", "--port", "0", check=False,
                     env={"HONED_API_TOKEN": ""}, timeout=60)
    assert proc.returncode == 1 and "refusing to bind to 0.0.0.0" in proc.stderr
    monkeypatch.setenv("HONED_API_TOKEN", "short")
    with pytest.raises(ServerConfigError, match="at least 16"):
        create_app(sqlite_ws, host="0.0.0.0")


def test_every_route_checks_the_token(sqlite_ws, serve, monkeypatch):
    monkeypatch.setenv("HONED_API_TOKEN", TOKEN)
    server = serve(sqlite_ws, host="0.0.0.0")  # bound to loopback by the fixture; the app is configured for 0.0.0.0
    with httpx.Client(base_url=server.url, timeout=30) as anon:
        for method, path in [("POST", "/api/tracks"), ("POST", "/api/jobs/1/pause"), ("DELETE", "/api/jobs/1"),
                             ("POST", "/api/tracks/main/rollback"), ("POST", "/api/datasets?name=a.jsonl"),
                             ("GET", "/api/status"), ("GET", "/api/live"), ("GET", "/metrics"), ("GET", "/"),
                             ("GET", "/api/health"), ("GET", "/healthz"), ("GET", "/api/learn"),
                             ("POST", "/api/learn/main/run-now")]:
            answer = anon.request(method, path, json={"name": "x"})
            assert answer.status_code == 401, (method, path, answer.status_code)
            assert "Bearer" in answer.json()["error"] and answer.headers["www-authenticate"] == "Bearer"
        wrong = anon.post("/api/tracks", json={"name": "x"}, headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401
        assert anon.get("/static/monitor.js").status_code == 200  # code, no data
    with httpx.Client(base_url=server.url, timeout=30, headers={"Authorization": f"Bearer {TOKEN}"}) as authed:
        assert authed.post("/api/tracks", json={"name": "support"}).status_code == 201
        assert authed.get("/metrics").status_code == 200
    with httpx.Client(base_url=server.url, timeout=30, follow_redirects=True) as browser:
        opened = browser.get("/", params={"token": TOKEN})  # a link with the token: kept as a cookie
        assert opened.status_code == 200 and "honed" in opened.text
        assert browser.cookies.get("honed_token") == TOKEN
        assert browser.get("/api/status").status_code == 200
        assert browser.post("/api/jobs/1/pause").status_code == 404  # let in by the cookie: there is no job 1


@pytest.mark.postgres
def test_the_store_password_is_never_returned(make_workspace, tiny_random_base, pg_schema_url, serve):
    import sqlalchemy as sa

    url = sa.make_url(pg_schema_url).set(password="hunter2-not-for-clients")  # trust auth ignores it
    ws = make_workspace(tiny_random_base, store_url=url.render_as_string(hide_password=False))
    server = serve(open_workspace(ws.root))
    with httpx.Client(base_url=server.url, timeout=30) as client:
        for path in ("/api/status", "/metrics", "/api/runs", "/api/tracks", "/openapi.json"):
            assert "hunter2" not in client.get(path).text, path


def test_the_server_does_not_import_torch(sqlite_ws):
    """The monitor starts fast and light: serving it never loads the training stack."""
    import subprocess
    import sys

    script = (
        "import sys\n"
        "from fastapi.testclient import TestClient\n"
        "from honed.server import create_app\n"
        "from honed.workspace import open_workspace\n"
        "with TestClient(create_app(open_workspace(sys.argv[1])), base_url='http://127.0.0.1') as client:\n"
        "    for path in ('/', '/api/status', '/api/system', '/metrics', '/api/jobs', '/api/adapters', '/api/runs',\n"
        "                 '/api/health'):\n"
        "        assert client.get(path).status_code == 200, path\n"
        "print(sorted(m for m in ('torch', 'transformers', 'peft') if m in sys.modules))\n"
    )
    proc = subprocess.run([sys.executable, "-c", script, str(sqlite_ws.root)], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"

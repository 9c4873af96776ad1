"""Hostile input over HTTP: pages of other sites, names the server is not reached by,
malformed requests and integers past 64 bits all get a JSON error that says what is wrong,
and nothing is stored."""

from __future__ import annotations

import httpx
import pytest

from honed.config import update_config_file
from honed.config.models import ServerSettings
from honed.server import api_jobs
from honed.workspace import open_workspace
from tests.daemon.conftest import synth

EVIL = "http://evil.example"
TOKEN = "s3cret-token-for-the-tests-0123456789"


@pytest.fixture
def ws(make_workspace, tiny_random_base):
    ws = make_workspace(tiny_random_base)
    update_config_file(ws.root, {"ingest": {"mode": "strict"}})
    return open_workspace(ws.root)


@pytest.fixture
def queued(ws, serve, tmp_path):
    """A running server and a queued job on an uploaded dataset: (client, job)."""
    server = serve(ws)
    client = httpx.Client(base_url=server.url, timeout=30)
    data = synth(tmp_path / "reversal.jsonl", 20).read_bytes()
    answer = client.post("/api/datasets", params={"name": "reversal.jsonl", "queue": "true"}, content=data)
    assert answer.status_code == 201, answer.text
    yield client, answer.json()["job"]
    client.close()


def _snapshot(ws) -> dict:
    """What a forged request could change: jobs, datasets, tracks, experiences, uploaded files."""
    with ws.open_store() as store:
        return {"jobs": [(j.id, j.state, j.priority) for j in store.list_jobs()],
                "datasets": [d.id for d in store.list_datasets(None)],
                "tracks": [t.name for t in store.list_tracks()],
                "experiences": [e.id for e in store.list_experiences(None, limit=100)],
                "uploads": sorted(str(p) for p in (ws.datasets_dir / "uploads").rglob("*") if p.is_file())}


def _forgeries(job_id: int) -> list[tuple[str, str, dict]]:
    return [
        ("POST", f"/api/jobs/{job_id}/cancel", {}),
        ("DELETE", f"/api/jobs/{job_id}", {}),
        ("PATCH", f"/api/jobs/{job_id}", {"json": {"priority": "high"}}),
        ("POST", "/api/jobs", {"json": {"datasets": [1]}}),
        ("POST", "/api/tracks", {"json": {"name": "forged"}}),
        ("POST", "/api/datasets?name=forged.jsonl&queue=true",
         {"content": b'{"prompt": "a", "completion": "b"}\n', "headers": {"Content-Type": "text/plain"}}),
        ("POST", "/v1/experiences", {"json": {"messages": [{"role": "user", "content": "hi"}], "output": "x"}}),
    ]


def test_a_page_of_another_origin_changes_nothing(ws, queued):
    client, job = queued
    before = _snapshot(ws)
    neighbour = f"http://127.0.0.1:{client.base_url.port + 1}"  # another program on this machine
    for origin in (EVIL, "null", neighbour):
        for method, path, kwargs in _forgeries(job["id"]):
            headers = {**kwargs.pop("headers", {}), "Origin": origin}
            answer = client.request(method, path, headers=headers, **kwargs)
            assert answer.status_code == 403, (origin, method, path, answer.text)
            error = answer.json()["error"]
            message = error["message"] if path.startswith("/v1/") else error  # OpenAI's shape under /v1/
            assert f"another origin ({origin})" in message and "server.allowed_origins" in message
    assert _snapshot(ws) == before


def test_a_browser_request_from_another_site_without_origin_is_refused(ws, queued):
    client, job = queued
    before = _snapshot(ws)
    for site in ("cross-site", "same-site"):
        upload = client.post("/api/datasets", params={"name": "x.jsonl"}, headers={"Sec-Fetch-Site": site},
                             content=b'{"prompt": "a", "completion": "b"}\n')
        assert upload.status_code == 403 and f"Sec-Fetch-Site: {site}" in upload.json()["error"]
        cancel = client.post(f"/api/jobs/{job['id']}/cancel", headers={"Sec-Fetch-Site": site})
        assert cancel.status_code == 403
    assert _snapshot(ws) == before
    # The server's own pages: same origin, as the monitor's fetch() sends it.
    own = {"Origin": str(client.base_url).rstrip("/"), "Sec-Fetch-Site": "same-origin"}
    moved = client.patch(f"/api/jobs/{job['id']}", json={"priority": "high"}, headers=own)
    assert moved.status_code == 200 and moved.json()["priority"] == "high"
    # Reached as localhost, the page's origin is http://localhost:PORT.
    by_name = {"Host": f"localhost:{client.base_url.port}", "Origin": f"http://localhost:{client.base_url.port}"}
    assert client.patch(f"/api/jobs/{job['id']}", json={"priority": "low"}, headers=by_name).status_code == 200


def test_an_origin_in_allowed_origins_may_change_things(ws, serve):
    update_config_file(ws.root, {"server": {"allowed_origins": ["https://honed.example.com"]}})
    server = serve(open_workspace(ws.root))
    with httpx.Client(base_url=server.url, timeout=30) as client:
        made = client.post("/api/tracks", json={"name": "support"}, headers={"Origin": "https://honed.example.com/"})
        assert made.status_code == 201, made.text
        refused = client.post("/api/tracks", json={"name": "other"}, headers={"Origin": "http://honed.example.com"})
        assert refused.status_code == 403
    with ws.open_store() as store:
        assert sorted(t.name for t in store.list_tracks()) == ["main", "support"]


def test_bodies_a_page_may_send_without_asking_are_refused_on_json_routes(ws, queued):
    client, job = queued
    before = _snapshot(ws)
    for content_type in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x",
                         "Text/Plain; charset=utf-8"):
        for method, path, body in [("POST", f"/api/jobs/{job['id']}/cancel", b""),
                                   ("POST", "/api/tracks", b'{"name": "forged"}'),
                                   ("PATCH", f"/api/jobs/{job['id']}", b'{"priority": "high"}'),
                                   ("POST", "/v1/chat/completions", b'{"model": "main", "messages": []}')]:
            answer = client.request(method, path, content=body, headers={"Content-Type": content_type})
            assert answer.status_code == 415, (content_type, path, answer.text)
            error = answer.json()["error"]
            message = error["message"] if path.startswith("/v1/") else error
            assert "is not taken here" in message and "application/json" in message
    assert _snapshot(ws) == before
    # curl --data-binary sends application/x-www-form-urlencoded: the upload route takes its body as it is.
    data = b'{"prompt": "c", "completion": "d"}\n'
    upload = client.post("/api/datasets", params={"name": "curl.jsonl"}, content=data,
                         headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert upload.status_code == 201 and upload.json()["records"] == 1
    # A POST without a body or a Content-Type (curl -X POST) is served.
    assert client.post(f"/api/jobs/{job['id']}/cancel", params={"wait_s": 0}).json()["job"]["state"] == "cancelled"


def test_names_the_server_is_not_reached_by_are_refused(ws, serve):
    server = serve(ws)
    port = int(server.url.rsplit(":", 1)[1])
    with httpx.Client(base_url=server.url, timeout=30) as client:
        for host in ("evil.example", f"evil.example:{port}", "localhost.evil.example", "127.0.0.1.nip.io"):
            for method, path in (("GET", "/api/status"), ("GET", "/"), ("POST", "/api/tracks")):
                answer = client.request(method, path, headers={"Host": host}, json={"name": "rebound"})
                assert answer.status_code == 400, (host, path, answer.text)
                assert f"Host {host!r}" in answer.json()["error"] and "server.allowed_hosts" in answer.json()["error"]
        for host in (f"127.0.0.1:{port}", f"localhost:{port}", f"LOCALHOST.:{port}", f"[::1]:{port}", "127.0.0.5"):
            assert client.get("/api/status", headers={"Host": host}).status_code == 200, host
    with ws.open_store() as store:
        assert [t.name for t in store.list_tracks()] == ["main"]


def test_allowed_hosts_and_a_public_bind(ws, serve, monkeypatch):
    update_config_file(ws.root, {"server": {"allowed_hosts": ["honed.lan"]}})
    server = serve(open_workspace(ws.root))
    with httpx.Client(base_url=server.url, timeout=30) as client:
        assert client.get("/api/status", headers={"Host": "honed.lan:8321"}).status_code == 200
        assert client.get("/api/status", headers={"Host": "other.lan"}).status_code == 400
    # Bound to every address (a token is required there), the server answers to any name ...
    monkeypatch.setenv("HONED_API_TOKEN", TOKEN)
    update_config_file(ws.root, {"server": {"allowed_hosts": []}})
    public = serve(open_workspace(ws.root), host="0.0.0.0")
    auth = {"Authorization": f"Bearer {TOKEN}"}
    with httpx.Client(base_url=public.url, timeout=30, headers=auth) as client:
        assert client.get("/api/status", headers={"Host": "myserver.lan"}).status_code == 200
    # ... unless allowed_hosts names them.
    update_config_file(ws.root, {"server": {"allowed_hosts": ["honed.lan"]}})
    listed = serve(open_workspace(ws.root), host="0.0.0.0")
    with httpx.Client(base_url=listed.url, timeout=30, headers=auth) as client:
        assert client.get("/api/status", headers={"Host": "myserver.lan"}).status_code == 400
        assert client.get("/api/status", headers={"Host": "honed.lan"}).status_code == 200


def test_bad_allowed_hosts_and_origins_are_explained():
    with pytest.raises(ValueError, match="without scheme, port or path"):
        ServerSettings(allowed_hosts=["https://honed.lan"])
    with pytest.raises(ValueError, match="scheme://host"):
        ServerSettings(allowed_origins=["honed.lan"])
    with pytest.raises(ValueError, match="without a path"):
        ServerSettings(allowed_origins=["https://honed.lan/app"])


def test_every_failure_has_one_shape(ws, serve, monkeypatch):
    server = serve(ws)
    with httpx.Client(base_url=server.url, timeout=30) as client:
        unknown = client.get("/api/nothing-here")
        assert unknown.status_code == 404
        assert unknown.json() == {"error": "nothing at GET /api/nothing-here (the API is listed at /docs)"}
        wrong_method = client.put("/api/status")
        assert wrong_method.status_code == 405
        assert wrong_method.json() == {"error": "PUT is not allowed on /api/status; allowed: GET"}
        broken = client.post("/api/tracks", content=b'{"name": ', headers={"Content-Type": "application/json"})
        assert broken.status_code == 400
        assert broken.json()["error"].startswith("the request body is not valid JSON: Expecting value (at character")
        missing = client.post("/api/tracks", json=[1])
        assert missing.status_code == 400 and "request body: Input should be a valid dictionary" in missing.text
        assert client.get("/static/nothing.js").json() == {
            "error": "nothing at GET /static/nothing.js (the API is listed at /docs)"}
        # Under /v1/ in OpenAI's shape, which its SDKs read.
        v1 = client.get("/v1/nothing")
        assert v1.status_code == 404 and v1.json() == {"error": {
            "message": "nothing at GET /v1/nothing (the API is listed at /docs)", "type": "not_found_error",
            "code": 404}}
        v1_json = client.post("/v1/chat/completions", content=b"{", headers={"Content-Type": "application/json"})
        assert v1_json.status_code == 400 and v1_json.json()["error"]["type"] == "invalid_request_error"
        assert "not valid JSON" in v1_json.json()["error"]["message"]

        def boom(*args, **kwargs):
            raise RuntimeError(f"disk trouble in {ws.root}/secret")

        monkeypatch.setattr(api_jobs, "remove_job", boom)
        crashed = client.delete("/api/jobs/1")
        assert crashed.status_code == 500
        assert crashed.json() == {"error": "internal error; see the server log"}
        assert str(ws.root) not in crashed.text and "Traceback" not in crashed.text


BIG = 2**63
EXPERIENCE = {"messages": [{"role": "user", "content": "q"}], "output": "a"}
OUT_OF_RANGE = [
    ("GET", f"/api/jobs/{BIG}", {}, "path.job_id"),
    ("GET", "/api/jobs/-1", {}, "path.job_id"),
    ("POST", f"/api/jobs/{BIG}/cancel", {}, "path.job_id"),
    ("DELETE", f"/api/jobs/{BIG}", {}, "path.job_id"),
    ("GET", f"/api/jobs/1/events?after={BIG}", {}, "query.after"),
    ("GET", f"/api/datasets/{BIG}", {}, "path.dataset_id"),
    ("GET", f"/api/runs/r/metrics?after_step={BIG}", {}, "query.after_step"),
    ("GET", f"/api/adapters/{BIG}", {}, "path.adapter_id"),
    ("POST", "/api/adapters/-1/deploy", {}, "path.adapter_id"),
    ("GET", f"/api/tracks/main/deployments?limit={BIG}", {}, "query.limit"),
    ("GET", f"/v1/experiences/{BIG}", {}, "path.experience_id"),
    ("POST", f"/v1/experiences/{BIG}/feedback", {"json": {"score": 1}}, "path.experience_id"),
    ("GET", f"/api/experiences?before_id={BIG}", {}, "query.before_id"),
    ("POST", "/api/jobs", {"json": {"datasets": [BIG]}}, "datasets.0"),
    ("POST", "/api/jobs", {"json": {"datasets": [-1]}}, "datasets.0"),
    ("POST", "/api/tracks", {"json": {"name": "t2", "base_version": BIG}}, "base_version"),
    ("POST", "/api/tracks/main/rollback", {"json": {"to": BIG}}, "to"),
    ("POST", "/v1/experiences", {"json": {**EXPERIENCE, "adapter_id": BIG}}, "adapter_id"),
    ("POST", "/v1/experiences", {"json": {**EXPERIENCE, "prompt_tokens": BIG}}, "prompt_tokens"),
]


def test_integers_past_64_bits_are_bad_input(ws, serve):
    """SQLite and PostgreSQL hold 64 bits: a larger id or count is a 400 naming the field, not a 500."""
    server = serve(ws)
    before = _snapshot(ws)
    with httpx.Client(base_url=server.url, timeout=30) as client:
        for method, path, kwargs, field in OUT_OF_RANGE:
            answer = client.request(method, path, **kwargs)
            assert answer.status_code == 400, (method, path, answer.text)
            error = answer.json()["error"]
            message = error["message"] if path.startswith("/v1/") else error
            assert message.startswith(f"{field}: Input should be"), (method, path, message)
    assert _snapshot(ws) == before

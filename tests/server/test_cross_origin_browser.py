"""A page of another origin in a real browser (Chromium, driven by Playwright) tries what a
malicious site would against the tokenless loopback server: ``fetch`` in no-cors mode with
text/plain bodies and auto-submitted forms that cancel a job, queue one and upload data.
Each request reaches the server and is refused; nothing in the store changes. The
monitor's own page, on the server's origin, still changes things."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from honed.server import create_app
from honed.server.background import BackgroundServer
from honed.workspace import open_workspace
from tests.daemon.conftest import synth, wait_for
from tests.server.test_monitor_browser import browser, page  # noqa: F401 (fixtures)

ATTACK = """<!doctype html><html><body>
<iframe name="sink1"></iframe><iframe name="sink2"></iframe><iframe name="sink3"></iframe>
<form method="POST" target="sink1" action="{honed}/api/jobs/{job}/cancel?wait_s=0"></form>
<form method="POST" target="sink2" enctype="text/plain" action="{honed}/api/jobs">
  <input name='{{"datasets": [{dataset}], "x": "' value='"}}'></form>
<form method="POST" target="sink3" enctype="text/plain" action="{honed}/api/datasets?name=formed.jsonl&queue=true">
  <input name='{{"prompt": "a", "completion": "b", "x": "' value='"}}'></form>
<script>
const forged = body => ({{method: "POST", mode: "no-cors", headers: {{"Content-Type": "text/plain"}}, body}});
Promise.allSettled([
  fetch("{honed}/api/jobs/{job}/cancel?wait_s=0", forged("")),
  fetch("{honed}/api/jobs", forged(JSON.stringify({{datasets: [{dataset}], priority: "high"}}))),
  fetch("{honed}/api/datasets?name=fetched.jsonl&queue=true", forged('{{"prompt": "c", "completion": "d"}}\\n')),
  fetch("{honed}/api/tracks", forged(JSON.stringify({{name: "forged"}}))),
]).then(results => {{
  document.body.dataset.fetched = results.map(r => r.status).join(",");
  for (const form of document.forms) form.submit();
}});
</script></body></html>"""


def _recording(app, seen: list):
    """``app``, noting each request's method, path, Origin and answer status in ``seen``."""
    async def wrapped(scope, receive, send):
        if scope["type"] != "http":
            return await app(scope, receive, send)
        origin = dict(scope["headers"]).get(b"origin", b"").decode()

        async def capture(message):
            if message["type"] == "http.response.start":
                seen.append((scope["method"], scope["path"], origin, message["status"]))
            await send(message)

        await app(scope, receive, capture)

    return wrapped


@pytest.fixture
def other_origin():
    """A web server on another port of 127.0.0.1 (another origin) serving one page: ``serve(html)`` gives its URL."""
    pages: dict[str, bytes] = {}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (http.server's name)
            body = pages.get(self.path, b"not here")
            self.send_response(200 if self.path in pages else 404)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()

    def serve(html: str) -> str:
        pages["/attack.html"] = html.encode()
        return f"http://127.0.0.1:{server.server_address[1]}/attack.html"

    yield serve
    server.shutdown()
    server.server_close()


def _state(ws) -> dict:
    with ws.open_store() as store:
        return {"jobs": [(j.id, j.state, j.priority) for j in store.list_jobs()],
                "datasets": [d.id for d in store.list_datasets(None)],
                "tracks": [t.name for t in store.list_tracks()],
                "uploads": sorted(p.name for p in (ws.datasets_dir / "uploads").rglob("*") if p.is_file())}


def test_a_page_of_another_origin_cannot_change_anything(make_workspace, tiny_random_base, other_origin, page,  # noqa: F811
                                                         tmp_path):
    ws = open_workspace(make_workspace(tiny_random_base).root)
    seen: list[tuple[str, str, str, int]] = []
    server = BackgroundServer(_recording(create_app(ws), seen)).start()
    try:
        with httpx.Client(base_url=server.url, timeout=30) as client:  # a program on this machine: no Origin
            answer = client.post("/api/datasets", params={"name": "d.jsonl", "queue": "true"},
                                 content=synth(tmp_path / "d.jsonl", 20).read_bytes())
            assert answer.status_code == 201, answer.text
        job, dataset = answer.json()["job"]["id"], answer.json()["dataset"]["id"]
        before = _state(ws)
        seen.clear()

        attack = other_origin(ATTACK.format(honed=server.url, job=job, dataset=dataset))
        page.goto(attack)
        page.wait_for_selector("body[data-fetched]")
        assert page.locator("body").get_attribute("data-fetched") == "fulfilled,fulfilled,fulfilled,fulfilled"
        wait_for(lambda: len(seen) >= 7, 30, "the four fetches and three forms to reach the server")
        attacker = attack.removesuffix("/attack.html")
        assert sorted(seen) == sorted([
            ("POST", f"/api/jobs/{job}/cancel", attacker, 403), ("POST", f"/api/jobs/{job}/cancel", attacker, 403),
            ("POST", "/api/jobs", attacker, 403), ("POST", "/api/jobs", attacker, 403),
            ("POST", "/api/datasets", attacker, 403), ("POST", "/api/datasets", attacker, 403),
            ("POST", "/api/tracks", attacker, 403)]), seen
        refusal = page.frame(name="sink1").locator("body").inner_text()
        assert "server.allowed_origins" in json.loads(refusal)["error"]
        assert _state(ws) == before
        page.screenshot(path=str(tmp_path / "attack.png"), full_page=True)

        # The monitor, on the server's own origin, still changes things.
        page.goto(server.url + "/")
        page.wait_for_selector("body[data-ready=true]")
        page.locator(f"#queue tr[data-job='{job}'] select").select_option("high")
        with ws.open_store() as store:
            wait_for(lambda: store.get_job(job).priority == "high", 15, "the priority to change")
            page.locator(f"#queue tr[data-job='{job}'] button[data-action=cancel]").click()
            wait_for(lambda: store.get_job(job).state == "cancelled", 15, "the job to be cancelled")
        page.goto(server.url + "/datasets")
        page.wait_for_selector("body[data-ready=true]")
        (tmp_path / "up").mkdir()
        page.locator("input[type=file]").set_input_files(synth(tmp_path / "up" / "more.jsonl", 10))
        page.locator("button[data-action=upload]").click()
        with ws.open_store() as store:
            wait_for(lambda: len(store.list_datasets(None)) == 2, 15, "the upload from the monitor")

        def own_requests() -> set:
            return {(method, path, status) for method, path, origin, status in seen if origin == server.url}

        # The dataset is stored before its answer is sent: wait for the answer too.
        wait_for(lambda: ("POST", "/api/datasets", 201) in own_requests(), 15, "the upload's answer")
        own = own_requests()
        assert {("PATCH", f"/api/jobs/{job}", 200), ("POST", f"/api/jobs/{job}/cancel", 200),
                ("POST", "/api/datasets", 201)} <= own, seen
        page.goto("about:blank")  # the monitor's live stream ends before the server does
    finally:
        server.stop()

"""The GGUF engines as deploy targets, without llama.cpp: the Ollama hook against a
recorded-protocol fake (no Ollama binary exists on these machines), an unreachable
engine as a failed hook, and the llama.cpp hook's config file. The llama.cpp server
itself is driven in test_llama_cpp_engine.py."""

from __future__ import annotations

import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from honed.registry.deployment import deploy, rollback
from tests.cli_runner import free_port, run_honed
from tests.registry.conftest import real_adapter

torch = pytest.importorskip("torch")


@pytest.fixture
def ws(make_workspace, tiny_random_base):
    return make_workspace(tiny_random_base)


class FakeOllama(BaseHTTPRequestHandler):
    """Ollama's blob and create routes as its API documents them: HEAD a blob (200 or
    404), POST it (201, digest checked), POST /api/create (the files must be blobs it has)."""

    blobs: dict[str, bytes] = {}
    calls: list[tuple[str, str, object]] = []

    def _reply(self, status: int, body: dict | None = None) -> None:
        data = json.dumps(body).encode() if body is not None else b""
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_HEAD(self):
        digest = self.path.removeprefix("/api/blobs/")
        self.calls.append(("HEAD", self.path, None))
        self._reply(200 if digest in self.blobs else 404)

    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        if self.path.startswith("/api/blobs/"):
            digest = self.path.removeprefix("/api/blobs/")
            self.calls.append(("POST", self.path, len(body)))
            if "sha256:" + hashlib.sha256(body).hexdigest() != digest:
                return self._reply(400, {"error": "digest mismatch"})
            self.blobs[digest] = body
            return self._reply(201)
        request = json.loads(body)
        self.calls.append(("POST", self.path, request))
        missing = [d for d in request.get("files", {}).values() if d not in self.blobs]
        if self.path != "/api/create" or missing:
            return self._reply(400, {"error": f"blobs missing: {missing}"})
        self._reply(200, {"status": "success"})

    def log_message(self, *args):
        pass


def test_the_ollama_hook_uploads_each_gguf_once_and_creates_a_new_model_per_version(ws):
    FakeOllama.blobs, FakeOllama.calls = {}, []
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeOllama)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        ws.settings.deploy.ollama_url = f"http://127.0.0.1:{server.server_port}"
        store = ws.open_store()
        a, b = real_adapter(ws, store, "a", 1), real_adapter(ws, store, "b", 2)
        first = deploy(ws, store, a.id)
        assert first.hooks_ok, first.hooks
        assert first.hooks[0]["hook"] == "ollama" and f"created main-a{a.id}" in first.hooks[0]["detail"]
        assert deploy(ws, store, b.id).hooks_ok
        back = rollback(ws, store, "main")
        assert back.hooks_ok and "blob already there" in back.hooks[0]["detail"]  # nothing uploaded twice
        creates = [body for method, path, body in FakeOllama.calls if path == "/api/create"]
        assert [c["model"] for c in creates] == [f"main-a{a.id}", f"main-a{b.id}", f"main-a{a.id}"]
        gguf = ws.root / "exports" / f"main-a{a.id}-gguf-f16" / f"main-a{a.id}-f16.gguf"
        digest = "sha256:" + hashlib.sha256(gguf.read_bytes()).hexdigest()
        assert creates[0]["files"] == {gguf.name: digest} and FakeOllama.blobs[digest] == gguf.read_bytes()
        assert creates[0]["template"].startswith("{{- range .Messages }}<|im_start|>{{ .Role }}")
        assert creates[0]["parameters"] == {"stop": ["<|im_end|>"]} and creates[0]["stream"] is False
        assert creates[0]["files"] != creates[1]["files"]  # each version its own weights
        uploads = [path for method, path, _ in FakeOllama.calls if method == "POST" and "/blobs/" in path]
        assert len(uploads) == 2
        recorded = store.list_deployments("main")[0].hooks
        assert recorded[0]["hook"] == "ollama" and recorded[0]["ok"]
        store.close()
    finally:
        server.shutdown()


def test_an_ollama_error_is_a_failed_hook_with_what_it_said(ws):
    FakeOllama.blobs, FakeOllama.calls = {}, []

    class Refusing(FakeOllama):
        def do_POST(self):
            self.rfile.read(int(self.headers["Content-Length"]))
            self._reply(500, {"error": "no space left on device"})

    server = ThreadingHTTPServer(("127.0.0.1", 0), Refusing)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        ws.settings.deploy.ollama_url = f"http://127.0.0.1:{server.server_port}"
        store = ws.open_store()
        a = real_adapter(ws, store, "a", 1)
        done = deploy(ws, store, a.id)
        assert not done.hooks_ok and "HTTP 500" in done.hooks[0]["detail"]
        assert "no space left on device" in done.hooks[0]["detail"]
        assert store.deployed_adapter("main").id == a.id  # a failing hook does not undo the switch
        store.close()
    finally:
        server.shutdown()


def test_unreachable_engines_are_failed_hooks_and_the_cli_exits_2(ws):
    from honed.config import update_config_file

    port = free_port()  # nothing listens there
    update_config_file(ws.root, {"deploy": {"ollama_url": f"http://127.0.0.1:{port}",
                                            "llama_cpp_url": f"http://127.0.0.1:{port}", "hook_timeout_s": 1.0}})
    store = ws.open_store()
    a = real_adapter(ws, store, "a", 1)
    store.close()
    result = run_honed("deploy", str(a.id), "-w", str(ws.root), "--json", check=False)
    assert result.returncode == 2 and "a deploy hook failed" in result.stderr
    hooks = {h["hook"]: h for h in json.loads(result.stdout)["hooks"]}
    assert not hooks["llama_cpp"]["ok"] and not hooks["ollama"]["ok"]
    assert f"127.0.0.1:{port}" in hooks["ollama"]["detail"] and "refused" in hooks["ollama"]["detail"]
    assert "is 'honed serve-llama' running?" in hooks["llama_cpp"]["detail"]
    # the config file names the new version all the same: a server started later serves it
    config = json.loads((ws.root / "deployments" / "llama_cpp.json").read_text())
    assert config["port"] == port and [m["model_alias"] for m in config["models"]] == [f"main-a{a.id}"]


def test_a_url_that_is_not_http_is_refused_naming_the_key(ws):
    result = run_honed("status", "-w", str(ws.root), env={"HONED_DEPLOY__OLLAMA_URL": "127.0.0.1:11434"},
                       check=False)
    assert result.returncode == 1 and "deploy.ollama_url = '127.0.0.1:11434'" in result.stderr
    assert "http:// or https://" in result.stderr

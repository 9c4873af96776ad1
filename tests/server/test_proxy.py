"""Proxy capture: honed in front of an OpenAI-compatible engine. The real upstream is
honed's own server in a second process; a misbehaving one (429, 500, silence, a stream
cut midway) is a small HTTP server on a thread. Applications change only their base_url;
every complete exchange is an experience, and nothing incomplete is recorded as one."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import openai
import pytest

from honed.config import SettingsError, update_config_file
from honed.registry.deployment import deploy
from honed.workspace import open_workspace
from tests.cli_runner import free_port
from tests.server.conftest import talking_adapter

QUESTION = [{"role": "user", "content": "reverse: honed"}]


@pytest.fixture
def upstream(make_workspace, tiny_random_base, tmp_path):
    """``honed serve`` on its own workspace, in a second process: the upstream engine."""
    ws = make_workspace(tiny_random_base, "upstream")
    with ws.open_store() as store:  # the bare random base often ends its turn at once; this adapter talks
        deploy(ws, store, talking_adapter(ws, tiny_random_base, "a1", 1).id)
    port = free_port()
    with open(tmp_path / "upstream.log", "ab") as log:
        proc = subprocess.Popen([sys.executable, "-m", "honed.cli", "serve", "-w", str(ws.root), "--port", str(port)],
                                stdout=log, stderr=log, stdin=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/v1"
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(f"{url}/models", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "upstream.log").read_text()
        time.sleep(0.2)
    yield url
    proc.terminate()
    proc.wait(timeout=30)


def proxy_for(make_workspace, tiny_random_base, serve, url: str, name: str = "proxy", **server):
    ws = make_workspace(tiny_random_base, name)
    update_config_file(ws.root, {"server": {"upstream_url": url, **server}})
    ws = open_workspace(ws.root)
    return ws, openai.OpenAI(base_url=serve(ws).url + "/v1", api_key="-", max_retries=0, timeout=60)


def experiences(ws):
    with ws.open_store() as store:
        return store.list_experiences(track="main", limit=100)


def test_answers_come_from_the_upstream_and_each_exchange_is_an_experience(make_workspace, tiny_random_base,
                                                                          serve, upstream):
    direct = openai.OpenAI(base_url=upstream, api_key="-", max_retries=0, timeout=60)
    expected = direct.chat.completions.create(model="main", messages=QUESTION, max_tokens=12)
    ws, client = proxy_for(make_workspace, tiny_random_base, serve, upstream)

    answer = client.chat.completions.create(model="main", messages=QUESTION, max_tokens=12)
    assert answer.choices[0].message.content == expected.choices[0].message.content  # greedy, the same engine
    assert answer.model == expected.model  # the upstream's own answer, passed on
    honed = answer.model_extra["honed"]
    [recorded] = experiences(ws)
    assert recorded.id == honed["experience_id"] and recorded.output == answer.choices[0].message.content
    assert recorded.messages == QUESTION and recorded.meta["upstream"] == upstream
    assert recorded.completion_tokens == answer.usage.completion_tokens

    chunks = list(client.chat.completions.create(model="main", messages=QUESTION, max_tokens=12, stream=True))
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == answer.choices[0].message.content
    assert len([c for c in chunks if c.choices and c.choices[0].delta.content]) > 1, "passed through piece by piece"
    streamed_id = chunks[-1].model_extra["honed"]["experience_id"]
    assert {e.id: e.output for e in experiences(ws)}[streamed_id] == streamed

    # The feedback API is the same as for the built-in server's answers.
    feedback = httpx.post(str(client.base_url).removesuffix("/v1/") + f"/v1/experiences/{streamed_id}/feedback",
                          json={"thumbs": "up"})
    assert feedback.status_code == 200, feedback.text

    with pytest.raises(openai.NotFoundError, match="no track 'nope' to proxy for"):
        client.chat.completions.create(model="nope", messages=QUESTION)
    # Parameters the built-in server refuses are the upstream's to judge: passed on as sent.
    with pytest.raises(openai.BadRequestError, match="logit_bias.*not supported by honed's built-in server"):
        client.chat.completions.create(model="main", messages=QUESTION, logit_bias={"5": 10})
    assert len(experiences(ws)) == 2


def test_the_track_maps_to_the_upstream_name_and_follows_the_live_version(make_workspace, tiny_random_base, serve,
                                                                          upstream):
    direct = openai.OpenAI(base_url=upstream, api_key="-", max_retries=0, timeout=60)
    expected = direct.chat.completions.create(model="main@base", messages=QUESTION, max_tokens=8)
    ws, client = proxy_for(make_workspace, tiny_random_base, serve, upstream, "mapped",
                           upstream_models={"main": "main@base"})
    answer = client.chat.completions.create(model="main", messages=QUESTION, max_tokens=8)
    assert answer.model == expected.model == "main@base-v0"
    assert experiences(ws)[0].meta["upstream_model"] == "main@base-v0"

    # '{deployed}': the live version's name, as the deploy targets name their exports.
    ws, client = proxy_for(make_workspace, tiny_random_base, serve, upstream, "live",
                           upstream_models={"main": "{deployed}"})
    with pytest.raises(openai.NotFoundError, match="no track 'main-base-v0'"):  # the upstream's own 404, passed on
        client.chat.completions.create(model="main", messages=QUESTION, max_tokens=8)
    assert experiences(ws) == []


class Misbehaving(BaseHTTPRequestHandler):
    """An upstream that answers as ``behaviour`` says."""

    behaviour = "ok"

    def log_message(self, *args) -> None:
        pass

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        if self.behaviour in ("429", "500"):
            body = json.dumps({"error": {"message": f"upstream says {self.behaviour}", "type": "x"}}).encode()
            self.send_response(int(self.behaviour))
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        elif self.behaviour == "huge":  # longer than a training record may be
            body = json.dumps({"id": "c2", "object": "chat.completion", "created": 1, "model": "m",
                               "choices": [{"index": 0, "finish_reason": "length",
                                            "message": {"role": "assistant", "content": "y" * 40000}}]}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        elif self.behaviour == "silent":
            time.sleep(5)
        elif self.behaviour == "cut":
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.end_headers()
            for piece in ("Hel", "lo"):
                chunk = {"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "m",
                         "choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": None}]}
                self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
                self.wfile.flush()
            self.close_connection = True  # and no [DONE]


@pytest.fixture
def misbehaving():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Misbehaving)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()


def test_upstream_errors_timeouts_and_a_cut_stream_leave_no_experience(make_workspace, tiny_random_base, serve,
                                                                        misbehaving):
    url = f"http://127.0.0.1:{misbehaving.server_address[1]}/v1"
    ws, client = proxy_for(make_workspace, tiny_random_base, serve, url, upstream_timeout_s=1.0)

    Misbehaving.behaviour = "429"
    with pytest.raises(openai.RateLimitError, match="upstream says 429"):
        client.chat.completions.create(model="main", messages=QUESTION)
    Misbehaving.behaviour = "500"
    with pytest.raises(openai.InternalServerError, match="upstream says 500"):
        client.chat.completions.create(model="main", messages=QUESTION)
    Misbehaving.behaviour = "silent"
    with pytest.raises(openai.APIStatusError, match="upstream_timeout_s = 1 s") as timed_out:
        client.chat.completions.create(model="main", messages=QUESTION)
    assert timed_out.value.status_code == 504
    Misbehaving.behaviour = "cut"
    pieces, error = [], None
    with httpx.stream("POST", str(client.base_url) + "chat/completions", timeout=30,
                      json={"model": "main", "messages": QUESTION, "stream": True}) as stream:
        for line in stream.iter_lines():
            if line.startswith("data: "):
                event = json.loads(line[6:])
                if "error" in event:
                    error = event["error"]["message"]
                else:
                    pieces.append(event["choices"][0]["delta"]["content"])
    assert pieces == ["Hel", "lo"] and "incomplete and was not recorded" in error
    # An answer the store cannot keep still reaches the client, saying why it was not kept.
    Misbehaving.behaviour = "huge"
    huge = client.chat.completions.create(model="main", messages=QUESTION)
    assert huge.choices[0].message.content == "y" * 40000
    honed = huge.model_extra["honed"]
    assert honed["experience_id"] is None and "at most 32768" in honed["not_recorded"]
    assert experiences(ws) == [], "nothing incomplete or failed is recorded as an experience"


def test_the_upstream_url_must_be_http(make_workspace, tiny_random_base):
    ws = make_workspace(tiny_random_base)
    with pytest.raises(SettingsError, match="server.upstream_url = 'ftp://engine:21/v1'.*an http:// or https:// URL"):
        update_config_file(ws.root, {"server": {"upstream_url": "ftp://engine:21/v1"}})

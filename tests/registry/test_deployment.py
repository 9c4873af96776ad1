"""Deploy, approve, reject and roll back: one deployed adapter per track at any instant,
the on-disk pointer agrees with the store, hooks see every switch, and a SIGKILL at any
point of a switch leaves one consistent deployment."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap

import pytest

from honed.registry.deployment import DeployError, approve, deploy, rollback, sync_pointer
from honed.store import StoreError
from tests.cli_runner import run_honed


@pytest.fixture
def ws(make_workspace, tiny_random_base):
    return make_workspace(tiny_random_base)


def passed(store, adapter_id: int):
    return store.record_evaluation(adapter_id, {"heldout": {"exact_match": 0.9}},
                                   {"passed": True, "failed": [], "rules": []}, "candidate")


def make_adapter(ws, store, name: str, track: str = "main"):
    path = ws.adapters_dir / name
    path.mkdir(parents=True)
    (path / "adapter_model.safetensors").write_bytes(name.encode())
    return store.add_adapter(track=track, run_id=None, job_id=None, base_version=0, path=str(path))


def pointer(ws, track: str = "main") -> dict:
    folder = ws.root / "deployments" / track
    doc = json.loads((folder / "current.json").read_text())
    link = folder / "current"
    doc["link"] = os.readlink(link) if link.is_symlink() else None
    return doc


def test_deploy_rollback_walks_back_and_hooks_see_every_switch(ws, tmp_path):
    seen = tmp_path / "hook.log"
    ws.settings.deploy.command = f'echo "$HONED_ACTION $HONED_ADAPTER_ID $HONED_ADAPTER_NAME" >> {seen}'
    store = ws.open_store()
    a, b = (passed(store, make_adapter(ws, store, n).id) for n in ("a", "b"))
    first = deploy(ws, store, a.id)
    assert first.hooks_ok and pointer(ws)["adapter_id"] == a.id and pointer(ws)["link"] == a.path
    deploy(ws, store, b.id)
    assert store.get_adapter(a.id).state == "retired" and store.deployed_adapter("main").id == b.id
    back = rollback(ws, store, "main")
    assert back.adapter.id == a.id and pointer(ws)["link"] == a.path and pointer(ws)["name"] == f"main-a{a.id}"
    further = rollback(ws, store, "main")  # walks back past the first deploy: the bare base
    assert further.adapter is None and store.deployed_adapter("main") is None
    assert pointer(ws)["adapter_id"] is None and pointer(ws)["link"] is None
    with pytest.raises(DeployError, match="nothing to roll back|no earlier deployment"):
        rollback(ws, store, "main")
    again = rollback(ws, store, "main", to=b.id)
    assert again.adapter.id == b.id
    assert seen.read_text().splitlines() == [f"deploy {a.id} main-a{a.id}", f"deploy {b.id} main-a{b.id}",
                                             f"rollback {a.id} main-a{a.id}", "rollback  ",
                                             f"rollback {b.id} main-a{b.id}"]
    assert [d.action for d in store.list_deployments("main")] == ["rollback"] * 3 + ["deploy"] * 2
    store.close()


def test_gates_and_approval_decide_what_deploys(ws):
    store = ws.open_store()
    failing = make_adapter(ws, store, "f")
    store.record_evaluation(failing.id, {}, {"passed": False, "failed": ["heldout exact_match 0.10 < 0.50"],
                                             "rules": []}, "rejected")
    with pytest.raises(DeployError, match=r"did not pass its gates \(heldout exact_match 0.10 < 0.50\)"):
        deploy(ws, store, failing.id)
    waiting = make_adapter(ws, store, "w")
    store.record_evaluation(waiting.id, {}, {"passed": True, "failed": [], "rules": []}, "awaiting_approval")
    with pytest.raises(DeployError, match="awaits approval"):
        deploy(ws, store, waiting.id)
    assert approve(ws, store, waiting.id).adapter.id == waiting.id
    forced = deploy(ws, store, failing.id, force=True)
    assert forced.adapter.id == failing.id and "forced" in forced.deployment.reason
    other = make_adapter(ws, store, "o")
    store.reject_adapter(other.id)
    with pytest.raises(StoreError, match="only a candidate or one awaiting approval"):
        store.reject_adapter(other.id)
    store.close()


def test_a_failing_hook_is_reported_and_the_cli_exits_2(ws):
    from honed.config import update_config_file

    update_config_file(ws.root, {"deploy": {"command": "echo vllm is down >&2; exit 3"}})
    store = ws.open_store()
    adapter = passed(store, make_adapter(ws, store, "h").id)
    store.close()
    result = run_honed("deploy", str(adapter.id), "-w", str(ws.root), "--json", check=False)
    assert result.returncode == 2 and "a deploy hook failed" in result.stderr
    report = json.loads(result.stdout)
    assert report["adapter"] == adapter.id and not report["hooks_ok"]
    assert "exit 3: vllm is down" in report["hooks"][0]["detail"]
    store = ws.open_store()
    assert store.list_deployments("main")[0].hooks[0]["ok"] is False
    store.close()


_KILLER = textwrap.dedent('''
    import os, signal, sys
    from honed.registry import deployment
    from honed.workspace import open_workspace

    phase, adapter = sys.argv[1], int(sys.argv[2])
    def stop_here(name):
        if name == phase:
            os.kill(os.getpid(), signal.SIGKILL)
    deployment._phase = stop_here
    ws = open_workspace(sys.argv[3])
    store = ws.open_store()
    deployment.deploy(ws, store, adapter)
''')


@pytest.mark.parametrize("phase", ["link_staged", "link_written", "store_switched", "pointer_written"])
def test_sigkill_during_a_deploy_leaves_one_consistent_deployment(ws, phase):
    store = ws.open_store()
    old, new = (passed(store, make_adapter(ws, store, n).id) for n in ("old", "new"))
    deploy(ws, store, old.id)
    killed = subprocess.run([sys.executable, "-c", _KILLER, phase, str(new.id), str(ws.root)])
    assert killed.returncode == -signal.SIGKILL
    deployed = [a for a in store.list_adapters("main") if a.state == "deployed"]
    assert len(deployed) == 1 and deployed[0].id in (old.id, new.id)
    sync_pointer(ws, store, "main")  # what the daemon does at start and before every switch
    doc = pointer(ws)
    assert doc["adapter_id"] == deployed[0].id and doc["link"] == deployed[0].path
    assert not list((ws.root / "deployments" / "main").glob(".current.*.tmp")) or phase == "link_staged"
    store.close()


def test_track_add_and_list(ws):
    assert "inbox" in run_honed("track", "add", "support-bot", "-w", str(ws.root)).stdout
    listed = json.loads(run_honed("track", "list", "-w", str(ws.root), "--json").stdout)
    assert {t["name"] for t in listed} == {"main", "support-bot"}
    bad = run_honed("track", "add", "../x", "-w", str(ws.root), check=False)
    assert bad.returncode == 1 and "use 1-64 letters" in bad.stderr
    assert (ws.inbox / "support-bot").is_dir()


def test_the_vllm_hook_loads_each_version_under_a_new_name(ws):
    """A real HTTP server on loopback stands where vLLM would."""
    import threading
    from http.server import BaseHTTPRequestHandler, HTTPServer

    calls = []

    class FakeVllm(BaseHTTPRequestHandler):
        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            calls.append((self.path, body, self.headers.get("Authorization")))
            self.send_response(200 if len(calls) < 3 else 500)
            self.end_headers()
            self.wfile.write(b"ok" if len(calls) < 3 else b"out of memory")

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), FakeVllm)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    os.environ["TEST_VLLM_KEY"] = "sekret"
    try:
        ws.settings.deploy.vllm_url = f"http://127.0.0.1:{server.server_port}"
        ws.settings.deploy.vllm_api_key_env = "TEST_VLLM_KEY"
        store = ws.open_store()
        a, b, c = (passed(store, make_adapter(ws, store, n).id) for n in ("a", "b", "c"))
        assert deploy(ws, store, a.id).hooks_ok and deploy(ws, store, b.id).hooks_ok
        failing = deploy(ws, store, c.id)
        assert not failing.hooks_ok and "HTTP 500 out of memory" in failing.hooks[0]["detail"]
        assert store.deployed_adapter("main").id == c.id  # a failing hook does not undo the switch
        assert [(p, body["lora_name"]) for p, body, _ in calls] == [
            ("/v1/load_lora_adapter", f"main-a{a.id}"), ("/v1/load_lora_adapter", f"main-a{b.id}"),
            ("/v1/load_lora_adapter", f"main-a{c.id}")]
        assert calls[0][1]["lora_path"] == a.path and calls[0][2] == "Bearer sekret"
        store.close()
    finally:
        server.shutdown()
        del os.environ["TEST_VLLM_KEY"]

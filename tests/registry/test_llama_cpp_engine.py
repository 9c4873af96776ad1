"""llama.cpp, the real engine (llama-cpp-python, compiled from source): a GGUF that
``honed export`` wrote is served by its OpenAI-compatible server and answers the held-out
prompts as honed does; ``[deploy] llama_cpp_url`` with ``honed serve-llama`` switches the
served version on deploy and rollback. Skips without llama-cpp-python, fails under
``HONED_REQUIRE_LLAMA_CPP=1`` (CI)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import urllib.error

import pytest

from honed.registry.deployment import deploy, rollback
from tests.cli_runner import free_port, run_honed
from tests.llama_cpp_server import get_json, greedy_chat, llama_cpp_server, wait_for_models
from tests.registry.conftest import real_adapter

torch = pytest.importorskip("torch")


def test_an_exported_gguf_served_by_llama_cpp_answers_like_honed(llama_cpp_module, trained):
    from honed.data.chat_encoding import encode_chat
    from honed.training.model_loading import load_tokenizer

    adapter, out = trained["adapter"], trained["root"] / "out-llama-cpp"
    done = json.loads(run_honed("export", f"a{adapter.id}", "--format", "gguf", "--out", str(out),
                                "-w", str(trained["ws"].root), "--json").stdout)
    gguf = out / done["gguf"]

    # The same tokens first: llama.cpp's tokenizer (read from the GGUF) against the base's.
    tokenizer = load_tokenizer(trained["base_path"])
    vocab = llama_cpp_module.Llama(str(gguf), vocab_only=True, verbose=False)
    for messages in trained["prompts"]:
        encoded = encode_chat(tokenizer, messages, add_generation_prompt=True)
        assert vocab.tokenize(encoded.text.encode(), add_bos=False, special=True) == list(encoded.input_ids)

    with llama_cpp_server(gguf, adapter.name, trained["root"] / "llama-cpp-server.log") as url:
        assert [m["id"] for m in get_json(f"{url}/v1/models")["data"]] == [adapter.name]
        answers = [greedy_chat(url, adapter.name, messages, trained["budget"])[0]
                   for messages in trained["prompts"]]
    same = sum(a == b for a, b in zip(answers, trained["answers"]))
    print(f"llama.cpp (f16 GGUF) agrees with honed on {same}/{len(answers)} greedy answers")
    assert answers == trained["answers"]


def test_the_llama_cpp_deploy_target_serves_each_version_under_its_name(llama_cpp_module, make_workspace,
                                                                        tiny_random_base):
    from honed.config import update_config_file
    from honed.workspace import open_workspace

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    ws = make_workspace(tiny_random_base)
    update_config_file(ws.root, {"deploy": {"llama_cpp_url": url, "hook_timeout_s": 120.0}})
    ws = open_workspace(ws.root)
    store = ws.open_store()
    a, b = real_adapter(ws, store, "a", 1), real_adapter(ws, store, "b", 2)
    ws.settings.deploy.hook_timeout_s = 0.5
    early = deploy(ws, store, a.id)  # before the server runs: reported, and remembered for its start
    assert not early.hooks_ok and "is 'honed serve-llama' running?" in early.hooks[0]["detail"]
    ws.settings.deploy.hook_timeout_s = 120.0

    supervisor = subprocess.Popen([sys.executable, "-m", "honed.cli", "serve-llama", "-w", str(ws.root)],
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        assert wait_for_models(url, a.name, process=supervisor) == [a.name]
        assert greedy_chat(url, a.name, [{"role": "user", "content": "hello"}], 4)[1] > 0

        switched = deploy(ws, store, b.id)
        assert switched.hooks_ok, switched.hooks
        assert switched.hooks[0] == {"hook": "llama_cpp", "ok": True,
                                     "detail": f"{url} serves {b.name} ({b.name}-f16.gguf)"}
        assert [m["id"] for m in get_json(f"{url}/v1/models")["data"]] == [b.name]
        assert greedy_chat(url, b.name, [{"role": "user", "content": "hello"}], 4)[1] > 0

        back = rollback(ws, store, "main")
        assert back.hooks_ok and back.hooks[0]["detail"].startswith(f"{url} serves {a.name}")
        assert [m["id"] for m in get_json(f"{url}/v1/models")["data"]] == [a.name]
        assert store.list_deployments("main")[0].hooks[0]["ok"]
    finally:
        supervisor.send_signal(signal.SIGTERM)
        said = supervisor.communicate(timeout=60)[0].decode()
        store.close()
    assert supervisor.returncode == 0, said
    assert "restarting the llama.cpp server" in said
    with pytest.raises((urllib.error.URLError, OSError)):  # its server went with it
        get_json(f"{url}/v1/models", timeout=2)


def test_honed_captures_what_llama_cpp_serves_as_a_proxy(llama_cpp_module, trained, make_workspace):
    """Proxy capture in front of the real engine: the answers are llama.cpp's, passed on
    whole and streamed, each recorded as an experience of the track."""
    import openai

    from honed.config import update_config_file
    from honed.models.tiny import tiny_base
    from honed.server import create_app
    from honed.server.background import BackgroundServer
    from honed.workspace import open_workspace

    adapter, out = trained["adapter"], trained["root"] / "out-proxy"
    done = json.loads(run_honed("export", f"a{adapter.id}", "--format", "gguf", "--out", str(out),
                                "-w", str(trained["ws"].root), "--json").stdout)
    messages = trained["prompts"][0]
    greedy = {"temperature": 0.0, "top_k": 1, "repeat_penalty": 1.0, "seed": 0}  # llama.cpp's own knobs, passed on
    with llama_cpp_server(out / done["gguf"], adapter.name, trained["root"] / "llama-cpp-proxy.log") as url:
        direct = greedy_chat(url, adapter.name, messages, trained["budget"])[0]
        proxy = make_workspace(tiny_base(), "proxy")
        update_config_file(proxy.root, {"server": {"upstream_url": f"{url}/v1",
                                                   "upstream_models": {"main": adapter.name}}})
        proxy = open_workspace(proxy.root)
        server = BackgroundServer(create_app(proxy)).start()
        try:
            client = openai.OpenAI(base_url=server.url + "/v1", api_key="-", max_retries=0, timeout=300)
            whole = client.chat.completions.create(model="main", messages=messages, max_tokens=trained["budget"],
                                                   extra_body=greedy)
            chunks = list(client.chat.completions.create(model="main", messages=messages,
                                                         max_tokens=trained["budget"], stream=True, extra_body=greedy))
        finally:
            server.stop()
    assert whole.choices[0].message.content.strip() == direct == trained["answers"][0]
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed.strip() == direct
    ids = [whole.model_extra["honed"]["experience_id"], chunks[-1].model_extra["honed"]["experience_id"]]
    with proxy.open_store() as store:
        recorded = [store.get_experience(i) for i in ids]
    assert [e.output.strip() for e in recorded] == [direct, direct]
    assert all(e.meta["upstream_model"] == adapter.name and e.messages == messages for e in recorded)

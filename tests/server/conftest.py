"""A real honed app on a real uvicorn server (on a thread of the test process), on a temporary workspace whose store is
a SQLite file or a fresh PostgreSQL schema."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from honed.config import update_config_file
from honed.server import create_app
from honed.server.background import BackgroundServer
from honed.workspace import Workspace, open_workspace


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def api_ws(request, make_workspace, tiny_random_base) -> Workspace:
    """A workspace on the random tiny base; its store on SQLite or PostgreSQL."""
    url = "" if request.param == "sqlite" else request.getfixturevalue("pg_schema_url")
    ws = make_workspace(tiny_random_base, store_url=url)
    update_config_file(ws.root, {"ingest": {"mode": "strict"}, "server": {"live_poll_s": 0.1}})
    return open_workspace(ws.root)


@pytest.fixture
def serve():
    """Start servers for workspaces; all stop at teardown."""
    started: list[BackgroundServer] = []

    def start(workspace: Workspace, host: str = "127.0.0.1") -> BackgroundServer:
        server = BackgroundServer(create_app(workspace, host=host)).start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def client(api_ws, serve) -> Iterator[httpx.Client]:
    """An HTTP client on a running server for ``api_ws``."""
    server = serve(api_ws)
    with httpx.Client(base_url=server.url, timeout=30) as http:
        yield http


def talking_adapter(ws, base, name: str, seed: int):
    """A real LoRA adapter whose (random, non-zero) weights change the base's answers."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base),
                           LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"],
                                      init_lora_weights=False))
    with torch.no_grad():
        for param_name, param in model.named_parameters():
            if "lora_B" in param_name:
                param.mul_(50.0)
    path = ws.adapters_dir / name
    model.save_pretrained(str(path))
    with ws.open_store() as store:
        adapter = store.add_adapter(track="main", run_id=None, job_id=None, base_version=0, path=str(path))
        return store.record_evaluation(adapter.id, {"candidate": {}, "baseline": {}},
                                       {"passed": True, "failed": [], "rules": []}, "candidate")

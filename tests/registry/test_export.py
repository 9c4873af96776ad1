"""``honed export``: the exported GGUF and merged model answer like base + adapter in
honed (the round trip through transformers' own loaders), the Modelfile speaks the base's
chat template, every export has a manifest whose hashes match its files and is listed by
``honed exports``, and bad input is one error line with nothing left behind."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.cli_runner import run_honed

torch = pytest.importorskip("torch")

Q8_FLOOR = 0.75  # q8_0 rounds every weight: most greedy answers, not all, must survive it


def _answers(model, tokenizer, trained) -> list[str]:
    from honed.evaluation.exact_match import generate_answers

    return generate_answers(model.eval(), tokenizer, trained["prompts"], max_new_tokens=trained["budget"])


def _check_manifest(out: Path, manifest: dict) -> None:
    from honed.data.datasets import file_sha256

    on_disk = {str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()} - {"export.json"}
    assert set(manifest["files"]) == on_disk
    for name, entry in manifest["files"].items():
        assert file_sha256(out / name) == entry["sha256"] and (out / name).stat().st_size == entry["bytes"]
    assert json.loads((out / "export.json").read_text())["files"] == manifest["files"]
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".staging-")]


def test_gguf_f16_loads_back_through_transformers_and_answers_like_base_plus_adapter(trained):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    adapter, out = trained["adapter"], trained["root"] / "out-gguf"
    done = json.loads(run_honed("export", f"a{adapter.id}", "--format", "gguf", "--out", str(out),
                                "-w", str(trained["ws"].root), "--json").stdout)
    name = f"{adapter.name}-f16.gguf"
    assert done["format"] == "gguf" and done["quantization"] == "f16" and done["gguf"] == name
    assert done["adapter"]["id"] == adapter.id and done["base"]["version"] == 0 and done["architecture"] == "qwen2"
    assert done["adapter"]["sha256"] and done["base"]["sha256"] and done["honed_version"]
    _check_manifest(out, done)

    model = AutoModelForCausalLM.from_pretrained(out, gguf_file=name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(out, gguf_file=name)
    assert tokenizer.chat_template  # the template travels in the file's metadata
    assert _answers(model, tokenizer, trained) == trained["answers"]

    modelfile = (out / "Modelfile").read_text()
    assert f"FROM ./{name}\n" in modelfile and 'PARAMETER stop "<|im_end|>"' in modelfile
    assert "TEMPLATE \"\"\"{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n" in modelfile
    assert "SYSTEM" not in modelfile  # the tiny base's template has no default system prompt
    lineage = [line for line in modelfile.splitlines() if line.startswith("#")]
    assert any(f"adapter {adapter.id} ({adapter.name})" in line and done["adapter"]["sha256"] in line
               for line in lineage)
    assert any(f"sha256 {done['files'][name]['sha256']}" in line for line in lineage)


def test_gguf_q8_0_reports_its_agreement_with_base_plus_adapter(trained):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    adapter, out = trained["adapter"], trained["root"] / "out-q8"
    run_honed("export", "track:main", "--format", "gguf", "--quant", "q8_0", "--out", str(out),
              "-w", str(trained["ws"].root))
    name = f"{adapter.name}-q8_0.gguf"
    f16_size = (trained["root"] / "out-gguf" / f"{adapter.name}-f16.gguf").stat().st_size
    assert (out / name).stat().st_size < f16_size  # when the f16 test ran first: q8_0 is smaller
    model = AutoModelForCausalLM.from_pretrained(out, gguf_file=name, dtype=torch.float32)
    answers = _answers(model, AutoTokenizer.from_pretrained(out, gguf_file=name), trained)
    same = sum(a == b for a, b in zip(answers, trained["answers"]))
    print(f"q8_0 agreement with base + adapter: {same}/{len(answers)}")
    assert same / len(answers) >= Q8_FLOOR


def test_merged_loads_with_plain_transformers_and_answers_like_base_plus_adapter(trained):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = trained["root"] / "out-merged"
    done = json.loads(run_honed("export", trained["adapter"].name, "--format", "merged", "--out", str(out),
                                "-w", str(trained["ws"].root), "--json").stdout)
    assert done["quantization"] is None and "model.safetensors" in done["files"]
    _check_manifest(out, done)
    model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert tokenizer.chat_template
    assert _answers(model, tokenizer, trained) == trained["answers"]


def test_peft_export_is_the_adapter_directory_and_exports_lists_everything(trained):
    from peft import PeftModel

    from honed.training.model_loading import load_base_model, load_tokenizer

    ws = trained["ws"]
    done = json.loads(run_honed("export", "track:main", "--format", "peft", "-w", str(ws.root), "--json").stdout)
    out = Path(done["path"])
    assert out == ws.root / "exports" / f"{trained['adapter'].name}-peft"  # the default --out
    assert {"adapter_config.json", "adapter_model.safetensors"} <= set(done["files"])
    _check_manifest(out, done)
    base = load_base_model(trained["base_path"], torch.device("cpu"))
    model = PeftModel.from_pretrained(base, str(out))
    assert _answers(model, load_tokenizer(trained["base_path"]), trained) == trained["answers"]

    listed = json.loads(run_honed("exports", "-w", str(ws.root), "--json").stdout)
    assert {Path(r["path"]).name for r in listed if r["present"]} >= {"out-gguf", "out-merged", out.name}
    table = run_honed("exports", "-w", str(ws.root)).stdout
    assert "peft" in table and trained["adapter"].name in table
    gone = trained["root"] / "out-merged-moved"
    shutil.move(trained["root"] / "out-merged", gone)
    listed = json.loads(run_honed("exports", "-w", str(ws.root), "--json").stdout)
    assert [r["present"] for r in listed if r["path"].endswith("out-merged")] == [False]
    shutil.move(gone, trained["root"] / "out-merged")


def test_a_base_version_exports_as_gguf(trained):
    out = trained["root"] / "out-base"
    done = json.loads(run_honed("export", "base:0", "--format", "gguf", "--out", str(out),
                                "-w", str(trained["ws"].root), "--json").stdout)
    assert done["adapter"] is None and done["label"] == "base-v0" and (out / "base-v0-f16.gguf").is_file()
    assert "adapter" not in (out / "Modelfile").read_text().split("FROM")[0]


@pytest.mark.parametrize("args, message", [
    (["a999", "--format", "gguf"], "no adapter 999"),
    (["track:nope", "--format", "gguf"], "no track 'nope'"),
    (["other-a1", "--format", "gguf"], "no adapter of that name (adapter 1 is main-a1)"),
    (["base:7", "--format", "merged"], "no such base version"),
    (["what?", "--format", "gguf"], "not a target"),
    (["track:main", "--format", "onnx"], "it exports merged, gguf, peft"),
    (["track:main", "--format", "gguf", "--quant", "q4_k"], "it does f16, q8_0"),
    (["track:main", "--format", "merged", "--quant", "q8_0"], "--quant applies to --format gguf only"),
    (["base:0", "--format", "peft"], "no adapter to export as peft"),
])
def test_bad_input_is_one_error_line_and_leaves_nothing(trained, args, message):
    out = trained["root"] / "never"
    proc = run_honed("export", *args, "--out", str(out), "-w", str(trained["ws"].root), check=False)
    assert proc.returncode == 1 and message in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    assert not out.exists() and not list(trained["root"].glob(".staging-never-*"))


def test_an_existing_output_directory_is_refused_untouched(trained):
    out = trained["root"] / "taken"
    out.mkdir()
    (out / "mine.txt").write_text("keep")
    proc = run_honed("export", "track:main", "--format", "peft", "--out", str(out),
                     "-w", str(trained["ws"].root), check=False)
    assert proc.returncode == 1 and "already exists" in proc.stderr
    assert [p.name for p in out.iterdir()] == ["mine.txt"]


def test_an_adapter_whose_base_files_are_gone_is_refused(trained, tmp_path):
    from honed.registry.export import ExportError, export
    from honed.workspace import init_workspace

    base = tmp_path / "base"
    shutil.copytree(trained["base_path"], base)
    ws = init_workspace(tmp_path / "ws", base=str(base))
    store = ws.open_store()
    adapter = store.add_adapter(track="main", run_id=None, job_id=None, base_version=0,
                                path=trained["adapter"].path)
    shutil.rmtree(base)
    for copy in (ws.bases_dir / "v0", ws.root / "bases" / "v0"):
        shutil.rmtree(copy, ignore_errors=True)
    with pytest.raises(ExportError, match="base v0: its files are gone"):
        export(ws, store, str(adapter.id), "gguf", out=tmp_path / "out")
    store.close()
    assert not (tmp_path / "out").exists()


def test_a_write_that_fails_midway_leaves_nothing(trained, monkeypatch):
    import errno

    from honed.models import gguf_export
    from honed.registry.export import ExportError, export

    def full_disk(model, tokenizer, path, *args, **kwargs):
        Path(path).write_bytes(b"GGUF" + bytes(1000))  # half a file, then the disk fills
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(gguf_export, "write_gguf", full_disk)
    out = trained["root"] / "full"
    store = trained["ws"].open_store()
    try:
        with pytest.raises(ExportError, match="No space left on device.*nothing was left"):
            export(trained["ws"], store, "track:main", "gguf", out=out)
    finally:
        store.close()
    assert not out.exists() and not list(trained["root"].glob(".staging-full-*"))


@pytest.mark.slow  # CI runs it in its second call
def test_an_architecture_the_writer_cannot_write_is_named_with_the_ones_it_can(tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    from honed.models.tiny import build_tokenizer
    from honed.workspace import init_workspace

    base = tmp_path / "gpt2-base"
    tokenizer = build_tokenizer()
    GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, n_positions=64, vocab_size=len(tokenizer))
                    ).save_pretrained(base)
    tokenizer.save_pretrained(base)
    ws = init_workspace(tmp_path / "ws", base=str(base))
    proc = run_honed("export", "base:0", "--format", "gguf", "--out", str(tmp_path / "out"), "-w", str(ws.root),
                     check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "architecture 'gpt2' cannot be written as GGUF by honed; it writes llama, qwen2" in proc.stderr
    assert not (tmp_path / "out").exists()
    merged = json.loads(run_honed("export", "base:0", "--format", "merged", "--out", str(tmp_path / "m"),
                                  "-w", str(ws.root), "--json").stdout)
    assert merged["architecture"] == "gpt2"  # merged and peft do not depend on the architecture


@pytest.mark.slow
def test_export_killed_at_any_phase_leaves_nothing_or_the_whole_export(trained):
    """SIGKILL (a power cut) at every phase of the atomic write: before the rename there
    is no export at --out and the next export there succeeds and clears the staging
    debris; after it the export is whole (its manifest's hashes match)."""
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[2]
    for phase in ("staging_created", "staging_synced", "renamed", "parent_synced"):
        out = trained["root"] / f"killed-{phase}"
        proc = subprocess.run([sys.executable, "-m", "tests.kill_at_phase", phase, "cli", "export", "track:main",
                               "--format", "gguf", "--out", str(out), "-w", str(trained["ws"].root)],
                              cwd=root, capture_output=True, text=True, timeout=600)
        assert proc.returncode == -9, f"not killed at {phase}: {proc.stderr[-2000:]}"
        if phase.startswith("staging"):
            assert not out.exists(), phase
            done = json.loads(run_honed("export", "track:main", "--format", "gguf", "--out", str(out),
                                        "-w", str(trained["ws"].root), "--json").stdout)
        else:
            done = json.loads((out / "export.json").read_text())
        _check_manifest(out, done)  # also: no .staging- debris beside it

"""``honed verify`` on a real run: it passes, and it catches a tampered dataset, a
deleted checkpoint, and a run whose weights never changed."""

from __future__ import annotations

import json
import shutil

import pytest

from tests.cli_runner import run_honed


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_random_base):
    """A real one-shot run on the random tiny base, with a few checkpoints."""
    from honed.data.synthetic import write_synthetic
    from honed.workspace import init_workspace

    root = tmp_path_factory.mktemp("verify") / "ws"
    init_workspace(root, base=str(tiny_random_base))
    data, _ = write_synthetic("reversal", 160, root / "data.jsonl", seed=3, eval_n=0)
    out = run_honed("train", "-w", str(root), "--dataset", str(data), "--json", "--set", "train.batch_size=8",
                    "--set", "train.epochs=1", "--set", "train.checkpoint_every=5",
                    "--set", "train.keep_checkpoints=10")
    return root, json.loads(out.stdout)["run"]


@pytest.fixture
def run_copy(trained, tmp_path):
    """A fresh copy of the trained workspace to tamper with (paths inside it are absolute,
    so the copy is rewired by moving the original aside while the test runs)."""
    root, run = trained
    backup = tmp_path / "backup"
    shutil.copytree(root, backup, symlinks=True)
    yield root, run
    shutil.rmtree(root)
    shutil.copytree(backup, root, symlinks=True)


def verify(root, run):
    return run_honed("verify", run, "-w", str(root), "--json", check=False)


def test_a_real_run_verifies(trained):
    root, run = trained
    result = verify(root, run)
    report = json.loads(result.stdout)
    assert result.returncode == 0 and report["ok"], result.stdout
    names = [c["name"] for c in report["checks"]]
    for expected in ("manifest", "plan train", "plan heldout", "plan provenance", "metrics", "final adapter"):
        assert expected in names
    assert any(n.startswith("checkpoint ") for n in names) and any(n.startswith("weights at step") for n in names)
    people = run_honed("verify", run, "-w", str(root)).stdout
    assert "verified" in people


def failures(result) -> dict:
    report = json.loads(result.stdout)
    assert result.returncode == 1 and not report["ok"]
    return {c["name"]: c["detail"] for c in report["checks"] if not c["ok"]}


def test_a_tampered_dataset_fails(run_copy):
    root, run = run_copy
    stored = next((root / "datasets" / "main").glob("*.jsonl"))
    lines = stored.read_text().splitlines()
    lines[3] = lines[3].replace("reverse: ", "reverse: X", 1)  # one record's content changed
    stored.write_text("\n".join(lines) + "\n")
    failed = failures(verify(root, run))
    assert any("records" in name and "lines [4]" in detail for name, detail in failed.items()), failed


def test_a_deleted_checkpoint_fails(run_copy):
    root, run = run_copy
    checkpoint = sorted((root / "runs" / run / "checkpoints").glob("step-*"))[0]
    shutil.rmtree(checkpoint)
    failed = failures(verify(root, run))
    assert any(name.startswith("checkpoint") and "not a directory" in detail for name, detail in failed.items()), failed


def test_a_run_whose_weights_never_changed_fails(run_copy):
    """A run that claims its steps but whose adapter is still its initial one (as if the
    optimizer never stepped): its checkpoints' hashes are made to match, so only the
    weight checks can tell."""
    import hashlib

    root, run = run_copy
    init = root / "runs" / run / "adapter_init.safetensors"
    for checkpoint in (root / "runs" / run / "checkpoints").glob("step-*"):
        weights = checkpoint / "adapter_model.safetensors"
        shutil.copy(init, weights)
        meta_path = checkpoint / "checkpoint.json"
        meta = json.loads(meta_path.read_text())
        for entry in meta["files"]:
            if entry["path"] == "adapter_model.safetensors":
                entry["size"] = weights.stat().st_size
                entry["sha256"] = hashlib.sha256(weights.read_bytes()).hexdigest()
        meta_path.write_text(json.dumps(meta))
    shutil.copy(init, next((root / "adapters").glob("run-*")) / "adapter_model.safetensors")
    failed = failures(verify(root, run))
    assert any(n.startswith("weights at step") for n in failed) and "final adapter" in failed, failed
    assert not any(n.startswith("checkpoint") for n in failed)  # the files themselves are consistent

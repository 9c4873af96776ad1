"""honed.training.checkpoints: unit tests, and reliability tests with real SIGKILLs.

The kill tests run tests/training/checkpoint_writer_process.py in a child process that
SIGKILLs itself after each phase of the write protocol, then check that what is left on
disk always holds a valid checkpoint with exactly the bytes that were written for it.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import honed
from honed import atomic_files
from honed.training import checkpoints
from honed.training.checkpoints import (
    PHASES,
    CheckpointError,
    latest_complete_checkpoint,
    list_complete_checkpoints,
    prune_checkpoints,
    remove_stale_staging,
    validate_checkpoint,
    write_checkpoint_atomically,
)

WRITER_SCRIPT = Path(__file__).with_name("checkpoint_writer_process.py")
_spec = importlib.util.spec_from_file_location("checkpoint_writer_process", WRITER_SCRIPT)
writer = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(writer)

REPLACE_ONLY_PHASES = ("old_moved_aside", "old_removed")
NEW_STEP_PHASES = tuple(p for p in PHASES if p not in REPLACE_ONLY_PHASES)
VISIBLE_FROM = PHASES.index("renamed")  # killed at or after this phase -> new one is in place


def content_of(path: Path) -> dict[str, bytes]:
    return {
        p.relative_to(path).as_posix(): p.read_bytes()
        for p in sorted(path.rglob("*"))
        if p.is_file() and p.name != checkpoints.META_FILENAME
    }


def assert_holds(info, step: int, generation: int) -> None:
    assert info is not None
    assert info.step == step
    validate_checkpoint(info.path, verify_hashes=True)
    assert content_of(info.path) == writer.file_contents(step, generation)
    assert info.meta["generation"] == generation
    assert info.meta["data_position"] == step * 8


def run_writer(directory: Path, step: int, generation: int, *cue: str):
    src = str(Path(honed.__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])}
    return subprocess.run(
        [sys.executable, str(WRITER_SCRIPT), str(directory), str(step), str(generation), *cue],
        env=env, capture_output=True, text=True, timeout=60,
    )


def check_recovery_after_kill(directory: Path, step: int, expected_step: int, expected_gen: int):
    # Before any cleanup the survivor must already be found (possibly in its aside copy).
    assert_holds(latest_complete_checkpoint(directory), expected_step, expected_gen)

    removed = remove_stale_staging(directory)
    assert all(not p.exists() for p in removed)
    assert [p.name for p in directory.iterdir() if p.name.startswith(".")] == []
    survivor = latest_complete_checkpoint(directory)
    assert survivor.path == directory / f"step-{expected_step:08d}"
    assert_holds(survivor, expected_step, expected_gen)

    # The same step can be written again, and the result is what was asked for.
    fresh = writer.write(directory, step, 7)
    assert_holds(fresh, step, 7)
    assert_holds(latest_complete_checkpoint(directory), step, 7)
    assert [p.name for p in directory.iterdir() if p.name.startswith(".")] == []


# --- reliability: real processes, real SIGKILL ---------------------------------------


@pytest.mark.parametrize("phase", NEW_STEP_PHASES)
def test_kill_while_writing_next_step_leaves_a_valid_checkpoint(tmp_path, phase):
    result = run_writer(tmp_path, 2, 0, "--kill-at", phase)
    assert result.returncode == -9, result.stderr

    if PHASES.index(phase) >= VISIBLE_FROM:
        check_recovery_after_kill(tmp_path, 2, expected_step=2, expected_gen=0)
    else:
        assert [i.step for i in list_complete_checkpoints(tmp_path)] == [1]
        check_recovery_after_kill(tmp_path, 2, expected_step=1, expected_gen=0)


@pytest.mark.parametrize("phase", PHASES)
def test_kill_while_rewriting_same_step_leaves_a_valid_checkpoint(tmp_path, phase):
    result = run_writer(tmp_path, 1, 1, "--kill-at", phase)
    assert result.returncode == -9, result.stderr

    expected_gen = 1 if PHASES.index(phase) >= VISIBLE_FROM else 0
    check_recovery_after_kill(tmp_path, 1, expected_step=1, expected_gen=expected_gen)


@pytest.mark.parametrize("step,generation", [(2, 0), (1, 1)], ids=["next-step", "same-step"])
def test_kill_in_the_middle_of_write_files(tmp_path, step, generation):
    result = run_writer(tmp_path, step, generation, "--kill-mid-file")
    assert result.returncode == -9, result.stderr
    staging = [p for p in tmp_path.iterdir() if p.name.startswith(".staging-")]
    assert len(staging) == 1
    half_written = staging[0] / "adapter_model.bin"
    assert 0 < half_written.stat().st_size < writer.FILE_SIZES["adapter_model.bin"]

    check_recovery_after_kill(tmp_path, step, expected_step=1, expected_gen=0)


# --- unit ----------------------------------------------------------------------------


def record_phases(monkeypatch) -> list[str]:
    seen: list[str] = []
    monkeypatch.setattr(atomic_files, "_phase_hook", seen.append)
    return seen


def test_phases_are_reported_in_order(tmp_path, monkeypatch):
    seen = record_phases(monkeypatch)
    writer.write(tmp_path, 1, 0)
    assert tuple(seen) == NEW_STEP_PHASES
    seen.clear()
    writer.write(tmp_path, 1, 1)
    assert tuple(seen) == PHASES


def test_written_checkpoint_json_describes_files(tmp_path):
    info = writer.write(tmp_path, 3, 0)
    on_disk = json.loads((info.path / "checkpoint.json").read_text())
    assert info.meta == on_disk
    assert on_disk["step"] == 3 and "created_at" in on_disk
    assert {f["path"]: f["size"] for f in on_disk["files"]} == writer.FILE_SIZES
    assert info.path == tmp_path / "step-00000003"
    assert validate_checkpoint(info.path, verify_hashes=True) == info


def test_truncated_file_is_named_and_skipped(tmp_path):
    writer.write(tmp_path, 1, 0)
    broken = writer.write(tmp_path, 2, 0)
    target = broken.path / "optimizer" / "state.bin"
    target.write_bytes(target.read_bytes()[:1000])

    with pytest.raises(CheckpointError, match="optimizer/state.bin"):
        validate_checkpoint(broken.path)
    assert [i.step for i in list_complete_checkpoints(tmp_path)] == [1]
    assert latest_complete_checkpoint(tmp_path).step == 1


def test_same_size_corruption_needs_verify_hashes(tmp_path):
    info = writer.write(tmp_path, 1, 0)
    target = info.path / "adapter_model.bin"
    data = bytearray(target.read_bytes())
    data[123] ^= 0xFF
    target.write_bytes(bytes(data))

    validate_checkpoint(info.path)  # sizes still match
    with pytest.raises(CheckpointError, match="adapter_model.bin.*sha256"):
        validate_checkpoint(info.path, verify_hashes=True)


def test_missing_file_and_broken_json_are_reported(tmp_path):
    info = writer.write(tmp_path, 1, 0)
    (info.path / "adapter_model.bin").unlink()
    with pytest.raises(CheckpointError, match="adapter_model.bin.*missing"):
        validate_checkpoint(info.path)

    other = writer.write(tmp_path, 2, 0)
    (other.path / "checkpoint.json").write_text('{"step": 2, "fil')
    with pytest.raises(CheckpointError, match="checkpoint.json"):
        validate_checkpoint(other.path)
    assert list_complete_checkpoints(tmp_path) == []


def test_listing_ignores_foreign_and_incomplete_directories(tmp_path):
    writer.write(tmp_path, 4, 0)
    (tmp_path / "step-00000009").mkdir()  # no checkpoint.json
    (tmp_path / "notes").mkdir()
    for name in ("step-5", "step-00000005.bak", "step-000000005"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "checkpoint.json").write_text('{"step": 5, "files": []}')
    (tmp_path / "README").write_text("not a checkpoint")

    assert [i.step for i in list_complete_checkpoints(tmp_path)] == [4]
    assert list_complete_checkpoints(tmp_path / "does-not-exist") == []
    assert latest_complete_checkpoint(tmp_path / "does-not-exist") is None


def test_allowed_steps_hides_checkpoints_the_store_never_recorded(tmp_path):
    for step in (1, 2, 3):
        writer.write(tmp_path, step, 0)
    assert latest_complete_checkpoint(tmp_path).step == 3
    assert latest_complete_checkpoint(tmp_path, allowed_steps={1, 2}).step == 2
    assert latest_complete_checkpoint(tmp_path, allowed_steps={1}).step == 1
    assert latest_complete_checkpoint(tmp_path, allowed_steps=set()) is None
    assert latest_complete_checkpoint(tmp_path, allowed_steps={7}) is None


def test_prune_keeps_the_last_n_and_the_protected(tmp_path):
    for step in range(1, 7):
        writer.write(tmp_path, step, 0)
    removed = prune_checkpoints(tmp_path, keep_last=2, protect={2})
    assert sorted(p.name for p in removed) == ["step-00000001", "step-00000003", "step-00000004"]
    assert [i.step for i in list_complete_checkpoints(tmp_path)] == [2, 5, 6]
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "step-00000002", "step-00000005", "step-00000006"
    ]
    assert prune_checkpoints(tmp_path, keep_last=3) == []
    assert len(prune_checkpoints(tmp_path, keep_last=0, protect={6})) == 2
    with pytest.raises(ValueError):
        prune_checkpoints(tmp_path, keep_last=-1)


def test_prune_leaves_invalid_directories_alone(tmp_path):
    for step in (1, 2, 3):
        writer.write(tmp_path, step, 0)
    (tmp_path / "step-00000001" / "adapter_model.bin").write_bytes(b"short")
    prune_checkpoints(tmp_path, keep_last=1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-00000001", "step-00000003"]


def test_remove_stale_staging_handles_every_kind_of_leftover(tmp_path):
    writer.write(tmp_path, 1, 0)
    writer.write(tmp_path, 2, 0)
    # A re-write of step 2 killed after moving the old one aside: the aside is restored.
    os.rename(tmp_path / "step-00000002", tmp_path / ".replaced-step-00000002-aa")
    # A re-write of step 1 killed after the rename: the aside copy is redundant.
    aside_1 = tmp_path / ".replaced-step-00000001-bb"
    aside_1.mkdir()
    staging = tmp_path / ".staging-step-00000003-cc"
    (staging / "sub").mkdir(parents=True)
    (staging / "sub" / "x.bin").write_bytes(b"x")
    trash = tmp_path / ".trash-step-00000000-dd"
    trash.mkdir()

    assert [i.step for i in list_complete_checkpoints(tmp_path)] == [1, 2]
    removed = remove_stale_staging(tmp_path)
    assert sorted(removed) == sorted([aside_1, staging, trash])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-00000001", "step-00000002"]
    assert_holds(latest_complete_checkpoint(tmp_path), 2, 0)
    assert remove_stale_staging(tmp_path) == []
    assert remove_stale_staging(tmp_path / "does-not-exist") == []


def test_failing_write_files_leaves_nothing_behind(tmp_path):
    writer.write(tmp_path, 1, 0)

    def explode(directory: Path) -> None:
        (directory / "partial.bin").write_bytes(b"abc")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        write_checkpoint_atomically(tmp_path, 1, explode, {})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-00000001"]
    assert_holds(latest_complete_checkpoint(tmp_path), 1, 0)


def test_bad_arguments_are_rejected_before_touching_disk(tmp_path):
    noop = lambda directory: None  # noqa: E731
    with pytest.raises(ValueError, match="reserved"):
        write_checkpoint_atomically(tmp_path, 1, noop, {"step": 5})
    with pytest.raises(TypeError):
        write_checkpoint_atomically(tmp_path, 1, noop, {"when": object()})
    with pytest.raises(ValueError):
        write_checkpoint_atomically(tmp_path, -1, noop, {})
    assert list(tmp_path.iterdir()) == []

    def writes_meta(directory: Path) -> None:
        (directory / "checkpoint.json").write_text("{}")

    with pytest.raises(CheckpointError, match="checkpoint.json"):
        write_checkpoint_atomically(tmp_path, 1, writes_meta, {})
    assert list(tmp_path.iterdir()) == []


def test_empty_checkpoint_is_valid(tmp_path):
    info = write_checkpoint_atomically(tmp_path / "new" / "dir", 0, lambda d: None, {"a": 1})
    assert info.meta["files"] == [] and info.meta["a"] == 1
    assert list_complete_checkpoints(tmp_path / "new" / "dir") == [info]


def _imports(module) -> set[str]:
    tree = ast.parse(Path(module.__file__).read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            imported.add(node.module)
    return imported


def test_module_imports_only_the_standard_library():
    """No torch: checkpoints and the atomic writes they use are standard library alone."""
    imported = _imports(checkpoints) - {"honed.atomic_files"}
    imported = {name.split(".")[0] for name in imported | _imports(atomic_files)}
    assert imported <= set(sys.stdlib_module_names), imported - set(sys.stdlib_module_names)

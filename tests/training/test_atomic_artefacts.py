"""No artefact write can be lost: a trainer killed (SIGKILL, as a power cut) at any phase
of an adapter save leaves the previous adapter loadable, and the next save succeeds."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from honed.atomic_files import DIRECTORY_PHASES, current_directory, recover_directory

pytestmark = pytest.mark.slow  # a SIGKILL per phase; CI runs it with the slow tier

ROOT = Path(__file__).resolve().parents[2]
VISIBLE_FROM = DIRECTORY_PHASES.index("renamed")  # killed at or after this phase: the new one is in place


def kill_save_at(phase: str, base: Path, out: Path, seed: int) -> int:
    command = [sys.executable, "-m", "tests.kill_at_phase", phase, "adapter", str(base), str(out), str(seed)]
    proc = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    return proc.returncode


def loaded_weights(base: Path, out: Path) -> dict:
    """The adapter a reader gets at ``out``, loaded on the base the way honed loads one."""
    import torch
    from peft import get_peft_model_state_dict

    from honed.training.model_loading import load_base_model, with_adapter

    return get_peft_model_state_dict(with_adapter(load_base_model(str(base), torch.device("cpu")), out))


def same(a: dict, b: dict) -> bool:
    import torch

    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def generations(tiny_random_base):
    from tests.kill_at_phase import adapter_weights

    return {seed: adapter_weights(str(tiny_random_base), seed) for seed in (0, 1, 2)}


@pytest.mark.parametrize("phase", DIRECTORY_PHASES)
def test_killed_adapter_save_leaves_the_previous_adapter_loadable(tiny_random_base, generations, tmp_path, phase):
    out = tmp_path / "adapters" / "run-1"
    assert kill_save_at(phase, tiny_random_base, out, seed=1) == -9  # SIGKILLed at the phase
    expected = 1 if DIRECTORY_PHASES.index(phase) >= VISIBLE_FROM else 0
    # A reader (evaluation, serving) loads the latest complete adapter, before any recovery.
    assert same(loaded_weights(tiny_random_base, out), generations[expected])
    assert current_directory(out) == out or phase == "old_moved_aside"
    # The next writer recovers first: the adapter is back at its name, no debris is left.
    recover_directory(out)
    assert same(loaded_weights(tiny_random_base, out), generations[expected])
    assert [p.name for p in out.parent.iterdir()] == ["run-1"]
    # And the next save replaces it completely.
    from honed.training.trainer import save_adapter
    from tests.kill_at_phase import adapter_model

    save_adapter(adapter_model(str(tiny_random_base), 2), out)
    assert same(loaded_weights(tiny_random_base, out), generations[2])
    assert [p.name for p in out.parent.iterdir()] == ["run-1"]

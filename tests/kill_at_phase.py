"""Child process for the kill tests: run honed code and SIGKILL it the moment an atomic
directory write (:mod:`honed.atomic_files`) reaches PHASE, as a power cut would.

Usage:
    python -m tests.kill_at_phase PHASE adapter BASE OUT SEED  # save a LoRA adapter of BASE (weights from SEED) to OUT
    python -m tests.kill_at_phase PHASE cli ARGS...            # run ``honed ARGS...``

PHASE ``none`` kills nothing. With ``adapter`` the write killed is the second one
(``OUT`` already holds an adapter); ``adapter_weights`` gives the tests what each seed's holds.
"""

from __future__ import annotations

import os
import runpy
import signal
import sys
from pathlib import Path

from honed import atomic_files

LORA = {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]}


def adapter_model(base: str, seed: int):
    """The tiny base with a LoRA whose initial weights depend on ``seed`` alone."""
    import torch

    from honed.config import LoraSettings
    from honed.training.model_loading import attach_lora, load_base_model

    model = attach_lora(load_base_model(base, torch.device("cpu")), LoraSettings(**LORA), seed)
    with torch.no_grad():  # B starts at zero: make the adapter's effect, not only A, depend on the seed
        generator = torch.Generator().manual_seed(seed)
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.01)
    return model


def adapter_weights(base: str, seed: int) -> dict:
    from peft import get_peft_model_state_dict

    return {k: v.clone() for k, v in get_peft_model_state_dict(adapter_model(base, seed)).items()}


def main(argv: list[str]) -> None:
    phase, mode, *rest = argv
    if phase != "none":
        atomic_files._phase_hook = lambda reached: os.kill(os.getpid(), signal.SIGKILL) if reached == phase else None
    if mode == "adapter":
        from honed.training.trainer import save_adapter

        base, out, seed = rest
        hook, atomic_files._phase_hook = atomic_files._phase_hook, None
        save_adapter(adapter_model(base, 0), Path(out))  # the previous version: seed 0
        atomic_files._phase_hook = hook
        save_adapter(adapter_model(base, int(seed)), Path(out))
    else:
        sys.argv = ["honed", *rest]
        runpy.run_module("honed.cli", run_name="__main__")


if __name__ == "__main__":
    main(sys.argv[1:])

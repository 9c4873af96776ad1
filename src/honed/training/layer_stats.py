"""How far each LoRA-wrapped module has moved: the Frobenius norm of its delta.

A LoRA module adds ``scaling · B @ A`` to its base weight. Its norm per layer and module
over the steps shows where a run changes the model (a UI draws it as a heat map of
layers × modules). The norm is computed without forming the out×in product:

    ||s·B A||_F² = s² · trace(Aᵀ Bᵀ B A) = s² · trace((Bᵀ B)(A Aᵀ))

where both factors are r×r. Only parameters are read, under ``torch.no_grad``: no
random numbers are drawn and nothing the loop carries changes, so a run that logs these
figures trains exactly like one that does not.
"""

from __future__ import annotations

import re
from collections import Counter

import torch

_INDEX = re.compile(r"\.(\d+)\.")


@torch.no_grad()
def lora_delta_norms(model) -> dict[str, float]:
    """``{"layer.<index>.<module>": ||scaling · B @ A||_F}`` for every LoRA-wrapped module
    of ``model`` (a peft model), the delta being the sum over its active adapters."""
    from peft.tuners.lora import LoraLayer

    names, squares = [], []
    for name, module in model.named_modules():
        if not isinstance(module, LoraLayer):
            continue
        # Linear LoRA only: embedding and convolution variants keep other shapes.
        adapters = [a for a in module.active_adapters if a in module.lora_A and module.lora_A[a].weight.ndim == 2]
        if not adapters:
            continue
        # Several active adapters add their deltas; stacking them (B's columns scaled)
        # gives one product whose norm is that of the sum. float64 costs nothing on r×r
        # matrices and keeps the trace from cancelling.
        a = torch.cat([module.lora_A[n].weight.to(torch.float64) for n in adapters], dim=0)
        b = torch.cat([module.lora_B[n].weight.to(torch.float64) * module.scaling[n] for n in adapters], dim=1)
        # trace(XY) of symmetric X, Y is the sum of their elementwise product.
        squares.append((b.T @ b * (a @ a.T)).sum())
        names.append(name)
    if not squares:
        return {}
    # One transfer from the device for all modules, not one synchronisation per module.
    stacked = torch.stack(squares)
    if hasattr(stacked, "full_tensor"):  # sharded by FSDP: every rank gathers the whole
        stacked = stacked.full_tensor()
    norms = stacked.clamp_min(0).sqrt().tolist()
    return dict(zip(layer_stat_keys(names), norms))


def layer_stat_keys(module_names: list[str]) -> list[str]:
    """Short, stable keys for module paths: ``...layers.3.self_attn.q_proj`` becomes
    ``layer.3.q_proj``; where two modules of a layer share a short name, the path after
    the layer index is kept instead (``layer.3.self_attn.q_proj``)."""
    parts = []
    for name in module_names:
        matches = list(_INDEX.finditer(name))
        if not matches:
            parts.append((None, name.rsplit(".", 1)[-1], name))
            continue
        last = matches[-1]
        rest = name[last.end():]
        parts.append((last.group(1), rest.rsplit(".", 1)[-1], rest))
    short = [f"layer.{index}.{leaf}" if index is not None else leaf for index, leaf, _ in parts]
    counts = Counter(short)
    return [
        key if counts[key] == 1 else (f"layer.{index}.{rest}" if index is not None else rest)
        for key, (index, _, rest) in zip(short, parts)
    ]

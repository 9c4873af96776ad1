"""Data-parallel training under torchrun: who this process is, and the few collectives the
trainer needs.

With ``train.nproc > 1`` the daemon starts the ordinary trainer under torchrun, in N
processes on its machine (see :mod:`honed.daemon.launch`). Every process runs the same
loop on its share of each optimizer step's examples;
``torch.nn.parallel.DistributedDataParallel`` averages the gradients.
Only rank 0 talks to the store and writes files (checkpoints, metrics, the adapter, the
manifest); it decides what happens at each step boundary (train on, pause, stop, cancel)
and broadcasts that decision, so every rank stops at the same step.

A single process is a world of one: :meth:`Dist.current` then returns a context whose
collectives do nothing, and the trainer's code is the same either way.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Any

import torch

log = logging.getLogger(__name__)


def world_size_from_env() -> int:
    """WORLD_SIZE as torchrun sets it (1 outside torchrun)."""
    try:
        return max(1, int(os.environ.get("WORLD_SIZE", "1")))
    except ValueError:
        return 1


@dataclass
class Dist:
    """This process's place in the job's world."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    backend: str | None = None
    sharded: bool = False  # the model is sharded across the ranks (FSDP): saving is collective
    _initialised: bool = field(default=False, repr=False)

    @property
    def main(self) -> bool:
        """Rank 0: the only process that writes."""
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1

    @classmethod
    def current(cls) -> Dist:
        """The world this process was started in (a world of one outside torchrun)."""
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            return cls(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")),
                       dist.get_backend())
        return cls()

    @classmethod
    def start(cls, backend: str = "auto") -> Dist:
        """Join the process group torchrun set up (nothing outside torchrun).

        ``auto`` is NCCL on CUDA and gloo on the CPU. Each process trains on its own
        GPU (``LOCAL_RANK``), made the current CUDA device."""
        import torch.distributed as dist

        world = world_size_from_env()
        if world == 1:
            return cls()
        if dist.is_initialized():
            return cls.current()
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        if backend == "auto":
            backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            if not torch.cuda.is_available():
                raise ValueError("train.backend = 'nccl' needs CUDA, and torch.cuda.is_available() is False "
                                 "here; use 'gloo' (or 'auto') for data parallelism on the CPU")
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend=backend)
        me = cls(dist.get_rank(), dist.get_world_size(), local_rank, backend, _initialised=True)
        log.info("rank %d of %d (local %d) joined the %s process group", me.rank, me.world, local_rank, backend)
        return me

    def close(self) -> None:
        """Leave the process group (only a group this context joined)."""
        import torch.distributed as dist

        if self._initialised and dist.is_initialized():
            dist.destroy_process_group()
            self._initialised = False

    # --- collectives ------------------------------------------------------------------

    def broadcast(self, value: Any) -> Any:
        """Rank 0's ``value`` on every rank (any picklable object)."""
        if not self.active:
            return value
        import torch.distributed as dist

        box = [value if self.main else None]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def sum(self, values: list[float]) -> list[float]:
        """Element-wise sums of ``values`` over all ranks."""
        if not self.active:
            return values
        import torch.distributed as dist

        device = torch.device("cuda", torch.cuda.current_device()) if self.backend == "nccl" else torch.device("cpu")
        tensor = torch.tensor(values, dtype=torch.float64, device=device)
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor.tolist()

    # --- the model --------------------------------------------------------------------

    def wrap(self, model, strategy: str = "ddp"):
        """The module to run forward and backward through: ``model`` itself in a world of
        one, else wrapped for data parallelism. The trainer keeps ``model`` for saving."""
        if not self.active:
            return model
        if strategy == "fsdp":
            self.sharded = True
            return _fully_shard(model)
        from torch.nn.parallel import DistributedDataParallel

        device_ids = [self.local_rank] if self.backend == "nccl" else None
        return DistributedDataParallel(model, device_ids=device_ids)


    # --- saving a sharded model ---------------------------------------------------------

    def lora_state(self, model) -> dict[str, torch.Tensor] | None:
        """The LoRA entries of ``model.state_dict()``, whole, when the model is sharded (a
        collective: every rank calls it, and every rank gets them); None otherwise, when
        the model's own state is whole already."""
        if not self.sharded:
            return None
        return {name: value.full_tensor() if hasattr(value, "full_tensor") else value
                for name, value in model.state_dict().items() if "lora_" in name}

    def optimizer_state(self, model, optimizer) -> dict:
        """The optimizer's state to checkpoint; whole, on rank 0, when sharded (collective)."""
        if not self.sharded:
            return optimizer.state_dict()
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

        return get_optimizer_state_dict(model, optimizer,
                                        options=StateDictOptions(full_state_dict=True, cpu_offload=True))

    def load_optimizer_state(self, model, optimizer, state: dict) -> None:
        """Load a state written by :meth:`optimizer_state` (every rank reads the file)."""
        if not self.sharded:
            optimizer.load_state_dict(state)
            return
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

        set_optimizer_state_dict(model, optimizer, optim_state_dict=state,
                                 options=StateDictOptions(full_state_dict=True))


def _fully_shard(model):
    """Shard every decoder layer and the rest of the model across the ranks (FSDP2)."""
    from torch.distributed.fsdp import fully_shard

    layers = _decoder_layers(model)
    for layer in layers:
        fully_shard(layer)
    fully_shard(model)
    return model


def _decoder_layers(model) -> list:
    """The repeated blocks of a transformers causal LM (``model.model.layers`` or alike)."""
    for module in model.modules():
        layers = getattr(module, "layers", None)
        if isinstance(layers, torch.nn.ModuleList) and len(layers) > 0:
            return list(layers)
    raise ValueError("train.distributed = 'fsdp': the model has no ModuleList of layers to shard")

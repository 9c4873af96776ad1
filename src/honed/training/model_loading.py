"""Load a base (hub id or local directory) and attach a LoRA adapter.

The same code serves honed's tiny base and real checkpoints; Hugging Face's own
``HF_HUB_OFFLINE`` and cache are respected, so machines without a network never try to
download. A base that cannot be loaded, or a training setting this machine cannot carry
out (4-bit QLoRA without CUDA or bitsandbytes), is reported before any weights load, in
one message that says what is missing and what to do instead.
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

import torch

from honed.atomic_files import current_directory
from honed.config import LoraSettings, TrainSettings
from honed.data.tokenization import ensure_chat_template
from honed.workspace import looks_local

log = logging.getLogger(__name__)

# Non-reentrant checkpointing computes gradients for LoRA even though the frozen
# embeddings' output does not require grad, so no input hook is needed (the reentrant
# variant would silently give the adapter no gradient without one).
CHECKPOINTING_KWARGS = {"use_reentrant": False}


class UnsupportedSetting(ValueError):
    """A training setting this machine cannot carry out; the message names the setting,
    what is missing and what to set instead."""


class BaseNotFound(ValueError):
    """The base is neither a model directory nor a hub id that can be loaded here."""


def quiet_libraries() -> None:
    """Progress bars and advisory warnings of the libraries are noise in honed's output."""
    import warnings

    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)


def pick_device() -> torch.device:
    """CUDA when present, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def nvml_uuid(device: torch.device) -> str | None:
    """The NVML uuid (``GPU-...``) of a CUDA ``device``, None for any other device.

    By uuid rather than index: CUDA_VISIBLE_DEVICES renumbers CUDA's devices, NVML's not."""
    if device.type != "cuda":
        return None
    try:
        uuid = str(torch.cuda.get_device_properties(device).uuid)
    except (AttributeError, RuntimeError, AssertionError):
        return None
    return uuid if uuid.startswith(("GPU-", "MIG-")) else f"GPU-{uuid}"


def locate_base(base: str) -> str:
    """What to hand to ``from_pretrained`` for ``base``: a model directory (``~``
    expanded) or a hub id. Raises :class:`BaseNotFound` for a directory that does not
    exist or holds no model, a malformed id, or (with ``HF_HUB_OFFLINE``) an id that is
    not in the Hugging Face cache: before any download is tried or any weight is read."""
    if looks_local(base):
        path = Path(base).expanduser()
        if not path.exists():
            raise BaseNotFound(f"base {base!r}: no such directory ({path.absolute()}); point the base at a "
                               "directory that holds a Hugging Face model, or give a hub id such as "
                               "Qwen/Qwen3-0.6B")
        if not path.is_dir():
            raise BaseNotFound(f"base {base!r}: {path.absolute()} is a file; the base is a model directory")
        if not (path / "config.json").is_file():
            raise BaseNotFound(f"base {base!r}: {path.absolute()} is not a Hugging Face model directory "
                               "(no config.json in it)")
        return str(path)
    from huggingface_hub import constants, try_to_load_from_cache
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(base)
    except HFValidationError as exc:
        raise BaseNotFound(f"base {base!r}: not a local directory, and not a Hugging Face id ({exc})") from None
    if constants.HF_HUB_OFFLINE and not isinstance(try_to_load_from_cache(base, "config.json"), str):
        raise BaseNotFound(_hub_failure(base, None))
    return base


def _hub_failure(base: str, exc: Exception | None) -> str:
    """Why hub id ``base`` cannot be loaded here, where honed looked, and the way out."""
    from huggingface_hub import constants

    cache = constants.HF_HUB_CACHE
    if constants.HF_HUB_OFFLINE:
        why = (f"HF_HUB_OFFLINE=1 is set, so nothing is downloaded, and it is not (completely) in the "
               f"Hugging Face cache at {cache}")
        fix = (f"download it on a machine with a network with 'hf download {base}' and copy that cache here "
               f"(or set HF_HUB_CACHE to where it is), unset HF_HUB_OFFLINE if this machine may download, or")
    else:
        reason = str(exc).strip().splitlines()[0] if exc is not None and str(exc).strip() else "no reason given"
        why = (f"it could not be fetched from the Hugging Face hub ({reason}) and is not (completely) in the "
               f"cache at {cache}")
        fix = (f"check the network and the id (a gated model needs 'hf auth login' and accepted terms), "
               f"download it ahead with 'hf download {base}', or")
    return (f"base {base!r}: cannot be loaded: {why}. To fix: {fix} point the base at a local directory "
            "that holds the model (honed init WS --base /path/to/model)")


def _from_pretrained(loader, base: str, **kwargs):
    """``loader.from_pretrained`` on ``base``, its hub failures turned into BaseNotFound."""
    source = locate_base(base)
    try:
        return loader.from_pretrained(source, **kwargs)
    except OSError as exc:
        if looks_local(base):
            raise
        raise BaseNotFound(_hub_failure(base, exc)) from exc


# Loaded ahead by a warm trainer process (see preload); each is handed out once.
_preloaded: dict[tuple[str, str], object] = {}


def preload(base: str, device: torch.device) -> None:
    """Load ``base``'s tokenizer and weights now, so that the next load_tokenizer and
    load_base_model of the same base and device return at once. A warm trainer process
    does this while it waits for a job; the result is the same as loading then."""
    _preloaded[("tokenizer", base)] = load_tokenizer(base)
    _preloaded[("model", f"{base}@{device}")] = load_base_model(base, device)


def load_tokenizer(base: str):
    """The base's tokenizer, with pad and chat template guaranteed."""
    if (ready := _preloaded.pop(("tokenizer", base), None)) is not None:
        return ready
    from transformers import AutoTokenizer

    tokenizer = _from_pretrained(AutoTokenizer, base)
    ensure_chat_template(tokenizer)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_base_model(base: str, device: torch.device):
    """The base model in full precision on CPU, bfloat16 where CUDA supports it."""
    dtype = torch.float32
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        dtype = torch.bfloat16
    if (ready := _preloaded.pop(("model", f"{base}@{device}"), None)) is not None:
        return ready
    if (ready := _preloaded.pop(("model", f"{base}@cpu"), None)) is not None:
        return ready.to(device=device, dtype=dtype)  # preloaded in CPU memory while the device was the server's
    from transformers import AutoModelForCausalLM

    quiet_libraries()
    model = _from_pretrained(AutoModelForCausalLM, base, dtype=dtype)
    # The trainer passes an explicit 4D mask; a KV cache would only cost memory and (per
    # MEASURED.md) disables the library's own packed-sequence handling.
    model.config.use_cache = False
    # transformers maps the safetensors files copy-on-write and keeps the float32 weights
    # there: the server, the trainer and the warm spare loading one base share its pages
    # (benchmarks/memory_footprint.py; tests/training/test_model_loading.py).
    return model.to(device)


def with_adapter(model, path: str | Path, adapter_name: str = "default"):
    """``model`` with the LoRA adapter saved at ``path`` (its latest complete version,
    even while a trainer replaces it: :func:`honed.atomic_files.current_directory`)."""
    from peft import PeftModel

    return PeftModel.from_pretrained(model, str(current_directory(Path(path))), adapter_name=adapter_name)


def bitsandbytes_installed() -> bool:
    """Whether bitsandbytes can be imported, without importing it (that is slow and noisy)."""
    return importlib.util.find_spec("bitsandbytes") is not None


def check_training_support(train: TrainSettings, device: torch.device) -> None:
    """Raise :class:`UnsupportedSetting` when ``train`` asks for what this machine cannot
    do on ``device``; cheap, and meant to be called before any model loads."""
    if train.quantization != "4bit":
        return
    missing = []
    if device.type != "cuda":
        if not torch.cuda.is_available():
            build = ("this torch is a CPU-only build, torch.version.cuda is None" if torch.version.cuda is None
                     else f"torch {torch.__version__} (CUDA {torch.version.cuda}) sees no GPU")
            missing.append(f"a CUDA device (none here: torch.cuda.is_available() is False; {build})")
        else:
            missing.append(f"a CUDA device (this trainer runs on {device})")
    if not bitsandbytes_installed():
        missing.append("the bitsandbytes package (not installed: pip install bitsandbytes)")
    if missing:
        raise UnsupportedSetting(
            'train.quantization = "4bit" (QLoRA) needs ' + " and ".join(missing) + ". Train the base "
            'unquantized instead: train.quantization = "none" (--set train.quantization=none), with '
            "train.gradient_checkpointing = true if memory is short")
    if train.world_size > 1 and train.distributed == "fsdp":
        raise UnsupportedSetting(
            'train.quantization = "4bit" with train.distributed = "fsdp" is not supported: honed places the '
            'whole 4-bit base on each process\'s GPU. Use train.distributed = "ddp" (every GPU holds its own '
            '4-bit copy, which is small), or train.quantization = "none" to shard the base with fsdp')


def load_training_model(base: str, device: torch.device, lora: LoraSettings, train: TrainSettings):
    """The base with a fresh LoRA adapter (initialised from ``train.seed``), ready to
    train on ``device``: in full precision (bfloat16 on CUDA), or 4-bit QLoRA with
    ``train.quantization = "4bit"``; with gradient checkpointing when
    ``train.gradient_checkpointing``. The settings are checked first
    (:func:`check_training_support`), so a bad one costs no load."""
    check_training_support(train, device)
    if train.quantization == "4bit":
        from peft import prepare_model_for_kbit_training

        # Freezes the base and upcasts its norms and embeddings to float32, as QLoRA does;
        # checkpointing is enabled below, the same way for both paths.
        model = prepare_model_for_kbit_training(load_base_model_4bit(base, device),
                                                use_gradient_checkpointing=False)
    else:
        model = load_base_model(base, device)
    if train.gradient_checkpointing:
        enable_checkpointing(model)
    if train.compile:
        compile_layers(model)
    return attach_lora(model, lora, train.seed)


def compile_layers(model) -> None:
    """``torch.compile`` each decoder layer, with dynamic shapes (every micro-batch has
    a length of its own); compiled on the first step, the adapter's layers included."""
    for layer in model.get_decoder().layers:
        layer.compile(dynamic=True)


def enable_checkpointing(model) -> None:
    """Recompute each decoder layer's activations in the backward pass instead of keeping
    them (non-reentrant, so LoRA gets its gradients without an input hook)."""
    # transformers 5 renamed gradient_checkpointing_enable (now a deprecated alias).
    enable = getattr(model, "activation_checkpointing_enable", None)
    if enable is not None:
        enable(activation_checkpointing_kwargs=CHECKPOINTING_KWARGS)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=CHECKPOINTING_KWARGS)


def load_base_model_4bit(base: str, device: torch.device):
    """The base quantized to 4-bit NF4 (double quantization) by bitsandbytes on CUDA
    ``device``; matrix products run in bfloat16 (float16 on GPUs without it)."""
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    for key in (f"{base}@{device}", f"{base}@cpu"):
        _preloaded.pop(("model", key), None)  # a full-precision copy is of no use here: free it
    compute = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    config = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=compute,
                                bnb_4bit_use_double_quant=True)
    index = device.index if device.index is not None else torch.cuda.current_device()
    quiet_libraries()
    model = _from_pretrained(AutoModelForCausalLM, base, quantization_config=config, dtype=compute,
                             device_map={"": index})
    model.config.use_cache = False
    return model


def attach_lora(model, lora: LoraSettings, seed: int):
    """Wrap ``model`` with a fresh LoRA adapter, initialised from ``seed``."""
    from peft import LoraConfig, get_peft_model

    present = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    missing = [m for m in lora.target_modules if m not in present]
    if missing:
        raise ValueError(
            f"lora.target_modules: {missing} not found in the base model; "
            f"linear modules it has include {sorted(n for n in present if n.endswith('proj'))}"
        )
    config = LoraConfig(
        r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
        target_modules=list(lora.target_modules), task_type="CAUSAL_LM",
    )
    torch.manual_seed(seed)
    return get_peft_model(model, config)

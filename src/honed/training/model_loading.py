"""Load a base (hub id or local directory) and attach a LoRA adapter.

The same code serves honed's tiny base and real checkpoints; Hugging Face's own
``HF_HUB_OFFLINE`` is respected, so machines without a network never try to download.
"""

from __future__ import annotations

import logging

import torch

from honed.config import LoraSettings
from honed.data.tokenization import ensure_chat_template

log = logging.getLogger(__name__)


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

    tokenizer = AutoTokenizer.from_pretrained(base)
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
    model = AutoModelForCausalLM.from_pretrained(base, dtype=dtype)
    # The trainer passes an explicit 4D mask; a KV cache would only cost memory and (per
    # MEASURED.md) disables the library's own packed-sequence handling.
    model.config.use_cache = False
    return model.to(device)


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

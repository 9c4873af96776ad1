"""Write a Hugging Face causal LM (a base, or base + adapter merged) as one GGUF file.

Written with the ``gguf`` package, as llama.cpp's ``convert_hf_to_gguf.py`` would write
it for the architectures honed trains on: Llama (SmolLM2) and Qwen2 (the tiny base).
The file carries the model's hyperparameters, the tokenizer (``tokenizer.ggml.*``: a
byte-level BPE vocabulary, its merges, token types, special token ids) and the chat
template (``tokenizer.chat_template``), so llama.cpp, Ollama and transformers
(``from_pretrained(dir, gguf_file=...)``) need nothing beside it.

Two details decide whether the file answers like the model it came from:

- llama.cpp's converter permutes the rows of ``q_proj`` and ``k_proj`` for the LLAMA
  architecture (its rotary embedding pairs neighbouring dimensions, HF's pairs halves),
  and every reader un-permutes them (transformers' ``LlamaTensorProcessor``); Qwen2 is
  written as is.
- 1-D tensors (norms, biases) stay F32 whatever the quantization, as llama.cpp keeps them.

Importing this module is cheap: numpy, gguf and torch load inside the functions.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

# model_type (transformers) -> gguf.MODEL_ARCH member name
ARCHITECTURES = {"llama": "LLAMA", "qwen2": "QWEN2"}
QUANTIZATIONS = ("f16", "q8_0")
# Where a tokenizer's pre-tokenizer cannot be named from the GGUF it came from, the one
# llama.cpp gives these architectures' stock tokenizers.
DEFAULT_PRE_TOKENIZER = {"llama": "default", "qwen2": "qwen2"}


class GGUFExportError(ValueError):
    """The model cannot be written as GGUF; the message says what and what can be."""


def check_writable(model_type: str, quant: str) -> None:
    """GGUFExportError unless this module writes ``model_type`` at ``quant``."""
    if model_type not in ARCHITECTURES:
        raise GGUFExportError(f"architecture {model_type!r} cannot be written as GGUF by honed; it writes "
                              f"{', '.join(sorted(ARCHITECTURES))} (use --format merged or peft for this model)")
    if quant not in QUANTIZATIONS:
        raise GGUFExportError(f"quantization {quant!r} is not one honed's GGUF writer does; it does "
                              f"{', '.join(QUANTIZATIONS)}")


def write_gguf(model: Any, tokenizer: Any, path: Path, quant: str = "f16", *, name: str = "",
               pre_tokenizer: str | None = None) -> dict[str, Any]:
    """Write ``model`` and ``tokenizer`` to the GGUF file ``path`` at ``quant`` and describe
    what was written (architecture, tensor count, quantization). ``pre_tokenizer``:
    ``tokenizer.ggml.pre`` (default: the architecture's stock one)."""
    import gguf

    config = model.config
    check_writable(config.model_type, quant)
    arch = getattr(gguf.MODEL_ARCH, ARCHITECTURES[config.model_type])
    writer = _writer(path, gguf.MODEL_ARCH_NAMES[arch])
    writer.add_type(gguf.GGUFType.MODEL)
    writer.add_name(name or str(getattr(config, "_name_or_path", "") or config.model_type))
    file_type = {"f16": gguf.LlamaFileType.MOSTLY_F16, "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}[quant]
    writer.add_file_type(file_type)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    _add_hyperparameters(writer, config)
    _add_tokenizer(writer, tokenizer, config, pre_tokenizer or DEFAULT_PRE_TOKENIZER[config.model_type])
    count = _add_tensors(writer, model, arch, quant)
    try:
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
    finally:
        writer.close()
    return {"architecture": gguf.MODEL_ARCH_NAMES[arch], "tensors": count, "quantization": quant}


def _writer(path: Path, arch_name: str) -> Any:
    """A GGUFWriter that can write an empty array. The format allows one, and llama.cpp
    needs one: it refuses a ``gpt2`` vocabulary without ``tokenizer.ggml.merges`` even
    when the tokenizer has no merges (the tiny base's byte-level vocabulary), while
    gguf-py's writer skips or refuses empty arrays."""
    import gguf

    class Writer(gguf.GGUFWriter):
        def _pack_val(self, val: Any, vtype: gguf.GGUFValueType, add_vtype: bool,
                      sub_type: gguf.GGUFValueType | None = None) -> bytes:
            if vtype == gguf.GGUFValueType.ARRAY and sub_type is not None and len(val) == 0:
                head = self._pack("I", vtype) if add_vtype else b""
                return head + self._pack("I", sub_type) + self._pack("Q", 0)
            return super()._pack_val(val, vtype, add_vtype, sub_type)

    return Writer(path, arch_name)


def _head_dim(config: Any) -> int:
    return int(getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads)


def _rope_theta(config: Any) -> float:
    """transformers 5 keeps rope_theta in ``rope_parameters``; 4 kept it on the config."""
    theta = getattr(config, "rope_theta", None)
    if theta is None:
        theta = (getattr(config, "rope_parameters", None) or {}).get("rope_theta", 10000.0)
    return float(theta)


def _add_hyperparameters(writer: Any, config: Any) -> None:
    scaling = getattr(config, "rope_scaling", None) or {}
    kind = scaling.get("rope_type") or scaling.get("type")
    if kind not in (None, "default"):
        raise GGUFExportError(f"rope scaling {kind!r} is not written by honed's GGUF writer yet")
    writer.add_context_length(int(config.max_position_embeddings))
    writer.add_embedding_length(int(config.hidden_size))
    writer.add_block_count(int(config.num_hidden_layers))
    writer.add_feed_forward_length(int(config.intermediate_size))
    writer.add_head_count(int(config.num_attention_heads))
    writer.add_head_count_kv(int(config.num_key_value_heads or config.num_attention_heads))
    writer.add_layer_norm_rms_eps(float(config.rms_norm_eps))
    writer.add_rope_freq_base(_rope_theta(config))
    writer.add_rope_dimension_count(_head_dim(config))
    writer.add_vocab_size(int(config.vocab_size))


def _add_tokenizer(writer: Any, tokenizer: Any, config: Any, pre_tokenizer: str) -> None:
    """The byte-level BPE vocabulary as llama.cpp's ``gpt2`` tokenizer model spells it."""
    import gguf

    backend = json.loads(tokenizer.backend_tokenizer.to_str())
    if backend["model"]["type"] != "BPE":
        raise GGUFExportError(f"the tokenizer is {backend['model']['type']}; honed writes byte-level BPE "
                              "tokenizers (gpt2 style) into GGUF")
    by_id = {index: token for token, index in tokenizer.get_vocab().items()}
    special = {t.content for t in tokenizer.added_tokens_decoder.values() if t.special}
    added = {t.content for t in tokenizer.added_tokens_decoder.values()}
    tokens, types = [], []
    for index in range(int(config.vocab_size)):
        token = by_id.get(index)
        if token is None:  # the embedding is larger than the vocabulary: llama.cpp's padding
            tokens.append(f"[PAD{index}]")
            types.append(gguf.TokenType.UNUSED)
        else:
            tokens.append(token)
            types.append(gguf.TokenType.CONTROL if token in special else
                         gguf.TokenType.USER_DEFINED if token in added else gguf.TokenType.NORMAL)
    merges = [m if isinstance(m, str) else " ".join(m) for m in backend["model"].get("merges") or []]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre_tokenizer)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    if merges:
        writer.add_token_merges(merges)
    else:  # present and empty: llama.cpp requires the key; transformers then builds no merges either
        writer.add_key_value(gguf.Keys.Tokenizer.MERGES, [], gguf.GGUFValueType.ARRAY, gguf.GGUFValueType.STRING)
    for setter, token_id in ((writer.add_bos_token_id, tokenizer.bos_token_id),
                             (writer.add_eos_token_id, tokenizer.eos_token_id),
                             (writer.add_unk_token_id, tokenizer.unk_token_id),
                             (writer.add_pad_token_id, tokenizer.pad_token_id)):
        if token_id is not None:
            setter(int(token_id))
    probe = tokenizer("a")["input_ids"]  # does encoding add BOS/EOS? the reader must do the same
    writer.add_add_bos_token(tokenizer.bos_token_id is not None and probe[:1] == [tokenizer.bos_token_id])
    writer.add_add_eos_token(tokenizer.eos_token_id is not None and probe[-1:] == [tokenizer.eos_token_id]
                             and len(probe) > 1)
    if tokenizer.chat_template:
        writer.add_chat_template(tokenizer.chat_template)


def _permute_for_llama(weights: Any, n_head: int) -> Any:
    """llama.cpp's ``LlamaModel.permute``: interleave each head's two rotary halves."""
    return (weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:])
            .swapaxes(1, 2).reshape(weights.shape))


def _add_tensors(writer: Any, model: Any, arch: Any, quant: str) -> int:
    import gguf
    import numpy as np

    config = model.config
    names = gguf.get_tensor_name_map(arch, int(config.num_hidden_layers))
    tied = bool(getattr(config, "tie_word_embeddings", False))
    count = 0
    for hf_name, tensor in model.state_dict().items():
        if tied and hf_name == "lm_head.weight":
            continue  # a file without output.weight is read as tied embeddings
        gguf_name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if gguf_name is None:
            raise GGUFExportError(f"tensor {hf_name} has no GGUF name for {gguf.MODEL_ARCH_NAMES[arch]}")
        data = tensor.detach().to("cpu").float().numpy()
        if arch == gguf.MODEL_ARCH.LLAMA and hf_name.endswith("q_proj.weight"):
            data = _permute_for_llama(data, int(config.num_attention_heads))
        elif arch == gguf.MODEL_ARCH.LLAMA and hf_name.endswith("k_proj.weight"):
            data = _permute_for_llama(data, int(config.num_key_value_heads or config.num_attention_heads))
        if data.ndim == 1 or quant == "f16" and data.ndim != 2:
            writer.add_tensor(gguf_name, np.ascontiguousarray(data, dtype=np.float32))
        elif quant == "f16":
            writer.add_tensor(gguf_name, data.astype(np.float16))
        else:
            qtype = gguf.GGMLQuantizationType.Q8_0
            if data.shape[-1] % gguf.GGML_QUANT_SIZES[qtype][0]:
                raise GGUFExportError(f"tensor {hf_name} has rows of {data.shape[-1]} values; q8_0 needs a "
                                      "multiple of 32 (use --quant f16)")
            writer.add_tensor(gguf_name, gguf.quants.quantize(data, qtype), raw_dtype=qtype)
        count += 1
    return count


def source_pre_tokenizer(gguf_path: str | None) -> str | None:
    """``tokenizer.ggml.pre`` of the GGUF a base came from (SmolLM2's is ``smollm``): the
    pre-tokenizer name llama.cpp chose for that vocabulary, kept on export. None when the
    base did not come from a GGUF file, or the file is no longer there."""
    if not gguf_path or not Path(gguf_path).is_file():
        return None
    from gguf import GGUFReader

    field = GGUFReader(gguf_path).fields.get("tokenizer.ggml.pre")
    return str(field.contents()) if field is not None else None

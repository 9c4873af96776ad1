"""The tiny base model: try honed on any machine, with no network and no GPU.

honed builds this model itself: a Qwen2-style decoder of about 1M parameters (hidden 128,
4 layers) with a byte-level tokenizer made locally, briefly pretrained on two synthetic
task families (two-digit addition and word copying, see `honed.data.synthetic`) so that
it already knows something. On two CPU cores the build takes about three minutes, and
honed ships the result; LoRA adapters trained on it then visibly learn a new family
(letter shift: 0% -> 100% exact match in under a minute) with exact-match scores that
make the learning plain.

Try honed with it::

    honed init ws --base tiny          # a workspace whose base is the cached tiny model
    python -m honed.models.tiny OUT    # or write the model to a directory of your own
    python -m honed.models.tiny OUT --no-pretrain   # random weights, in a second

The result is an ordinary Hugging Face directory (config.json, model.safetensors,
tokenizer files, generation_config.json, plus honed_tiny.json describing how it was
built): `AutoModelForCausalLM.from_pretrained(OUT)` and `AutoTokenizer.from_pretrained(OUT)`
load it, and everything in honed that takes a base accepts its path as it would a real
model's. `tiny_base()` returns the weights shipped in honed's package (built once with
this recipe, so every machine has the same bytes); `rebuild_tiny_base()` runs the recipe
on this machine into the cache (`$HONED_CACHE`, else `~/.cache/honed`).

The tokenizer maps each byte to one token (so every ASCII character is one token and any
text round-trips exactly) plus `<|endoftext|>` (padding), `<|im_start|>` and `<|im_end|>`
(end of turn, where generation stops), with a ChatML chat template in Qwen's style.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import logging
import os
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from honed.atomic_files import atomic_directory, recover_directory

__all__ = [
    "DEFAULT_PRETRAIN_STEPS",
    "PRETRAIN_FAMILIES",
    "RECIPE_VERSION",
    "build_tiny_model",
    "build_tokenizer",
    "rebuild_tiny_base",
    "shipped_tiny_base",
    "tiny_base",
    "tiny_config",
]

log = logging.getLogger(__name__)

# Change this whenever the tokenizer, config or pretraining recipe changes: cached bases
# live under a directory of this name, so a new recipe is built afresh, never mixed up.
RECIPE_VERSION = "tiny-v1"

PRETRAIN_FAMILIES = ("arithmetic", "copy")
DEFAULT_PRETRAIN_STEPS = 900

PAD_TOKEN = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
SPECIAL_TOKENS = (PAD_TOKEN, IM_START, IM_END)

# ChatML as Qwen writes it, without Qwen's default system prompt and without
# {% generation %} markers (most stock templates lack them; the trainer finds the
# assistant tokens itself).
CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\n' }}{%- endif %}"
)


def _byte_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map from bytes to printable characters (the ByteLevel alphabet)."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    mapping = {b: chr(b) for b in printable}
    shifted = 0
    for b in range(256):
        if b not in mapping:
            mapping[b] = chr(256 + shifted)
            shifted += 1
    return mapping


def build_tokenizer():
    """A byte-level tokenizer built locally: token id = byte value, then three specials.

    Ids 0-255 are the bytes (one token per ASCII character, so it is character-level for
    everything the synthetic families use, and any UTF-8 text round-trips exactly); 256
    is `<|endoftext|>` (padding), 257 `<|im_start|>`, 258 `<|im_end|>` (eos: generation
    stops at the end of the assistant turn). Returns a `PreTrainedTokenizerFast` with a
    ChatML chat template, ready for `save_pretrained`.
    """
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {char: b for b, char in _byte_to_unicode().items()}
    vocab.update({token: 256 + k for k, token in enumerate(SPECIAL_TOKENS)})
    # BPE without merges over the byte alphabet: every byte stays its own token.
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens(
        [AddedToken(token, special=True, normalized=False) for token in SPECIAL_TOKENS]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token=IM_END,
        pad_token=PAD_TOKEN,
        additional_special_tokens=[IM_START],
        chat_template=CHAT_TEMPLATE,
        clean_up_tokenization_spaces=False,
        model_max_length=512,
    )


def tiny_config(vocab_size: int):
    """The Qwen2 configuration of the tiny base: ~1.1M parameters, tied embeddings.

    Hidden 128, 4 layers, 4 attention heads, MLP 512, 512 positions. On two CPU cores a
    model of this size learns the synthetic families within minutes; one of 2.6M did not.
    """
    from transformers import Qwen2Config

    return Qwen2Config(
        vocab_size=vocab_size,
        hidden_size=128,
        intermediate_size=512,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        pad_token_id=256,
        bos_token_id=None,
        eos_token_id=258,
    )


def build_tiny_model(
    out_dir: Path,
    *,
    pretrain: bool = True,
    families: Sequence[str] = PRETRAIN_FAMILIES,
    steps: int | None = None,
    seed: int = 0,
) -> Path:
    """Build the tiny base into `out_dir` (which must not exist or be empty); return it.

    With `pretrain`, the random model is first trained for `steps` optimizer steps
    (default `DEFAULT_PRETRAIN_STEPS`) on `families`. The directory is assembled in a
    temporary sibling and renamed into place, so `out_dir` either holds a complete model
    or nothing. `honed_tiny.json` inside records the recipe, families, steps, seed, the
    held-out exact match per family and the seconds it took.
    """
    import torch
    from transformers import GenerationConfig, Qwen2ForCausalLM

    out_dir = Path(out_dir)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise FileExistsError(f"{out_dir} exists and is not an empty directory")
    families = list(families) if pretrain else []
    steps = (DEFAULT_PRETRAIN_STEPS if steps is None else steps) if pretrain else 0

    started = time.monotonic()
    tokenizer = build_tokenizer()
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(tiny_config(len(tokenizer)))
    model.generation_config = GenerationConfig(
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        do_sample=False,
    )
    report: dict[str, Any] = {"exact_match": {}}
    if pretrain:
        from honed.models.pretrain import pretrain as run_pretraining

        report = run_pretraining(model, tokenizer, families, steps=steps, seed=seed)

    from honed.training.model_loading import quiet_libraries

    quiet_libraries()  # no "Writing model shards" bar in honed's output
    with atomic_directory(out_dir) as staging:  # out_dir is absent or empty: checked above
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        manifest = {
            "recipe": RECIPE_VERSION,
            "pretrained": pretrain,
            "families": families,
            "steps": steps,
            "seed": seed,
            "exact_match": report["exact_match"],
            "final_loss": report.get("final_loss"),
            "parameters": sum(p.numel() for p in model.parameters()),
            "seconds": round(time.monotonic() - started, 1),
            "torch_threads": torch.get_num_threads(),
        }
        (staging / "honed_tiny.json").write_text(json.dumps(manifest, indent=2) + "\n")
    log.info("tiny base written to %s (%s)", out_dir, manifest)
    return out_dir


def default_cache_dir() -> Path:
    """Where honed caches what it builds: `$HONED_CACHE`, else `~/.cache/honed`."""
    env = os.environ.get("HONED_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "honed"


def shipped_tiny_base() -> Path:
    """The directory of the tiny base shipped inside honed's package (read-only).

    Built once with this module's recipe (`RECIPE_VERSION`) and shipped as weights, so
    every machine trains on the same bytes: a rebuild is deterministic on one machine
    but not across thread counts and library versions (a fresh machine once rebuilt it
    to 64% arithmetic where the shipped build has 94%), and a demo or a test that
    depends on what the base knows must not depend on where it was built.
    """
    return Path(__file__).resolve().parent / "shipped" / RECIPE_VERSION


def tiny_base(cache_dir: Path | None = None) -> Path:
    """The path of the pretrained tiny base: the shipped weights (see
    `shipped_tiny_base`), or, in an install without them, a build from the recipe
    cached under `cache_dir` (see `rebuild_tiny_base`)."""
    shipped = shipped_tiny_base()
    if (shipped / "honed_tiny.json").is_file() and (shipped / "model.safetensors").is_file():
        return shipped
    return rebuild_tiny_base(cache_dir)


def rebuild_tiny_base(cache_dir: Path | None = None) -> Path:
    """The tiny base built from the recipe on this machine, once, then cached.

    The cache lives under `cache_dir` (default `default_cache_dir()`) in
    `tiny-base/RECIPE_VERSION`. An exclusive file lock makes concurrent callers, in this
    process or others, build it only once: the others wait and then reuse it.
    """
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    target = root / "tiny-base" / RECIPE_VERSION
    if (target / "honed_tiny.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / f"{RECIPE_VERSION}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file is closed
        if not (target / "honed_tiny.json").is_file():
            log.info("building the tiny base into %s (once; about two minutes)", target)
            # Holding the lock, nobody else is building: staging directories left by a
            # killed build, and a directory without the manifest (builds are renamed
            # into place whole, so only a hand could leave one), are debris.
            recover_directory(target)
            if target.exists():
                shutil.rmtree(target)
            build_tiny_model(target)
    return target


def main(argv: Sequence[str] | None = None) -> None:
    """`python -m honed.models.tiny OUT_DIR [--no-pretrain] [--steps N] [--seed S]`."""
    parser = argparse.ArgumentParser(
        prog="python -m honed.models.tiny",
        description="Build honed's tiny base model (no network needed) into OUT_DIR.",
    )
    parser.add_argument("out_dir", type=Path, help="directory to create (must not exist)")
    parser.add_argument(
        "--no-pretrain", action="store_true", help="keep the random weights (takes a second)"
    )
    parser.add_argument(
        "--steps",
        type=int,
        default=None,
        help=f"pretraining optimizer steps (default {DEFAULT_PRETRAIN_STEPS})",
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    out = build_tiny_model(
        args.out_dir, pretrain=not args.no_pretrain, steps=args.steps, seed=args.seed
    )
    manifest = json.loads((out / "honed_tiny.json").read_text())
    print(f"tiny base written to {out}")
    print(f"exact match: {manifest['exact_match']}  ({manifest['seconds']} s)")


if __name__ == "__main__":
    main()

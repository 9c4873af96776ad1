"""Loading a base for training: QLoRA's preconditions, gradient checkpointing, and a base
given as a hub id (from the Hugging Face cache, offline) or a local directory.

No test here reaches a network: conftest sets HF_HUB_OFFLINE=1, and the hub-id cases run
in a subprocess whose Hugging Face cache is a temporary directory laid out as the hub's.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from honed.config import LoraSettings, TrainSettings
from honed.training import model_loading
from honed.training.model_loading import (
    BaseNotFound,
    UnsupportedSetting,
    check_training_support,
    load_base_model,
    load_tokenizer,
    load_training_model,
)
from tests.cli_runner import run_honed

CPU = torch.device("cpu")
QLORA_POSSIBLE = torch.cuda.is_available() and model_loading.bitsandbytes_installed()


# --- 4-bit QLoRA: refused, with the reason, where it cannot run ---------------------------


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA: 4-bit is not refused for it")
def test_4bit_without_cuda_is_refused_before_any_model_loads():
    # The base does not exist: an UnsupportedSetting (not BaseNotFound) shows the check came first.
    with pytest.raises(UnsupportedSetting) as caught:
        load_training_model("/no/such/base", CPU, LoraSettings(), TrainSettings(quantization="4bit"))
    message = str(caught.value)
    assert 'train.quantization = "4bit"' in message
    assert "no CUDA" in message or "torch.cuda.is_available() is False" in message
    assert 'train.quantization = "none"' in message, "it must say what to do instead"
    if not model_loading.bitsandbytes_installed():
        assert "pip install bitsandbytes" in message
    assert isinstance(caught.value, ValueError), "callers that report bad settings catch ValueError"


@pytest.mark.parametrize("device, bnb, named, not_named", [
    ("cpu", True, ["CUDA device"], ["bitsandbytes"]),
    ("cuda", False, ["bitsandbytes", "pip install bitsandbytes"], ["CUDA device"]),
    ("cpu", False, ["CUDA device", "bitsandbytes"], []),
])
def test_4bit_names_exactly_what_is_missing(monkeypatch, device, bnb, named, not_named):
    monkeypatch.setattr(model_loading, "bitsandbytes_installed", lambda: bnb)
    with pytest.raises(UnsupportedSetting) as caught:
        check_training_support(TrainSettings(quantization="4bit"), torch.device(device))
    for part in named:
        assert part in str(caught.value)
    for part in not_named:
        assert part not in str(caught.value)


def test_4bit_is_accepted_with_cuda_and_bitsandbytes_but_not_sharded_by_fsdp(monkeypatch):
    monkeypatch.setattr(model_loading, "bitsandbytes_installed", lambda: True)
    check_training_support(TrainSettings(quantization="4bit"), torch.device("cuda", 0))
    check_training_support(TrainSettings(quantization="4bit", nproc=2, distributed="ddp"), torch.device("cuda", 0))
    with pytest.raises(UnsupportedSetting, match='distributed = "fsdp".*distributed = "ddp"'):
        check_training_support(TrainSettings(quantization="4bit", nproc=2, distributed="fsdp"), torch.device("cuda", 0))


def test_unquantized_settings_need_nothing_special():
    check_training_support(TrainSettings(), CPU)
    check_training_support(TrainSettings(gradient_checkpointing=True, nproc=2, distributed="fsdp"), CPU)


@pytest.mark.skipif(QLORA_POSSIBLE, reason="CUDA and bitsandbytes are both here: 4-bit would train")
def test_one_shot_train_with_4bit_where_it_cannot_run_fails_with_the_reason(make_workspace, tiny_random_base,
                                                                           tmp_path):
    from honed.data.synthetic import write_synthetic

    ws = make_workspace(tiny_random_base)
    data, _ = write_synthetic("reversal", 40, tmp_path / "data" / "rev.jsonl", seed=1)
    out = run_honed("train", "-w", str(ws.root), "--dataset", str(data), "--set", "train.quantization=4bit",
                    "--set", "train.max_steps=1", "--set", "train.batch_size=4", "--set", "train.eval_every=0",
                    check=False)
    said = " ".join(out.stderr.split())  # rich wraps long lines
    assert out.returncode == 1, out.stdout + out.stderr
    assert "Traceback" not in out.stderr
    assert 'train.quantization = "4bit"' in said and 'train.quantization = "none"' in said, said
    assert not any(ws.runs_dir.iterdir()), "no run should be planned for settings that cannot train"


# --- gradient checkpointing -------------------------------------------------------------


@pytest.fixture(scope="module")
def reversal_examples(tiny_random_base, tmp_path_factory):
    """Tokenized reversal examples for the tiny random base."""
    from honed.data.ingest import ingest_file
    from honed.data.plan import read_jsonl
    from honed.data.synthetic import write_synthetic
    from honed.data.tokenization import tokenize_record

    folder = tmp_path_factory.mktemp("reversal")
    train, _ = write_synthetic("reversal", 80, folder / "rev.jsonl", seed=1)
    result = ingest_file(train, folder / "norm", mode="strict")
    tokenizer = load_tokenizer(str(tiny_random_base))
    return [tokenize_record(tokenizer, r, 128) for r in read_jsonl(result.normalized_path)][:32], tokenizer.pad_token_id


def _training_model(base: Path, checkpointing: bool, dropout: float = 0.0):
    model = load_training_model(str(base), CPU, LoraSettings(dropout=dropout),
                                TrainSettings(gradient_checkpointing=checkpointing))
    model.train()  # as the trainer does: checkpointing acts in training mode only
    return model


@pytest.mark.parametrize("dropout", [0.0, 0.1], ids=["no-dropout", "dropout"])
def test_gradient_checkpointing_recomputes_and_gives_the_same_loss_and_gradients(tiny_random_base,
                                                                                  reversal_examples, dropout):
    from honed.data.packing import pack_batch
    from honed.training.trainer import batch_loss_sum

    examples, pad_id = reversal_examples
    batch = pack_batch(examples[:16], 128, pad_id)
    results = {}
    for checkpointing in (False, True):
        model = _training_model(tiny_random_base, checkpointing, dropout)
        # LoRA's B starts at zero, which would leave A without gradient: give B the same
        # random values in both models, so every LoRA matrix's gradient is compared.
        torch.manual_seed(5)
        with torch.no_grad():
            for name, param in model.named_parameters():
                if "lora_B" in name:
                    param.normal_(0, 0.02)
        calls = []
        first_mlp = model.get_base_model().model.layers[0].mlp
        # A pre-hook: recomputation stops early once it has what backward needs, inside the MLP.
        hook = first_mlp.register_forward_pre_hook(lambda *_, calls=calls: calls.append(1))
        torch.manual_seed(11)  # the same dropout masks; the recomputation must replay them
        loss = batch_loss_sum(model, batch) / batch.n_targets
        loss.backward()
        hook.remove()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
        results[checkpointing] = (loss.item(), grads, len(calls))

    (loss_plain, grads_plain, calls_plain), (loss_ckpt, grads_ckpt, calls_ckpt) = results[False], results[True]
    assert (calls_plain, calls_ckpt) == (1, 2), "checkpointing recomputes each layer in the backward pass"
    assert loss_ckpt == pytest.approx(loss_plain, abs=1e-6)
    assert grads_plain.keys() == grads_ckpt.keys() and len(grads_ckpt) > 0
    for name, grad in grads_ckpt.items():
        assert grad.abs().max() > 0, f"{name} got no gradient with checkpointing"
        assert torch.allclose(grad, grads_plain[name], atol=1e-6), name


def test_training_with_gradient_checkpointing_follows_training_without(tiny_random_base, reversal_examples):
    from honed.data.packing import pack_batch
    from honed.training.trainer import examples_for_step, train_step

    examples, pad_id = reversal_examples
    cfg = TrainSettings(batch_size=8, max_seq_len=128)

    def train(checkpointing: bool):
        model = _training_model(tiny_random_base, checkpointing)
        base_before = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
        params = [p for p in model.parameters() if p.requires_grad]
        lora_before = [p.detach().clone() for p in params]
        optimizer = torch.optim.AdamW(params, lr=1e-2)
        losses = []
        for step in range(3):
            micro = examples_for_step(step, len(examples), cfg)
            batches = [pack_batch([examples[i] for i in mb], 128, pad_id) for mb in micro]
            losses.append(train_step(model, optimizer, params, batches, cfg, 1e-2)["loss"])
        moved = all(not torch.equal(a, p) for a, p in zip(lora_before, params))
        base_kept = all(torch.equal(base_before[n], p) for n, p in model.named_parameters() if n in base_before)
        return losses, moved, base_kept

    plain, _, _ = train(False)
    ckpt, moved, base_kept = train(True)
    assert ckpt == pytest.approx(plain, rel=1e-5)
    assert moved, "every LoRA matrix should have moved"
    assert base_kept, "the base's weights must not change"


@pytest.mark.slow  # inductor compiles the layers in C++: about a minute
def test_training_with_compiled_layers_follows_training_without(tiny_random_base, reversal_examples):
    from honed.data.packing import pack_batch
    from honed.training.trainer import examples_for_step, train_step

    examples, pad_id = reversal_examples

    def train(compiled: bool) -> list[float]:
        cfg = TrainSettings(batch_size=8, max_seq_len=128, compile=compiled)
        model = load_training_model(str(tiny_random_base), CPU, LoraSettings(), cfg)
        model.train()
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=1e-2)
        losses = []
        for step in range(3):  # micro-batches of different lengths: dynamic shapes, no recompiling per step
            micro = examples_for_step(step, len(examples), cfg)
            batches = [pack_batch([examples[i] for i in mb], 128, pad_id) for mb in micro]
            losses.append(train_step(model, optimizer, params, batches, cfg, 1e-2)["loss"])
        layer = model.get_base_model().model.layers[0]
        assert (getattr(layer, "_compiled_call_impl", None) is not None) == compiled
        return losses

    assert train(True) == pytest.approx(train(False), rel=1e-4)


def test_the_warm_trainers_preloaded_base_is_what_training_gets(tiny_random_base):
    base = str(tiny_random_base)
    model_loading.preload(base, CPU)
    preloaded = model_loading._preloaded[("model", f"{base}@{CPU}")]
    load_tokenizer(base)
    model = load_training_model(base, CPU, LoraSettings(), TrainSettings())
    assert model.get_base_model() is preloaded
    assert not model_loading._preloaded, "each preloaded object is handed out once"


# --- the base: a local directory or a hub id ----------------------------------------------


@pytest.mark.parametrize("base", ["./no-such-base-dir", "~/no-such-honed-base", "/no/such/base", "models/no/such"])
def test_a_missing_local_directory_says_so_without_asking_the_hub(monkeypatch, base):
    import huggingface_hub

    def hub_asked(*args, **kwargs):
        raise AssertionError("a path must not be looked up on the hub")

    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", hub_asked)
    with pytest.raises(BaseNotFound, match="no such directory") as caught:
        load_tokenizer(base)
    assert repr(base) in str(caught.value)
    assert "~" not in str(caught.value).split("(", 1)[1], "the message shows where honed looked, ~ expanded"


def test_a_directory_without_a_model_says_so(tmp_path):
    with pytest.raises(BaseNotFound, match="not a Hugging Face model directory"):
        load_training_model(str(tmp_path), CPU, LoraSettings(), TrainSettings())


def _hub_cache_with(model_dir: Path, cache: Path, repo_id: str) -> None:
    """Lay ``model_dir`` out in ``cache`` as ``hf download repo_id`` would: content-named
    blobs, a snapshot of symlinks to them, and refs/main naming the snapshot."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    revision = hashlib.sha1(repo_id.encode()).hexdigest()
    snapshot = repo / "snapshots" / revision
    (repo / "blobs").mkdir(parents=True)
    snapshot.mkdir(parents=True)
    for file in sorted(model_dir.iterdir()):
        data = file.read_bytes()
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        (snapshot / file.name).symlink_to(os.path.relpath(blob, snapshot))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)


PROBE = """
import json, sys, torch
from honed.config import LoraSettings, TrainSettings
from honed.training.model_loading import load_tokenizer, load_training_model
results = {}
for base in sys.argv[1:]:
    try:
        tokenizer = load_tokenizer(base)
        model = load_training_model(base, torch.device("cpu"), LoraSettings(), TrainSettings())
        embed = model.get_base_model().get_input_embeddings().weight
        results[base] = {"loaded": True, "embed_sum": float(embed.double().sum()),
                         "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad),
                         "vocab": len(tokenizer)}
    except Exception as exc:
        results[base] = {"loaded": False, "error": type(exc).__name__, "message": str(exc)}
print(json.dumps(results))
"""


@pytest.fixture(scope="module")
def offline_hub_loads(tiny_random_base, tmp_path_factory):
    """What loading a cached and an uncached hub id gives in a fresh process whose only
    Hugging Face cache is a temporary one, with HF_HUB_OFFLINE=1. One process for both:
    importing torch and transformers is the slow part."""
    home = tmp_path_factory.mktemp("hf-home")
    _hub_cache_with(tiny_random_base, home / "hub", "honed-test/tiny-random")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "TRANSFORMERS_"))}
    env.update(HF_HOME=str(home), HF_HUB_CACHE=str(home / "hub"), HF_HUB_OFFLINE="1")
    proc = subprocess.run([sys.executable, "-c", PROBE, "honed-test/tiny-random", "honed-test/not-downloaded"],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1]), home / "hub"


def test_a_hub_id_loads_from_the_hugging_face_cache_offline(offline_hub_loads, tiny_random_base):
    from safetensors.torch import load_file

    results, _ = offline_hub_loads
    loaded = results["honed-test/tiny-random"]
    assert loaded["loaded"], loaded
    weights = load_file(str(tiny_random_base / "model.safetensors"))
    embed = next(t for n, t in weights.items() if n.endswith("embed_tokens.weight"))
    assert loaded["embed_sum"] == pytest.approx(float(embed.double().sum()), abs=1e-6), "the cached weights"
    assert loaded["trainable"] > 0 and loaded["vocab"] > 0


def test_a_hub_id_not_in_the_cache_offline_says_what_to_do(offline_hub_loads):
    results, cache = offline_hub_loads
    failed = results["honed-test/not-downloaded"]
    assert not failed["loaded"] and failed["error"] == "BaseNotFound", failed
    message = failed["message"]
    assert "'honed-test/not-downloaded'" in message
    assert "HF_HUB_OFFLINE=1" in message
    assert str(cache) in message, "it names the cache it looked in"
    assert "hf download honed-test/not-downloaded" in message
    assert "local directory" in message
    assert "Traceback" not in message


def test_init_on_a_path_that_does_not_exist_says_so_instead_of_taking_it_for_a_hub_id(tmp_path):
    from honed.workspace import WorkspaceError, init_workspace

    with pytest.raises(WorkspaceError, match=r"--base \./nowhere: no such directory"):
        init_workspace(tmp_path / "ws", base="./nowhere")
    assert not (tmp_path / "ws" / "honed.toml").exists()


def test_a_cpu_base_reads_its_weights_from_its_file_mapped_copy_on_write(tiny_random_base, tmp_path):
    """The server, the trainer and the warm spare each load the base: its weights map the
    same file pages (transformers maps safetensors files) instead of being three private
    copies; a process that writes a weight (a merge) changes only its own copy, never the
    file."""
    from transformers import AutoModelForCausalLM

    base = tmp_path / "base"
    base.mkdir()
    for item in Path(tiny_random_base).iterdir():  # its own copy: this test writes weights
        (base / item.name).write_bytes(item.read_bytes())
    weights = next(base.glob("*.safetensors"))
    digest = hashlib.sha256(weights.read_bytes()).hexdigest()
    model = load_base_model(str(base), torch.device("cpu"))
    plain = AutoModelForCausalLM.from_pretrained(base)
    maps = Path("/proc/self/maps")
    if maps.exists():  # Linux: the weights' bytes are the file's, mapped
        spans = [line.split()[0].split("-") for line in maps.read_text().splitlines() if line.endswith(str(weights))]
        inside = [any(int(a, 16) <= p.data_ptr() < int(b, 16) for a, b in spans) for p in model.parameters()]
        assert spans and all(inside), f"{sum(inside)} of {len(inside)} weights are read from {weights}"
    ids = torch.randint(0, model.config.vocab_size, (2, 9))
    with torch.no_grad():
        assert torch.equal(model(ids).logits, plain(ids).logits)
        for param in model.parameters():
            param.add_(1.0)  # what merging an adapter into the base does
    assert hashlib.sha256(weights.read_bytes()).hexdigest() == digest, "the file is never written"
    again = load_base_model(str(base), torch.device("cpu"))
    with torch.no_grad():
        assert torch.equal(again(ids).logits, plain(ids).logits)

"""Invariant: honed's DPO and KTO losses equal TRL's on the same pairs and the same weights.

TRL computes its loss with its own trainers (``DPOTrainer.compute_loss``,
``KTOTrainer.compute_loss``) on honed's tokenisation of the records, with the model
both share: a LoRA adapter set to fixed non-zero weights, so that the policy (adapter on)
and the reference (adapter off, the base) differ. What is compared is then the whole
path from tokens to loss: sequence log-probabilities, reference, KL estimate, loss.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from honed.config import TrainSettings
from honed.data.tokenization import TokenizationError
from honed.training import preference as pref

TINY = Path(__file__).parents[2] / "src" / "honed" / "models" / "shipped" / "tiny-v1"
TOLERANCE = 1e-5

PROMPTS = [
    [{"role": "user", "content": "reverse: abc"}],
    [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "sort: c a b"}],
    [{"role": "user", "content": "reverse: hello"}, {"role": "assistant", "content": "olleh"},
     {"role": "user", "content": "and: world"}],
    [{"role": "user", "content": "count the letters in banana"}],
]
ANSWERS = [("cba", "abc"), ("a b c", "c b a a"), ("dlrow", "world, reversed: dlrow"), ("6", "seven")]


def _said(text: str) -> list[dict]:
    return [{"role": "assistant", "content": text}]


def _pairs() -> list[dict]:
    return [{"hash": f"p{i}", "prompt": p, "chosen": _said(c), "rejected": _said(r)}
            for i, (p, (c, r)) in enumerate(zip(PROMPTS, ANSWERS, strict=True))]


def _judged() -> list[dict]:
    records = []
    for i, (p, (c, r)) in enumerate(zip(PROMPTS, ANSWERS, strict=True)):
        good = i % 3 != 1  # three thumbs up, one down: the weights of both sides matter
        records.append({"hash": f"k{i}", "prompt": p, "completion": _said(c if good else r), "label": good})
    return records


def _set_adapter(model) -> None:
    """LoRA weights of a fixed non-zero draw, so the policy is not the reference."""
    generator = torch.Generator().manual_seed(1)  # a draw whose KTO KL estimate is positive
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.05)


def _trainer(kind: str, records: list[dict], **config):
    """A TRL trainer on the tiny base with a fresh LoRA adapter, set to fixed weights."""
    from datasets import Dataset
    from peft import LoraConfig
    from trl import DPOConfig, DPOTrainer, KTOConfig, KTOTrainer

    from honed.training.model_loading import load_base_model, load_tokenizer

    tokenizer = load_tokenizer(str(TINY))
    model = load_base_model(str(TINY), torch.device("cpu"))
    lora = LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
                      task_type="CAUSAL_LM")
    common = {"output_dir": "unused", "report_to": [], "use_cpu": True, "max_length": None,
              "per_device_train_batch_size": len(records)}
    trainer_class, config_class = (DPOTrainer, DPOConfig) if kind == "dpo" else (KTOTrainer, KTOConfig)
    rows = [{k: v for k, v in r.items() if k != "hash"} for r in records]
    trainer = trainer_class(model=model, args=config_class(**common, **config), train_dataset=Dataset.from_list(rows),
                            processing_class=tokenizer, peft_config=lora)
    _set_adapter(trainer.model)
    trainer.model.eval()
    return trainer, tokenizer


def _as_inputs(batch: pref.CompletionBatch, prefix: str = "") -> dict[str, torch.Tensor]:
    return {f"{prefix}input_ids": batch.input_ids, f"{prefix}attention_mask": batch.attention_mask,
            f"{prefix}completion_mask": batch.completion_mask}


def _lora_grads(model) -> list[torch.Tensor]:
    grads = [p.grad.clone() for n, p in model.named_parameters() if "lora_" in n and p.grad is not None]
    model.zero_grad(set_to_none=True)
    return grads


def test_dpo_loss_equals_trls_dpo_trainer():
    records = _pairs()
    beta = 0.1
    trainer, tokenizer = _trainer("dpo", records, beta=beta)
    model = trainer.model
    cfg = TrainSettings(objective="dpo", beta=beta, batch_size=len(records))
    examples = pref.TokenizedPreferences(tokenizer, records, 256, "train", "dpo")
    batch = examples[:]

    losses, sums = pref.micro_batch_losses(model, pref.ReferenceLogps(model, tokenizer.pad_token_id), batch, cfg,
                                           tokenizer.pad_token_id)
    honed_loss = losses.mean()
    honed_loss.backward()
    honed_grads = _lora_grads(model)
    figures = pref.step_figures(pref.summed([sums]), "dpo")

    sides = [p.chosen for _, p in batch] + [p.rejected for _, p in batch]  # TRL's layout: chosen, then rejected
    trl_loss = trainer.compute_loss(model, _as_inputs(pref.pad_completions(sides, tokenizer.pad_token_id)))
    trl_loss.backward()
    trl_grads = _lora_grads(model)
    trl_figures = {k: v[-1] for k, v in trainer._metrics["eval"].items()}

    assert 0.5 < trl_loss.item() < 1.0 and abs(trl_loss.item() - 0.6931) > 1e-3, "policy and reference must differ"
    assert abs(honed_loss.item() - trl_loss.item()) <= TOLERANCE, (honed_loss.item(), trl_loss.item())
    assert len(honed_grads) == len(trl_grads) > 0
    assert max((a - b).abs().max().item() for a, b in zip(honed_grads, trl_grads, strict=True)) <= TOLERANCE
    for key in ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies"):
        assert abs(figures[key] - trl_figures[key]) <= TOLERANCE, key


@pytest.mark.parametrize("weights", [(1.0, 1.0), (1.0, 2.5)])
def test_kto_loss_with_its_kl_estimate_equals_trls_kto_trainer(weights):
    records = _judged()
    beta, (desirable_weight, undesirable_weight) = 0.2, weights
    trainer, tokenizer = _trainer("kto", records, beta=beta, desirable_weight=desirable_weight,
                                  undesirable_weight=undesirable_weight)
    model = trainer.model
    cfg = TrainSettings(objective="kto", beta=beta, desirable_weight=desirable_weight,
                        undesirable_weight=undesirable_weight, batch_size=len(records))
    batch = pref.TokenizedPreferences(tokenizer, records, 256, "train", "kto")[:]

    losses, sums = pref.micro_batch_losses(model, pref.ReferenceLogps(model, tokenizer.pad_token_id), batch, cfg,
                                           tokenizer.pad_token_id)
    honed_loss = losses.mean()
    figures = pref.step_figures(pref.summed([sums]), "kto")

    items = [ex.completion for _, ex in batch]
    pad = tokenizer.pad_token_id
    inputs = {**_as_inputs(pref.pad_completions(items, pad)),
              **_as_inputs(pref.pad_completions(pref.mismatched(items), pad), "KL_"),
              "label": torch.tensor([ex.desirable for _, ex in batch])}
    trl_loss = trainer.compute_loss(model, inputs)
    trl_figures = {k: v[-1] for k, v in trainer._metrics["eval"].items()}

    assert trl_figures["kl"] > 0, "the KL estimate should be positive here, or the clamp hides it"
    assert abs(honed_loss.item() - trl_loss.item()) <= TOLERANCE, (honed_loss.item(), trl_loss.item())
    for key in ("kl", "rewards/chosen", "rewards/rejected", "rewards/margins"):
        assert abs(figures[key] - trl_figures[key]) <= TOLERANCE, key


def test_the_scored_tokens_are_exactly_the_completions():
    from honed.training.model_loading import load_tokenizer

    tokenizer = load_tokenizer(str(TINY))
    record = _pairs()[2]  # a prompt that holds an earlier assistant turn: that one is not scored
    pair = pref.tokenize_preference(tokenizer, record, 256, "dpo")
    for side in ("chosen", "rejected"):
        completion = getattr(pair, side)
        scored = [t for t, m in zip(completion.input_ids, completion.completion_mask, strict=True) if m]
        assert tokenizer.decode(scored) == record[side][0]["content"] + "<|im_end|>"
        assert completion.completion_mask.index(True) == completion.prompt_len
    assert pair.chosen.input_ids[: pair.chosen.prompt_len] == pair.rejected.input_ids[: pair.rejected.prompt_len]


def test_a_record_of_the_wrong_kind_is_refused_naming_the_objective_and_the_record():
    from honed.training.model_loading import load_tokenizer

    tokenizer = load_tokenizer(str(TINY))
    records = [{"hash": "ab" * 32, "line": 7, "messages": [{"role": "user", "content": "hi"}]}]
    with pytest.raises(TokenizationError, match=r"train record abababababab \(line 7\): train.objective = 'dpo' "
                                                r"needs a preference pair .*no prompt, chosen, rejected"):
        pref.TokenizedPreferences(tokenizer, records, 256, "train", "dpo")[0]

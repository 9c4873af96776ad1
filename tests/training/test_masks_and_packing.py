"""The two traps of chat fine-tuning, defeated: empty assistant masks and packed
examples that attend to each other."""

from __future__ import annotations

import pytest
import torch

from honed.data.packing import assign_rows, pack_batch
from honed.data.tokenization import IGNORE, TokenizationError, tokenize_record
from honed.training.trainer import batch_loss_sum


@pytest.fixture(scope="module")
def tokenizer(tiny_random_base):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_random_base)


@pytest.fixture(scope="module")
def model(tiny_random_base):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    m = AutoModelForCausalLM.from_pretrained(tiny_random_base)
    m.eval()
    return m


def chat(user: str, answer: str, system: str | None = None) -> dict:
    messages = [{"role": "system", "content": system}] if system else []
    return {"messages": messages + [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]}


def trained_text(tokenizer, example) -> str:
    ids = [t for t in example.targets if t != IGNORE]
    return tokenizer.decode(ids)


def test_stock_template_without_generation_tags_gives_an_all_zero_mask(tokenizer):
    # The trap itself: transformers' own assistant mask is silently empty here.
    out = tokenizer.apply_chat_template(chat("2+2=", "4")["messages"], return_dict=True,
                                        return_assistant_tokens_mask=True, tokenize=True)
    assert sum(out["assistant_masks"]) == 0


def test_honed_trains_on_exactly_the_assistant_tokens(tokenizer):
    example = tokenize_record(tokenizer, chat("reverse: abc", "cba", system="be brief"), 512)
    assert trained_text(tokenizer, example) == "cba<|im_end|>"


def test_every_assistant_turn_of_a_multi_turn_chat_is_trained(tokenizer):
    record = {"messages": [
        {"role": "user", "content": "1+1="}, {"role": "assistant", "content": "2"},
        {"role": "user", "content": "2+2="}, {"role": "assistant", "content": "4"},
    ]}
    example = tokenize_record(tokenizer, record, 512)
    assert trained_text(tokenizer, example) == "2<|im_end|>4<|im_end|>"
    assert example.n_targets == 4


def test_text_records_train_on_every_token(tokenizer):
    example = tokenize_record(tokenizer, {"text": "hello"}, 512)
    # Every token after the first is a target, and the sequence ends with eos.
    assert example.n_targets == len(example.input_ids) - 1


def test_template_that_is_not_prefix_stable_is_refused(tokenizer):
    import copy

    odd = copy.deepcopy(tokenizer)
    # Renders a different header depending on the number of messages: spans cannot be found.
    odd.chat_template = "{{ messages|length }}{% for m in messages %}{{ m['content'] }};{% endfor %}"
    with pytest.raises(TokenizationError, match="prefixes"):
        tokenize_record(odd, chat("q", "a"), 512)


def test_over_long_record_is_refused_with_the_limit_named(tokenizer):
    with pytest.raises(TokenizationError, match="max_seq_len = 16"):
        tokenize_record(tokenizer, chat("x" * 40, "y"), 16)


def test_a_batch_with_no_assistant_token_is_refused(tokenizer, model):
    from peft import LoraConfig, get_peft_model

    from honed.config import TrainSettings
    from honed.data.tokenization import Example
    from honed.training.trainer import train_step

    peft_model = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj"], task_type="CAUSAL_LM"))
    empty = Example(input_ids=[1, 2, 3], targets=[IGNORE] * 3)
    batch = pack_batch([empty], 64, tokenizer.pad_token_id)
    params = [p for p in peft_model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params)
    with pytest.raises(TokenizationError, match="empty assistant mask"):
        train_step(peft_model, optimizer, params, [batch], TrainSettings(), 1e-3)
    peft_model.unload()


def test_rows_fit_and_every_example_is_placed_once():
    lengths = [30, 10, 25, 5, 40, 12]
    rows = assign_rows(lengths, 512, pack=True)
    assert sorted(i for row in rows for i in row) == list(range(len(lengths)))
    # Rows are never longer than the longest example (attention cost is quadratic).
    assert all(sum(lengths[i] for i in row) <= 40 for row in rows)
    assert len(rows) < len(lengths)


def _examples(tokenizer):
    records = [chat("12+30=", "42"), chat("copy: abcdef", "abcdef"), chat("reverse: xyz", "zyx"),
               chat("kv a=1 b=2; b?", "2", system="answer with the value")]
    return [tokenize_record(tokenizer, r, 512) for r in records]


def test_packed_loss_equals_unpacked_loss(tokenizer, model):
    examples = _examples(tokenizer)
    with torch.no_grad():
        packed = pack_batch(examples, 512, tokenizer.pad_token_id, pack=True)
        unpacked = pack_batch(examples, 512, tokenizer.pad_token_id, pack=False)
        assert packed.input_ids.shape[0] < 4 and unpacked.input_ids.shape[0] == 4
        loss_packed = batch_loss_sum(model, packed) / packed.n_targets
        loss_unpacked = batch_loss_sum(model, unpacked) / unpacked.n_targets
    assert packed.n_targets == unpacked.n_targets
    assert abs(loss_packed.item() - loss_unpacked.item()) <= 1e-5


@pytest.mark.real_model
def test_packed_loss_and_gradients_equal_unpacked_on_smollm2(smollm2_base):
    """The same invariant on a real pretrained model, through the path it trains with (the
    head only where scored, SDPA with the block-diagonal mask), gradients included."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from honed.config import LoraSettings
    from honed.training.model_loading import attach_lora

    tok = AutoTokenizer.from_pretrained(smollm2_base)
    torch.manual_seed(0)
    model = attach_lora(AutoModelForCausalLM.from_pretrained(smollm2_base), LoraSettings(), seed=0)
    long = "the quick brown fox jumps over the lazy dog " * 12  # rows are as long as the longest example
    examples = [*_examples(tok), tokenize_record(tok, chat(f"copy: {long}", long), 512)]
    packed = pack_batch(examples, 512, tok.pad_token_id, pack=True)
    unpacked = pack_batch(examples, 512, tok.pad_token_id, pack=False)
    assert packed.input_ids.shape[0] < 4 and unpacked.input_ids.shape[0] == 5

    def loss_and_grads(batch):
        model.zero_grad()
        loss = batch_loss_sum(model, batch) / batch.n_targets
        loss.backward()
        return loss.item(), [p.grad.clone() for p in model.parameters() if p.requires_grad]

    loss_packed, grads_packed = loss_and_grads(packed)
    loss_unpacked, grads_unpacked = loss_and_grads(unpacked)
    assert loss_packed == pytest.approx(loss_unpacked, rel=1e-5)
    for a, b in zip(grads_packed, grads_unpacked, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-6)


def test_position_ids_alone_would_let_packed_examples_attend_to_each_other(tokenizer, model):
    # Why honed passes an explicit block-diagonal mask: with restarted position ids and
    # no mask, a default call (KV cache on) disables transformers' packed-sequence
    # detection and the loss is silently wrong (MEASURED.md).
    examples = _examples(tokenizer)
    with torch.no_grad():
        packed = pack_batch(examples, 512, tokenizer.pad_token_id, pack=True)
        right = batch_loss_sum(model, packed).item()
        out = model(input_ids=packed.input_ids, position_ids=packed.position_ids)
        wrong = torch.nn.functional.cross_entropy(
            out.logits.float().view(-1, out.logits.size(-1)), packed.targets.view(-1),
            ignore_index=IGNORE, reduction="sum").item()
    assert abs(right - wrong) > 1e-3


def test_the_head_runs_only_where_a_token_is_scored_and_the_loss_and_gradients_are_unchanged(
        tokenizer, tiny_random_base, monkeypatch):
    from transformers import AutoModelForCausalLM

    from honed.training import trainer

    model = AutoModelForCausalLM.from_pretrained(tiny_random_base)  # its own: every weight gets a gradient

    records = [chat(f"reverse: {w}", w[::-1], system="be brief") for w in ("alpha", "bravo", "charlie delta", "echo")]
    examples = [tokenize_record(tokenizer, r, 512) for r in [*records, {"text": "a b c"}]]
    batch = pack_batch(examples, 64, tokenizer.pad_token_id, True)
    head = model.get_output_embeddings()
    seen: list[int] = []
    hook = head.register_forward_hook(lambda _m, args, _out: seen.append(args[0].shape[:-1].numel()))

    def loss_and_grads():
        model.zero_grad()
        with torch.enable_grad():
            loss = batch_loss_sum(model, batch)
            loss.backward()
        return loss.item(), [p.grad.clone() for p in model.parameters() if p.grad is not None]

    try:
        monkeypatch.setattr(trainer, "HEAD_CHUNK", 7)  # several chunks
        scored_loss, scored_grads = loss_and_grads()
        assert seen and max(seen) <= 7 and sum(seen) == 2 * batch.n_targets  # forward, then recomputed in backward
        assert batch.n_targets < batch.input_ids.numel() / 2  # prompts and padding are most of the batch
        seen.clear()
        monkeypatch.setattr(trainer, "_decoder_and_head", lambda _model: None)  # the whole logits tensor
        whole_loss, whole_grads = loss_and_grads()
        assert seen == [batch.input_ids.numel()]
    finally:
        hook.remove()
    assert scored_loss == pytest.approx(whole_loss, rel=1e-5)
    assert len(scored_grads) == len(whole_grads) > 0
    for a, b in zip(scored_grads, whole_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)

"""Turn normalised records into token ids and next-token targets.

The loss is taken on assistant tokens only. honed computes which tokens those are
itself instead of relying on ``return_assistant_tokens_mask``: that option needs
``{% generation %}`` tags in the chat template, which most stock templates lack, and
without them it silently returns a mask of zeros (the model then trains on nothing).

How: render the conversation with the tokenizer's chat template, and for every
assistant turn find its character span as the difference between the rendering of the
conversation up to that turn (with the generation prompt) and up to and including it.
Tokens whose character offsets fall inside a span are trained on. A template whose
renderings are not prefixes of each other is refused with a clear message. Control tokens
typed inside a message are trained on as text, never as turn boundaries (chat_encoding).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, overload

from honed.data.chat_encoding import ChatEncodingError, encode_chat, render_chat

IGNORE = -100

# Used when a tokenizer has no chat template of its own (typical of base checkpoints).
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


class TokenizationError(ValueError):
    """A record cannot be turned into a training example; the message says why."""


@dataclass(frozen=True)
class Example:
    """One tokenised record.

    ``targets[i]`` is the token the model should predict after seeing
    ``input_ids[: i + 1]``, or IGNORE. Shifting happens here, per example, so that
    packing can never make the last token of one example predict the first of the next.
    """

    input_ids: list[int]
    targets: list[int]

    @property
    def n_targets(self) -> int:
        return sum(1 for t in self.targets if t != IGNORE)


def assistant_char_spans(
    tokenizer: Any, messages: list[dict[str, Any]], first: int = 0
) -> tuple[str, list[tuple[int, int]]]:
    """The rendered conversation and the character spans of its assistant turns (those at
    index ``first`` or later: a preference completion's, not its prompt's)."""
    text = render_chat(tokenizer, messages, add_generation_prompt=False)
    spans = []
    for i, message in enumerate(messages):
        if message["role"] != "assistant" or i < first:
            continue
        before = render_chat(tokenizer, messages[:i], add_generation_prompt=True) if i else ""
        through = render_chat(tokenizer, messages[: i + 1], add_generation_prompt=False)
        if not text.startswith(through) or not through.startswith(before):
            raise TokenizationError(
                "the chat template does not render conversations as prefixes of each other, "
                "so honed cannot tell which tokens the assistant wrote"
            )
        # Trailing whitespace after the end-of-turn marker is formatting, not output.
        end = len(through.rstrip())
        spans.append((len(before), end))
    return text, spans


def ensure_chat_template(tokenizer: Any) -> None:
    """Give a tokenizer without a chat template honed's ChatML default."""
    if not getattr(tokenizer, "chat_template", None):
        tokenizer.chat_template = CHATML_TEMPLATE


def tokenize_record(tokenizer: Any, record: dict[str, Any], max_len: int) -> Example:
    """Tokenise one normalised record (``messages`` or ``text``) for training.

    Raises TokenizationError when the record is longer than ``max_len`` tokens or has
    no token to train on.
    """
    if not getattr(tokenizer, "is_fast", False):
        raise TokenizationError("honed needs a fast tokenizer (offsets are used to find "
                                "assistant tokens)")
    if "text" in record:
        ids = tokenizer(record["text"], add_special_tokens=False)["input_ids"]
        if tokenizer.eos_token_id is not None:
            ids = ids + [tokenizer.eos_token_id]
        trained = [True] * len(ids)
    else:
        text, spans = assistant_char_spans(tokenizer, record["messages"])
        try:
            enc = encode_chat(tokenizer, record["messages"], add_generation_prompt=False, offsets=True)
        except ChatEncodingError as exc:
            raise TokenizationError(str(exc)) from None
        assert enc.text == text and enc.offsets is not None
        ids = enc.input_ids
        trained = [any(start <= a and b <= end and b > a for start, end in spans) for a, b in enc.offsets]
    if len(ids) > max_len:
        raise TokenizationError(
            f"{len(ids)} tokens, more than train.max_seq_len = {max_len}; raise it or "
            "shorten the record"
        )
    targets = [ids[i + 1] if trained[i + 1] else IGNORE for i in range(len(ids) - 1)]
    targets.append(IGNORE)
    example = Example(input_ids=list(ids), targets=targets)
    if example.n_targets == 0:
        raise TokenizationError("no assistant token to train on (empty assistant mask)")
    return example


def prompt_messages(record: dict[str, Any]) -> list[dict[str, Any]]:
    """The conversation up to (without) its last assistant turn: what a model is asked."""
    messages: list[dict[str, Any]] = record["messages"]
    last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
    return messages[:last]


def reference_answer(record: dict[str, Any]) -> str:
    """The last assistant turn of a record: the reference an answer is scored against."""
    answer: str = [m for m in record["messages"] if m["role"] == "assistant"][-1]["content"]
    return answer


class TokenizedRecords(Sequence[Example]):
    """Records tokenized on first use, then kept: a run's first step waits for its own
    batch only, not for the whole dataset. A record that cannot be tokenized raises
    TokenizationError naming its split, hash and line when it is first needed."""

    def __init__(self, tokenizer: Any, records: list[dict[str, Any]], max_len: int, split: str) -> None:
        self.tokenizer = tokenizer
        self.records = records
        self.max_len = max_len
        self.split = split
        self._done: list[Example | None] = [None] * len(records)

    def __len__(self) -> int:
        return len(self.records)

    @overload
    def __getitem__(self, index: int) -> Example: ...

    @overload
    def __getitem__(self, index: slice) -> list[Example]: ...

    def __getitem__(self, index: int | slice) -> Example | list[Example]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        example = self._done[index]
        if example is None:
            record = self.records[index]
            try:
                example = tokenize_record(self.tokenizer, record, self.max_len)
            except TokenizationError as exc:
                raise TokenizationError(
                    f"{self.split} record {record['hash'][:12]} (line {record.get('line')}): {exc}") from None
            self._done[index] = example
        return example

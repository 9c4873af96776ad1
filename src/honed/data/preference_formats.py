"""The shapes DPO and KTO learn from: preference pairs and unpaired judgements.

Accepted shapes:

- TRL preference pairs, explicit prompt: ``{"prompt", "chosen", "rejected"}``. The
  prompt is a string (one user turn) or messages ending with a user turn; chosen and
  rejected are strings (one assistant turn) or arrays of assistant messages.
- TRL preference pairs, implicit prompt: ``{"chosen", "rejected"}`` as two whole
  conversations that share their prompt. The prompt is their common prefix; it must
  end with a user turn, and after it each side holds only assistant messages.
- OpenAI's DPO lines: ``{"input": {"messages": [...]}, "preferred_output": [...],
  "non_preferred_output": [...]}`` (other keys of ``input``, e.g. ``tools``, ignored).
- KTO's unpaired judgements: ``{"prompt", "completion", "label"}``, prompt and
  completion as for pairs, ``label`` a JSON boolean (true: desirable).

Normalised forms (what the trainer reads; the record hash is taken over them):

- preference: ``{"prompt": [messages ending with a user turn], "chosen": [{"role":
  "assistant", "content": str}, ...], "rejected": [...]}``
- unpaired: ``{"prompt": [...], "completion": [{"role": "assistant", "content": str},
  ...], "label": true|false}``

A pair whose two sides are the same teaches nothing and is refused, as is an empty side.
``max_record_chars`` bounds the content of the whole record (prompt and every answer).
"""

from __future__ import annotations

from typing import Any

from honed.data.record_parts import (
    RecordError,
    check_length,
    content,
    json_type_name,
    message_list,
)

Messages = list[dict[str, Any]]


def normalize_trl_pair(obj: dict[str, Any], max_record_chars: int) -> dict[str, Any]:
    """The normalised preference record of a TRL ``prompt``/``chosen``/``rejected`` line
    (``prompt`` may be left out when chosen and rejected are whole conversations)."""
    for key, other in (("chosen", "rejected"), ("rejected", "chosen")):
        if other not in obj:
            raise RecordError(f"has {key!r} but no {other!r} (a preference pair needs both)")
    if "prompt" in obj:
        prompt, n_prompt = _prompt(obj["prompt"], "prompt")
        chosen, n_chosen = _answer(obj["chosen"], "chosen")
        rejected, n_rejected = _answer(obj["rejected"], "rejected")
    else:
        prompt, chosen, rejected = _split_implicit_prompt(obj["chosen"], obj["rejected"])
        n_prompt, n_chosen, n_rejected = _chars(prompt), _chars(chosen), _chars(rejected)
    if chosen == rejected:
        raise RecordError("chosen and rejected are the same; a pair needs two different answers")
    check_length(n_prompt + n_chosen + n_rejected, max_record_chars)
    return {"prompt": prompt, "chosen": chosen, "rejected": rejected}


def normalize_openai_pair(obj: dict[str, Any], max_record_chars: int) -> dict[str, Any]:
    """The normalised preference record of an OpenAI DPO line."""
    for key in ("input", "preferred_output", "non_preferred_output"):
        if key not in obj:
            raise RecordError(f"has no {key!r} (the OpenAI DPO shape needs input, preferred_output "
                              "and non_preferred_output)")
    given = obj["input"]
    if type(given) is not dict:
        raise RecordError(f"input must be an object with 'messages', got {json_type_name(given)}")
    if "messages" not in given:
        raise RecordError("input has no 'messages'")
    prompt, n_prompt = _prompt(given["messages"], "input.messages", allow_string=False)
    chosen, n_chosen = _answer(obj["preferred_output"], "preferred_output", allow_string=False)
    rejected, n_rejected = _answer(obj["non_preferred_output"], "non_preferred_output", allow_string=False)
    if chosen == rejected:
        raise RecordError("preferred_output and non_preferred_output are the same; "
                          "a pair needs two different answers")
    check_length(n_prompt + n_chosen + n_rejected, max_record_chars)
    return {"prompt": prompt, "chosen": chosen, "rejected": rejected}


def normalize_unpaired(obj: dict[str, Any], max_record_chars: int) -> dict[str, Any]:
    """The normalised unpaired record of a KTO ``prompt``/``completion``/``label`` line."""
    label = obj["label"]
    if type(label) is not bool:
        shown = f" {label!r}" if type(label) in (str, int, float) else ""
        raise RecordError(f"label must be true or false (a JSON boolean), got {json_type_name(label)}{shown}")
    prompt, n_prompt = _prompt(obj["prompt"], "prompt")
    completion, n_completion = _answer(obj["completion"], "completion")
    check_length(n_prompt + n_completion, max_record_chars)
    return {"prompt": prompt, "completion": completion, "label": label}


def _prompt(value: Any, where: str, *, allow_string: bool = True) -> tuple[Messages, int]:
    """A prompt as messages ending with a user turn, and its characters of content."""
    if allow_string and type(value) is str:
        text = content(value, where)
        return [{"role": "user", "content": text}], len(text)
    if allow_string and type(value) is not list:
        raise RecordError(f"{where} must be a string or an array of messages, got {json_type_name(value)}")
    messages, total = message_list(value, where, empty_hint="a prompt needs at least one user message")
    last = messages[-1]["role"]
    if last != "user":
        raise RecordError(f"{where}[{len(messages) - 1}] is the last message of the prompt and has role {last!r}; "
                          "a prompt must end with a user message")
    return messages, total


def _answer(value: Any, where: str, *, allow_string: bool = True) -> tuple[Messages, int]:
    """One side of a pair (or a completion) as assistant messages, and its characters."""
    if allow_string and type(value) is str:
        text = content(value, where)
        return [{"role": "assistant", "content": text}], len(text)
    if allow_string and type(value) is not list:
        raise RecordError(f"{where} must be a string or an array of messages, got {json_type_name(value)}")
    messages, total = message_list(value, where, empty_hint="it needs at least one assistant message")
    _only_assistant(messages, where, 0)
    return messages, total


def _only_assistant(messages: Messages, where: str, offset: int) -> None:
    for i, message in enumerate(messages, start=offset):
        if message["role"] != "assistant":
            raise RecordError(f"{where}[{i}] has role {message['role']!r}; {where} holds only the assistant "
                              "answer (the conversation before it is the prompt)")


def _split_implicit_prompt(chosen: Any, rejected: Any) -> tuple[Messages, Messages, Messages]:
    """TRL's implicit prompt: two whole conversations, split at their common prefix."""
    if type(chosen) is not list or type(rejected) is not list:
        raise RecordError("has 'chosen' and 'rejected' but no 'prompt': give a 'prompt', or give chosen and "
                          "rejected as whole conversations (arrays of messages) that share their prompt")
    hint = "it needs the conversation up to and including the answer"
    chosen_all, _ = message_list(chosen, "chosen", empty_hint=hint)
    rejected_all, _ = message_list(rejected, "rejected", empty_hint=hint)
    n = 0
    while n < len(chosen_all) and n < len(rejected_all) and chosen_all[n] == rejected_all[n]:
        n += 1
    if chosen_all == rejected_all:
        raise RecordError("chosen and rejected are the same; a pair needs two different answers")
    for side, messages in (("chosen", chosen_all), ("rejected", rejected_all)):
        if n == len(messages):
            raise RecordError(f"{side} is empty after the prompt it shares with the other side "
                              f"({_span(n)}); it needs an assistant answer")
    roles = chosen_all[n]["role"], rejected_all[n]["role"]
    if roles != ("assistant", "assistant"):
        how = (f"chosen[{n}] and rejected[{n}] are {roles[0]} messages with different content"
               if roles[0] == roles[1] else f"chosen[{n}] has role {roles[0]!r}, rejected[{n}] role {roles[1]!r}")
        raise RecordError(f"the prompt differs between chosen and rejected at message {n} ({how}); "
                          "only the assistant answers after the shared prompt may differ")
    if n == 0:
        raise RecordError("chosen and rejected share no prompt: both start with an assistant message; "
                          "give a 'prompt' or start both conversations with the same user message")
    last = chosen_all[n - 1]["role"]
    if last != "user":
        raise RecordError(f"the prompt chosen and rejected share ({_span(n)}) ends with a {last!r} "
                          "message; a prompt must end with a user message")
    _only_assistant(chosen_all[n:], "chosen", n)
    _only_assistant(rejected_all[n:], "rejected", n)
    return chosen_all[:n], chosen_all[n:], rejected_all[n:]


def _span(n: int) -> str:
    return "message 0" if n == 1 else f"messages 0 to {n - 1}"


def _chars(messages: Messages) -> int:
    return sum(len(m["content"]) for m in messages)

"""The record shapes honed accepts, and their normalisation.

A dataset line is one JSON object. The shapes for supervised fine-tuning (kind ``sft``):

- chat: ``{"messages": [{"role": "system"|"user"|"assistant", "content": str}, ...]}``
- ShareGPT: ``{"conversations": [{"from": "system"|"human"|"gpt", "value": str}, ...]}``
  becomes chat messages (human: user, gpt: assistant);
- ``{"prompt": str, "completion": str}`` becomes a user turn and an assistant turn;
- ``{"instruction": str, "input": str (optional), "output": str}`` becomes a user turn
  (the instruction, then a blank line and the input when the input is not blank) and an
  assistant turn;
- ``{"text": str}`` stays plain text (no turns; training takes loss on every token).

The shapes for preference training, kinds ``preference`` (TRL's prompt/chosen/rejected,
OpenAI's DPO lines) and ``unpaired`` (KTO's prompt/completion/label), are described and
normalised in ``honed.data.preference_formats``; ``record_kind`` tells the kinds apart.

Rules, decided here so every caller applies the same ones:

- Extra keys are ignored (also extra keys inside a message, e.g. ``name``); a record
  that has the keys of two shapes is ambiguous and rejected.
- Every content string must contain something other than whitespace, except ``input``,
  which may be missing, null, empty or blank (then it is left out).
- A chat record must end with an assistant message: training learns the assistant
  turns, and a trailing user turn is almost always a truncated conversation.
- ``max_record_chars`` bounds the characters of content of the normalised record
  (sum over all turns, or the text), not the bytes of the JSON line.

Content is kept exactly as given (no stripping, no Unicode normalisation): the record
hash is taken over the normalised record, so the same example written in another shape
or with other JSON whitespace hashes the same, and nothing else does.
"""

from __future__ import annotations

import hashlib
from typing import Any

import orjson

from honed.data.kinds import Kind
from honed.data.preference_formats import normalize_openai_pair, normalize_trl_pair, normalize_unpaired
from honed.data.record_parts import (
    ROLES,
    RecordError,
    check_length,
    json_type_name,
    message_problem,
    quote,
    text_problem,
)
from honed.data.record_parts import content as _content

__all__ = [
    "DEFAULT_MAX_RECORD_CHARS",
    "ROLES",
    "SHAPES",
    "RecordError",
    "canonical_bytes",
    "describe_parse_error",
    "json_type_name",
    "normalize_record",
    "parse_line",
    "record_hash",
    "record_kind",
    "text_problem",
]

SHAPES = (
    '{"messages": [{"role", "content"}, ...]}',
    '{"conversations": [{"from", "value"}, ...]}',
    '{"prompt", "completion"}',
    '{"instruction", "input" (optional), "output"}',
    '{"text"}',
    '{"prompt" (optional), "chosen", "rejected"}',
    '{"input": {"messages"}, "preferred_output", "non_preferred_output"}',
    '{"prompt", "completion", "label"}',
)
DEFAULT_MAX_RECORD_CHARS = 32768
UTF8_BOM = b"\xef\xbb\xbf"

_ROLE_SET = frozenset(ROLES)
_SHAPE_NAMES = (
    "messages", "conversations", "prompt/completion", "instruction/output", "text", "chosen/rejected",
    "preferred_output/non_preferred_output",
)
# ShareGPT's speakers and the chat roles they become.
SHAREGPT_ROLES = {"system": "system", "human": "user", "gpt": "assistant"}


def parse_line(raw: bytes) -> Any:
    """Parse one JSONL line (bytes, line terminator allowed) into a Python value.

    Raises RecordError naming the problem: a byte-order mark, invalid UTF-8 (with the
    byte offset in the line) or invalid JSON (with the decoder's column).
    """
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise RecordError(describe_parse_error(raw, exc)) from None


def describe_parse_error(raw: bytes, exc: orjson.JSONDecodeError) -> str:
    """Explain why ``orjson.loads(raw)`` failed, in words a user can act on.

    Called only on the error path, so it may afford to decode the line again.
    """
    if raw.startswith(UTF8_BOM):
        return "line starts with a UTF-8 byte-order mark; save as UTF-8 without BOM"
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as err:
        bad = raw[err.start : err.end].hex(" ")
        return f"invalid UTF-8 at byte offset {err.start} of the line (bytes {bad}): {err.reason}"
    return f"invalid JSON at column {exc.colno}: {exc.msg}"


def normalize_record(obj: Any, max_record_chars: int = DEFAULT_MAX_RECORD_CHARS) -> dict[str, Any]:
    """Return the normalised form of one parsed record.

    The result is ``{"messages": [{"role": ..., "content": ...}, ...]}`` for the
    conversational SFT shapes, ``{"text": ...}`` for plain text (it may share message
    dicts with ``obj``), ``{"prompt", "chosen", "rejected"}`` for a preference pair and
    ``{"prompt", "completion", "label"}`` for an unpaired judgement (see
    ``honed.data.preference_formats``). Raises RecordError.
    """
    if type(obj) is not dict:
        raise RecordError(f"record must be a JSON object, got {json_type_name(obj)}")
    is_chat = "messages" in obj
    is_sharegpt = "conversations" in obj
    is_pc = "prompt" in obj and "completion" in obj
    is_io = "instruction" in obj and "output" in obj
    is_text = "text" in obj
    is_pair = "chosen" in obj or "rejected" in obj
    is_openai = "preferred_output" in obj or "non_preferred_output" in obj
    matches = (is_chat, is_sharegpt, is_pc, is_io, is_text, is_pair, is_openai)
    if sum(matches) != 1:
        raise RecordError(_shape_problem(obj, matches))

    if is_chat:
        return {"messages": _chat_messages(obj["messages"], max_record_chars)}
    if is_text:
        text = _content(obj["text"], "text")
        check_length(len(text), max_record_chars)
        return {"text": text}
    if is_sharegpt:
        return {"messages": _sharegpt_messages(obj["conversations"], max_record_chars)}
    if is_pair:
        return normalize_trl_pair(obj, max_record_chars)
    if is_openai:
        return normalize_openai_pair(obj, max_record_chars)
    if is_pc:
        if "label" in obj:
            return normalize_unpaired(obj, max_record_chars)
        messages = [
            {"role": "user", "content": _content(obj["prompt"], "prompt")},
            {"role": "assistant", "content": _content(obj["completion"], "completion")},
        ]
    else:
        user = _content(obj["instruction"], "instruction")
        extra = obj.get("input")
        if extra is not None:
            if type(extra) is not str:
                raise RecordError(f"input must be a string, got {json_type_name(extra)}")
            if extra and not extra.isspace():
                user = user + "\n\n" + extra
        messages = [
            {"role": "user", "content": user},
            {"role": "assistant", "content": _content(obj["output"], "output")},
        ]
    check_length(len(messages[0]["content"]) + len(messages[1]["content"]), max_record_chars)
    return {"messages": messages}


def record_kind(record: dict[str, Any]) -> Kind:
    """The kind of a normalised record: ``preference`` (prompt, chosen, rejected),
    ``unpaired`` (prompt, completion, label) or ``sft`` (messages or text)."""
    if "chosen" in record:
        return "preference"
    if "label" in record:
        return "unpaired"
    return "sft"


def canonical_bytes(record: dict[str, Any]) -> bytes:
    """The serialisation a record hash is taken over: compact JSON, keys sorted."""
    return orjson.dumps(record, option=orjson.OPT_SORT_KEYS)


def record_hash(record: dict[str, Any]) -> str:
    """sha256 (hex) of a normalised record's canonical serialisation."""
    return hashlib.sha256(canonical_bytes(record)).hexdigest()


def _chat_messages(messages: Any, max_record_chars: int) -> list[dict[str, Any]]:
    # The fast path checks a well-formed message in one condition; the first message
    # that fails it is examined again by message_problem to say exactly what is wrong.
    if type(messages) is not list:
        raise RecordError(f"messages must be an array, got {json_type_name(messages)}")
    if not messages:
        raise RecordError("messages is empty; a chat record needs at least one assistant message")
    out: list[dict[str, Any]] = []
    append = out.append
    total = 0
    role = None
    for message in messages:
        if type(message) is dict:
            role = message.get("role")
            content = message.get("content")
            if (
                type(role) is str
                and role in _ROLE_SET
                and type(content) is str
                and content
                and not content.isspace()
                and "\x00" not in content
            ):
                total += len(content)
                # A message with exactly these two keys is already normalised: reuse it.
                append(message if len(message) == 2 else {"role": role, "content": content})
                continue
        raise RecordError(message_problem("messages", len(out), message))
    if role != "assistant":
        if not any(m["role"] == "assistant" for m in out):
            raise RecordError("messages has no assistant message; the last message must be one")
        raise RecordError(
            f"messages[{len(out) - 1}] is the last message and has role {role!r}; "
            "a chat record must end with an assistant message"
        )
    if total > max_record_chars:
        check_length(total, max_record_chars)
    return out


def _sharegpt_messages(turns: Any, max_record_chars: int) -> list[dict[str, Any]]:
    if type(turns) is not list:
        raise RecordError(f"conversations must be an array, got {json_type_name(turns)}")
    if not turns:
        raise RecordError("conversations is empty; a conversation needs at least one 'gpt' message")
    out: list[dict[str, Any]] = []
    total = 0
    for i, turn in enumerate(turns):
        at = f"conversations[{i}]"
        if type(turn) is not dict:
            raise RecordError(f"{at} must be an object, got {json_type_name(turn)}")
        if "from" not in turn:
            raise RecordError(f"{at} has no 'from'")
        speaker = turn["from"]
        if type(speaker) is not str:
            raise RecordError(f"{at}.from must be a string, got {json_type_name(speaker)}")
        if speaker not in SHAREGPT_ROLES:
            raise RecordError(f"{at}.from {quote(speaker)} is not one of {', '.join(SHAREGPT_ROLES)}")
        if "value" not in turn:
            raise RecordError(f"{at} has no 'value'")
        text = _content(turn["value"], f"{at}.value")
        total += len(text)
        out.append({"role": SHAREGPT_ROLES[speaker], "content": text})
    if out[-1]["role"] != "assistant":
        raise RecordError(f"conversations[{len(out) - 1}] is the last message and has from "
                          f"{turns[-1]['from']!r}; a conversation must end with a 'gpt' message")
    check_length(total, max_record_chars)
    return out


def _shape_problem(obj: dict[str, Any], matches: tuple[bool, ...]) -> str:
    matched = [name for name, hit in zip(_SHAPE_NAMES, matches) if hit]
    if len(matched) > 1:
        return (
            f"ambiguous record: it has the keys of the {' and '.join(matched)} shapes; "
            "keep the keys of one shape only"
        )
    for pair in (("prompt", "completion"), ("instruction", "output")):
        present = [key for key in pair if key in obj]
        if len(present) == 1:
            missing = pair[1] if present[0] == pair[0] else pair[0]
            return f"has {present[0]!r} but no {missing!r} (the {'/'.join(pair)} shape needs both)"
    keys = [quote(str(key), 20) for key in list(obj)[:8]]
    shown = ", ".join(keys) + (", ..." if len(obj) > 8 else "") if keys else "none"
    return f"unknown record shape (keys: {shown}); accepted shapes: {'; '.join(SHAPES)}"

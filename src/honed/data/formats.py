"""The record shapes honed accepts, and their normalisation to chat messages.

A dataset line is one JSON object in one of four shapes:

- chat: ``{"messages": [{"role": "system"|"user"|"assistant", "content": str}, ...]}``
- ``{"prompt": str, "completion": str}`` becomes a user turn and an assistant turn;
- ``{"instruction": str, "input": str (optional), "output": str}`` becomes a user turn
  (the instruction, then a blank line and the input when the input is not blank) and an
  assistant turn;
- ``{"text": str}`` stays plain text (no turns; training takes loss on every token).

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

ROLES = ("system", "user", "assistant")
SHAPES = (
    '{"messages": [{"role", "content"}, ...]}',
    '{"prompt", "completion"}',
    '{"instruction", "input" (optional), "output"}',
    '{"text"}',
)
DEFAULT_MAX_RECORD_CHARS = 32768
UTF8_BOM = b"\xef\xbb\xbf"

_ROLE_SET = frozenset(ROLES)
_JSON_TYPE_NAMES = {
    dict: "object",
    list: "array",
    str: "string",
    int: "int",
    float: "float",
    bool: "bool",
    type(None): "null",
}
_SHAPE_NAMES = ("messages", "prompt/completion", "instruction/output", "text")


class RecordError(ValueError):
    """One record cannot be used; ``reason`` says why, naming the offending key."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def json_type_name(value: Any) -> str:
    """The JSON name of a parsed value's type (``object``, ``array``, ``int``...)."""
    return _JSON_TYPE_NAMES.get(type(value), type(value).__name__)


def _quote(value: str, limit: int = 40) -> str:
    shown = value if len(value) <= limit else value[: limit - 3] + "..."
    return repr(shown)


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


def text_problem(text: str) -> str | None:
    """Why ``text`` cannot be kept as training data, or None: a NUL character (PostgreSQL
    refuses it) or a lone UTF-16 surrogate (no UTF-8 file can hold it), with its position."""
    nul = text.find("\x00")
    if nul >= 0:
        return f"contains a NUL character at position {nul}"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        return f"contains a lone surrogate (U+{ord(text[exc.start]):04X}) at position {exc.start}"
    return None


def normalize_record(obj: Any, max_record_chars: int = DEFAULT_MAX_RECORD_CHARS) -> dict[str, Any]:
    """Return the normalised form of one parsed record.

    The result is ``{"messages": [{"role": ..., "content": ...}, ...]}`` for the three
    conversational shapes and ``{"text": ...}`` for plain text (it may share message
    dicts with ``obj``). Raises RecordError.
    """
    if type(obj) is not dict:
        raise RecordError(f"record must be a JSON object, got {json_type_name(obj)}")
    is_chat = "messages" in obj
    is_pc = "prompt" in obj and "completion" in obj
    is_io = "instruction" in obj and "output" in obj
    is_text = "text" in obj
    if is_chat + is_pc + is_io + is_text != 1:
        raise RecordError(_shape_problem(obj, (is_chat, is_pc, is_io, is_text)))

    if is_chat:
        return {"messages": _chat_messages(obj["messages"], max_record_chars)}
    if is_text:
        text = _content(obj["text"], "text")
        _check_length(len(text), max_record_chars)
        return {"text": text}
    if is_pc:
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
    _check_length(len(messages[0]["content"]) + len(messages[1]["content"]), max_record_chars)
    return {"messages": messages}


def canonical_bytes(record: dict[str, Any]) -> bytes:
    """The serialisation a record hash is taken over: compact JSON, keys sorted."""
    return orjson.dumps(record, option=orjson.OPT_SORT_KEYS)


def record_hash(record: dict[str, Any]) -> str:
    """sha256 (hex) of a normalised record's canonical serialisation."""
    return hashlib.sha256(canonical_bytes(record)).hexdigest()


def _content(value: Any, where: str) -> str:
    if type(value) is not str:
        raise RecordError(f"{where} must be a string, got {json_type_name(value)}")
    if not value or value.isspace():
        raise RecordError(f"{where} is empty" + (" (whitespace only)" if value else ""))
    problem = text_problem(value)  # the rule experiences follow: one rule for all training text
    if problem:
        raise RecordError(f"{where} {problem}")
    return value


def _chat_messages(messages: Any, max_record_chars: int) -> list[dict[str, Any]]:
    # The fast path checks a well-formed message in one condition; the first message
    # that fails it is examined again by _message_problem to say exactly what is wrong.
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
        raise RecordError(_message_problem(len(out), message))
    if role != "assistant":
        if not any(m["role"] == "assistant" for m in out):
            raise RecordError("messages has no assistant message; the last message must be one")
        raise RecordError(
            f"messages[{len(out) - 1}] is the last message and has role {role!r}; "
            "a chat record must end with an assistant message"
        )
    if total > max_record_chars:
        _check_length(total, max_record_chars)
    return out


def _message_problem(i: int, message: Any) -> str:
    if type(message) is not dict:
        return f"messages[{i}] must be an object, got {json_type_name(message)}"
    if "role" not in message:
        return f"messages[{i}] has no 'role'"
    role = message["role"]
    if type(role) is not str:
        return f"messages[{i}].role must be a string, got {json_type_name(role)}"
    if role not in _ROLE_SET:
        return f"messages[{i}].role {_quote(role)} is not one of {', '.join(ROLES)}"
    if "content" not in message:
        return f"messages[{i}] has no 'content'"
    try:
        _content(message["content"], f"messages[{i}].content")
    except RecordError as exc:
        return exc.reason
    raise AssertionError(f"messages[{i}] passed every check")  # pragma: no cover


def _check_length(total: int, max_record_chars: int) -> None:
    if total > max_record_chars:
        raise RecordError(
            f"record has {total} characters of content, more than "
            f"max_record_chars={max_record_chars}"
        )


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
    keys = [_quote(str(key), 20) for key in list(obj)[:8]]
    shown = ", ".join(keys) + (", ..." if len(obj) > 8 else "") if keys else "none"
    return f"unknown record shape (keys: {shown}); accepted shapes: {'; '.join(SHAPES)}"

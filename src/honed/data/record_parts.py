"""The parts every record shape is built of: content strings and lists of messages.

Each check raises RecordError with a reason that names the offending key the way the
user wrote it (``messages[2].role``, ``chosen[0].content``, ``input.messages[1]``), so
that the SFT shapes (``formats``) and the preference shapes (``preference_formats``)
word their errors alike.
"""

from __future__ import annotations

from typing import Any

ROLES = ("system", "user", "assistant")

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


class RecordError(ValueError):
    """One record cannot be used; ``reason`` says why, naming the offending key."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def json_type_name(value: Any) -> str:
    """The JSON name of a parsed value's type (``object``, ``array``, ``int``...)."""
    return _JSON_TYPE_NAMES.get(type(value), type(value).__name__)


def quote(value: str, limit: int = 40) -> str:
    """``repr`` of ``value``, cut to ``limit`` characters for an error message."""
    shown = value if len(value) <= limit else value[: limit - 3] + "..."
    return repr(shown)


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


def content(value: Any, where: str) -> str:
    """``value`` when it is a string with something other than whitespace in it, and
    text a training file can hold (:func:`text_problem`)."""
    if type(value) is not str:
        raise RecordError(f"{where} must be a string, got {json_type_name(value)}")
    if not value or value.isspace():
        raise RecordError(f"{where} is empty" + (" (whitespace only)" if value else ""))
    problem = text_problem(value)  # the rule experiences follow: one rule for all training text
    if problem:
        raise RecordError(f"{where} {problem}")
    return value


def check_length(total: int, max_record_chars: int) -> None:
    """Refuse a record with more than ``max_record_chars`` characters of content."""
    if total > max_record_chars:
        raise RecordError(
            f"record has {total} characters of content, more than "
            f"max_record_chars={max_record_chars}"
        )


def message_list(value: Any, where: str, *, empty_hint: str) -> tuple[list[dict[str, Any]], int]:
    """Validate a JSON array of ``{"role", "content"}`` messages at ``where``.

    Returns the messages reduced to those two keys and their characters of content.
    An empty array is refused with ``empty_hint`` after the reason. Which roles may
    come where is the caller's rule.
    """
    if type(value) is not list:
        raise RecordError(f"{where} must be an array of messages, got {json_type_name(value)}")
    if not value:
        raise RecordError(f"{where} is empty; {empty_hint}")
    out: list[dict[str, Any]] = []
    total = 0
    for i, message in enumerate(value):
        if type(message) is dict:
            role = message.get("role")
            text = message.get("content")
            if (type(role) is str and role in _ROLE_SET and type(text) is str and text and not text.isspace()
                    and "\x00" not in text):
                out.append({"role": role, "content": text})
                total += len(text)
                continue
        raise RecordError(message_problem(where, i, message))
    return out, total


def message_problem(where: str, i: int, message: Any) -> str:
    """Why ``message``, item ``i`` of the array at ``where``, is not a valid message."""
    at = f"{where}[{i}]"
    if type(message) is not dict:
        return f"{at} must be an object, got {json_type_name(message)}"
    if "role" not in message:
        return f"{at} has no 'role'"
    role = message["role"]
    if type(role) is not str:
        return f"{at}.role must be a string, got {json_type_name(role)}"
    if role not in _ROLE_SET:
        return f"{at}.role {quote(role)} is not one of {', '.join(ROLES)}"
    if "content" not in message:
        return f"{at} has no 'content'"
    try:
        content(message["content"], f"{at}.content")
    except RecordError as exc:
        return exc.reason
    raise AssertionError(f"{at} passed every check")  # pragma: no cover

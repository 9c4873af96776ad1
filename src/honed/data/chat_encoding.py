"""Chat conversations to token ids, with control tokens typed inside messages kept as text.

Rendering a conversation with its chat template and tokenising the result would turn a
``<|im_end|>`` that a user typed into the real end-of-turn token: a user could close
their own turn and forge an assistant turn, both in what is served and in experiences
that training later learns from. Here only the control tokens the template writes are
control tokens; the same characters inside a message are encoded as ordinary text.

How: a conversation whose strings hold no control token is tokenised exactly as before
(most conversations: their ids do not change). Otherwise each control token inside a
message is wrapped in a pair of private-use markers, the conversation is rendered, and
the rendering is split at the markers: the pieces between are tokenised normally
(template tokens stay tokens), the wrapped ones as text. A template that rewrites message
text so that the markers no longer enclose the token whole is refused with a clear error.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

__all__ = ["ChatEncodingError", "EncodedChat", "control_tokens", "encode_chat", "render_chat"]

# The markers are chosen per conversation among pairs no message and no template uses.
_MARKER_BASE = 0xF0000  # Supplementary Private Use Area-A


class ChatEncodingError(ValueError):
    """A conversation cannot be encoded safely with this chat template; the message says why."""


@dataclass(frozen=True)
class EncodedChat:
    """A rendered conversation and its token ids.

    ``offsets[i]`` is the character span of ``input_ids[i]`` in ``text`` (only when asked
    for); a control token from a message encoded as text gives each of its tokens the
    span of the whole control token.
    """

    text: str
    input_ids: list[int]
    offsets: list[tuple[int, int]] | None = None


def render_chat(tokenizer: Any, messages: list[dict[str, Any]], add_generation_prompt: bool) -> str:
    """The conversation as the tokenizer's chat template writes it."""
    text: str = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
    return text


def control_tokens(tokenizer: Any) -> list[str]:
    """The strings the tokenizer turns into control tokens: its special tokens, plus added
    tokens that the chat template writes (``<think>``, ``<tool_call>`` are often added
    tokens not marked special)."""
    template = getattr(tokenizer, "chat_template", None) or ""
    template = template if isinstance(template, str) else " ".join(template.values())
    tokens = set(getattr(tokenizer, "all_special_tokens", []))
    for added in getattr(tokenizer, "added_tokens_decoder", {}).values():
        if added.special or added.content in template:
            tokens.add(added.content)
    # Longest first, so that a token wins over the tokens it contains; a whitespace token
    # (Gemma's "\n") is ordinary text in every message and stays so.
    return sorted((t for t in tokens if t and not t.isspace()), key=len, reverse=True)


def encode_chat(
    tokenizer: Any, messages: list[dict[str, Any]], *, add_generation_prompt: bool, offsets: bool = False
) -> EncodedChat:
    """Render ``messages`` with the chat template and tokenise the result, encoding control
    tokens found inside the messages as ordinary text.

    With ``offsets`` (fast tokenizers only) the character span of every token is returned
    too. Raises ChatEncodingError when a message holds a control token and the template
    rewrites message text in a way that loses track of it.
    """
    text = render_chat(tokenizer, messages, add_generation_prompt)
    tokens = control_tokens(tokenizer)
    pattern = re.compile("|".join(map(re.escape, tokens))) if tokens else None
    found = _first_control_token(messages, pattern)
    if found is None:
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=offsets)
        return EncodedChat(text, list(enc["input_ids"]), _offsets(enc) if offsets else None)

    assert pattern is not None
    start, end = _markers(messages, text, getattr(tokenizer, "chat_template", None) or "")
    marked = _mark(messages, pattern, start, end)
    pieces = re.split(f"{start}({pattern.pattern}){end}", render_chat(tokenizer, marked, add_generation_prompt))
    # pieces alternate: template and message text, a control token from a message, template and text, ...
    if any(start in p or end in p for p in pieces[::2]) or "".join(pieces) != text:
        index, token = found
        raise ChatEncodingError(
            f"message {index}'s content contains the control token {token!r}, and this chat template rewrites "
            "message content, so honed cannot keep the token as text; remove it from the message")

    newline = list(tokenizer("\n", add_special_tokens=False)["input_ids"])
    ids: list[int] = []
    spans: list[tuple[int, int]] = []
    position = 0
    for k, piece in enumerate(pieces):
        if piece:
            if k % 2:
                piece_ids = _encode_as_text(tokenizer, piece, newline)
                if tokenizer.convert_tokens_to_ids(piece) in piece_ids:
                    raise ChatEncodingError(f"the tokenizer produces the control token {piece!r} from plain text, "
                                            "so honed cannot keep it as text; remove it from the message")
                piece_spans = [(position, position + len(piece))] * len(piece_ids)
            else:
                piece_ids, piece_spans = _encode_piece(tokenizer, piece, newline, mid_text=k > 0, offsets=offsets)
                piece_spans = [(a + position, b + position) for a, b in piece_spans]
            ids += piece_ids
            spans += piece_spans
        position += len(piece)
    return EncodedChat(text, ids, spans if offsets else None)


def _strings(obj: Any) -> Iterator[str]:
    if isinstance(obj, str):
        yield obj
    elif isinstance(obj, dict):
        for value in obj.values():
            yield from _strings(value)
    elif isinstance(obj, (list, tuple)):
        for value in obj:
            yield from _strings(value)


def _first_control_token(messages: list[dict[str, Any]], pattern: re.Pattern[str] | None) -> tuple[int, str] | None:
    """(index of the message, the token) of the first control token inside a message."""
    if pattern is None:
        return None
    for index, message in enumerate(messages):
        for string in _strings(message):
            if match := pattern.search(string):
                return index, match.group()
    return None


def _markers(messages: list[dict[str, Any]], text: str, template: Any) -> tuple[str, str]:
    """Two characters that appear nowhere in the messages, the rendering or the template, so
    that the markers never meet a message's own characters (which stay as they are)."""
    used = set(text).union(*map(set, _strings(messages)), *map(set, _strings(template)))
    for code in range(_MARKER_BASE, _MARKER_BASE + 0xFFFD, 2):
        if chr(code) not in used and chr(code + 1) not in used:
            return chr(code), chr(code + 1)
    raise ChatEncodingError("the conversation uses every private-use character honed could mark control tokens with")


def _mark(obj: Any, pattern: re.Pattern[str], start: str, end: str) -> Any:
    """A copy of ``obj`` with every control token in its strings (not dict keys) enclosed in markers."""
    if isinstance(obj, str):
        return pattern.sub(lambda m: f"{start}{m.group()}{end}", obj)
    if isinstance(obj, dict):
        return {key: _mark(value, pattern, start, end) for key, value in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_mark(value, pattern, start, end) for value in obj]
    return obj


def _offsets(enc: Any) -> list[tuple[int, int]]:
    return [(int(a), int(b)) for a, b in enc["offset_mapping"]]


def _encode_piece(
    tokenizer: Any, piece: str, newline: list[int], *, mid_text: bool, offsets: bool
) -> tuple[list[int], list[tuple[int, int]]]:
    """Token ids (and spans within ``piece``) of a piece of the rendering, control tokens
    included. A piece from the middle of the text is encoded after a newline that is then
    dropped: SentencePiece-style tokenizers would otherwise start it with a word boundary."""
    if mid_text and newline:
        enc = tokenizer("\n" + piece, add_special_tokens=False, return_offsets_mapping=offsets)
        ids = list(enc["input_ids"])
        if ids[: len(newline)] == newline:
            spans = [(max(a - 1, 0), max(b - 1, 0)) for a, b in _offsets(enc)] if offsets else []
            return ids[len(newline):], spans[len(newline):]
    enc = tokenizer(piece, add_special_tokens=False, return_offsets_mapping=offsets)
    return list(enc["input_ids"]), _offsets(enc) if offsets else []


def _encode_as_text(tokenizer: Any, piece: str, newline: list[int]) -> list[int]:
    """Token ids of ``piece`` as ordinary text: no added token (special or not) is matched."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:  # a slow tokenizer: its added tokens that are not special stay tokens
        return list(tokenizer(piece, add_special_tokens=False, split_special_tokens=True)["input_ids"])

    def without_added_tokens(text: str) -> list[int]:
        if backend.normalizer is not None:
            text = backend.normalizer.normalize_str(text)
        splits = [s for s, _ in backend.pre_tokenizer.pre_tokenize_str(text)] if backend.pre_tokenizer else [text]
        return [token.id for split in splits for token in backend.model.tokenize(split)]

    ids = without_added_tokens("\n" + piece)
    return ids[len(newline):] if newline and ids[: len(newline)] == newline else without_added_tokens(piece)

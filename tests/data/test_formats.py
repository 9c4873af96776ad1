"""Unit tests for the accepted record shapes and their normalisation."""

import orjson
import pytest

from honed.data.formats import (
    RecordError,
    normalize_record,
    parse_line,
    record_hash,
)

CHAT = {
    "messages": [{"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "Hello."}]
}


def _chat(*turns):
    return {"messages": [{"role": r, "content": c} for r, c in turns]}


@pytest.mark.parametrize(
    ("obj", "expected"),
    [
        (CHAT, CHAT),
        (
            {"messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Hi?"},
                {"role": "assistant", "content": "Hello."},
            ]},
            _chat(("system", "Be brief."), ("user", "Hi?"), ("assistant", "Hello.")),
        ),
        ({"prompt": "Hi?", "completion": "Hello."}, CHAT),
        ({"instruction": "Hi?", "output": "Hello."}, CHAT),
        ({"instruction": "Hi?", "input": "", "output": "Hello."}, CHAT),
        ({"instruction": "Hi?", "input": " \n", "output": "Hello."}, CHAT),
        ({"instruction": "Hi?", "input": None, "output": "Hello."}, CHAT),
        (
            {"instruction": "Translate.", "input": "chat", "output": "cat"},
            _chat(("user", "Translate.\n\nchat"), ("assistant", "cat")),
        ),
        ({"text": "Once upon a time."}, {"text": "Once upon a time."}),
    ],
)
def test_each_shape_normalises_to_messages_or_text(obj, expected):
    assert normalize_record(obj) == expected


def test_extra_keys_are_ignored_at_top_level_and_in_messages():
    obj = {
        "id": 7,
        "source": "web",
        "messages": [
            {"role": "user", "content": "Hi?", "name": "ann"},
            {"role": "assistant", "content": "Hello.", "weight": 1},
        ],
    }
    assert normalize_record(obj) == CHAT
    assert normalize_record({"prompt": "Hi?", "completion": "Hello.", "meta": {}}) == CHAT


def test_content_is_kept_exactly():
    obj = _chat(("user", "  two  spaces\n"), ("assistant", "tab\tend "))
    assert normalize_record(obj) == obj


def test_record_hash_is_the_same_across_shapes_and_json_formatting():
    lines = [
        b'{"messages":[{"role":"user","content":"Hi?"},{"role":"assistant","content":"Hello."}]}',
        b'{ "messages" : [ { "content" : "Hi?", "role" : "user" },\t'
        b'{"role": "assistant", "content": "Hello."} ] , "id": 3 }\r\n',
        b'{"prompt": "Hi?", "completion": "Hello."}',
        b'{"completion":"Hello.","prompt":"Hi?"}',
        b'{"instruction": "Hi?", "input": "", "output": "Hello."}',
        b'{"output": "Hello.", "instruction": "Hi\\u003f"}',
    ]
    hashes = {record_hash(normalize_record(parse_line(line))) for line in lines}
    assert len(hashes) == 1


def test_record_hash_changes_with_content_and_is_sha256_hex():
    a = record_hash(normalize_record({"prompt": "Hi?", "completion": "Hello."}))
    b = record_hash(normalize_record({"prompt": "Hi?", "completion": "Hello. "}))
    c = record_hash(normalize_record({"text": "Hi?Hello."}))
    assert len({a, b, c}) == 3
    assert len(a) == 64 and int(a, 16) >= 0


@pytest.mark.parametrize(
    ("obj", "reason"),
    [
        ([1, 2], "record must be a JSON object, got array"),
        ("str", "record must be a JSON object, got string"),
        (None, "record must be a JSON object, got null"),
        (3.5, "record must be a JSON object, got float"),
        ({"messages": "hi"}, "messages must be an array, got string"),
        ({"messages": []}, "messages is empty; a chat record needs at least one assistant message"),
        ({"messages": [["user", "hi"]]}, "messages[0] must be an object, got array"),
        (
            {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
                          {"role": "user", "content": 5}]},
            "messages[2].content must be a string, got int",
        ),
        ({"messages": [{"role": "assistant", "content": None}]},
         "messages[0].content must be a string, got null"),
        ({"messages": [{"role": "assistant", "content": [{"type": "text", "text": "x"}]}]},
         "messages[0].content must be a string, got array"),
        ({"messages": [{"role": "user", "content": "a"}, {"content": "b"}]},
         "messages[1] has no 'role'"),
        ({"messages": [{"role": "assistant"}]}, "messages[0] has no 'content'"),
        ({"messages": [{"role": 1, "content": "a"}]}, "messages[0].role must be a string, got int"),
        ({"messages": [{"role": "user", "content": "a"}, {"role": "bot", "content": "b"}]},
         "messages[1].role 'bot' is not one of system, user, assistant"),
        ({"messages": [{"role": "user", "content": "a"},
                       {"role": "assistant", "content": " \t\n"}]},
         "messages[1].content is empty (whitespace only)"),
        ({"messages": [{"role": "user", "content": ""}, {"role": "assistant", "content": "b"}]},
         "messages[0].content is empty"),
        ({"messages": [{"role": "system", "content": "a"}, {"role": "user", "content": "b"}]},
         "messages has no assistant message; the last message must be one"),
        (
            {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
                          {"role": "user", "content": "c"}]},
            "messages[2] is the last message and has role 'user'; "
            "a chat record must end with an assistant message",
        ),
        ({"messages": [{"role": "user", "content": "a\x00"}, {"role": "assistant", "content": "b"}]},
         "messages[0].content contains a NUL character at position 1"),
        ({"text": "\ud800x"}, "text contains a lone surrogate (U+D800) at position 0"),
        ({"prompt": 1, "completion": "b"}, "prompt must be a string, got int"),
        ({"prompt": "a", "completion": "  "}, "completion is empty (whitespace only)"),
        ({"instruction": "a", "input": ["x"], "output": "b"}, "input must be a string, got array"),
        ({"instruction": "", "output": "b"}, "instruction is empty"),
        ({"instruction": "a", "output": {"x": 1}}, "output must be a string, got object"),
        ({"text": True}, "text must be a string, got bool"),
        ({"text": ""}, "text is empty"),
        ({"prompt": "a"},
         "has 'prompt' but no 'completion' (the prompt/completion shape needs both)"),
        ({"output": "a", "input": "b"},
         "has 'output' but no 'instruction' (the instruction/output shape needs both)"),
        ({"messages": [], "text": "a"},
         "ambiguous record: it has the keys of the messages and text shapes; "
         "keep the keys of one shape only"),
        ({"prompt": "a", "completion": "b", "instruction": "c", "output": "d"},
         "ambiguous record: it has the keys of the prompt/completion and instruction/output "
         "shapes; "
         "keep the keys of one shape only"),
    ],
)
def test_bad_records_name_the_key_and_the_problem(obj, reason):
    with pytest.raises(RecordError) as info:
        normalize_record(obj)
    assert info.value.reason == reason
    assert str(info.value) == reason


def test_unknown_shape_lists_keys_and_accepted_shapes():
    with pytest.raises(RecordError) as info:
        normalize_record({"question": "a", "answer": "b"})
    reason = info.value.reason
    assert reason.startswith("unknown record shape (keys: 'question', 'answer'); accepted shapes: ")
    for key in ('"messages"', '"prompt", "completion"', '"instruction"', '"text"'):
        assert key in reason
    with pytest.raises(RecordError, match=r"unknown record shape \(keys: none\)"):
        normalize_record({})


def test_unknown_role_is_shortened_when_long():
    with pytest.raises(RecordError) as info:
        normalize_record({"messages": [{"role": "x" * 500, "content": "a"}]})
    assert len(info.value.reason) < 120
    assert "is not one of system, user, assistant" in info.value.reason


@pytest.mark.parametrize(
    ("obj", "total"),
    [
        ({"text": "x" * 11}, 11),
        ({"prompt": "x" * 6, "completion": "y" * 5}, 11),
        ({"instruction": "x" * 4, "input": "z", "output": "y" * 5}, 12),  # "\n\n" counts
        (_chat(("system", "s" * 3), ("user", "u" * 4), ("assistant", "a" * 4)), 11),
    ],
)
def test_over_long_record_names_its_size_and_the_limit(obj, total):
    with pytest.raises(RecordError) as info:
        normalize_record(obj, max_record_chars=10)
    assert info.value.reason == (
        f"record has {total} characters of content, more than max_record_chars=10"
    )


def test_record_at_the_limit_is_accepted():
    assert normalize_record({"text": "x" * 10}, max_record_chars=10) == {"text": "x" * 10}
    chat = _chat(("user", "u" * 5), ("assistant", "a" * 5))
    assert normalize_record(chat, max_record_chars=10) == chat


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b'\xef\xbb\xbf{"text": "a"}\n',
         "line starts with a UTF-8 byte-order mark; save as UTF-8 without BOM"),
        (b'{"text": "caf\xe9"}\n',
         "invalid UTF-8 at byte offset 13 of the line (bytes e9): invalid continuation byte"),
        # The decoder's own words and column follow; their exact text is orjson's.
        (b'{"text": "a",}\n', "invalid JSON at column 1"),
        (b'{"text": "a"} x\n', "invalid JSON at column 1"),
        (b"{'text': 'a'}\n", "invalid JSON at column 2: "),
    ],
)
def test_parse_line_explains_bytes_that_are_not_json(raw, reason):
    with pytest.raises(RecordError) as info:
        parse_line(raw)
    assert info.value.reason.startswith(reason)
    assert len(info.value.reason) > len("invalid JSON at column 1: ")


def test_parse_line_accepts_crlf_and_escapes():
    assert parse_line(b'{"text": "caf\\u00e9 \xe2\x82\xac"}\r\n') == {"text": "café €"}
    assert orjson.loads(b"[1]") == parse_line(b"[1]\n")

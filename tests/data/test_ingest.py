"""Tests for streaming ingest: every line accounted for, nothing lost, nothing modified."""

import hashlib
import os

import orjson
import pytest

from honed.data.formats import normalize_record, record_hash
from honed.data.ingest import LineIssue, format_report, ingest_file, iter_normalized

GOOD_CHAT = (
    b'{"messages":[{"role":"user","content":"Hi?"},{"role":"assistant","content":"Hello."}]}\n'
)
GOOD_PC = b'{"prompt": "2+2?", "completion": "4"}\n'
GOOD_IO = b'{"instruction": "Translate.", "input": "chat", "output": "cat"}\n'
GOOD_TEXT = b'{"text": "Once upon a time."}\n'


def _write(tmp_path, data: bytes, name="data.jsonl"):
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / name
    path.write_bytes(data)
    return path


def _ingest(tmp_path, data: bytes, mode="lenient", **kwargs):
    source = _write(tmp_path, data)
    return source, ingest_file(source, tmp_path / "out", mode=mode, **kwargs)


def _dest_files(tmp_path):
    return sorted(p.name for p in (tmp_path / "out").iterdir())


def test_good_file_normalises_every_shape_with_line_and_hash(tmp_path):
    data = GOOD_CHAT + GOOD_PC + GOOD_IO + GOOD_TEXT
    source, result = _ingest(tmp_path, data, mode="strict")

    file_hash = hashlib.sha256(data).hexdigest()
    assert result.accepted and result.rejection_reason is None
    assert (result.n_records, result.n_bad, result.n_blank, result.n_lines) == (4, 0, 0, 4)
    assert result.file_hash == file_hash and result.n_bytes == len(data)
    assert result.normalized_path == tmp_path / "out" / f"{file_hash[:16]}.jsonl"
    assert result.rejected_path is None
    assert _dest_files(tmp_path) == [f"{file_hash[:16]}.jsonl", f"{file_hash[:16]}.report.json"]

    records = list(iter_normalized(result.normalized_path))
    assert [r["line"] for r in records] == [1, 2, 3, 4]
    assert records[0]["messages"] == [
        {"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "Hello."}
    ]
    assert records[1]["messages"] == [
        {"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}
    ]
    assert records[2]["messages"][0] == {"role": "user", "content": "Translate.\n\nchat"}
    assert records[3] == {"line": 4, "hash": records[3]["hash"], "text": "Once upon a time."}
    for raw, record in zip(data.splitlines(), records):
        assert record["hash"] == record_hash(normalize_record(orjson.loads(raw)))
    assert list(result.iter_record_hashes()) == [(r["line"], r["hash"]) for r in records]


def test_lenient_keeps_good_lines_and_sets_bad_ones_aside_byte_for_byte(tmp_path):
    bad = {
        3: b'{"messages":[{"role":"user","content":"a"},{"role":"bot","content":"b"}]}\n',
        4: b'[1,2]\n',
        5: b'"str"\n',
        6: b'null\n',
        8: b'{"text": "caf\xe9 \xff"}\r\n',
        9: b'{"prompt": "a", "completion": "b",\n',
        11: b'{"messages":[{"role":"user","content":"a"},'
        b'{"role":"assistant","content":{"x":[1]}}]}\n',
    }
    blank = {7: b"   \t\r\n", 10: b"\n"}
    good = {1: GOOD_CHAT, 2: GOOD_PC, 12: GOOD_TEXT.rstrip(b"\n")}  # last line has no newline
    lines = {**bad, **blank, **good}
    data = b"".join(lines[i] for i in sorted(lines))
    source, result = _ingest(tmp_path, data)
    before = hashlib.sha256(data).hexdigest()

    assert result.accepted
    assert (result.n_records, result.n_bad, result.n_blank) == (3, 7, 2)
    assert result.n_lines == 12 == len(lines)
    assert [e.line for e in result.errors] == sorted(bad)
    assert [n.line for n in result.notes] == sorted(blank)
    reasons = {e.line: e.reason for e in result.errors}
    assert reasons[3] == "messages[1].role 'bot' is not one of system, user, assistant"
    assert reasons[4] == "record must be a JSON object, got array"
    assert reasons[5] == "record must be a JSON object, got string"
    assert reasons[6] == "record must be a JSON object, got null"
    assert reasons[8].startswith("invalid UTF-8 at byte offset 13 of the line (bytes e9)")
    assert reasons[9].startswith("invalid JSON at column ")
    assert reasons[11] == "messages[1].content must be a string, got object"

    assert result.rejected_path.read_bytes() == b"".join(bad[i] for i in sorted(bad))
    assert [r["line"] for r in iter_normalized(result.normalized_path)] == [1, 2, 12]
    assert source.read_bytes() == data and hashlib.sha256(source.read_bytes()).hexdigest() == before

    report = orjson.loads(result.report_path.read_bytes())
    assert report["errors"][0] == {"line": 3, "reason": reasons[3]}
    assert report["notes"] == [{"line": 7, "reason": "blank line, skipped"},
                               {"line": 10, "reason": "blank line, skipped"}]
    assert (report["n_records"], report["n_bad"], report["n_blank"]) == (3, 7, 2)
    assert report["rejected_path"] == str(result.rejected_path)

    text = format_report(result)
    assert "data.jsonl:3: messages[1].role 'bot' is not one of system, user, assistant" in text
    assert "data.jsonl:6: record must be a JSON object, got null" in text
    assert text.splitlines()[0].startswith("data.jsonl: accepted, lenient mode: 3 records, 7 bad")


def test_strict_rejects_whole_file_reports_every_bad_line_and_writes_no_records(tmp_path):
    data = GOOD_CHAT + b"[1]\n" + GOOD_PC + b'{"text": 1}\n' + GOOD_TEXT
    source, result = _ingest(tmp_path, data, mode="strict")

    assert not result.accepted
    assert result.rejection_reason == "strict mode and 2 bad lines"
    assert result.errors == [
        LineIssue(2, "record must be a JSON object, got array"),
        LineIssue(4, "text must be a string, got int"),
    ]
    assert (result.n_records, result.n_bad) == (3, 2)
    assert result.normalized_path is None and result.rejected_path is None
    stem = hashlib.sha256(data).hexdigest()[:16]
    assert _dest_files(tmp_path) == [f"{stem}.report.json"]  # and no temporary file left
    assert orjson.loads(result.report_path.read_bytes())["accepted"] is False
    assert list(result.iter_record_hashes()) == []
    assert source.read_bytes() == data
    assert "rejected (strict mode and 2 bad lines)" in format_report(result)


def test_bom_rejects_line_one_and_keeps_the_rest_in_lenient_mode(tmp_path):
    data = b"\xef\xbb\xbf" + GOOD_CHAT + GOOD_PC
    _, result = _ingest(tmp_path, data)
    assert result.errors == [LineIssue(
        1, "file starts with a UTF-8 byte-order mark; save as UTF-8 without BOM"
    )]
    assert result.n_records == 1 and result.accepted
    assert result.rejected_path.read_bytes() == b"\xef\xbb\xbf" + GOOD_CHAT


def test_crlf_and_missing_final_newline_give_the_same_records(tmp_path):
    lf = GOOD_CHAT + GOOD_PC + GOOD_TEXT
    crlf = lf.replace(b"\n", b"\r\n").rstrip(b"\r\n")
    _, a = _ingest(tmp_path / "a", lf, mode="strict")
    _, b = _ingest(tmp_path / "b", crlf, mode="strict")
    assert a.accepted and b.accepted and a.n_records == b.n_records == 3
    assert a.file_hash != b.file_hash
    assert list(a.iter_record_hashes()) == list(b.iter_record_hashes())
    assert "\r" not in b.normalized_path.read_text()


def test_blank_lines_are_notes_not_errors_even_in_strict_mode(tmp_path):
    data = b"\n" + GOOD_CHAT + b"  \n\r\n" + GOOD_PC + b"\n"
    _, result = _ingest(tmp_path, data, mode="strict")
    assert result.accepted and result.errors == []
    assert result.n_blank == 4 and [n.line for n in result.notes] == [1, 3, 4, 6]
    assert [r["line"] for r in iter_normalized(result.normalized_path)] == [2, 5]


@pytest.mark.parametrize("data", [b"", b"\n\n  \n"])
def test_file_without_records_is_not_accepted(tmp_path, data):
    _, result = _ingest(tmp_path, data)
    assert not result.accepted and result.rejection_reason == "file contains no records"
    assert result.normalized_path is None and result.report_path.exists()


def test_lenient_file_with_only_bad_lines_is_not_accepted_but_keeps_them(tmp_path):
    _, result = _ingest(tmp_path, b"1\n2\n")
    assert not result.accepted and result.n_bad == 2
    assert result.rejected_path.read_bytes() == b"1\n2\n"


def test_huge_line_is_streamed_to_the_reject_file_and_the_next_lines_still_count(tmp_path):
    huge = b'{"text": "' + b"x" * 50_000 + b'"}\n'
    data = GOOD_CHAT + huge + GOOD_PC + huge.rstrip(b"\n")
    _, result = _ingest(tmp_path, data, max_record_chars=100, max_line_bytes=4096)
    assert [e.line for e in result.errors] == [2, 4]
    assert result.errors[0].reason == "line is longer than max_line_bytes=4096; not parsed"
    assert result.n_records == 2 and result.n_bytes == len(data)
    assert result.rejected_path.read_bytes() == huge + huge.rstrip(b"\n")
    assert result.file_hash == hashlib.sha256(data).hexdigest()


def test_record_over_max_record_chars_names_the_limit(tmp_path):
    data = GOOD_CHAT + b'{"text": "' + b"y" * 101 + b'"}\n'
    _, result = _ingest(tmp_path, data, mode="strict", max_record_chars=100)
    assert result.errors == [
        LineIssue(2, "record has 101 characters of content, more than max_record_chars=100")
    ]


def test_error_details_are_capped_but_every_bad_line_is_counted(tmp_path):
    data = GOOD_TEXT + b"[]\n" * 50
    _, result = _ingest(tmp_path, data, max_issues=5)
    assert result.n_bad == 50 and len(result.errors) == 5 and result.errors_truncated
    assert result.rejected_path.read_bytes() == b"[]\n" * 50
    text = format_report(result, limit=3)
    assert "data.jsonl: ... and 47 more bad lines" in text
    assert text.count("data.jsonl:") == 1 + 3 + 1 + 1  # summary, 3 errors, more, rejects


def test_reingesting_the_same_file_gives_the_same_files(tmp_path):
    data = GOOD_CHAT + b"oops\n" + GOOD_TEXT
    source = _write(tmp_path, data)
    first = ingest_file(source, tmp_path / "out", mode="lenient")
    content = first.normalized_path.read_bytes()
    second = ingest_file(source, tmp_path / "out", mode="lenient")
    assert second.normalized_path == first.normalized_path
    assert second.normalized_path.read_bytes() == content
    assert len(os.listdir(tmp_path / "out")) == 3


def test_unknown_mode_is_refused(tmp_path):
    with pytest.raises(ValueError, match="mode must be 'strict' or 'lenient'"):
        ingest_file(_write(tmp_path, GOOD_TEXT), tmp_path / "out", mode="loose")


def test_a_failed_ingest_leaves_no_temporary_files(tmp_path):
    (tmp_path / "out").mkdir()
    with pytest.raises(FileNotFoundError):
        ingest_file(tmp_path / "missing.jsonl", tmp_path / "out", mode="strict")
    assert _dest_files(tmp_path) == []

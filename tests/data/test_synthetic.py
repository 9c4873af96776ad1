"""Unit tests for the synthetic task families: deterministic, disjoint, and correct."""

import json
import re

import pytest

from honed.data.synthetic import FAMILIES, eval_path_for, generate, write_synthetic


def _pairs(records):
    return [(r["messages"][0]["content"], r["messages"][1]["content"]) for r in records]


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_generate_is_deterministic_for_a_seed_and_differs_across_seeds(family):
    assert generate(family, 50, seed=3) == generate(family, 50, seed=3)
    assert generate(family, 50, seed=3) != generate(family, 50, seed=4)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_records_are_chat_records_with_distinct_prompts_and_short_answers(family):
    records = generate(family, 200, seed=0)
    assert len(records) == 200
    for record in records:
        assert [m["role"] for m in record["messages"]] == ["user", "assistant"]
    prompts = [p for p, _ in _pairs(records)]
    assert len(set(prompts)) == len(prompts)
    # person_json is for real models (SmolLM2): a four-field JSON object, still one line.
    limit = {"json_extract": 24, "person_json": 80}.get(family, 12)
    assert all(0 < len(a) <= limit for _, a in _pairs(records))


def test_a_smaller_n_is_a_prefix_of_a_larger_one():
    assert generate("copy", 30, seed=1) == generate("copy", 100, seed=1)[:30]


def test_arithmetic_answers_are_the_sums():
    for prompt, answer in _pairs(generate("arithmetic", 300)):
        a, b = re.fullmatch(r"(\d\d)\+(\d\d)=", prompt).groups()
        assert int(answer) == int(a) + int(b)


def test_copy_answers_repeat_the_word():
    for prompt, answer in _pairs(generate("copy", 300)):
        word = prompt.removeprefix("copy: ")
        assert answer == word and re.fullmatch(r"[a-z]{4,8}", word)


def test_reversal_answers_are_the_word_backwards():
    for prompt, answer in _pairs(generate("reversal", 300)):
        word = prompt.removeprefix("reverse: ")
        assert answer == word[::-1] and re.fullmatch(r"[a-z]{3,6}", word)


def test_kv_recall_answers_the_queried_key():
    for prompt, answer in _pairs(generate("kv_recall", 300)):
        facts, query = re.fullmatch(r"(.*); ([a-z])\?", prompt).groups()
        table = dict(fact.split("=") for fact in facts.split())
        assert answer == table[query]


def test_json_extract_answers_are_json_of_the_fields():
    for prompt, answer in _pairs(generate("json_extract", 300)):
        name, age = re.fullmatch(r"name: ([a-z]+) age: (\d+) -> json", prompt).groups()
        assert json.loads(answer) == {"name": name, "age": int(age)}
        assert " " not in answer  # compact, so exact match does not hinge on spacing


def test_unknown_family_error_names_the_allowed_ones(tmp_path):
    with pytest.raises(ValueError) as excinfo:
        generate("sorting", 10)
    for name in FAMILIES:
        assert name in str(excinfo.value)
    with pytest.raises(ValueError, match="allowed"):
        write_synthetic("sorting", 10, tmp_path / "sorting.jsonl")
    assert not any(tmp_path.iterdir())


def test_asking_for_more_prompts_than_a_family_has_is_refused():
    with pytest.raises(ValueError, match="distinct prompts"):
        generate("arithmetic", 90 * 90)


def test_write_synthetic_writes_disjoint_train_and_eval_files(tmp_path):
    train, evaluation = write_synthetic("reversal", 500, tmp_path / "data" / "rev.jsonl", seed=7)
    assert train == tmp_path / "data" / "rev.jsonl"
    assert evaluation == tmp_path / "data" / "rev.eval.jsonl"
    train_records = [json.loads(line) for line in train.read_text().splitlines()]
    eval_records = [json.loads(line) for line in evaluation.read_text().splitlines()]
    assert len(train_records) == 500
    assert len(eval_records) == 50  # max(50, n // 10)
    train_prompts = {p for p, _ in _pairs(train_records)}
    assert not train_prompts & {p for p, _ in _pairs(eval_records)}
    # No temporary files are left beside the results.
    assert sorted(p.name for p in train.parent.iterdir()) == ["rev.eval.jsonl", "rev.jsonl"]


def test_write_synthetic_eval_set_does_not_move_when_train_size_changes(tmp_path):
    _, small = write_synthetic("copy", 100, tmp_path / "a.jsonl", eval_n=60)
    _, large = write_synthetic("copy", 2000, tmp_path / "b.jsonl", eval_n=60)
    assert small.read_text() == large.read_text()
    _, default = write_synthetic("copy", 2000, tmp_path / "c.jsonl")
    assert len(default.read_text().splitlines()) == 200


def test_eval_path_for_puts_eval_before_the_jsonl_suffix(tmp_path):
    assert eval_path_for(tmp_path / "rev.jsonl") == tmp_path / "rev.eval.jsonl"
    assert eval_path_for(tmp_path / "rev") == tmp_path / "rev.eval.jsonl"

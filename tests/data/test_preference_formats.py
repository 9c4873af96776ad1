"""Preference pairs, unpaired judgements and ShareGPT: their shapes, their refusals, and
the kind a dataset records (for DPO and KTO)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from types import SimpleNamespace

import orjson
import pytest
import sqlalchemy as sa

from honed.data.formats import RecordError, normalize_record, record_hash, record_kind
from honed.data.ingest import LineIssue, ingest_file, iter_normalized
from honed.data.kinds import datasets_problem, objective_accepts
from honed.data.synthetic import as_kind, generate, near_miss, write_synthetic


def U(text):
    return {"role": "user", "content": text}


def A(text):
    return {"role": "assistant", "content": text}


def S(text):
    return {"role": "system", "content": text}


PAIR = {"prompt": [U("2+2?")], "chosen": [A("4")], "rejected": [A("5")]}
PAIR_WITH_SYSTEM = {"prompt": [S("Be brief."), U("2+2?")], "chosen": [A("4")], "rejected": [A("5")]}


def _jsonl(*records) -> bytes:
    return b"".join(orjson.dumps(r) + b"\n" for r in records)


def _ingest(tmp_path, data: bytes, mode="lenient", **kwargs):
    tmp_path.mkdir(parents=True, exist_ok=True)
    source = tmp_path / "data.jsonl"
    source.write_bytes(data)
    return ingest_file(source, tmp_path / "out", mode=mode, **kwargs)


# --- shapes and their normalised forms ----------------------------------------------


@pytest.mark.parametrize(
    ("obj", "expected"),
    [
        # TRL, strings: the prompt is one user turn, each side one assistant turn.
        ({"prompt": "2+2?", "chosen": "4", "rejected": "5"}, PAIR),
        # TRL, conversational with an explicit prompt.
        ({"prompt": [U("2+2?")], "chosen": [A("4")], "rejected": [A("5")]}, PAIR),
        (
            {"prompt": [S("Be brief."), U("2+2?")], "chosen": [A("4")], "rejected": [A("5")], "score": 0.3},
            PAIR_WITH_SYSTEM,
        ),
        # TRL, implicit prompt: the common prefix of two whole conversations.
        ({"chosen": [U("2+2?"), A("4")], "rejected": [U("2+2?"), A("5")]}, PAIR),
        (
            {"chosen": [S("Be brief."), U("2+2?"), A("4")], "rejected": [S("Be brief."), U("2+2?"), A("5")]},
            PAIR_WITH_SYSTEM,
        ),
        (
            {"chosen": [U("hi"), A("hello"), U("2+2?"), A("4"), A("Sure.")],
             "rejected": [U("hi"), A("hello"), U("2+2?"), A("5")]},
            {"prompt": [U("hi"), A("hello"), U("2+2?")], "chosen": [A("4"), A("Sure.")], "rejected": [A("5")]},
        ),
        # OpenAI's DPO lines (input's other keys, e.g. tools, are ignored).
        (
            {"input": {"messages": [U("2+2?")], "tools": []},
             "preferred_output": [A("4")], "non_preferred_output": [A("5")]},
            PAIR,
        ),
        # KTO, strings and messages; the label stays a boolean.
        ({"prompt": "2+2?", "completion": "4", "label": True},
         {"prompt": [U("2+2?")], "completion": [A("4")], "label": True}),
        ({"prompt": [S("Be brief."), U("2+2?")], "completion": [A("5")], "label": False},
         {"prompt": [S("Be brief."), U("2+2?")], "completion": [A("5")], "label": False}),
        # prompt/completion without a label is still SFT.
        ({"prompt": "2+2?", "completion": "4"}, {"messages": [U("2+2?"), A("4")]}),
        # ShareGPT becomes chat messages.
        (
            {"conversations": [{"from": "system", "value": "Be brief."}, {"from": "human", "value": "2+2?"},
                               {"from": "gpt", "value": "4", "weight": 1}]},
            {"messages": [S("Be brief."), U("2+2?"), A("4")]},
        ),
    ],
)
def test_each_shape_normalises_as_specified(obj, expected):
    assert normalize_record(obj) == expected


@pytest.mark.parametrize(
    ("record", "kind"),
    [
        ({"messages": [U("a"), A("b")]}, "sft"),
        ({"text": "a"}, "sft"),
        (PAIR, "preference"),
        ({"prompt": [U("a")], "completion": [A("b")], "label": False}, "unpaired"),
    ],
)
def test_record_kind(record, kind):
    assert record_kind(record) == kind


def test_one_pair_hashes_the_same_in_every_shape_and_differs_when_swapped():
    shapes = [
        {"prompt": "2+2?", "chosen": "4", "rejected": "5"},
        {"prompt": [U("2+2?")], "chosen": [A("4")], "rejected": [A("5")]},
        {"chosen": [U("2+2?"), A("4")], "rejected": [U("2+2?"), A("5")]},
        {"input": {"messages": [U("2+2?")]}, "preferred_output": [A("4")], "non_preferred_output": [A("5")]},
    ]
    hashes = {record_hash(normalize_record(obj)) for obj in shapes}
    assert len(hashes) == 1
    swapped = normalize_record({"prompt": "2+2?", "chosen": "5", "rejected": "4"})
    assert record_hash(swapped) not in hashes
    good = normalize_record({"prompt": "2+2?", "completion": "4", "label": True})
    bad = normalize_record({"prompt": "2+2?", "completion": "4", "label": False})
    assert record_hash(good) != record_hash(bad)


# --- refusals: each with its line and reason, the line kept in the reject file ------

BAD = [
    ({"prompt": "2+2?", "chosen": "4", "rejected": "4"},
     "chosen and rejected are the same; a pair needs two different answers"),
    ({"prompt": [U("2+2?")], "chosen": [A("4")], "rejected": [A("4")]},
     "chosen and rejected are the same; a pair needs two different answers"),
    ({"input": {"messages": [U("2+2?")]}, "preferred_output": [A("4")], "non_preferred_output": [A("4")]},
     "preferred_output and non_preferred_output are the same; a pair needs two different answers"),
    ({"prompt": "2+2?", "chosen": "", "rejected": "5"}, "chosen is empty"),
    ({"prompt": "2+2?", "chosen": "4", "rejected": "  "}, "rejected is empty (whitespace only)"),
    ({"prompt": "2+2?", "chosen": [], "rejected": "5"},
     "chosen is empty; it needs at least one assistant message"),
    ({"prompt": "", "chosen": "4", "rejected": "5"}, "prompt is empty"),
    ({"input": {"messages": [U("2+2?")]}, "preferred_output": [], "non_preferred_output": [A("5")]},
     "preferred_output is empty; it needs at least one assistant message"),
    ({"chosen": [U("2+2?"), A("4")], "rejected": [U("2+2?")]},
     "rejected is empty after the prompt it shares with the other side (message 0); it needs an assistant answer"),
    ({"prompt": "2+2?", "chosen": "4"}, "has 'chosen' but no 'rejected' (a preference pair needs both)"),
    # a label that is not a boolean
    ({"prompt": "2+2?", "completion": "4", "label": "true"},
     "label must be true or false (a JSON boolean), got string 'true'"),
    ({"prompt": "2+2?", "completion": "4", "label": 1}, "label must be true or false (a JSON boolean), got int 1"),
    ({"prompt": "2+2?", "completion": "4", "label": None}, "label must be true or false (a JSON boolean), got null"),
    ({"prompt": "2+2?", "completion": "", "label": True}, "completion is empty"),
    # the prompt differs between chosen and rejected
    ({"chosen": [U("2+2?"), A("4")], "rejected": [U("3+3?"), A("6")]},
     "the prompt differs between chosen and rejected at message 0 (chosen[0] and rejected[0] are user messages "
     "with different content); only the assistant answers after the shared prompt may differ"),
    ({"chosen": [S("Be brief."), U("2+2?"), A("4")], "rejected": [S("Be brief."), A("5")]},
     "the prompt differs between chosen and rejected at message 1 (chosen[1] has role 'user', rejected[1] role "
     "'assistant'); only the assistant answers after the shared prompt may differ"),
    ({"chosen": "4", "rejected": "5"},
     "has 'chosen' and 'rejected' but no 'prompt': give a 'prompt', or give chosen and rejected as whole "
     "conversations (arrays of messages) that share their prompt"),
    # a prompt not ending with a user turn
    ({"prompt": [U("2+2?"), A("Let me think.")], "chosen": "4", "rejected": "5"},
     "prompt[1] is the last message of the prompt and has role 'assistant'; a prompt must end with a user message"),
    ({"input": {"messages": [S("Be brief.")]}, "preferred_output": [A("4")], "non_preferred_output": [A("5")]},
     "input.messages[0] is the last message of the prompt and has role 'system'; "
     "a prompt must end with a user message"),
    ({"prompt": [S("Be brief.")], "completion": "4", "label": True},
     "prompt[0] is the last message of the prompt and has role 'system'; a prompt must end with a user message"),
    ({"chosen": [S("Be brief."), A("4")], "rejected": [S("Be brief."), A("5")]},
     "the prompt chosen and rejected share (message 0) ends with a 'system' message; "
     "a prompt must end with a user message"),
    # assistant sides holding other roles
    ({"prompt": "2+2?", "chosen": [U("2+2?"), A("4")], "rejected": [A("5")]},
     "chosen[0] has role 'user'; chosen holds only the assistant answer (the conversation before it is the prompt)"),
    ({"input": {"messages": [U("2+2?")]}, "preferred_output": [A("4")], "non_preferred_output": [S("5")]},
     "non_preferred_output[0] has role 'system'; non_preferred_output holds only the assistant answer "
     "(the conversation before it is the prompt)"),
    ({"chosen": [U("hi"), A("4"), U("sure?")], "rejected": [U("hi"), A("5")]},
     "chosen[2] has role 'user'; chosen holds only the assistant answer (the conversation before it is the prompt)"),
    ({"prompt": "2+2?", "completion": [A("4"), U("ok")], "label": True},
     "completion[1] has role 'user'; completion holds only the assistant answer "
     "(the conversation before it is the prompt)"),
    # shapes and types
    ({"prompt": "2+2?", "chosen": 4, "rejected": "5"}, "chosen must be a string or an array of messages, got int"),
    ({"prompt": "2+2?", "chosen": [A("4"), {"role": "bot", "content": "x"}], "rejected": "5"},
     "chosen[1].role 'bot' is not one of system, user, assistant"),
    ({"input": [U("2+2?")], "preferred_output": [A("4")], "non_preferred_output": [A("5")]},
     "input must be an object with 'messages', got array"),
    ({"input": {"prompt": "2+2?"}, "preferred_output": [A("4")], "non_preferred_output": [A("5")]},
     "input has no 'messages'"),
    ({"preferred_output": [A("4")], "non_preferred_output": [A("5")]},
     "has no 'input' (the OpenAI DPO shape needs input, preferred_output and non_preferred_output)"),
    ({"input": {"messages": [U("2+2?")]}, "preferred_output": "4", "non_preferred_output": [A("5")]},
     "preferred_output must be an array of messages, got string"),
    ({"prompt": "2+2?", "completion": "4", "chosen": "4", "rejected": "5"},
     "ambiguous record: it has the keys of the prompt/completion and chosen/rejected shapes; "
     "keep the keys of one shape only"),
    # ShareGPT
    ({"conversations": [{"from": "human", "value": "2+2?"}, {"from": "bot", "value": "4"}]},
     "conversations[1].from 'bot' is not one of system, human, gpt"),
    ({"conversations": [{"from": "human", "value": "2+2?"}, {"from": "gpt", "value": 4}]},
     "conversations[1].value must be a string, got int"),
    ({"conversations": [{"from": "human", "value": "2+2?"}, {"role": "gpt", "value": "4"}]},
     "conversations[1] has no 'from'"),
    ({"conversations": [{"from": "gpt", "value": "4"}, {"from": "human", "value": "2+2?"}]},
     "conversations[1] is the last message and has from 'human'; a conversation must end with a 'gpt' message"),
    ({"conversations": []}, "conversations is empty; a conversation needs at least one 'gpt' message"),
]


@pytest.mark.parametrize(("obj", "reason"), BAD)
def test_bad_records_are_refused_with_their_reason(obj, reason):
    with pytest.raises(RecordError) as err:
        normalize_record(obj)
    assert err.value.reason == reason


def test_ingest_refuses_every_bad_line_with_line_and_reason_and_keeps_it_in_the_reject_file(tmp_path):
    # The good pair first: it makes the file a preference file. The ShareGPT lines are
    # refused for their shape before their kind is looked at.
    lines = [orjson.dumps(PAIR) + b"\n"] + [orjson.dumps(obj) + b"\n" for obj, _ in BAD]
    result = _ingest(tmp_path, b"".join(lines))

    assert result.accepted and result.kind == "preference"
    assert (result.n_records, result.n_bad) == (1, len(BAD))
    assert result.errors == [LineIssue(i + 2, reason) for i, (_, reason) in enumerate(BAD)]
    assert result.rejected_path.read_bytes() == b"".join(lines[1:])
    assert [r["line"] for r in iter_normalized(result.normalized_path)] == [1]
    report = json.loads(result.report_path.read_text())
    assert report["kind"] == "preference" and report["errors"][0] == {"line": 2, "reason": BAD[0][1]}


def test_max_record_chars_counts_the_prompt_and_both_sides(tmp_path):
    pair = {"prompt": "a" * 4, "chosen": "b" * 3, "rejected": "c" * 3}
    assert normalize_record(pair, max_record_chars=10)["chosen"] == [A("bbb")]
    with pytest.raises(RecordError, match=r"record has 10 characters of content, more than max_record_chars=9"):
        normalize_record(pair, max_record_chars=9)
    unpaired = {"prompt": [S("ss"), U("uu")], "completion": [A("aa"), A("bb")], "label": True}
    with pytest.raises(RecordError, match=r"record has 8 characters of content, more than max_record_chars=7"):
        normalize_record(unpaired, max_record_chars=7)
    result = _ingest(tmp_path, _jsonl(pair), max_record_chars=9)
    assert not result.accepted and result.errors[0].line == 1
    assert result.rejected_path.read_bytes() == _jsonl(pair)


# --- one kind per file ---------------------------------------------------------------


def test_a_file_mixing_kinds_keeps_the_kind_of_its_first_record_and_refuses_the_others(tmp_path):
    chat = {"messages": [U("2+2?"), A("4")]}
    thumbs = {"prompt": "2+2?", "completion": "4", "label": True}
    data = _jsonl({"bad": 1}, PAIR, chat, PAIR_WITH_SYSTEM, thumbs)
    result = _ingest(tmp_path, data)

    assert result.accepted and result.kind == "preference"
    assert (result.n_records, result.n_bad) == (2, 3)
    assert result.errors[1:] == [
        LineIssue(3, "line holds an SFT record, but this file holds preference pairs (the kind of its first "
                     "record, line 2); a dataset holds one kind: put SFT records (conversations or text) in a "
                     "file of their own"),
        LineIssue(5, "line holds an unpaired judgement, but this file holds preference pairs (the kind of its "
                     "first record, line 2); a dataset holds one kind: put unpaired judgements (prompt, "
                     "completion, label) in a file of their own"),
    ]
    # Nothing lost: every line is either a record or, unchanged, in the reject file.
    assert [r["line"] for r in iter_normalized(result.normalized_path)] == [2, 4]
    assert result.rejected_path.read_bytes() == _jsonl({"bad": 1}, chat, thumbs)

    strict = _ingest(tmp_path / "strict", data, mode="strict")
    assert not strict.accepted and strict.normalized_path is None
    assert strict.rejection_reason == "strict mode and 3 bad lines"


def test_a_file_of_one_kind_is_that_kind(tmp_path):
    thumbs = _jsonl({"prompt": "a?", "completion": "b", "label": True}, {"prompt": "a?", "completion": "c",
                                                                          "label": False})
    assert _ingest(tmp_path / "u", thumbs, mode="strict").kind == "unpaired"
    sharegpt = _jsonl({"conversations": [{"from": "human", "value": "a?"}, {"from": "gpt", "value": "b"}]})
    assert _ingest(tmp_path / "s", sharegpt, mode="strict").kind == "sft"
    assert _ingest(tmp_path / "e", b"\n", mode="lenient").kind is None


# --- which objective can use which kind ------------------------------------------------


@pytest.mark.parametrize(
    ("objective", "kind", "ok"),
    [
        ("sft", "sft", True), ("sft", "preference", False), ("sft", "unpaired", False),
        ("dpo", "sft", False), ("dpo", "preference", True), ("dpo", "unpaired", False),
        ("kto", "sft", False), ("kto", "preference", True), ("kto", "unpaired", True),
    ],
)
def test_objective_accepts(objective, kind, ok):
    assert (objective_accepts(objective, kind) is None) == ok


def test_objective_refusals_name_both_and_what_would_work():
    assert objective_accepts("sft", "preference", dataset=3) == (
        "dataset 3 holds preference pairs; train.objective = 'sft' cannot use them: "
        "set train.objective = 'dpo' or 'kto'"
    )
    assert objective_accepts("dpo", "unpaired", dataset=4) == (
        "dataset 4 holds unpaired judgements (prompt, completion, label); train.objective = 'dpo' cannot use "
        "them: set train.objective = 'kto'"
    )
    assert objective_accepts("kto", "sft") == (
        "the dataset holds SFT records (conversations or text); train.objective = 'kto' cannot use them: "
        "set train.objective = 'sft'"
    )
    assert objective_accepts("orpo", "sft") == "train.objective = 'orpo' is not one of sft, dpo, kto"
    datasets = [SimpleNamespace(id=1, kind="unpaired"), SimpleNamespace(id=2, kind="preference")]
    assert datasets_problem("kto", datasets) is None
    assert datasets_problem("dpo", datasets).startswith("dataset 1 holds unpaired judgements")


# --- synthetic preference families -------------------------------------------------------


def test_near_miss_always_differs_and_keeps_the_form():
    import random

    rng = random.Random(0)
    for answer in ["85", "olleh", "7", '{"name":"ab","age":31}', "Ab9"]:
        for _ in range(50):
            wrong = near_miss(answer, rng)
            assert wrong != answer and len(wrong) == len(answer)
            assert sum(a != b for a, b in zip(answer, wrong)) == 1


@pytest.mark.parametrize("kind", ["preference", "unpaired"])
def test_synth_preference_families_round_trip_through_ingest(tmp_path, kind):
    train, evaluation = write_synthetic("arithmetic", 40, tmp_path / "add.jsonl", seed=2, eval_n=10, kind=kind)
    result = ingest_file(train, tmp_path / "out", mode="strict")
    assert result.accepted and result.kind == kind and result.n_records == 40
    records = list(iter_normalized(result.normalized_path))
    for record in records:
        a, b = record["prompt"][0]["content"].removesuffix("=").split("+")
        right = str(int(a) + int(b))
        if kind == "preference":
            assert record["chosen"] == [A(right)]
            assert record["rejected"][0]["content"] != right
        else:
            assert (record["completion"][0]["content"] == right) == record["label"]
    if kind == "unpaired":
        assert [r["label"] for r in records[:4]] == [True, False, True, False]
    # The eval split stays chat records with the right answers.
    assert ingest_file(evaluation, tmp_path / "eval", mode="strict").kind == "sft"


def test_synth_refuses_an_unknown_kind(tmp_path):
    with pytest.raises(ValueError, match="unknown record kind 'pairs'; allowed: sft, preference, unpaired"):
        write_synthetic("arithmetic", 10, tmp_path / "x.jsonl", kind="pairs")
    assert not (tmp_path / "x.jsonl").exists()
    assert as_kind(generate("copy", 3), "sft") == generate("copy", 3)


# --- the kind on the dataset in the store ----------------------------------------------


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def store_url(request, tmp_path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'store' / 'honed.db'}"
    return request.getfixturevalue("pg_schema_url")


def _workspace(tmp_path):
    return SimpleNamespace(datasets_dir=tmp_path / "datasets",
                           settings=SimpleNamespace(ingest=SimpleNamespace(max_record_chars=32768)))


@pytest.mark.integration
def test_the_dataset_records_its_kind_and_listings_show_it(tmp_path, store_url):
    from honed.data.datasets import add_dataset_file
    from honed.server.api_data import Dataset
    from honed.store import Store, StoreError

    prefs = tmp_path / "prefs.jsonl"
    prefs.write_bytes(_jsonl(PAIR, {"messages": [U("a"), A("b")]}, PAIR_WITH_SYSTEM))
    chat = tmp_path / "chat.jsonl"
    chat.write_bytes(_jsonl({"messages": [U("a"), A("b")]}))
    with Store.open(store_url) as store:
        store.ensure_track("main", store.add_base("tiny"))
        added = add_dataset_file(_workspace(tmp_path), store, prefs, track="main", mode="lenient")
        assert added.dataset.kind == "preference" and added.summary()["kind"] == "preference"
        assert "records (preference pairs), 1 bad lines kept aside" in added.describe()
        sft = add_dataset_file(_workspace(tmp_path), store, chat, track="main", mode="strict").dataset
        assert sft.kind == "sft"
        assert [(d.id, d.kind) for d in store.list_datasets("main")] == [(added.dataset.id, "preference"),
                                                                          (sft.id, "sft")]
        assert [d.id for d in store.list_datasets("main", kind="preference")] == [added.dataset.id]
        assert Dataset.model_validate(store.get_dataset(sft.id)).model_dump()["kind"] == "sft"
        assert objective_accepts("sft", added.dataset.kind, dataset=added.dataset.id) == (
            f"dataset {added.dataset.id} holds preference pairs; train.objective = 'sft' cannot use them: "
            "set train.objective = 'dpo' or 'kto'"
        )
        with pytest.raises(StoreError, match="dataset kind 'pairs' is not one of sft, preference, unpaired"):
            store.add_dataset(name="x", track="main", file_hash="f" * 64, source_path="/x", stored_path="/x",
                              mode="strict", n_records=0, n_rejected=0, reject_path=None, records=[], kind="pairs")
        assert store.count_datasets() == 2


@pytest.mark.integration
def test_datasets_from_before_the_kind_column_are_sft(tmp_path, store_url):
    from alembic import command

    from honed.store import Store, schema
    from honed.store.migrate import alembic_config

    if store_url.startswith("sqlite"):
        (tmp_path / "store").mkdir()
    engine = sa.create_engine(store_url)
    now = datetime.now(UTC)
    try:
        with engine.begin() as conn:
            command.upgrade(alembic_config(conn), "0008")
            # bases and tracks are as they were at 0008; datasets is read from the database.
            conn.execute(schema.bases.insert().values(version=0, source="tiny", description="", lineage={},
                                                      created_at=now))
            conn.execute(schema.tracks.insert().values(name="main", base_version=0, created_at=now))
            old_datasets = sa.Table("datasets", sa.MetaData(), autoload_with=conn)
            assert "kind" not in old_datasets.c
            conn.execute(old_datasets.insert().values(
                name="old", track="main", file_hash="a" * 64, source_path="/x", stored_path="/x", mode="strict",
                n_records=1, n_rejected=0, created_at=now))
    finally:
        engine.dispose()
    with Store.open(store_url) as store:
        assert [(d.name, d.kind) for d in store.list_datasets()] == [("old", "sft")]


@pytest.mark.integration
def test_cli_synth_writes_pairs_that_add_as_a_preference_dataset(make_workspace, tiny_random_base, tmp_path):
    from tests.cli_runner import run_honed

    ws = make_workspace(tiny_random_base)
    data = tmp_path / "add.jsonl"
    out = run_honed("synth", "arithmetic", "--n", "30", "--kind", "preference", "--out", str(data))
    assert "(train, preference)" in out.stdout
    assert set(json.loads(data.read_text().splitlines()[0])) == {"prompt", "chosen", "rejected"}
    added = json.loads(run_honed("add", str(data), "-w", str(ws.root), "--strict", "--json").stdout)
    assert added[0]["kind"] == "preference" and added[0]["records"] == 30
    listing = json.loads(run_honed("datasets", "-w", str(ws.root), "--json").stdout)
    assert [(d["n_records"], d["kind"]) for d in listing] == [(30, "preference")]
    table = run_honed("datasets", "-w", str(ws.root), env={"COLUMNS": "200"}).stdout
    assert "kind" in table and "preference" in table
    # The trainer learns by supervised fine-tuning: a job on pairs is refused at the door, naming both.
    job = run_honed("queue", "add", str(listing[0]["id"]), "-w", str(ws.root), check=False)
    assert job.returncode == 1 and "holds preference pairs" in job.stderr and "'sft'" in job.stderr, job.stderr
    assert json.loads(run_honed("queue", "list", "-w", str(ws.root), "--json").stdout) == []
    once = run_honed("train", "--dataset", str(listing[0]["id"]), "-w", str(ws.root), check=False)
    assert once.returncode == 1 and "holds preference pairs" in once.stderr, once.stderr
    bad = run_honed("synth", "arithmetic", "--kind", "pairs", "--out", str(tmp_path / "x.jsonl"), check=False)
    assert bad.returncode == 1 and "allowed: sft, preference, unpaired" in bad.stderr

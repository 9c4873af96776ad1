"""Bases, tracks, datasets, record hashes and trained records."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC

import pytest

from honed.store import DuplicateDatasetError, Store, StoreError


def add_dataset(store: Store, track: str, file_hash: str, n: int = 3, name: str = "d"):
    return store.add_dataset(
        name=name,
        track=track,
        file_hash=file_hash,
        source_path=f"/inbox/{name}.jsonl",
        stored_path=f"/ws/datasets/{file_hash}.jsonl",
        mode="lenient",
        n_records=n,
        n_rejected=0,
        reject_path=None,
        records=[(i + 1, f"{file_hash}-{i}") for i in range(n)],
    )


def test_base_versions_start_at_zero_and_increase(store: Store) -> None:
    assert store.get_base() is None
    v0 = store.add_base("Qwen/Qwen2.5-0.5B", description="configured")
    v1 = store.add_base("/ws/bases/v1", "merged main", parent_version=v0, lineage={"adapter": "a1"})
    assert (v0, v1) == (0, 1)
    latest = store.get_base()
    assert latest is not None and latest.version == 1
    assert latest.parent_version == 0 and latest.lineage == {"adapter": "a1"}
    assert latest.created_at.tzinfo is not None
    assert latest.created_at.utcoffset().total_seconds() == 0
    assert store.get_base(0).source == "Qwen/Qwen2.5-0.5B"
    assert [b.version for b in store.list_bases()] == [0, 1]
    with pytest.raises(StoreError, match="unknown parent base version 5"):
        store.add_base("x", parent_version=5)


def test_ensure_track_is_idempotent(store: Store) -> None:
    store.add_base("tiny")
    store.add_base("tiny-v1")
    first = store.ensure_track("main", 0)
    again = store.ensure_track("main", 1)
    assert again == first and again.base_version == 0
    assert store.set_track_base("main", 1).base_version == 1
    store.ensure_track("encoder", 0)
    assert [t.name for t in store.list_tracks()] == ["encoder", "main"]
    assert store.get_track("nope") is None


def test_same_file_in_same_track_is_recognised(store: Store, main_track: str) -> None:
    store.ensure_track("other", 0)
    dataset = add_dataset(store, main_track, "abc")
    assert store.find_dataset(main_track, "abc") == dataset
    assert store.find_dataset("other", "abc") is None
    with pytest.raises(DuplicateDatasetError) as raised:
        add_dataset(store, main_track, "abc", name="again")
    assert raised.value.existing_id == dataset.id
    assert str(dataset.id) in str(raised.value)
    # The refused insert left nothing behind, and another track may take the same file.
    assert len(store.list_datasets(main_track)) == 1
    add_dataset(store, "other", "abc")
    assert [d.track for d in store.list_datasets()] == ["main", "other"]


def test_dataset_fields_and_record_hashes_round_trip(store: Store, main_track: str) -> None:
    dataset = add_dataset(store, main_track, "f1", n=4)
    assert store.get_dataset(dataset.id) == dataset
    assert dataset.mode == "lenient" and dataset.n_records == 4 and dataset.reject_path is None
    assert dataset.created_at.tzinfo == UTC
    assert store.dataset_record_hashes(dataset.id) == [(i + 1, f"f1-{i}") for i in range(4)]
    with pytest.raises(StoreError, match="unknown dataset id 999"):
        store.dataset_record_hashes(999)
    with pytest.raises(StoreError, match="mode 'loose'"):
        store.add_dataset(
            name="x", track=main_track, file_hash="f2", source_path="a", stored_path="b",
            mode="loose", n_records=0, n_rejected=0, reject_path=None, records=[],
        )
    with pytest.raises(StoreError, match="unknown track 'ghost'"):
        add_dataset(store, "ghost", "f3")


def test_200k_records_stream_in_quickly(store: Store, main_track: str) -> None:
    n = 200_000
    consumed = 0

    def records() -> Iterator[tuple[int, str]]:
        nonlocal consumed
        for i in range(n):
            consumed += 1
            yield i + 1, f"{i:064x}"

    started = time.perf_counter()
    dataset = store.add_dataset(
        name="big", track=main_track, file_hash="big", source_path="/inbox/big.jsonl",
        stored_path="/ws/big.jsonl", mode="strict", n_records=n, n_rejected=0,
        reject_path=None, records=records(),
    )
    elapsed = time.perf_counter() - started
    assert consumed == n
    hashes = store.dataset_record_hashes(dataset.id)
    assert len(hashes) == n and hashes[-1] == (n, f"{n - 1:064x}")
    assert elapsed < 20, f"inserting {n} record hashes took {elapsed:.1f}s"


def test_a_failed_dataset_insert_leaves_nothing(store: Store, main_track: str) -> None:
    def records() -> Iterator[tuple[int, str]]:
        yield 1, "a"
        yield 1, "b"  # duplicate line number: the whole dataset must roll back

    with pytest.raises(StoreError):
        store.add_dataset(
            name="bad", track=main_track, file_hash="bad", source_path="a", stored_path="b",
            mode="strict", n_records=2, n_rejected=0, reject_path=None, records=records(),
        )
    assert store.find_dataset(main_track, "bad") is None


def test_marking_records_trained_is_idempotent(store: Store, main_track: str) -> None:
    store.create_run(run_id="run-a", track=main_track, base_version=0, config={}, dataset_ids=[])
    store.create_run(run_id="run-b", track=main_track, base_version=0, config={}, dataset_ids=[])
    store.mark_records_trained("run-a", main_track, 0, ["h1", "h2", "h2"])
    store.mark_records_trained("run-b", main_track, 0, iter(["h2", "h3"]))
    store.mark_records_trained("run-b", main_track, 0, (f"g{i}" for i in range(12_000)))
    hashes = store.trained_record_hashes(main_track, 0)
    assert {"h1", "h2", "h3"} <= hashes and len(hashes) == 12_003
    store.add_base("v1")
    store.ensure_track("other", 0)
    assert store.trained_record_hashes(main_track, 1) == set()
    assert store.trained_record_hashes("other", 0) == set()
    with pytest.raises(StoreError, match="unknown run id 'run-x'"):
        store.mark_records_trained("run-x", main_track, 0, ["h9"])

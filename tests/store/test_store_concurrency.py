"""Several writers on one SQLite store: they must queue, never fail with "database is
locked" (the daemon, the trainer, the CLI and the web monitor all write the same file)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import honed
from honed.store import DuplicateDatasetError, Store

# Each writer does what a trainer does: read-then-write transactions (create a run,
# start an attempt, log metrics, record checkpoints, finish). With deferred transactions
# those fail at once with SQLITE_BUSY when another writer commits in between.
WRITER = """
import sys, time
from honed.store import DuplicateDatasetError, Store
url, name, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
store = Store.open(url)
if name == "p0":
    store.ensure_track("main", store.add_base("tiny"))
while store.get_track("main") is None:
    time.sleep(0.02)
for i in range(n):
    run_id = f"run-{name}-{i}"
    store.create_run(run_id=run_id, track="main", base_version=0, config={}, dataset_ids=[])
    attempt = store.start_attempt(run_id)
    store.append_metrics(run_id, [{"step": s, "loss": 1.0 / s} for s in range(1, 21)], attempt)
    store.record_checkpoint(run_id, 20, f"/ckpt/{run_id}", attempt=attempt)
    store.mark_records_trained(run_id, "main", 0, (f"{name}-{i}-{k}" for k in range(200)))
    store.finish_run(run_id, status="succeeded", attempt=attempt)
store.close()
"""


def _run_writer(store: Store, name: str, n: int, errors: list[BaseException]) -> None:
    try:
        for i in range(n):
            run_id = f"run-{name}-{i}"
            store.create_run(run_id=run_id, track="main", base_version=0, config={}, dataset_ids=[])
            attempt = store.start_attempt(run_id)
            store.append_metrics(run_id, [{"step": 1, "loss": 1.0}], attempt)
            store.record_checkpoint(run_id, 1, "/ckpt", attempt=attempt)
            store.finish_run(run_id, status="succeeded", attempt=attempt)
            store.list_runs("main")
    except BaseException as exc:  # noqa: BLE001 - reported by the test thread
        errors.append(exc)


def test_threads_sharing_a_sqlite_store_do_not_lock_each_other_out(tmp_path: Path) -> None:
    with Store.open(tmp_path / "honed.db") as store:
        store.add_base("tiny")
        store.ensure_track("main", 0)
        errors: list[BaseException] = []
        threads = [
            threading.Thread(target=_run_writer, args=(store, f"t{k}", 15, errors))
            for k in range(4)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        assert errors == []
        runs = store.list_runs(limit=1000)
        assert len(runs) == 60 and {r.status for r in runs} == {"succeeded"}


def test_processes_opening_and_writing_one_sqlite_store_concurrently(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'ws' / 'honed.db'}"
    env = {**os.environ, "PYTHONPATH": str(Path(honed.__file__).parents[1])}
    # All start on a store that does not exist yet, so they also race to migrate it.
    writers = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, url, f"p{k}", "10"],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for k in range(3)
    ]
    failures = []
    for writer in writers:
        _, stderr = writer.communicate(timeout=120)
        if writer.returncode != 0:
            failures.append(stderr)
    assert failures == [], "\n".join(failures)
    with Store.open(url) as store:
        assert [b.version for b in store.list_bases()] == [0]
        assert len(store.list_runs(limit=1000)) == 30
        assert len(store.trained_record_hashes("main", 0)) == 30 * 200
        assert all(len(store.get_metrics(r.id)) == 20 for r in store.list_runs(limit=5))


def test_concurrent_writers_get_distinct_base_versions_and_one_dataset(store: Store) -> None:
    errors: list[BaseException] = []
    outcomes: list[str] = []
    store.add_base("tiny")
    store.ensure_track("main", 0)

    def add_bases_and_ingest() -> None:
        try:
            for _ in range(5):
                store.add_base("merged")
            store.add_dataset(
                name="same", track="main", file_hash="same-file", source_path="a",
                stored_path="b", mode="lenient", n_records=1, n_rejected=0, reject_path=None,
                records=[(1, "r")],
            )
            outcomes.append("added")
        except DuplicateDatasetError:
            outcomes.append("duplicate")
        except BaseException as exc:  # noqa: BLE001 - reported by the test thread
            errors.append(exc)

    threads = [threading.Thread(target=add_bases_and_ingest) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert errors == []
    assert [b.version for b in store.list_bases()] == list(range(21))
    assert sorted(outcomes) == ["added", "duplicate", "duplicate", "duplicate"]

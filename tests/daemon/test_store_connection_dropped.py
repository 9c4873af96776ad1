"""PostgreSQL drops every connection of a running job, again and again (the server's
``pg_terminate_backend``, as a restart or a failover would): the daemon and its trainer
reconnect or retry from the last checkpoint, the job ends as an uninterrupted one does,
and nothing is written twice (one metrics row per step and attempt, one candidate)."""

from __future__ import annotations

import time
from collections import Counter

import pytest
import sqlalchemy as sa

from honed.data.datasets import add_dataset_file
from tests.daemon.conftest import configure, last_logged_step, synth, wait_for
from tests.daemon.test_supervision import assert_same_losses, finished, train_curve

pytestmark = [pytest.mark.postgres, pytest.mark.reliability, pytest.mark.slow]

DROPS = 5


APP = "honed-dropped-test"


def terminate_backends(admin: sa.Engine) -> int:
    """Drop every connection this test's workspace holds (by application name: other
    tests sharing the server keep theirs)."""
    with admin.connect() as conn:
        return len(conn.execute(sa.text(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = :app"),
            {"app": APP}).all())


def test_connections_dropped_mid_job_are_survived_without_double_writes(make_workspace, tiny_random_base,
                                                                        start_daemon, pg_schema_url, pg_admin):
    settings = {"train": {"epochs": 2.0, "checkpoint_every": 5}, "daemon": {"max_attempts": 10}}
    reference_ws = configure(make_workspace(tiny_random_base, "reference"), settings)
    data = synth(reference_ws.root / "rev.jsonl", 200, seed=9)
    with reference_ws.open_store() as store:
        job = store.create_job(track="main", dataset_ids=[
            add_dataset_file(reference_ws, store, data, track="main", mode="strict").dataset.id])
        daemon = start_daemon(reference_ws)
        expected = train_curve(store, finished(store, job.id).run_id)
        daemon.stop()

    url = sa.make_url(pg_schema_url).update_query_dict({"application_name": APP}).render_as_string(False)
    ws = configure(make_workspace(tiny_random_base, "pg", store_url=url), settings)
    store = ws.open_store()
    job = store.create_job(track="main", dataset_ids=[
        add_dataset_file(ws, store, data, track="main", mode="strict").dataset.id])
    start_daemon(ws)
    run_dir = ws.runs_dir / wait_for(lambda: store.get_job(job.id).run_id, 60, "a run id")
    dropped = 0
    for n in range(DROPS):
        wait_for(lambda n=n: last_logged_step(run_dir) >= 4 + 6 * n or store.get_job(job.id).state != "running",
                 180, f"step {4 + 6 * n}", interval=0.05)
        dropped += terminate_backends(pg_admin)
        time.sleep(0.5)
    assert dropped >= DROPS, "the daemon and trainer held connections to drop"
    done = finished(store, job.id)
    assert done.state == "succeeded", [e.message for e in store.job_events(job.id)]

    assert_same_losses(train_curve(store, done.run_id), expected)
    rows = Counter((r["attempt"], r["step"]) for r in store.get_metrics(done.run_id, latest_attempt_only=False))
    assert max(rows.values()) == 1, [k for k, v in rows.items() if v > 1]
    assert len([a for a in store.list_adapters() if a.run_id == done.run_id]) == 1
    checkpoints = Counter(c.step for c in store.list_checkpoints(done.run_id))
    assert max(checkpoints.values()) == 1
    store.close()

"""A disk that fills while a job trains, on a real full filesystem (a small tmpfs the test
mounts, holding the workspace's artefacts): the job pauses saying "disk full" and where,
the last checkpoint stays whole, and once space is back a resume trains to the loss
curve of a job that never met a full disk. With free space under ``storage.min_free_gb``
the daemon starts nothing and says why."""

from __future__ import annotations

import contextlib
import os
import subprocess
from pathlib import Path

import pytest

from honed.training import checkpoints as ckpt
from tests.cli_runner import run_honed
from tests.daemon.conftest import configure, last_logged_step, synth, wait_for
from tests.daemon.test_supervision import assert_same_losses, finished, train_curve

pytestmark = pytest.mark.slow  # fills a real disk, trains twice: about 2 minutes; CI runs it with the slow tier

SETTINGS = {"train": {"epochs": 2.0, "checkpoint_every": 4}, "storage": {"min_free_gb": 0.0}}


@pytest.fixture
def small_volume(tmp_path):
    """A 64 MiB tmpfs mounted for the test (root only; skipped where mounting is refused)."""
    where = tmp_path / "volume"
    where.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(where)], capture_output=True,
                          text=True)
    if done.returncode != 0:
        why = f"cannot mount a tmpfs here ({done.stderr.strip() or done.returncode}): needs root"
        if os.environ.get("HONED_REQUIRE_MOUNT") == "1":
            pytest.fail(why + "; HONED_REQUIRE_MOUNT=1 says these tests must run")
        pytest.skip(why)
    yield where
    subprocess.run(["umount", "-l", str(where)], check=False)


def fill(volume: Path) -> Path:
    """Fill ``volume`` to the last byte; returns the filler file."""
    filler = volume / "filler"
    with open(filler, "wb", buffering=0) as f:
        for chunk in (1 << 20, 4096, 1):  # MiBs, then the last pages, then the last bytes
            with contextlib.suppress(OSError):
                while True:
                    f.write(b"\0" * chunk)
    return filler


def test_a_disk_that_fills_pauses_the_job_and_resume_continues_once_space_is_back(make_workspace, tiny_random_base,
                                                                                  start_daemon, small_volume):
    reference_ws = configure(make_workspace(tiny_random_base, "reference"), SETTINGS)
    reference_store = reference_ws.open_store()
    data = synth(reference_ws.root / "rev.jsonl", 200, seed=5)
    from honed.data.datasets import add_dataset_file

    reference = reference_store.create_job(track="main", dataset_ids=[
        add_dataset_file(reference_ws, reference_store, data, track="main", mode="strict").dataset.id])
    daemon = start_daemon(reference_ws)
    done = finished(reference_store, reference.id)
    daemon.stop()
    assert done.state == "succeeded"
    expected = train_curve(reference_store, done.run_id)

    ws = configure(make_workspace(tiny_random_base, "full"), {**SETTINGS, "store": {"artifacts": str(small_volume)}})
    store = ws.open_store()
    job = store.create_job(track="main", dataset_ids=[
        add_dataset_file(ws, store, data, track="main", mode="strict").dataset.id])
    start_daemon(ws)
    run_dir = ws.runs_dir / wait_for(lambda: store.get_job(job.id).run_id, 60, "a run id")
    wait_for(lambda: last_logged_step(run_dir) >= 5, 120, "5 steps", interval=0.01)
    filler = fill(small_volume)
    paused = wait_for(lambda: (j := store.get_job(job.id)).state not in ("running", "queued") and j, 120,
                      "the job to stop on the full disk")
    events = store.job_events(job.id)
    assert paused.state == "paused", [e.message for e in events]
    said = events[-1].message
    assert "disk full" in said and str(small_volume) in said and f"honed resume {job.id}" in said, said
    assert paused.failures == 0
    kept = ckpt.latest_complete_checkpoint(run_dir / "checkpoints")
    assert kept is not None and ckpt.validate_checkpoint(kept.path, verify_hashes=True).step == kept.step
    assert not [p for p in (run_dir / "checkpoints").iterdir() if p.name.startswith(".")], "no half-written copy"

    os.unlink(filler)
    run_honed("resume", str(job.id), "-w", str(ws.root))
    done = finished(store, job.id)
    assert done.state == "succeeded", [e.message for e in store.job_events(job.id)]
    assert_same_losses(train_curve(store, done.run_id), expected)

    # An export and a consolidation onto the full disk: a clear error, nothing half-written.
    filler = fill(small_volume)
    out = small_volume / "exported"
    export = run_honed("export", "track:main", "--format", "merged", "--out", str(out), "-w", str(ws.root),
                       check=False)
    consolidate = run_honed("consolidate", "--description", "full", "-w", str(ws.root), check=False)
    for refused in (export, consolidate):
        said = " ".join(refused.stderr.split())
        assert refused.returncode == 1 and "Traceback" not in said and "disk full" in said, said
    assert not out.exists() and not (ws.bases_dir / "v1").exists()
    assert not [p for p in (*small_volume.iterdir(), *ws.bases_dir.iterdir()) if p.name.startswith(".staging")]
    assert store.get_base().version == 0
    os.unlink(filler)
    run_honed("export", "track:main", "--format", "merged", "--out", str(out), "-w", str(ws.root))
    run_honed("consolidate", "--description", "space is back", "-w", str(ws.root))
    assert store.get_base().version == 1
    store.close()
    reference_store.close()


def test_adding_data_to_a_full_disk_names_where_and_leaves_nothing(make_workspace, tiny_random_base, small_volume):
    ws = configure(make_workspace(tiny_random_base), {"store": {"artifacts": str(small_volume)}})
    data = synth(ws.root / "rev.jsonl", 400)
    filler = fill(small_volume)
    refused = run_honed("add", str(data), "-w", str(ws.root), check=False)
    said = " ".join(refused.stderr.split())
    assert refused.returncode == 1 and "Traceback" not in said, said
    assert f"disk full writing {ws.datasets_dir / 'main'}" in said, said
    assert not list((ws.datasets_dir / "main").iterdir()), "no temporary file left"
    with ws.open_store() as store:
        assert store.list_datasets() == []
    os.unlink(filler)
    run_honed("add", str(data), "-w", str(ws.root))


def test_below_the_free_space_floor_nothing_starts_and_the_job_says_why(make_workspace, tiny_random_base,
                                                                        start_daemon, small_volume):
    ws = configure(make_workspace(tiny_random_base), {"store": {"artifacts": str(small_volume)},
                                                      "storage": {"min_free_gb": 1.0}})
    store = ws.open_store()
    from honed.data.datasets import add_dataset_file

    job = store.create_job(track="main", dataset_ids=[
        add_dataset_file(ws, store, synth(ws.root / "rev.jsonl", 40), track="main", mode="strict").dataset.id])
    start_daemon(ws)
    told = wait_for(lambda: [e for e in store.job_events(job.id) if e.kind == "waiting_for_disk"], 60,
                    "the job to be told why it waits")
    assert "storage.min_free_gb = 1" in told[0].message and str(small_volume) in told[0].message
    assert store.get_job(job.id).state == "queued"
    status = run_honed("status", "-w", str(ws.root))
    assert "storage.min_free_gb" in " ".join(status.stdout.split())
    doctor = run_honed("doctor", "-w", str(ws.root), check=False)
    assert doctor.returncode == 2 and "below storage.min_free_gb" in " ".join(doctor.stdout.split())
    store.close()

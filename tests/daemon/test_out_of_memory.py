"""Memory on a small box. Before it trains, an attempt estimates its largest step and
picks a micro-batch that fits (``train.fit_memory``); a trainer that runs out of memory
anyway (the estimate off, the host busier) makes the next attempt halve the micro-batch
and double the accumulation. Either way the same examples make each step, the choice is
recorded in the job's events, no failure is counted, and the job trains to the loss curve
it would have had with memory to spare. The limit is real: the trainer process's
RLIMIT_DATA, from ``daemon.trainer_memory_mb``, so the allocator itself refuses."""

from __future__ import annotations

import json
import random

import pytest

from honed.data.datasets import add_dataset_file
from tests.daemon.conftest import DaemonProcess, configure
from tests.daemon.test_supervision import assert_same_losses, finished, train_curve

# Measured on the random tiny base with 128 records of ~490 tokens and one thread: a
# trainer peaks at about 3.3 GB of RSS at micro-batch 64 and 1.7 GB at 16; a data limit
# of 2.4 GB lies well between them.
# Four daemon jobs of 64-example steps: the slow tier (CI runs it), so the default run stays
# within its time budget.
pytestmark = pytest.mark.slow

LIMIT_MB = 2400
SETTINGS = {"train": {"batch_size": 64, "epochs": 2.0, "max_seq_len": 512, "checkpoint_every": 1}}


def long_records(path):
    rng = random.Random(0)
    with path.open("w") as f:
        for _ in range(128):
            text = "".join(rng.choice("abcdefghij ") for _ in range(230))
            f.write(json.dumps({"messages": [{"role": "user", "content": text},
                                             {"role": "assistant", "content": text[::-1]}]}) + "\n")
    return path


def run_job(ws, start_daemon):
    store = ws.open_store()
    dataset = add_dataset_file(ws, store, long_records(ws.root / "long.jsonl"), track="main",
                               mode="strict").dataset.id
    job = store.create_job(track="main", dataset_ids=[dataset])
    daemon = start_daemon(ws)
    done = finished(store, job.id)
    daemon.stop()
    return store, done


@pytest.fixture(scope="module")
def unlimited_curve(tmp_path_factory, tiny_random_base):
    """The loss curve of the job with memory to spare: its plan keeps micro-batch 64."""
    from honed.workspace import init_workspace

    root = tmp_path_factory.mktemp("reference")
    ws = configure(init_workspace(root / "ws", base=str(tiny_random_base)), SETTINGS)
    daemon = DaemonProcess(ws.root, root / "daemon.out")
    try:
        store, reference = run_job(ws, lambda w: daemon.start())
    finally:
        if daemon.proc and daemon.proc.poll() is None:
            daemon.proc.kill()
    events = store.job_events(reference.id)
    assert reference.state == "succeeded", [e.message for e in events]
    assert not [e for e in events if e.kind in ("memory_plan", "out_of_memory")], [e.message for e in events]
    curve = train_curve(store, reference.run_id)
    store.close()
    return curve


def test_out_of_memory_halves_the_micro_batch_and_keeps_the_loss_curve(make_workspace, tiny_random_base,
                                                                       start_daemon, unlimited_curve):
    expected = unlimited_curve
    ws = configure(make_workspace(tiny_random_base, "limited"),  # no plan: the attempt meets the limit
                   {**SETTINGS, "train": {**SETTINGS["train"], "fit_memory": False},
                    "daemon": {"trainer_memory_mb": LIMIT_MB}})
    store, done = run_job(ws, start_daemon)
    events = store.job_events(done.id)
    assert done.state == "succeeded", [e.message for e in events]
    shrunk = [e for e in events if e.kind == "out_of_memory"]
    assert shrunk, [e.message for e in events]
    assert shrunk[0].message.startswith("out of memory at micro-batch 64 x 1") and "can't allocate memory" in \
        shrunk[0].message and "the same 64 examples per step" in shrunk[0].message, shrunk[0].message
    assert done.failures == 0, "running out of memory is not a failed attempt"
    final = shrunk[-1].data
    assert final["batch_size"] * final["grad_accum"] == 64 and final["batch_size"] <= 32
    assert store.get_job(done.id).overrides["train"] == {"batch_size": final["batch_size"],
                                                         "grad_accum": final["grad_accum"]}
    assert_same_losses(train_curve(store, done.run_id), expected)
    store.close()


def test_out_of_memory_at_a_micro_batch_of_one_fails_the_job_with_the_reason(make_workspace, tiny_random_base,
                                                                            start_daemon):
    # A LoRA of rank 20000 on the tiny base is 1.4 GB of weights: no micro-batch fits 1.2 GB.
    ws = configure(make_workspace(tiny_random_base), {"train": {"batch_size": 1, "max_steps": 2},
                                                      "lora": {"r": 20000},
                                                      "daemon": {"trainer_memory_mb": 1200}})
    store, done = run_job(ws, start_daemon)
    assert done.state == "failed", [e.message for e in store.job_events(done.id)]
    assert done.error.startswith("out of memory at micro-batch 1") and "daemon.trainer_memory_mb" in done.error
    store.close()


def test_a_job_that_would_not_fit_trains_with_the_micro_batch_its_plan_picks(make_workspace, tiny_random_base,
                                                                            start_daemon, unlimited_curve):
    ws = configure(make_workspace(tiny_random_base, "planned"), {**SETTINGS, "daemon": {"trainer_memory_mb": LIMIT_MB}})
    store, done = run_job(ws, start_daemon)
    events = store.job_events(done.id)
    assert done.state == "succeeded", [e.message for e in events]
    assert not [e for e in events if e.kind == "out_of_memory"], "the plan fits: no attempt runs out of memory"
    assert done.failures == 0
    plans = [e for e in events if e.kind == "memory_plan"]
    assert len(plans) == 1, [e.message for e in events]
    plan = plans[0].data
    assert plan["configured"] == [64, 1] and plan["batch_size"] * plan["grad_accum"] == 64
    assert plan["batch_size"] <= 16, "measured: micro-batch 32 runs out of 2.4 GB, 16 fits"
    assert plan["configured_bytes"] > 0.85 * plan["available_bytes"] >= plan["step_bytes"]
    assert plans[0].message.startswith("memory: micro-batch 64 x 1 would need about") and \
        f"training with {plan['batch_size']} x {plan['grad_accum']}" in plans[0].message
    assert_same_losses(train_curve(store, done.run_id), unlimited_curve)
    store.close()

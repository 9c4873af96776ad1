"""A trainer that runs out of memory: the next attempt halves the micro-batch and doubles
the accumulation (the same examples per step), recorded in the job's events, without
counting a failure, and the job trains to the loss curve it would have had with memory
to spare. The limit is real: the trainer process's RLIMIT_DATA, from
``daemon.trainer_memory_mb``, so the allocator itself refuses."""

from __future__ import annotations

import json
import random

from honed.data.datasets import add_dataset_file
from tests.daemon.conftest import configure
from tests.daemon.test_supervision import assert_same_losses, finished, train_curve

# Measured on the random tiny base with 128 records of ~490 tokens and one thread: a
# trainer peaks at about 3.3 GB of RSS at micro-batch 64 and 1.7 GB at 16; a data limit
# of 2.4 GB lies well between them.
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


def test_out_of_memory_halves_the_micro_batch_and_keeps_the_loss_curve(make_workspace, tiny_random_base,
                                                                       start_daemon):
    reference_ws = configure(make_workspace(tiny_random_base, "reference"), SETTINGS)
    store, reference = run_job(reference_ws, start_daemon)
    assert reference.state == "succeeded", [e.message for e in store.job_events(reference.id)]
    expected = train_curve(store, reference.run_id)
    store.close()

    ws = configure(make_workspace(tiny_random_base, "limited"),
                   {**SETTINGS, "daemon": {"trainer_memory_mb": LIMIT_MB}})
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

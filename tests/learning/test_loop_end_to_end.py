"""The proof: the model in use gets better from its own use.

A teacher (a second honed app on loopback, serving the tiny base with an adapter trained
on the task) and a student workspace whose daemon runs the learning loop. An application
using the ``openai`` SDK asks the student 24 word reversals it answers badly and says so
(score 0); the loop asks the teacher for corrections, the scorer rejects the teacher's
wrong ones, the trigger fires, the daemon trains, gates and deploys; the same
application, without restarting, asks again and gets better answers.
"""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import openai

from honed.config import update_config_file
from honed.data.synthetic import generate
from honed.registry.deployment import deploy
from honed.server import create_app
from honed.server.background import BackgroundServer
from honed.workspace import open_workspace
from tests.cli_runner import run_honed
from tests.daemon.conftest import start_daemon, wait_for  # noqa: F401 (fixture)
from tests.learning.conftest import VERIFIER

# 30 passes over 24 records, batches of 8: the random tiny base learns them by heart
# (87.5% exact match measured on this machine), in under a minute on two cores.
MEMORISE = {"train": {"epochs": 30.0, "batch_size": 8, "warmup_steps": 5, "eval_every": 0,
                      "checkpoint_every": 1000, "heldout_fraction": 0.1, "threads": 1}}


def _teacher(make_workspace, tiny_random_base, questions, tmp_path) -> BackgroundServer:
    """A honed app serving the tiny base + an adapter trained on the questions' answers."""
    ws = make_workspace(tiny_random_base, name="teacher")
    update_config_file(ws.root, {**MEMORISE, "train": {**MEMORISE["train"], "heldout_fraction": 0.0}})
    data = tmp_path / "teacher-data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in questions))
    out = tmp_path / "teacher-adapter"
    run_honed("train", "--dataset", str(data), "--out", str(out), "--retrain-seen", "--workspace", str(ws.root))
    ws = open_workspace(ws.root)
    with ws.open_store() as store:
        adapter = store.add_adapter(track="main", run_id=None, job_id=None, base_version=0, path=str(out))
        store.record_evaluation(adapter.id, {"candidate": {}, "baseline": {}},
                                {"passed": True, "failed": [], "rules": []}, "candidate")
        deploy(ws, store, adapter.id)
    return BackgroundServer(create_app(ws)).start()


def _ask_all(client: openai.OpenAI, server_url: str, questions) -> tuple[float, set]:
    """The application: ask every question, score each answer, tell honed."""
    right, adapters = 0, set()
    for record in questions:
        prompt, answer = record["messages"][0]["content"], record["messages"][-1]["content"]
        completion = client.chat.completions.create(model="main", messages=[{"role": "user", "content": prompt}],
                                                    max_tokens=16)
        honed = completion.model_extra["honed"]
        adapters.add(honed["adapter"])
        ok = completion.choices[0].message.content.strip() == answer
        right += ok
        feedback = httpx.post(f"{server_url}/v1/experiences/{honed['experience_id']}/feedback",
                              json={"score": 1.0 if ok else 0.0}, timeout=30)
        assert feedback.status_code == 200, feedback.text
    return right / len(questions), adapters


def test_the_model_in_use_gets_better_from_its_own_use(make_workspace, tiny_random_base, start_daemon, tmp_path):  # noqa: F811 (pytest fixture imported above)
    questions = generate("reversal", 24, seed=7)
    teacher = _teacher(make_workspace, tiny_random_base, questions, tmp_path)
    try:
        ws = make_workspace(tiny_random_base, name="student")
        update_config_file(ws.root, {
            **MEMORISE, "lora": {"r": 16, "alpha": 32.0},
            "gates": {"rules": [{"set": "heldout", "scorer": "exact_match", "max_regression": 0.0}]},
            "eval": {"max_records": 50, "regression_records": 50},
            "daemon": {"poll_interval_s": 0.2, "settle_s": 0.5},
            "learn": {"enabled": True, "threshold": 16, "cooldown_s": 0, "check_every_s": 0.5,
                      "scorer": VERIFIER, "scorer_bar": 1.0,
                      "teacher": {"base_url": teacher.url + "/v1", "model": "main", "cooldown_s": 0,
                                  "batch_size": 32, "retry_after_s": 3600, "timeout_s": 30}},
        })
        ws = open_workspace(ws.root)
        student = BackgroundServer(create_app(ws)).start()
        daemon = start_daemon(ws)
        try:
            client = openai.OpenAI(base_url=student.url + "/v1", api_key="unused", max_retries=0, timeout=120)
            before, served_by = _ask_all(client, student.url, questions)
            assert served_by == {None}  # the bare base: nothing deployed yet

            with ws.open_store() as store:
                def deployed():
                    d = store.list_deployments("main", limit=1)
                    return d[0] if d and d[0].adapter_id is not None else None

                wait_for(lambda: deployed() or _failed(store), 400, "the loop to train and deploy an adapter",
                         interval=0.5)
                assert deployed(), daemon.output()[-4000:]
                [batch] = store.list_learning_batches("main")
                # The deployment is recorded a moment before the job's end.
                job = wait_for(lambda: (j := store.get_job(batch.job_id)).state not in ("running", "evaluating") and j,
                               60, "the job to end")
                assert job.state == "succeeded" and job.source == "learn (threshold)"
                trained = {store.get_experience(i).trained_run_id for i in batch.experience_ids}
                assert trained == {job.run_id}
                answers = store.list_teacher_answers("main", limit=100)
                rejected = [a for a in answers if a.status != "accepted"]

            after, served_by = _ask_all(client, student.url, questions)
            assert served_by == {deployed().adapter_id}  # the new adapter, without a restart
        finally:
            daemon.stop()
            student.stop()
    finally:
        teacher.stop()

    provenance = json.loads(Path(batch.provenance_path).read_text())
    assert {p["source"] for p in provenance["lines"]} == {"teacher"}
    assert batch.counts["teacher"] == len(batch.experience_ids) >= 16
    # The teacher's wrong answers were refused by the scorer and never became data.
    bad_outputs = {a.output for a in rejected}
    taught = {p["teacher_answer_id"] for p in provenance["lines"]}
    assert not taught & {a.id for a in rejected}
    print(f"\nexact match on the application's questions: before {before:.1%}, after {after:.1%}; "
          f"teacher answers refused: {len(rejected)} {sorted(bad_outputs)[:3]}")
    assert before <= 0.1 and after >= before + 0.5


def _failed(store):
    jobs = store.list_jobs(states=("failed", "rejected"))
    if jobs:
        raise AssertionError(f"job {jobs[0].id} {jobs[0].state}: {jobs[0].error}")
    return None


def test_a_batch_of_pairs_from_corrections_trains_the_tiny_model_with_dpo(make_workspace, tiny_random_base):
    """run-now assembles the corrections as pairs; the job's own overrides train them with
    DPO (as the daemon would) and the run marks the batch's experiences trained."""
    from honed.learning.trigger import run_now
    from honed.states import RunStatus
    from honed.training.recipe import run_attempt_of
    from honed.training.runs import prepare_run
    from tests.learning.conftest import log_reversals

    ws = make_workspace(tiny_random_base, name="dpo-loop")
    update_config_file(ws.root, {
        "train": {"batch_size": 4, "max_seq_len": 128, "eval_every": 0, "threads": 1, "warmup_steps": 1,
                  "heldout_fraction": 0.0, "max_steps": 4, "checkpoint_every": 4, "lr": 1e-2},
        "learn": {"threshold": 4, "objective": "auto"},
    })
    ws = open_workspace(ws.root)
    words = [r["messages"][0]["content"].removeprefix("reverse: ") for r in generate("reversal", 8, seed=3)]
    with ws.open_store() as store:
        ids = log_reversals(store, words)
        for i, word in zip(ids, words):
            store.add_feedback(i, corrected_output=word[::-1])
        done, _ = run_now(ws, store, "main", teacher=False)
        assert done.objective == "dpo" and done.counts["pairs"] == 8
        job = store.get_job(done.job_id)
        spec = prepare_run(open_workspace(ws.root, job.overrides), store, job.dataset_ids, track="main")
        assert spec.train.objective == "dpo"
        outcome = run_attempt_of(spec, store)
        assert outcome.status == RunStatus.SUCCEEDED and outcome.step == 4
        rows = [json.loads(line) for line in (spec.run_dir / "metrics.jsonl").read_text().splitlines()]
        assert any("rewards/margins" in row for row in rows if row["kind"] == "train")
        assert store.mark_experiences_trained(spec.run_id, job.dataset_ids) == 8

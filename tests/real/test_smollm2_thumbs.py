"""Thumbs alone teach a real model: SmolLM2-135M-Instruct, an application on the
``openai`` SDK, no corrections and no teacher.

The application (``examples/thumbs/addition.py``) asks sampled questions ("What is 8 +
13? Reply with only the number.") through ``honed daemon --serve``, checks each answer
itself and sends thumbs. One turn of the loop trains a candidate on the answers the thumbs
approved; the gate compares its answers with the live model's on 80 questions nobody asked,
sampled as the application samples (win rate by the application's own check, a sign test
over prompts), and deploys it. The same questions asked again at the same seeds are
answered right measurably more often (McNemar). The same exchanges with the thumbs
inverted, on a second track, give a candidate the gate rejects (it learns with KTO, which
uses the thumbs down too: SFT on the approved wrong answers alone learned their short form
and was not worse). Marked ``real_model`` and ``long``: about 13 minutes on two cores, more
than CI's budget; ``python -m pytest -m long`` runs it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.real.test_smollm2 import _free_port, _wait

pytestmark = [pytest.mark.real_model, pytest.mark.long]  # about 13 minutes: beyond CI's budget, run with -m long
pytest.importorskip("torch")

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "thumbs"
TRAFFIC, FRESH = 240, 80  # questions asked (and thumbed); questions only the gate sees


@pytest.mark.timeout(2400)  # about 12 minutes on two cores: 360 answers served, two jobs, two evaluations
def test_thumbs_alone_make_smollm2_better_and_inverted_thumbs_are_rejected(gguf_cache, tmp_path):
    import httpx
    from openai import OpenAI

    sys.path.insert(0, str(EXAMPLE))
    import addition

    from honed.config import update_config_file
    from honed.evaluation.statistics import mcnemar_p
    from honed.store.schema import JOB_FINAL_STATES
    from honed.workspace import open_workspace

    env = {**os.environ, "HONED_CACHE": str(gguf_cache),
           "PYTHONPATH": os.pathsep.join([str(EXAMPLE), os.environ.get("PYTHONPATH", "")])}
    root, port = tmp_path / "ws", _free_port()

    def honed(*args: str) -> str:
        done = subprocess.run([sys.executable, "-m", "honed.cli", *args], env=env, capture_output=True, text=True)
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout

    honed("init", str(root), "--base", "smollm2")
    honed("track", "add", "inverted", "-w", str(root))
    questions = addition.pairs(TRAFFIC + FRESH, seed=0)
    fresh = [{"messages": [*addition.messages(a, b), {"role": "assistant", "content": str(a + b)}]}
             for a, b in questions[TRAFFIC:]]
    (root / "fresh.jsonl").write_text("".join(json.dumps(r) + "\n" for r in fresh))
    update_config_file(root, {
        "server": {"port": port},
        "lora": {"target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"]},
        # One budget for every batch: 30 steps.
        "train": {"epochs": 10.0, "max_steps": 30, "lr": 1e-4, "batch_size": 8, "warmup_steps": 3,
                  "heldout_fraction": 0.0, "eval_every": 0, "checkpoint_every": 10},
        # The gate's own questions, answered by candidate and live model as the app is served (sampled at
        # 0.7, four answers each, the same seeds), decided by the app's own check.
        "eval": {"sets": [{"name": "fresh", "path": "fresh.jsonl", "scorers": ["addition:score"]}],
                 "win_rate": "scorer", "win_rate_sets": ["fresh"], "win_rate_temperature": 0.7,
                 "win_rate_samples": 4, "max_new_tokens": 32, "batch_size": 40},
        "gates": {"rules": [{"kind": "win_rate", "set": "fresh", "min": 0.5, "alpha": 0.05},
                            # 18 or so general questions: one answer lost is 5.6 points.
                            {"kind": "retention", "set": "control", "scorer": "exact_match", "max_drop": 0.1}]},
        # No teacher; the loop is turned once by hand, after every thumb is in. Track main teaches the
        # thumbs-up answers as answers (learn.objective = "sft": on this task and budget it beat KTO on all
        # the thumbs, README "Learning from thumbs"). Track inverted learns from every thumb with KTO, the
        # objective that also pushes away from what was thumbed down: inverted, from the right answers.
        "learn": {"objective": "sft", "scorer": "addition:score", "experience_fraction": 1.0},
        "tracks": {"inverted": {"learn": {"objective": "kto", "scorer": "addition:score",
                                          "experience_fraction": 1.0}}},
    })
    ws = open_workspace(root)
    with open(tmp_path / "daemon.log", "ab") as log:  # the daemon keeps its own copy of the descriptor
        daemon = subprocess.Popen([sys.executable, "-m", "honed.cli", "daemon", "--serve", "-w", str(root), "--quiet"],
                                  env=env, stdout=log, stderr=log, stdin=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    client = OpenAI(base_url=url + "/v1", api_key="-", max_retries=0, timeout=300)
    http = httpx.Client(base_url=url, timeout=60)
    store = ws.open_store()
    try:
        _wait(lambda: _answers(http), 120, "honed daemon --serve", daemon)
        # The application: sampled answers, checked, thumbed. Nothing else reaches honed.
        before = addition.ask(client, questions[:TRAFFIC], temperature=0.7, seed=1)
        addition.thumbs(http, before)
        # The same exchanges, logged on the second track with the thumbs the other way round.
        for exchange in before:
            logged = http.post("/v1/experiences", json={
                "track": "inverted", "messages": addition.messages(exchange.a, exchange.b),
                "output": exchange.answer})
            logged.raise_for_status()
            exchange_inverted = addition.Exchange(exchange.a, exchange.b, exchange.answer, logged.json()["id"])
            addition.thumbs(http, [exchange_inverted], invert=True)
        status = json.loads(honed("learn", "status", "-w", str(root), "--json"))
        ups = sum(e.right for e in before)
        by_track = {s["track"]: s for s in status}
        assert (by_track["main"]["good"], by_track["main"]["needs_improvement"]) == (ups, TRAFFIC - ups)
        assert (by_track["inverted"]["good"], by_track["inverted"]["needs_improvement"]) == (TRAFFIC - ups, ups)
        assert 0.1 <= ups / TRAFFIC <= 0.5, ups  # right only sometimes: a task with room to learn
        honed("learn", "run-now", "-w", str(root), "--track", "main")
        honed("learn", "run-now", "-w", str(root), "--track", "inverted")

        jobs = _wait(lambda: (lambda js: js if len(js) == 2 and all(j.state in JOB_FINAL_STATES for j in js)
                              else None)(store.list_jobs()), 1500, "both jobs to end", daemon)
        assert [(j.track, j.state) for j in sorted(jobs, key=lambda j: j.id)] == [
            ("main", "succeeded"), ("inverted", "rejected")], _verdicts(store)
        good = store.deployed_adapter("main")
        assert good is not None, _verdicts(store)
        assert store.deployed_adapter("inverted") is None, _verdicts(store)
        [bad] = store.list_adapters("inverted")
        assert bad.state == "rejected"

        # What the batch was: the thumbs-up answers, each line traced to its experience.
        run_dir = ws.runs_dir / store.get_job(good.job_id).run_id
        manifest = json.loads((run_dir / "manifest.json").read_text())
        assert manifest["config"]["train"]["objective"] == "sft" and manifest["steps"] == 30
        [batch] = store.list_learning_batches("main")
        assert sorted(batch.experience_ids) == sorted(e.experience_id for e in before if e.right)

        # The gate's evidence: a win on questions nobody asked, the inverted one a loss.
        won = good.verdict["win_rate"]["sets"]["fresh"]
        print("win rate of the thumbs candidate:", json.dumps(won))
        rule = next(r for r in bad.verdict["rules"] if r["kind"] == "win_rate")
        assert not rule["ok"] and rule["losses"] > rule["wins"], rule

        # The served track is better: the same questions, the same seeds, now the deployed adapter.
        after = addition.ask(client, questions[:TRAFFIC // 2], temperature=0.7, seed=1)
        assert all(r.experience_id for r in after)
        right_before = [e.right for e in before[:TRAFFIC // 2]]
        right_after = [e.right for e in after]
        b = sum(1 for x, y in zip(right_before, right_after) if x and not y)
        c = sum(1 for x, y in zip(right_before, right_after) if y and not x)
        rate_before, rate_after = sum(right_before) / len(after), sum(right_after) / len(after)
        print(f"served answers right: {rate_before:.3f} before, {rate_after:.3f} after, on {len(after)} questions; "
              f"{c} gained, {b} lost, McNemar p={mcnemar_p(c, b):.3g}")
        assert rate_after - rate_before >= 0.10 and mcnemar_p(c, b) < 0.01, (rate_before, rate_after, b, c)
    finally:
        http.close()
        daemon.terminate()
        daemon.wait(timeout=120)
        store.close()


def _answers(http) -> bool:
    import httpx

    try:
        return http.get("/v1/models").status_code == 200
    except httpx.HTTPError:
        return False


def _verdicts(store) -> list:
    return [(a.track, a.state, a.verdict) for t in ("main", "inverted") for a in store.list_adapters(t)]

"""The win rate through real parts: the teacher as a judge over a real HTTP server (a
fair judge, one that always picks the first answer, one that answers garbage, one that
errs, one that is down), and the real evaluator on the tiny model with
``eval.win_rate = "scorer"`` and ``"judge"`` on a held-out split of preference pairs, its
verdict stored and shown by ``honed adapters`` and the HTTP API."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from honed.config import LearnSettings, update_config_file
from honed.evaluation.gates import adapter_state, decide
from honed.evaluation.llm_judge import TeacherJudge
from honed.evaluation.win_rate import both_orders, win_rate
from honed.server.background import BackgroundServer
from honed.workspace import open_workspace
from tests.cli_runner import free_port, run_honed
from tests.learning.conftest import _completion

pytestmark = pytest.mark.slow  # trains, then samples hundreds of answers: about 2.5 minutes; CI runs it slow

ANSWER = "42"


def says_42(output: str, record: dict) -> float:
    """The track's scorer in these tests: the answer is 42."""
    return 1.0 if ANSWER in output else 0.0


@dataclass
class JudgeBehaviour:
    mode: str = "fair"  # fair (prefers the answer saying 42), first (always A), garbage, error
    calls: int = 0


def judge_app(behaviour: JudgeBehaviour) -> FastAPI:
    app = FastAPI()

    @app.post("/v1/chat/completions")
    async def complete(request: Request):
        behaviour.calls += 1
        body = await request.json()
        asked = body["messages"][-1]["content"]
        first, second = re.search(r"\[Answer A\]\n(.*)\n\n\[Answer B\]\n(.*)\n\nWhich", asked, re.DOTALL).groups()
        if behaviour.mode == "error":
            return JSONResponse({"error": {"message": "the judge is overloaded"}}, status_code=500)
        if behaviour.mode == "garbage":
            return _completion("Both answers have merit.")
        if behaviour.mode == "first":
            return _completion("A")
        a, b = ANSWER in first, ANSWER in second
        return _completion("A" if a and not b else "B" if b and not a else "TIE")

    return app


@pytest.fixture
def judge():
    behaviour = JudgeBehaviour()
    server = BackgroundServer(judge_app(behaviour)).start()
    yield server.url + "/v1", behaviour
    server.stop()


def learn_with_judge(url: str) -> LearnSettings:
    return LearnSettings.model_validate({"teacher": {"base_url": url, "model": "judge", "timeout_s": 2.0}})


def test_the_teacher_judges_in_both_orders_over_http(judge):
    url, behaviour = judge
    teacher = TeacherJudge(learn_with_judge(url))
    prompts = [[{"role": "user", "content": f"what is 6 x {i}?"}] for i in range(4)]
    candidate = ["42", "42", "it is 42", "same"]
    live = ["41", "forty", "7", "same"]
    result = win_rate(candidate, live, prompts, both_orders(teacher.ask))
    assert (result.wins, result.losses, result.ties, result.notes) == (3, 0, 1, {"identical": 1})
    assert behaviour.calls == 6  # both orders for the three prompts whose answers differ; none for "same"

    behaviour.mode = "first"  # a judge that favours a position: every verdict pair disagrees
    result = win_rate(candidate, live, prompts, both_orders(teacher.ask))
    assert (result.wins, result.losses, result.ties) == (0, 0, 4) and result.notes["disagreement"] == 3

    behaviour.mode = "garbage"
    result = win_rate(candidate, live, prompts, both_orders(teacher.ask))
    assert result.ties == 4 and result.notes == {"unparsable": 3, "identical": 1}

    behaviour.mode = "error"
    result = win_rate(candidate, live, prompts, both_orders(teacher.ask))
    assert result.notes["failed"] == 3 and result.failure == "the judge answered HTTP 500"

    down = TeacherJudge(learn_with_judge(f"http://127.0.0.1:{free_port()}/v1"))
    result = win_rate(candidate, live, prompts, both_orders(down.ask))
    assert result.notes["failed"] == 3 and result.failure.startswith("cannot reach the judge at http://127.0.0.1:")


def make_heldout(run_dir, n: int = 30) -> None:
    """A held-out split of preference pairs, as a DPO run writes it: no reference to match."""
    from honed.data.synthetic import generate

    run_dir.mkdir()
    pairs = [{"prompt": [r["messages"][0]], "chosen": [{"role": "assistant", "content": ANSWER}],
              "rejected": [{"role": "assistant", "content": "7"}]} for r in generate("arithmetic", n, seed=7)]
    (run_dir / "heldout.jsonl").write_text("".join(json.dumps(p) + "\n" for p in pairs))


@pytest.fixture(scope="module")
def forty_two(tiny_random_base, tmp_path_factory):
    """An adapter trained to answer every prompt "42", shared by the tests (training is the slow part)."""
    pytest.importorskip("torch")
    from tests.evaluation.test_gates_on_tiny_model import make_adapter

    return make_adapter(str(tiny_random_base), tmp_path_factory.mktemp("adapters") / "forty-two", steps=80)


def configure(ws, **eval_settings):
    rules = [{"kind": "win_rate", "set": "heldout", "min": 0.6}]
    update_config_file(ws.root, {"eval": {"regression_records": 0, **eval_settings},
                                 "learn": {"scorer": "tests.evaluation.test_win_rate_on_tiny_model:says_42"},
                                 "gates": {"rules": rules}})
    return open_workspace(ws.root)


@pytest.mark.long  # beyond CI's budget: python -m pytest -m long
def test_the_evaluator_measures_the_win_rate_with_the_tracks_scorer(make_workspace, tiny_random_base, tmp_path,
                                                                    forty_two):
    pytest.importorskip("torch")
    from honed.evaluation.evaluate import evaluate_candidate
    from tests.evaluation.test_gates_on_tiny_model import make_adapter

    ws = configure(make_workspace(tiny_random_base), win_rate="scorer")
    store = ws.open_store()
    make_heldout(tmp_path / "run")
    base = ws.resolve_base_path(store)
    rules = ws.settings.gates_for("main").rules

    def evaluate(adapter):
        return evaluate_candidate(ws, store, track="main", base_path=base, base_version=0, candidate_path=adapter,
                                  run_dir=tmp_path / "run", dataset_ids=[], general_control=False)

    better = evaluate(forty_two)
    assert better["candidate"]["heldout"] == {"n": 30}  # pairs: no exact match, no loss; only the win rate
    figures = better["win_rate"]["sets"]["heldout"]
    assert better["win_rate"]["decider"] == "scorer tests.evaluation.test_win_rate_on_tiny_model:says_42"
    assert figures["n"] == 30 and figures["wins"] >= 25 and figures["losses"] == 0, figures
    assert figures["p_better"] < 1e-6 and len(figures["samples"]) == ws.settings.eval.samples_kept
    assert ANSWER in figures["samples"][0]["candidate"] and ANSWER not in figures["samples"][0]["live"]
    verdict = decide(better, rules, False)
    assert verdict["passed"] and verdict["rules"][0]["kind"] == "win_rate", verdict

    same = evaluate(make_adapter(base, tmp_path / "fresh", steps=0))  # changes nothing: every answer identical
    assert same["win_rate"]["sets"]["heldout"]["notes"] == {"identical": 30}
    blocked = decide(same, rules, False)
    assert adapter_state(blocked) == "rejected"
    assert blocked["failed"] == [
        "win_rate heldout: 0.5 < 0.6; no measurable win over base v0: win rate 0.5 against base v0 on 30 prompts by "
        "scorer tests.evaluation.test_win_rate_on_tiny_model:says_42: 0 won, 0 lost, 30 tied, 30 identical; sign "
        "test p=1 ≥ α 0.05"]

    # Stored with the evaluation and shown where verdicts are shown.
    adapter = store.add_adapter(track="main", run_id=None, job_id=None, base_version=0, path=str(tmp_path / "fresh"))
    store.record_evaluation(adapter.id, same, blocked, adapter_state(blocked))
    store.close()
    shown = " ".join(run_honed("adapters", "show", str(adapter.id), "-w", str(ws.root)).stdout.split())
    assert "FAIL win_rate heldout: 0.5 < 0.6; no measurable win" in shown
    assert "win rate 0.50 on heldout (0 won, 0 lost, 30 tied, p=1) by scorer tests.evaluation" in shown
    listed = run_honed("adapters", "list", "-w", str(ws.root)).stdout
    assert "win rate 0.50 on heldout" in listed
    from fastapi.testclient import TestClient

    from honed.server.app import create_app

    with TestClient(create_app(open_workspace(ws.root)), base_url="http://127.0.0.1") as client:
        [listed] = client.get("/api/adapters").json()
    assert listed["verdict"]["win_rate"]["sets"]["heldout"]["ties"] == 30
    assert listed["evaluation"]["win_rate"]["sets"]["heldout"]["notes"] == {"identical": 30}


@pytest.mark.long  # beyond CI's budget: python -m pytest -m long
def test_a_sampled_win_rate_draws_the_same_rounds_again_and_names_them(make_workspace, tiny_random_base, tmp_path,
                                                                       forty_two):
    pytest.importorskip("torch")
    from honed.evaluation.evaluate import evaluate_candidate

    ws = configure(make_workspace(tiny_random_base), win_rate="scorer")
    # Temperature 0.5: the adapter's "42" is drawn most of the time on any machine (at 1.0 one
    # machine's arithmetic drew it in none of the 90 answers, and the rounds were all ties).
    update_config_file(ws.root, {"eval": {"win_rate_temperature": 0.5, "win_rate_samples": 3}})
    ws = open_workspace(ws.root)
    store = ws.open_store()
    make_heldout(tmp_path / "run")
    base = ws.resolve_base_path(store)

    def evaluate():
        return evaluate_candidate(ws, store, track="main", base_path=base, base_version=0, candidate_path=forty_two,
                                  run_dir=tmp_path / "run", dataset_ids=[], general_control=False)

    first, again = evaluate()["win_rate"]["sets"]["heldout"], evaluate()["win_rate"]["sets"]["heldout"]
    store.close()
    assert (first["temperature"], first["rounds"]) == (0.5, 3)
    assert first == again  # seeded rounds: the same evaluation gives the same figures
    assert first["n"] == 30 and first["wins"] > first["losses"], first
    verdict = decide(only_win_rate(first), ws.settings.gates_for("main").rules, False)
    assert "(sampled at temperature 0.5, 3 answers each)" in verdict["rules"][0]["detail"]


def only_win_rate(figures: dict) -> dict:
    """An evaluation holding only a win rate."""
    return {"candidate": {}, "baseline": {}, "baseline_name": "base v0",
            "win_rate": {"decider": "scorer", "sets": {"heldout": figures}}}


@pytest.mark.long  # beyond CI's budget: python -m pytest -m long
def test_the_evaluator_asks_the_teacher_as_judge(make_workspace, tiny_random_base, tmp_path, judge, forty_two):
    from honed.evaluation.evaluate import evaluate_candidate

    url, behaviour = judge
    ws = configure(make_workspace(tiny_random_base), win_rate="judge")
    update_config_file(ws.root, {"learn": {"teacher": {"base_url": url, "model": "judge", "timeout_s": 2.0}}})
    ws = open_workspace(ws.root)
    store = ws.open_store()
    make_heldout(tmp_path / "run", n=24)
    base = ws.resolve_base_path(store)

    def evaluate():
        return evaluate_candidate(ws, store, track="main", base_path=base, base_version=0, candidate_path=forty_two,
                                  run_dir=tmp_path / "run", dataset_ids=[], general_control=False)

    evaluation = evaluate()
    figures = evaluation["win_rate"]["sets"]["heldout"]
    assert evaluation["win_rate"]["decider"] == f"judge judge at {url}"
    assert figures["wins"] >= 20 and figures["losses"] == 0 and behaviour.calls == 2 * (24 - figures["notes"].get(
        "identical", 0)), figures
    assert decide(evaluation, ws.settings.gates_for("main").rules, False)["passed"]

    behaviour.mode = "error"  # the judge never answers: nothing is measured, and a person decides
    evaluation = evaluate()
    assert evaluation["win_rate"]["sets"]["heldout"]["error"] == ("the judge was never reached: the judge answered "
                                                                  "HTTP 500")
    verdict = decide(evaluation, ws.settings.gates_for("main").rules, False)
    assert adapter_state(verdict) == "awaiting_approval" and verdict["held"] == [
        "win_rate heldout: not measured: the judge was never reached: the judge answered HTTP 500; held for a person"]
    store.close()

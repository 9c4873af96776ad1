"""The web monitor in a real browser (Debian's Chromium, driven by Playwright) against a
real ``honed serve`` and a real daemon training the tiny model: the loss chart grows
without a reload, Pause pauses the job (its trainer exits), Rollback on the adapters page
changes the deployment. Screenshots go to the test's output directory."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import httpx
import pytest

from honed.registry.deployment import deploy
from honed.workspace import open_workspace
from tests.cli_runner import free_port
from tests.daemon.conftest import configure, pid_alive, start_daemon, synth, wait_for  # noqa: F401 (fixture)

CHROMIUM = os.environ.get("HONED_TEST_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]


@pytest.fixture(scope="module")
def browser():
    """Headless Chromium; skipped (or failed, with HONED_REQUIRE_BROWSER=1) when absent."""
    problem = None
    if not shutil.which(CHROMIUM) and not os.path.exists(CHROMIUM):
        problem = f"no Chromium at {CHROMIUM} (apt-get install chromium, or set HONED_TEST_CHROMIUM)"
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        problem = "the playwright package is not installed (pip install -e '.[test]')"
    if problem:
        if os.environ.get("HONED_REQUIRE_BROWSER") == "1":
            pytest.fail(f"{problem} (HONED_REQUIRE_BROWSER=1)")
        pytest.skip(problem)
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1280, "height": 1000})
    opened = context.new_page()
    errors: list[str] = []
    opened.on("pageerror", lambda exc: errors.append(str(exc)))
    opened.on("dialog", lambda dialog: dialog.accept())  # confirm() before rollback / cancel
    yield opened
    context.close()
    assert not errors, f"JavaScript errors on the page: {errors}"


@pytest.fixture
def honed_serve(tmp_path):
    """``honed serve`` in a child process, as a user runs it."""
    procs = []

    def start(ws) -> str:
        port = free_port()
        command = [sys.executable, "-m", "honed.cli", "serve", "-w", str(ws.root), "--port", str(port)]
        with open(tmp_path / f"serve-{port}.out", "wb") as log:  # the server keeps its own copy of the descriptor
            proc = subprocess.Popen(command, stdout=log, stderr=log, stdin=subprocess.DEVNULL)
        procs.append(proc)
        url = f"http://127.0.0.1:{port}"

        def up():
            assert proc.poll() is None, (tmp_path / f"serve-{port}.out").read_text()
            try:
                return httpx.get(f"{url}/api/status", timeout=2).status_code == 200
            except httpx.TransportError:
                return False

        wait_for(up, 60, "honed serve to answer")
        return url

    yield start
    for proc in procs:
        proc.terminate()
        proc.wait(timeout=20)


def test_live_chart_and_pause(make_workspace, tiny_random_base, start_daemon, honed_serve, page, tmp_path):  # noqa: F811 (pytest fixture imported above)
    ws = configure(make_workspace(tiny_random_base), {
        "train": {"epochs": 4.0, "eval_every": 40, "checkpoint_every": 20},
        "telemetry": {"layer_stats_every": 5},
    })
    url = honed_serve(ws)
    start_daemon(ws)
    synth(ws.inbox / "reversal.jsonl", 2500)
    with ws.open_store() as store:
        job = wait_for(lambda: next(iter(store.list_jobs(states=("running",))), None), 120, "the job to start")
        job = wait_for(lambda: (j := store.get_job(job.id)).progress and j.progress.get("step", 0) >= 3 and j,
                       120, "the first steps")

    page.goto(url + "/")
    page.wait_for_selector("body[data-ready=true]")
    page.wait_for_selector(f"#running [data-job='{job.id}']")
    loss = page.locator("[data-chart=loss]")
    wait_for(lambda: int(loss.get_attribute("data-points")) > 0, 30, "the loss chart's first points")
    before = int(loss.get_attribute("data-points"))
    url_before = page.url
    wait_for(lambda: int(loss.get_attribute("data-points")) >= before + 10, 60, "the chart to gain points live")
    assert page.url == url_before
    page.screenshot(path=str(tmp_path / "overview-training.png"), full_page=True)

    with ws.open_store() as store:
        trainer = store.get_job(job.id).trainer_pid
        assert trainer and pid_alive(trainer)
        page.locator(f"#running [data-job='{job.id}'] button[data-action=pause]").click()
        wait_for(lambda: store.get_job(job.id).state == "paused", 120, "the job to pause")
        wait_for(lambda: not pid_alive(trainer), 60, "the trainer process to exit")
    row = page.locator(f"#queue tr[data-job='{job.id}'] [data-state=paused]")
    row.wait_for(timeout=15_000)
    assert page.locator("#running").inner_text().strip() == "Nothing is training."
    page.screenshot(path=str(tmp_path / "overview-paused.png"), full_page=True)

    # The job's own page: its curves, events and layer activity, without training running.
    page.goto(f"{url}/jobs/{job.id}")
    page.wait_for_selector("body[data-ready=true]")
    assert int(page.locator("[data-chart=loss]").get_attribute("data-points")) >= before + 10
    assert page.locator("#events tr[data-kind=paused]").count() == 1
    heat = page.locator("[data-heatmap=layers]")
    assert int(heat.get_attribute("data-steps")) >= 2
    page.screenshot(path=str(tmp_path / "job-page.png"), full_page=True)


def _candidate(store, ws, name):
    path = ws.adapters_dir / name
    path.mkdir(parents=True)
    adapter = store.add_adapter(track="main", run_id=None, job_id=None, base_version=0, path=str(path))
    verdict = {"passed": True, "failed": [], "rules": [{"rule": "heldout exact_match", "ok": True, "detail": "0.9"}],
               "require_approval": False, "baseline": "base"}
    evaluation = {"candidate": {"heldout": {"exact_match": 0.9, "n": 10}},
                  "baseline": {"heldout": {"exact_match": 0.1}}, "baseline_name": "base"}
    return store.record_evaluation(adapter.id, evaluation, verdict, "candidate")


def test_rollback_from_the_adapters_page(make_workspace, tiny_random_base, honed_serve, page, tmp_path):
    ws = open_workspace(make_workspace(tiny_random_base).root)
    with ws.open_store() as store:
        first, second = _candidate(store, ws, "a1"), _candidate(store, ws, "a2")
        deploy(ws, store, first.id)
        deploy(ws, store, second.id)
    url = honed_serve(ws)
    page.goto(url + "/adapters")
    page.wait_for_selector("body[data-ready=true]")
    live = page.locator("[data-track=main] [data-deployed]")
    assert live.get_attribute("data-deployed") == str(second.id)
    page.screenshot(path=str(tmp_path / "adapters-before.png"), full_page=True)
    page.locator("[data-track=main] button[data-action=rollback]").click()
    page.wait_for_selector(f"[data-track=main] [data-deployed='{first.id}']", timeout=15_000)
    with ws.open_store() as store:
        assert store.deployed_adapter("main").id == first.id
    assert (ws.root / "deployments" / "main" / "current").resolve() == (ws.adapters_dir / "a1").resolve()
    page.screenshot(path=str(tmp_path / "adapters-after.png"), full_page=True)

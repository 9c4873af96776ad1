"""The server gives its device to a trainer that claims it and takes it back after.

On this CPU-only machine the CPU is made exclusive (``server.yield_devices`` includes
"cpu"), so the whole path runs for real: claims come from real processes through the
trainer's own API (one of them from a real daemon training a real tiny job), chat
requests go through the official ``openai`` SDK, and the state is read from
``/api/health``.
"""

from __future__ import annotations

import queue
import signal
import subprocess
import sys
import threading

import httpx
import openai
import pytest

from honed.config import update_config_file
from honed.workspace import open_workspace
from tests.cli_runner import free_port
from tests.daemon.conftest import configure, synth, trainer_processes, wait_for

QUESTION = [{"role": "user", "content": "reverse: honed"}]
SHARING = {"server": {"yield_devices": ["cuda", "mps", "cpu"], "device_poll_s": 0.05, "yield_timeout_s": 30,
                      "retry_after_s": 7}}

# A trainer's side of the handshake, in a process of its own: claim the CPU for a job (through
# the trainer's claim_accelerator, or the bare claim API), say when the servers released it,
# hold it until a line arrives on stdin, withdraw.
CLAIMER = """
import sys, time
from honed.workspace import open_workspace
ws = open_workspace(sys.argv[1])
job = int(sys.argv[2])
if sys.argv[3] == "trainer":
    from honed.daemon.device_claims import claim_accelerator
    with ws.open_store() as store:
        claim = claim_accelerator(ws, store, job)
else:
    from honed.daemon.device_claims import claim_device
    claim = claim_device(ws.root, "cpu", None, job)
    print("claimed", time.time(), flush=True)
    claim.wait_for_release(ws.settings.server.yield_timeout_s)
print("held" if claim.holders() else "released", time.time(), flush=True)
sys.stdin.readline()
claim.withdraw()
"""


class Claimer:
    """A process that claims the CPU for ``job`` until :meth:`end` (or a SIGKILL)."""

    def __init__(self, ws, job: int, how: str = "trainer") -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", CLAIMER, str(ws.root), str(job), how],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.lines: queue.Queue = queue.Queue()
        threading.Thread(target=lambda: [self.lines.put(line.split()) for line in self.proc.stdout],
                         daemon=True).start()

    def said(self, word: str, timeout: float = 60) -> float:
        """Wait for the line starting with ``word``; its time."""
        line = self.lines.get(timeout=timeout)
        assert line[0] == word, line
        return float(line[1])

    def end(self) -> None:
        self.proc.stdin.write("done\n")
        self.proc.stdin.flush()
        assert self.proc.wait(timeout=30) == 0

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)


@pytest.fixture
def claimers():
    started: list[Claimer] = []

    def start(ws, job: int, how: str = "trainer") -> Claimer:
        started.append(Claimer(ws, job, how))
        return started[-1]

    yield start
    for claimer in started:
        if claimer.proc.poll() is None:
            claimer.kill()


def _served(make_workspace, tiny_random_base, serve, extra: dict | None = None):
    ws = make_workspace(tiny_random_base)
    update_config_file(ws.root, SHARING)
    if extra:
        update_config_file(ws.root, extra)
    ws = open_workspace(ws.root)
    server = serve(ws)
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused-on-loopback", max_retries=0, timeout=120)
    return ws, server, client, _queue_job(ws, 16)  # the job the claims are made for (no daemon runs it)


def _queue_job(ws, records: int) -> int:
    from honed.data.datasets import add_dataset_file

    with ws.open_store() as store:
        added = add_dataset_file(ws, store, synth(ws.root / "data.jsonl", records), track="main", mode="strict")
        return store.create_job(track="main", dataset_ids=[added.dataset.id]).id


@pytest.fixture
def served(make_workspace, tiny_random_base, serve):
    return _served(make_workspace, tiny_random_base, serve)


def health(server) -> dict:
    reply = httpx.get(f"{server.url}/api/health", timeout=30)
    assert reply.status_code == 200, reply.text
    return reply.json()


def ask(client, max_tokens: int = 4):
    """A chat completion, served (the tiny models' answers may have no visible text)."""
    completion = client.chat.completions.create(model="main", messages=QUESTION, max_tokens=max_tokens)
    assert completion.choices[0].finish_reason in ("stop", "length")
    return completion


def assert_released(client, job: int) -> None:
    """A chat request, plain and streamed, gets 503 with Retry-After naming the job."""
    for stream in (False, True):
        with pytest.raises(openai.InternalServerError) as caught:
            client.chat.completions.create(model="main", messages=QUESTION, max_tokens=4, stream=stream)
        error = caught.value
        assert error.status_code == 503 and error.response.headers["retry-after"] == "7"
        assert f"released to training job {job} on cpu" in error.message
        assert error.body["type"] == "api_error" and error.body["code"] == 503


def test_a_claim_releases_the_model_and_its_end_brings_it_back(served, claimers):
    ws, server, client, job = served
    before = ask(client).choices[0].message.content
    state = health(server)
    assert state["ok"] and state["store"]["reachable"] and state["state"] == "serving"
    assert (state["models_loaded"], state["device"], state["serving"]) == (["main@base-v0"], "cpu", "serving")

    claimer = claimers(ws, job)
    claimer.said("released")  # the trainer's wait ended because the server released, not by timeout
    state = health(server)
    assert state["state"] == "released" and state["models_loaded"] == [] and state["job"] == job
    assert state["serving"].startswith(f"released to training job {job} on cpu since ")
    assert_released(client, job)
    with ws.open_store() as store:
        events = [e for e in store.job_events(job) if e.kind == "device"]
    assert len(events) == 1 and "1 server(s) released cpu" in events[0].message

    claimer.end()
    wait_for(lambda: health(server)["models_loaded"] == ["main@base-v0"], 30, "the model to be loaded again")
    assert health(server)["serving"] == "serving"
    assert ask(client).choices[0].message.content == before
    assert "/api/health" in httpx.get(f"{server.url}/openapi.json").json()["paths"]
    assert httpx.get(f"{server.url}/healthz").json()["state"] == "serving"


def test_a_request_under_way_when_the_claim_arrives_finishes_first(served, claimers):
    ws, server, client, job = served
    ask(client)  # loaded
    # About 3 s of generation; the first chunk comes once the request holds the model.
    chunks = iter(client.chat.completions.create(model="main", messages=QUESTION, max_tokens=600, stream=True))
    assert next(chunks).choices[0].delta.role == "assistant"
    claimer = claimers(ws, job, how="bare")
    claimer.said("claimed")
    wait_for(lambda: health(server)["state"] == "releasing", 30, "the server to see the claim")
    assert_released(client, job)  # new requests are refused at once; the one under way goes on
    assert claimer.lines.empty()  # and the trainer still waits for it
    last = list(chunks)[-1]
    assert last.choices[0].finish_reason == "length" and last.usage.completion_tokens == 600
    assert last.model_extra["honed"]["experience_id"]
    claimer.said("released")
    assert health(server)["state"] == "released"
    claimer.end()
    wait_for(lambda: health(server)["state"] == "serving", 30, "the server to take the device back")


def test_a_dead_trainers_claim_does_not_block_serving(served, claimers):
    ws, server, client, job = served
    ask(client)
    claimer = claimers(ws, job)
    claimer.said("released")
    assert_released(client, job)
    claimer.kill()  # no withdraw: the claim file stays, its process is gone
    wait_for(lambda: health(server)["state"] == "serving", 30, "the server to void the dead claim")
    assert ask(client).usage.completion_tokens == 4
    assert not list((ws.root / "run" / "devices").glob("claim-*.json"))


@pytest.mark.parametrize("mode, state, serving", [("cpu", "on_cpu", "on cpu while training job"),
                                                   ("keep", "sharing", "serving, sharing cpu with training job")])
def test_on_training_cpu_or_keep_keeps_answering(make_workspace, tiny_random_base, serve, claimers, mode, state,
                                                   serving):
    ws, server, client, job = _served(make_workspace, tiny_random_base, serve, {"server": {"on_training": mode}})
    before = ask(client).choices[0].message.content
    claimer = claimers(ws, job)
    claimer.said("released")
    now = health(server)
    assert now["state"] == state and now["serving"].startswith(f"{serving} {job}")
    assert now["models_loaded"] == ["main@base-v0"]
    assert ask(client).choices[0].message.content == before  # no 503
    claimer.end()
    wait_for(lambda: health(server)["state"] == "serving", 30, "the server to take the device back")
    assert ask(client).choices[0].message.content == before


def test_a_claim_made_before_the_first_request_applies_to_it(served, claimers):
    ws, server, client, job = served
    state = health(server)
    assert (state["state"], state["device"], state["models_loaded"]) == ("serving", None, [])  # nothing chosen yet
    claimer = claimers(ws, job)
    claimer.said("released")  # no server on the device yet: the trainer goes on at once
    assert_released(client, job)  # the first request finds the claim before it loads anything
    assert health(server)["models_loaded"] == []
    claimer.end()
    wait_for(lambda: health(server)["state"] == "serving", 30, "the server to take the device back")
    assert ask(client).model == "main@base-v0"


@pytest.mark.slow  # CI runs it in its second call
def test_a_daemon_training_a_job_releases_its_own_server(make_workspace, tiny_random_base, tmp_path):
    ws = configure(make_workspace(tiny_random_base), {**SHARING, "train": {"eval_every": 0, "heldout_fraction": 0.05}})
    port = free_port()
    update_config_file(ws.root, {"server": {"port": port}})
    log = tmp_path / "daemon.out"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "honed.cli", "daemon", "--serve", "-w", str(ws.root)],
                                stdout=out, stderr=out, stdin=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    client = openai.OpenAI(base_url=url + "/v1", api_key="unused-on-loopback", max_retries=0, timeout=120)
    try:
        def state():
            assert proc.poll() is None, log.read_text()
            try:
                return httpx.get(f"{url}/api/health", timeout=5).json()
            except httpx.TransportError:
                return None

        wait_for(state, 60, "the daemon's server")
        assert ask(client).model == "main@base-v0"
        job = _queue_job(ws, 48)
        with ws.open_store() as store:
            wait_for(lambda: (s := state()) and s["state"] == "released", 60, "the server to release the CPU", 0.02)
            assert state()["serving"].startswith(f"released to training job {job} on cpu since ")
            assert_released(client, job)
            wait_for(lambda: store.get_job(job).state in ("succeeded", "failed", "rejected"), 120, "the job to end")
            assert store.get_job(job).state == "succeeded", store.job_events(job)
            assert any(e.kind == "device" for e in store.job_events(job))
        wait_for(lambda: state()["state"] == "serving", 30, "the server to take the CPU back")
        assert ask(client).model == "main@main-a1"  # and it serves what the job deployed
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
            for trainer in trainer_processes(ws.root):
                trainer.kill()


@pytest.fixture
def two_torch_threads():
    """The server's usual count is the process's: 2 for the test, whatever an earlier test of
    this process left (threads the server starts begin from the count last set anywhere)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield 2
    torch.set_num_threads(before)


@pytest.mark.parametrize("max_batch", [16, 0], ids=["decode-loop", "generate"])
def test_a_cpu_shared_with_a_trainer_is_decoded_on_fewer_threads_while_it_trains(
        make_workspace, tiny_random_base, serve, claimers, monkeypatch, two_torch_threads, max_batch):
    # The default settings: the CPU is shared, not given up. A trainer's claim on it (made by
    # the trainer's own claim_accelerator, in a process of its own) must make the server
    # decode with server.threads_while_training threads, and its end bring the usual back.
    import torch

    from honed.server import decode_threads

    usual = two_torch_threads
    seen: list[int] = []  # the decoding thread's torch thread count at each forward it starts

    def recording() -> None:
        real_apply()
        seen.append(torch.get_num_threads())

    real_apply = decode_threads.apply
    monkeypatch.setattr(decode_threads, "apply", recording)
    ws = make_workspace(tiny_random_base)
    update_config_file(ws.root, {"server": {"device_poll_s": 0.05, "max_batch": max_batch}})
    ws = open_workspace(ws.root)
    server = serve(ws)
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused-on-loopback", max_retries=0, timeout=120)
    job = _queue_job(ws, 16)
    before = ask(client).choices[0].message.content
    assert seen and set(seen) == {usual}
    assert health(server)["decode_threads"] == usual

    claimer = claimers(ws, job)
    claimer.said("released")  # nothing to wait for on a shared CPU
    assert [c.name for c in (ws.root / "run" / "devices").glob("claim-*.json")]
    wait_for(lambda: health(server)["state"] == "sharing", 30, "the server to see the trainer's claim")
    now = health(server)
    assert now["serving"].startswith(f"serving, sharing cpu with training job {job}") and now["decode_threads"] == 1
    seen.clear()
    assert ask(client).choices[0].message.content == before  # the same answer, on one thread
    assert seen and set(seen) == {1}

    claimer.end()
    wait_for(lambda: health(server)["state"] == "serving", 30, "the server to see the claim end")
    assert health(server)["decode_threads"] == usual
    seen.clear()
    assert ask(client).choices[0].message.content == before
    assert seen and set(seen) == {usual}


def test_threads_while_training_zero_keeps_the_usual_count(make_workspace, tiny_random_base, serve, claimers):
    ws = make_workspace(tiny_random_base)
    update_config_file(ws.root, {"server": {"device_poll_s": 0.05, "threads_while_training": 0}})
    ws = open_workspace(ws.root)
    server = serve(ws)
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused-on-loopback", max_retries=0, timeout=120)
    job = _queue_job(ws, 16)
    ask(client)
    claimer = claimers(ws, job)
    claimer.said("released")
    ask(client)
    now = health(server)
    assert now["state"] == "serving" and "decode_threads" not in now
    claimer.end()

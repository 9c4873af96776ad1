"""Benchmark: memory of honed on SmolLM2-135M: the base weights in two processes, and the
daemon + server while it serves the deployed adapter and trains the next one.

    python benchmarks/memory_footprint.py [--steps N] [--skip-serving] [--json PATH]

1. **Two processes, one base.** The server (in the daemon's process) and the trainer
   both hold SmolLM2's weights (538 MB in float32). Two child processes load the base,
   first each into memory of its own (``from_pretrained(disable_mmap=True)``: the
   baseline), then as honed loads it (``load_base_model``: transformers maps the
   safetensors file copy-on-write and keeps the float32 weights there, so both processes
   read the same pages of the page cache). Printed per process: RSS, USS (memory only it
   holds) and PSS (its share of what it shares), and the two processes' PSS together:
   what the machine really spends.
2. **Daemon + server while serving.** A workspace on SmolLM2, ``honed daemon --serve``,
   a first dataset trained and deployed (gates off: the point is memory), then a second
   dataset trained while a client keeps asking the deployed adapter questions through
   ``/v1/chat/completions``. While the job's trainer lives, the daemon's process tree
   (the daemon with its server, the trainer, a warm spare trainer) is sampled every half
   second; printed: each one's peak RSS, and the moment the tree's summed PSS was
   highest, with each process's RSS, USS and PSS then.

PSS needs /proc/PID/smaps_rollup (Linux).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

try:
    import honed  # noqa: F401
except ImportError:  # run from a checkout without installing
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import httpx  # noqa: E402
import psutil  # noqa: E402
from headline import figure, load_average, write_headline  # noqa: E402
from proxy_latency import free_port  # noqa: E402

from honed.config import update_config_file  # noqa: E402
from honed.states import JobState  # noqa: E402

MB = 2**20


def memory_of(pid: int) -> dict:
    info = psutil.Process(pid).memory_full_info()
    return {"rss": info.rss / MB, "uss": info.uss / MB, "pss": info.pss / MB}


# --- 1. two processes, one base ----------------------------------------------------------


def child_load(how: str, base: str) -> None:
    """Load ``base`` as ``how`` says, say so on stdout, and hold it until stdin closes."""
    import torch

    if how == "private":
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32, disable_mmap=True)
    else:
        from honed.training.model_loading import load_base_model

        model = load_base_model(base, torch.device("cpu"))
    with torch.inference_mode():  # touch every weight, as a forward pass does
        total = sum(float(p.float().sum()) for p in model.parameters())
    print(f"loaded {total:.3f}", flush=True)
    sys.stdin.read()


def two_processes(base: str, how: str) -> dict:
    children = [subprocess.Popen([sys.executable, __file__, "--child-load", how, base], stdin=subprocess.PIPE,
                                 stdout=subprocess.PIPE, text=True) for _ in range(2)]
    try:
        for child in children:
            line = child.stdout.readline()
            if not line.startswith("loaded"):
                raise SystemExit(f"the {how} child failed to load the base")
        each = [memory_of(child.pid) for child in children]
    finally:
        for child in children:
            child.stdin.close()
            child.wait()
    return {"each": each, "pss_total": sum(m["pss"] for m in each), "rss_total": sum(m["rss"] for m in each)}


# --- 2. daemon + server while serving ------------------------------------------------------


def role_of(process: psutil.Process, daemon_pid: int, trainer_pids: set[int]) -> str:
    if process.pid == daemon_pid:
        return "daemon + server"
    if process.pid in trainer_pids:
        return "trainer"  # a warm spare handed the job, or one started for it
    return "warm spare trainer" if "--warm" in " ".join(process.cmdline()) else "other"


class Sampler(threading.Thread):
    """The daemon's process tree every half second while a job trains or evaluates (its
    trainer alive): each role's peak RSS, and the sample whose summed PSS is highest,
    with every role's figures at that moment."""

    def __init__(self, daemon_pid: int, trainer_pids) -> None:
        super().__init__(daemon=True)
        self.daemon_pid, self.trainer_pids = daemon_pid, trainer_pids
        self.peak_rss: dict[str, float] = {}
        self.highest: dict = {"pss": 0.0, "roles": {}}
        self.samples = 0
        self.done = threading.Event()

    def run(self) -> None:
        root = psutil.Process(self.daemon_pid)
        while not self.done.is_set():
            trainers = self.trainer_pids()
            tree = [root, *root.children(recursive=True)]
            if trainers & {p.pid for p in tree}:
                roles: dict[str, dict] = {}
                for process in tree:
                    try:
                        m, role = memory_of(process.pid), role_of(process, self.daemon_pid, trainers)
                    except psutil.Error:
                        continue
                    held = roles.setdefault(role, {"rss": 0.0, "uss": 0.0, "pss": 0.0})
                    for key in held:  # several processes of one role (torchrun's ranks) add up
                        held[key] += m[key]
                for role, held in roles.items():
                    self.peak_rss[role] = max(self.peak_rss.get(role, 0.0), held["rss"])
                total = sum(m["pss"] for m in roles.values())
                if total > self.highest["pss"]:
                    self.highest = {"pss": total, "rss": sum(m["rss"] for m in roles.values()), "roles": roles}
                self.samples += 1
            self.done.wait(0.5)


def daemon_while_serving(base: str, tmp: Path, steps: int) -> dict:
    from honed.data.synthetic import generate
    from honed.workspace import init_workspace, open_workspace

    root = tmp / "ws"
    init_workspace(root, base=base)
    port = free_port()
    update_config_file(root, {
        "lora": {"target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"]},
        "train": {"batch_size": 8, "max_steps": steps, "epochs": 1.0, "lr": 3e-4, "warmup_steps": 2,
                  "heldout_fraction": 0.1, "eval_every": 0, "checkpoint_every": 1000},
        "eval": {"max_records": 6, "regression_records": 6, "max_new_tokens": 32},
        "gates": {"rules": []},
        "daemon": {"poll_interval_s": 0.2, "settle_s": 0.3},
        "server": {"port": port},
    })
    ws = open_workspace(root)
    records = generate("person_json", 160, seed=5)
    log = tmp / "daemon.out"
    with open(log, "ab") as out:
        daemon = subprocess.Popen([sys.executable, "-m", "honed.cli", "daemon", "--serve", "-w", str(root),
                                   "--quiet"], stdout=out, stderr=out, stdin=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    store = ws.open_store()
    try:
        (ws.inbox / "first.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records[:80]))
        deadline = time.monotonic() + 900
        while store.deployed_adapter("main") is None:
            if daemon.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"the first adapter was not deployed: {log.read_text()[-3000:]}")
            time.sleep(0.5)
        print("first adapter deployed; training the second while serving", flush=True)

        def trainer_pids() -> set[int]:
            return {j.trainer_pid for j in store.list_jobs(states=("running", "evaluating")) if j.trainer_pid}

        def training() -> bool:
            return bool(trainer_pids())

        stop = threading.Event()
        answered = []

        def client() -> None:
            with httpx.Client(timeout=120) as http:
                k = 0
                while not stop.is_set():
                    body = {"model": "main", "max_tokens": 24,
                            "messages": records[80 + k % 80]["messages"][:-1]}
                    if http.post(f"{url}/v1/chat/completions", json=body).status_code == 200 and training():
                        answered.append(time.monotonic())
                    k += 1

        sampler = Sampler(daemon.pid, trainer_pids)
        sampler.start()
        asker = threading.Thread(target=client, daemon=True)
        asker.start()
        (ws.inbox / "second.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records[80:]))
        started = time.monotonic()
        while time.monotonic() - started < 900:
            jobs = store.list_jobs()
            if len(jobs) >= 2 and JobState(max(jobs, key=lambda j: j.id).state).final:
                break
            time.sleep(0.5)
        stop.set()
        sampler.done.set()
        asker.join(timeout=130)
        sampler.join()
        return {"peak_rss": sampler.peak_rss, "highest": sampler.highest, "samples": sampler.samples,
                "answers_while_training": len(answered)}
    finally:
        store.close()
        daemon.terminate()
        try:
            daemon.wait(timeout=120)
        except subprocess.TimeoutExpired:
            daemon.kill()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=8, help="optimizer steps of each job (default 8)")
    parser.add_argument("--skip-serving", action="store_true", help="part 1 only (a minute)")
    parser.add_argument("--json", metavar="PATH", help="also write the headline figures as JSON to PATH")
    parser.add_argument("--child-load", nargs=2, metavar=("HOW", "BASE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child_load:
        child_load(*args.child_load)
        return 0
    from honed.models.gguf_base import convert_gguf, smollm2_gguf

    load_before = load_average()
    base = str(convert_gguf(smollm2_gguf()))
    print(f"SmolLM2-135M-Instruct at {base}; load average {load_before}")
    loads = {how: two_processes(base, how) for how in ("private", "honed")}
    print("\n1. two processes holding the base (MB):")
    for how, r in loads.items():
        label = "private copies (disable_mmap)" if how == "private" else "honed load_base_model"
        each = "; ".join(f"RSS {m['rss']:.0f} USS {m['uss']:.0f} PSS {m['pss']:.0f}" for m in r["each"])
        print(f"  {label:<30} {each}; PSS of both {r['pss_total']:.0f}")
    saved = loads["private"]["pss_total"] - loads["honed"]["pss_total"]
    print(f"  sharing the weights' pages: x{loads['honed']['pss_total'] / loads['private']['pss_total']:.2f} "
          f"the memory of two private copies ({saved:.0f} MB less)")
    figures = [figure("SmolLM2 base in two processes: PSS of both", loads["honed"]["pss_total"], "MB",
                      baseline="private copies (from_pretrained disable_mmap=True)",
                      baseline_value=loads["private"]["pss_total"])]
    serving = None
    if not args.skip_serving:
        with tempfile.TemporaryDirectory(prefix="honed-bench-memory-") as tmp:
            serving = daemon_while_serving(base, Path(tmp), args.steps)
        highest = serving["highest"]
        print(f"\n2. daemon + server while it serves and trains ({serving['samples']} samples, "
              f"{serving['answers_while_training']} answers served meanwhile), in MB:")
        for role, rss in sorted(serving["peak_rss"].items()):
            m = highest["roles"].get(role)
            at = f"; at the tree's highest PSS: RSS {m['rss']:.0f} USS {m['uss']:.0f} PSS {m['pss']:.0f}" if m else ""
            print(f"  {role:<20} peak RSS {rss:>6.0f}{at}")
        print(f"  the tree's highest PSS {highest['pss']:.0f} MB (its RSS summed then {highest.get('rss', 0):.0f}: "
              "the shared pages counted once per process)")
        figures += [figure("trainer of a SmolLM2 LoRA job: peak RSS", serving["peak_rss"].get("trainer"), "MB",
                           ratio=None),
                    figure("daemon + server + trainer while serving: highest PSS", highest["pss"], "MB", ratio=None)]
    write_headline(args.json, "memory_footprint", figures, load_before=load_before,
                   details={"loads": loads, "serving": serving})
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""train.report_to on the tiny model: ``honed train`` reports to TensorBoard, MLflow and W&B
(offline), and each tracker's own reader gives back the figures honed stored, step by
step, with the settings and the final metrics; a resumed run continues the same tracker
runs; a missing package names the extra to install; an unknown tracker lists the allowed."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

from honed.config import SettingsError, load_settings, parse_assignments
from tests.cli_runner import run_honed

pytest.importorskip("tensorboard")
pytest.importorskip("mlflow")
pytest.importorskip("wandb")

FAST = ["train.batch_size=8", "train.epochs=1", "train.threads=1", "train.eval_every=4",
        "train.heldout_fraction=0.1", "train.warmup_steps=2", "lora.r=4"]
ALL = "train.report_to=tensorboard,mlflow,wandb"


@pytest.fixture(scope="module")
def wandb_home(tmp_path_factory) -> dict[str, str]:
    """W&B's own config and cache in a temporary directory, not the user's home."""
    home = tmp_path_factory.mktemp("wandb-home")
    return {"WANDB_CONFIG_DIR": str(home / "config"), "WANDB_CACHE_DIR": str(home / "cache"),
            "WANDB_DATA_DIR": str(home / "data")}


@pytest.fixture(scope="module")
def data_and_eval(tmp_path_factory) -> tuple[Path, Path]:
    from honed.data.synthetic import write_synthetic

    return write_synthetic("reversal", 100, tmp_path_factory.mktemp("data") / "rev.jsonl", seed=3, eval_n=6)


@pytest.fixture(scope="module")
def data(data_and_eval) -> Path:
    return data_and_eval[0]


@pytest.fixture(scope="module")
def reported(tmp_path_factory, tiny_random_base, data_and_eval, wandb_home):
    """One ``honed train --eval`` of 11 steps reporting to all three trackers; the workspace,
    the run id, what honed stored (train rows, eval rows, final metrics) and its summary."""
    from honed.workspace import init_workspace, open_workspace

    root = tmp_path_factory.mktemp("report") / "ws"
    init_workspace(root, base=str(tiny_random_base))
    args = [a for s in [*FAST, ALL] for a in ("--set", s)]
    data, eval_file = data_and_eval
    out = run_honed("train", "-w", str(root), "--dataset", str(data), "--eval", str(eval_file), "--json", *args,
                    env=wandb_home)
    summary = json.loads(out.stdout)
    assert summary["status"] == "succeeded", out.stderr
    ws = open_workspace(root)
    with ws.open_store() as store:
        train = store.get_metrics(summary["run"], kind="train")
        evals = store.get_metrics(summary["run"], kind="eval")
        final = store.get_run(summary["run"]).final_metrics
    assert [r["step"] for r in train] == list(range(1, 12)) and [r["step"] for r in evals] == [4, 8, 11]
    return ws, summary["run"], train, evals, {**final, "exact_match_after": summary["exact_match_after"]}


def tracker_ids(ws, run_id: str) -> dict:
    return json.loads((ws.runs_dir / run_id / "trackers.json").read_text())


# --- readers: each library's own ---------------------------------------------------------


def tensorboard_scalars(log_dir: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(log_dir))
    events.Reload()
    return events


def mlflow_history(uri: str, run_id: str, key: str) -> list[tuple[int, float]]:
    from mlflow import MlflowClient

    return [(m.step, m.value) for m in sorted(MlflowClient(uri).get_metric_history(run_id, key),
                                              key=lambda m: (m.step, m.timestamp))]


def wandb_records(path: Path):
    """The records of a W&B transaction log (``run-ID.wandb``), parsed with W&B's own
    protobuf schema. The file is a LevelDB-style log (W&B 0.31 ships no Python reader of
    it): a 7-byte header, then 32 KiB blocks of chunks (crc32c, length, type) that
    together make each record."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    pos, pending = 7, b""
    while pos + 7 <= len(data):
        if 32768 - pos % 32768 < 7:  # a block's tail too short for a chunk header is padding
            pos += 32768 - pos % 32768
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        pending += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # a whole record, or the last chunk of one
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            pending = b""
            yield record


def key_of(item) -> str:
    """A history or summary item's name: W&B keeps "train/loss" as the nested key [train, loss]."""
    return item.key or "/".join(item.nested_key)


def wandb_run(run_dir: Path, wandb_id: str) -> dict:
    """The history rows, summary and config of every offline attempt of W&B run ``wandb_id``."""
    found: dict = {"history": [], "summary": {}, "config": {}, "attempts": 0}
    for path in sorted(run_dir.glob(f"wandb/offline-run-*-{wandb_id}/run-{wandb_id}.wandb")):
        found["attempts"] += 1
        for record in wandb_records(path):
            kind = record.WhichOneof("record_type")
            if kind == "history":
                found["history"].append({key_of(i): json.loads(i.value_json) for i in record.history.item})
            elif kind == "summary":
                found["summary"].update({key_of(i): json.loads(i.value_json) for i in record.summary.update})
            elif kind == "run":
                found["config"].update({i.key: json.loads(i.value_json) for i in record.run.config.update})
    return found


# --- honed train, all three -------------------------------------------------------------------


def test_tensorboard_has_each_stored_step_and_the_final_metrics(reported):
    ws, run_id, train, evals, final = reported
    log_dir = Path(tracker_ids(ws, run_id)["tensorboard"]["log_dir"])
    assert log_dir == ws.runs_dir / run_id / "tensorboard"
    events = tensorboard_scalars(log_dir)
    losses = [(e.step, e.value) for e in events.Scalars("train/loss")]
    assert [s for s, _ in losses] == [r["step"] for r in train]
    assert [v for _, v in losses] == pytest.approx([r["loss"] for r in train], rel=1e-6)  # float32 events
    assert [e.step for e in events.Scalars("eval/val_loss")] == [r["step"] for r in evals]
    assert [e.value for e in events.Scalars("eval/val_loss")] == pytest.approx([r["val_loss"] for r in evals], rel=1e-6)
    assert [e.value for e in events.Scalars("train/lr")] == pytest.approx([r["lr"] for r in train], rel=1e-6)
    assert events.Scalars("final/loss")[-1].value == pytest.approx(final["loss"], rel=1e-6)
    assert events.Scalars("final/val_loss")[-1].step == 11
    after = events.Scalars("exact_match/after")  # --eval's score, once the adapter is saved
    assert [(e.step, e.value) for e in after] == [(11, pytest.approx(final["exact_match_after"]))]
    assert "settings/text_summary" in events.Tags()["tensors"]
    status = events.Tensors("status/text_summary")[-1].tensor_proto.string_val[0]
    assert status == b"succeeded"


def test_mlflow_run_has_each_stored_step_the_settings_and_the_final_metrics(reported):
    import mlflow

    ws, run_id, train, evals, final = reported
    ids = tracker_ids(ws, run_id)["mlflow"]
    assert ids["tracking_uri"] == f"sqlite:///{ws.root.resolve() / 'mlflow.db'}"  # the default: in the workspace
    assert mlflow_history(ids["tracking_uri"], ids["run_id"], "train/loss") == [(r["step"], r["loss"]) for r in train]
    assert mlflow_history(ids["tracking_uri"], ids["run_id"], "eval/val_loss") == [
        (r["step"], r["val_loss"]) for r in evals]
    # A client of its own: mlflow.set_tracking_uri would export MLFLOW_TRACKING_URI to every later test.
    client = mlflow.MlflowClient(tracking_uri=ids["tracking_uri"])
    run = client.get_run(ids["run_id"])
    assert run.info.status == "FINISHED" and run.info.run_name == run_id
    assert client.get_experiment(run.info.experiment_id).name == "main"  # the track
    assert run.data.params["train.batch_size"] == "8" and run.data.params["lora.r"] == "4"
    assert json.loads(run.data.params["train.report_to"]) == ["tensorboard", "mlflow", "wandb"]
    assert run.data.metrics["final/loss"] == final["loss"] and run.data.metrics["final/val_loss"] == final["val_loss"]
    assert run.data.tags["status"] == "succeeded" and run.data.tags["adapter_path"].endswith(run_id)
    assert run.data.metrics["exact_match/after"] == final["exact_match_after"]


def test_wandb_offline_run_has_each_stored_step_the_settings_and_the_final_metrics(reported):
    ws, run_id, train, evals, final = reported
    ids = tracker_ids(ws, run_id)["wandb"]
    assert ids["project"] == "main"
    found = wandb_run(ws.runs_dir / run_id, ids["run_id"])
    # Offline by default, written under the run's directory: the training, then --eval's scores.
    assert found["attempts"] == 2
    losses = [(h["step"], h["train/loss"]) for h in found["history"] if "train/loss" in h]
    assert losses == [(r["step"], r["loss"]) for r in train]
    assert [(h["step"], h["eval/val_loss"]) for h in found["history"] if "eval/val_loss" in h] == [
        (r["step"], r["val_loss"]) for r in evals]
    assert found["config"]["train"]["batch_size"] == 8 and found["config"]["run_id"] == run_id
    assert found["summary"]["final/loss"] == final["loss"] and found["summary"]["status"] == "succeeded"
    assert found["summary"]["exact_match/after"] == final["exact_match_after"]


def test_honed_status_and_help_never_import_a_tracker(reported):
    ws, *_ = reported
    probe = ("import sys, runpy; sys.argv = ['honed', *sys.argv[1:]]\n"
             "try: runpy.run_module('honed.cli', run_name='__main__')\n"
             "except SystemExit: pass\n"
             "print(sorted(m for m in ('torch', 'tensorboard', 'mlflow', 'wandb') if m in sys.modules))")
    import subprocess
    import sys

    for args in (["--help"], ["status", "-w", str(ws.root)]):
        out = subprocess.run([sys.executable, "-c", probe, *args], capture_output=True, text=True, check=True)
        assert out.stdout.strip().splitlines()[-1] == "[]", out.stdout


# --- a resumed run continues the same tracker runs -------------------------------------------


def test_a_paused_and_resumed_run_continues_the_same_tracker_runs(make_workspace, tiny_random_base, data,
                                                                  wandb_home, monkeypatch):
    from honed.training.oneshot import train_once
    from honed.workspace import open_workspace

    for key, value in wandb_home.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    root = make_workspace(tiny_random_base).root

    def train(control=None, resume=None) -> dict:
        ws = open_workspace(root, parse_assignments([*FAST, ALL, "train.checkpoint_every=100"]))
        with ws.open_store() as store:
            return train_once(ws, store, datasets=[] if resume else [str(data)], eval_file=None, base_version=None,
                              resume=resume, out=None, track="main", control=control)

    paused = train(control=lambda step: "pause" if step == 5 else None)
    assert paused["status"] == "paused"
    ws = open_workspace(root)
    first_ids = tracker_ids(ws, paused["run"])
    resumed = train(resume=paused["run"])
    assert resumed["status"] == "succeeded" and resumed["attempt"] == 2
    ids = tracker_ids(ws, paused["run"])
    assert ids == first_ids  # the same MLflow run, W&B run and TensorBoard directory
    with ws.open_store() as store:
        stored = [(r["step"], r["loss"]) for r in store.get_metrics(paused["run"], kind="train")]
    assert [s for s, _ in stored] == list(range(1, 12))

    assert mlflow_history(ids["mlflow"]["tracking_uri"], ids["mlflow"]["run_id"], "train/loss") == stored
    events = tensorboard_scalars(Path(ids["tensorboard"]["log_dir"]))
    assert [e.step for e in events.Scalars("train/loss")] == [s for s, _ in stored]
    assert [e.value for e in events.Scalars("train/loss")] == pytest.approx([v for _, v in stored], rel=1e-6)
    found = wandb_run(ws.runs_dir / paused["run"], ids["wandb"]["run_id"])
    assert found["attempts"] == 2
    assert [(h["step"], h["train/loss"]) for h in found["history"] if "train/loss" in h] == stored
    assert found["summary"]["status"] == "succeeded"


# --- bad input ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["tensorboard", "mlflow", "wandb"])
def test_a_missing_package_names_the_extra_to_install(name, monkeypatch, make_workspace, tiny_random_base, data):
    import importlib.util

    from honed.telemetry import trackers
    from honed.training.oneshot import train_once
    from honed.training.runs import RunError
    from honed.workspace import open_workspace

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda mod, *a: None if mod == name else real_find_spec(mod, *a))
    ws = open_workspace(make_workspace(tiny_random_base).root, parse_assignments([*FAST, f"train.report_to={name}"]))
    with ws.open_store() as store, pytest.raises(RunError) as err:
        train_once(ws, store, datasets=[str(data)], eval_file=None, base_version=None, resume=None, out=None,
                   track="main")
    assert f"pip install 'honed[{name}]'" in str(err.value)
    with ws.open_store() as store:
        assert store.list_runs() == []  # refused before anything was planned or registered

    # And where the import itself fails (a broken install): the tracker says the same.
    monkeypatch.setitem(__import__("sys").modules, "torch.utils.tensorboard" if name == "tensorboard" else name, None)
    run = trackers.TrackedRun("run-x", "main", ws.runs_dir, ws.settings.report)
    with pytest.raises(trackers.TrackerMissing, match=rf"pip install 'honed\[{name}\]'"):
        trackers.TRACKERS[name](run, {}).start({})


def test_an_unknown_tracker_lists_the_allowed_ones(tmp_path):
    (tmp_path / "honed.toml").write_text('[train]\nreport_to = ["tensorboard", "comet"]\n')
    with pytest.raises(SettingsError) as err:
        load_settings(tmp_path)
    assert "train.report_to.1 = 'comet' is not allowed: 'tensorboard', 'mlflow' or 'wandb'" in str(err.value)
    with pytest.raises(SettingsError, match="'comet' is not allowed: 'tensorboard', 'mlflow' or 'wandb'"):
        load_settings(None, parse_assignments(["train.report_to=comet"]))


def test_tensorboard_keeps_one_value_per_step_when_an_attempt_repeats_steps(tmp_path):
    # A crashed attempt logged steps past its last checkpoint (3); the next one redoes them.
    from honed.config import ReportSettings
    from honed.telemetry.trackers import TensorBoardTracker, TrackedRun

    run = TrackedRun("run-x", "main", tmp_path, ReportSettings())
    first = TensorBoardTracker(run, {})
    first.start({"start_step": 0})
    for step in range(1, 6):
        first.log(step, {"train/loss": float(step)})
    first.writer.close()  # a crash: no finish
    second = TensorBoardTracker(run, first.state)
    second.start({"start_step": 3})
    for step in (4, 5, 6):
        second.log(step, {"train/loss": 10.0 * step})
    second.finish({"step": 6, "status": "succeeded"})
    events = tensorboard_scalars(tmp_path / "tensorboard")
    assert [(e.step, e.value) for e in events.Scalars("train/loss")] == [(1, 1), (2, 2), (3, 3), (4, 40), (5, 50),
                                                                         (6, 60)]

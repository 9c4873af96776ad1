"""One attempt of a run, top to bottom: setup → train → save_checkpoint → finish → cleanup.

:func:`run_attempt_of` is the whole of it, in the torchtune manner: a recipe object whose
steps read in the order they happen. ``setup`` starts the attempt in the store, loads
the plan, the tokenizer and the model, and continues from the last complete checkpoint;
``train`` runs optimizer steps, asking ``control`` before each one (pause, stop,
cancel); ``save_checkpoint`` writes an atomic checkpoint and records it; ``finish``
validates and saves the adapter when there is a result, then records the outcome, the
attempt's energy and the manifest (an attempt that crashed records its crash, energy
included, and the exception goes on up); ``cleanup`` closes what setup opened. The
experiment trackers of ``train.report_to`` (:mod:`honed.telemetry.trackers`) get the
settings at setup, every train and eval row as it is stored, and the final metrics.

The pieces these steps are made of (learning rate, data order, one optimizer step,
validation loss, checkpoint contents, adapter save) are in :mod:`honed.training.trainer`.
The preference objectives (``train.objective`` dpo, kto; :mod:`honed.training.preference`)
change what the records are tokenised into, the loss inside ``train`` and the held-out
loss; the lifecycle (control, checkpoints, resume, metrics, manifest) is the same.

Under torchrun (``dist``) every rank runs the recipe; rank 0 alone asks ``control``,
calls the callbacks, writes files and records in the store, and the other ranks follow
its decisions (with FSDP every rank takes part in saving and validating).
"""

from __future__ import annotations

import json
import logging
import random
import time
import traceback
from datetime import UTC, datetime
from pathlib import Path

import torch

from honed import faults
from honed.atomic_files import writing
from honed.config import TrainSettings
from honed.data.packing import pack_batch
from honed.data.plan import load_plan
from honed.data.tokenization import TokenizedRecords
from honed.states import RunStatus
from honed.telemetry.system import training_step_stats
from honed.telemetry.trackers import RunTrackers, TrackedRun
from honed.training import checkpoints as ckpt
from honed.training.distributed import Dist
from honed.training.layer_stats import lora_delta_norms
from honed.training.model_loading import load_tokenizer, load_training_model, nvml_uuid, pick_device
from honed.training.preference import (
    ReferenceLogps,
    TokenizedPreferences,
    balanced_kto_weights,
    preference_train_step,
    preference_validation_loss,
)
from honed.training.runs import mark_learned
from honed.training.spec import CheckpointCallback, Control, EventCallback, RunOutcome, RunSpec, StepCallback
from honed.training.trainer import (
    LoopState,
    TrainingDiverged,
    examples_for_step,
    learning_rate,
    peak_rss_mb,
    restore_adapter,
    restore_training_state,
    save_adapter,
    save_checkpoint,
    steps_per_epoch,
    total_steps,
    train_step,
    validation_loss,
)

log = logging.getLogger(__name__)


def run_attempt_of(spec: RunSpec, store, *, control: Control | None = None, on_step: StepCallback | None = None,
                   on_checkpoint: CheckpointCallback | None = None, dist: Dist | None = None,
                   mark_trained: bool = False, on_event: EventCallback | None = None) -> RunOutcome:
    """Carry out one attempt of ``spec`` and record how it ended (see the module's
    docstring). ``control(step)`` is asked before every optimizer step: "pause"
    checkpoints and returns, "stop" checkpoints and ends the run with what it has as
    its result, "cancel" returns at once with no result. With ``mark_trained`` (the
    one-shot path) a finished run's records count as learned at once; the daemon marks
    them only when the run's adapter is deployed. ``on_event(kind, message, data)`` hears
    what the attempt decided on its own (the micro-batch it fits in memory)."""
    recipe = TrainingRecipe(spec, store, control=control, on_step=on_step, on_checkpoint=on_checkpoint, dist=dist,
                            on_event=on_event)
    try:
        recipe.setup()
        status, error = recipe.train()
        return recipe.finish(status, error, mark_trained=mark_trained)
    except Exception as exc:  # an attempt that crashes is recorded, then re-raised
        recipe.finish_crashed(exc)
        raise
    finally:
        recipe.cleanup()


class TrainingRecipe:
    """The state of one attempt, and its steps in order."""

    def __init__(self, spec: RunSpec, store, *, control: Control | None, on_step: StepCallback | None,
                 on_checkpoint: CheckpointCallback | None, dist: Dist | None,
                 on_event: EventCallback | None = None) -> None:
        self.spec = spec
        self.on_event = on_event
        self.cfg = spec.train
        self.store = store
        self.control = control
        self.on_step = on_step
        self.on_checkpoint = on_checkpoint
        self.dist = dist or Dist.current()
        self.state = LoopState()
        self.attempt = 0
        self.last_row: dict = {}
        self.recorded: set[int] = set()  # checkpoint steps the store knows
        self.checkpoints_dir = spec.run_dir / "checkpoints"
        self.metrics_file = None
        self.meter = None
        self.weights: dict | None = None  # kto: the weights used and the label counts (the manifest keeps them)
        self.trackers: RunTrackers | None = None  # train.report_to, on rank 0

    # --- setup ---------------------------------------------------------------------

    def setup(self) -> None:
        """Start the attempt, load plan, tokenizer and model, and continue from the last
        complete checkpoint (or start from the run's seed)."""
        spec, cfg, dist = self.spec, self.cfg, self.dist
        if dist.world != cfg.world_size:
            raise ValueError(
                f"train.nproc = {cfg.nproc} on train.nnodes = {cfg.nnodes} machine(s), but this trainer runs "
                f"in {dist.world} process(es): "
                + ("the daemon starts runs of several processes under torchrun; queue the data "
                   "('honed queue') for the daemon, or set train.nproc = 1" if dist.world == 1
                   else "torchrun's --nproc-per-node must match train.nproc, and --nnodes train.nnodes")
            )
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        if dist.main:
            self.meter = start_energy_meter(spec)
        self.attempt = dist.broadcast(self.store.start_attempt(spec.run_id) if dist.main else None)
        plan = load_plan(spec.run_dir)
        self.device = pick_device()
        self.gpu = nvml_uuid(self.device)
        self.tokenizer = load_tokenizer(spec.base)
        self.model = load_training_model(spec.base, self.device, spec.lora, cfg)  # QLoRA, checkpointing as cfg says
        if cfg.objective == "sft":
            self.train_examples = TokenizedRecords(self.tokenizer, plan.train, cfg.max_seq_len, "train")
            self.heldout_examples = TokenizedRecords(self.tokenizer, plan.heldout, cfg.max_seq_len, "held-out")
        else:
            self.train_examples = TokenizedPreferences(self.tokenizer, plan.train, cfg.max_seq_len, "train",
                                                       cfg.objective)
            self.heldout_examples = TokenizedPreferences(self.tokenizer, plan.heldout, cfg.max_seq_len, "held-out",
                                                         cfg.objective)
            # The base with the adapter disabled: no second copy of the model.
            self.reference = ReferenceLogps(self.model, self.tokenizer.pad_token_id)
            if cfg.objective == "kto":
                self.weights = balanced_kto_weights(self.train_examples, cfg)
                self.cfg = cfg = cfg.model_copy(update={k: self.weights[k] for k in ("desirable_weight",
                                                                                    "undesirable_weight")})
                log.info("run %s: kto on %d desirable and %d undesirable examples, weights %.3g and %.3g",
                         spec.run_id, self.weights["desirable"], self.weights["undesirable"],
                         cfg.desirable_weight, cfg.undesirable_weight)
        if cfg.fit_memory:
            self.cfg = cfg = self.fit_micro_batch()
        self.total = total_steps(len(self.train_examples), cfg)
        self.steps_per_epoch = steps_per_epoch(len(self.train_examples), cfg)

        latest_path = None
        if dist.main:
            self.checkpoints_dir.mkdir(exist_ok=True)
            ckpt.remove_stale_staging(self.checkpoints_dir)
            self.recorded = {c.step for c in self.store.list_checkpoints(spec.run_id)}
            latest = ckpt.latest_complete_checkpoint(self.checkpoints_dir, self.recorded) if self.recorded else None
            latest_path = str(latest.path) if latest is not None else None
        latest_path = dist.broadcast(latest_path)  # every rank restores the checkpoint rank 0 chose
        init_file = spec.run_dir / "adapter_init.safetensors"  # what the manifest's proof of change compares with
        if latest_path is not None:
            restore_adapter(Path(latest_path), self.model)
        elif dist.main and not init_file.exists():
            from peft import get_peft_model_state_dict
            from safetensors.torch import save_file

            save_file(get_peft_model_state_dict(self.model), str(init_file))
        self.wrapped = dist.wrap(self.model, cfg.distributed)  # FSDP shards the parameters in place: take them after
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(self.params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.together = dist.main or dist.sharded  # who takes part in saving and validating
        training_step_stats(self.gpu)  # CPU shares are measured between calls: start the clock now
        if latest_path is not None:
            self.state = restore_training_state(Path(latest_path), self.model, self.optimizer, dist)
            log.info("run %s: resuming at step %d of %d (attempt %d)", spec.run_id, self.state.step, self.total,
                     self.attempt)
            if dist.main:  # the checkpoint's own step's figures, for an attempt that has no step left to train
                logged = [r for r in self.store.get_metrics(spec.run_id, latest_attempt_only=False,
                                                            after_step=self.state.step - 1)
                          if r["step"] == self.state.step]
                self.last_row = max(logged, key=lambda r: r["attempt"], default={})
        else:
            random.seed(cfg.seed)
            torch.manual_seed(cfg.seed)
        if dist.main:
            self.metrics_file = open(spec.run_dir / "metrics.jsonl", "a", encoding="utf-8")  # noqa: SIM115 (cleanup closes it)
        self.filler = None  # what a rank without data of its own passes over, with weight zero
        if dist.active:
            self.filler = ([self.train_examples[0]] if cfg.objective != "sft" else
                           pack_batch([self.train_examples[0]], cfg.max_seq_len, self.tokenizer.pad_token_id, cfg.pack))
        if dist.main and cfg.report_to:
            self.trackers = RunTrackers(cfg.report_to, TrackedRun(spec.run_id, spec.track, spec.run_dir, spec.report))
            self.trackers.start({
                "run_id": spec.run_id, "track": spec.track, "base": spec.base, "base_version": spec.base_version,
                "attempt": self.attempt, "start_step": self.state.step, "total_steps": self.total,
                "examples": {"train": len(self.train_examples), "heldout": len(self.heldout_examples)},
                "train": cfg.model_dump(), "lora": spec.lora.model_dump(),
            })

    def fit_micro_batch(self) -> TrainSettings:
        """The settings with a micro-batch whose estimated step fits the memory the device
        has left (:mod:`honed.training.memory`); rank 0 decides for every rank."""
        from honed.training import memory

        cfg, dist = self.cfg, self.dist
        plan = None
        if dist.main:
            count = min(len(self.train_examples), 2 * cfg.batch_size)
            longest = memory.longest_examples(self.train_examples, self.train_examples.records, count)
            per_token = memory.bytes_per_token(memory.ModelShape.of(self.model.config),
                                               checkpointing=cfg.gradient_checkpointing,
                                               value_bytes=2 if self.device.type == "cuda" else 4)
            plan = memory.plan_micro_batch(
                [memory.sequence_lengths(e) for e in longest], batch_size=cfg.batch_size,
                grad_accum=cfg.grad_accum, max_len=cfg.max_seq_len, pack=cfg.pack, padded=cfg.objective != "sft",
                per_token=per_token, trainable=sum(p.numel() for p in self.model.parameters() if p.requires_grad),
                available=memory.available_bytes(self.device))
            log.info("run %s: %s", self.spec.run_id, plan.message())
            if plan.changed and self.on_event is not None:
                self.on_event("memory_plan", plan.message(), plan.data())
        size, accum = dist.broadcast((plan.batch_size, plan.grad_accum) if plan is not None else None)
        return cfg.with_micro_batch({"batch_size": size, "grad_accum": accum})

    # --- train -------------------------------------------------------------------------

    def train(self) -> tuple[RunStatus, str | None]:
        """Optimizer steps until the plan is done or ``control`` says otherwise; returns
        how the run ends and, for a failed one, why."""
        spec, cfg, dist, state = self.spec, self.cfg, self.dist, self.state
        self.model.train()
        try:
            while state.step < self.total:
                action = dist.broadcast(self.control(state.step) if self.control and dist.main else None)
                if action == "cancel":
                    log.info("run %s: cancelled at step %d", spec.run_id, state.step)
                    return RunStatus.CANCELLED, None
                if action in ("pause", "stop"):
                    if dist.broadcast(state.step not in self.recorded if dist.main else None) and self.together:
                        self.save_checkpoint()
                    log.info("run %s: %s at step %d", spec.run_id, action, state.step)
                    return (RunStatus.PAUSED if action == "pause" else RunStatus.STOPPED), None
                row = self.train_one_step()
                if not self.together:
                    continue  # what follows is rank 0's (with FSDP, every rank's): observing, validating, saving
                if spec.telemetry.layer_stats_every and (state.step % spec.telemetry.layer_stats_every == 0
                                                         or state.step == self.total):
                    self.log_metrics([{"step": state.step, **lora_delta_norms(self.model)}], "layers")
                if self.meter is not None:
                    self.meter.poll()
                if self.on_step and dist.main:
                    self.on_step({**row, "total_steps": self.total, "attempt": self.attempt})
                if cfg.eval_every and state.step % cfg.eval_every == 0 and state.step < self.total:
                    self.validate()
                if state.step % cfg.checkpoint_every == 0 or state.step == self.total:
                    self.save_checkpoint()
            return RunStatus.SUCCEEDED, None
        except TrainingDiverged as exc:
            return RunStatus.FAILED, str(exc)

    def train_one_step(self) -> dict:
        """One optimizer step under the non-finite policy; returns its metrics row."""
        spec, cfg, dist, state = self.spec, self.cfg, self.dist, self.state
        faults.point("step.start")
        started = time.perf_counter()
        indices = examples_for_step(state.step, len(self.train_examples), cfg, dist.rank)
        lr = learning_rate(state.step, self.total, cfg, state.lr_scale)
        if cfg.objective == "sft":
            batches = [pack_batch([self.train_examples[i] for i in mb], cfg.max_seq_len,
                                  self.tokenizer.pad_token_id, cfg.pack) for mb in indices]
            result = train_step(self.wrapped, self.optimizer, self.params, batches, cfg, lr, dist, self.filler)
        else:
            pairs = [[self.train_examples[i] for i in mb] for mb in indices]
            result = preference_train_step(self.wrapped, self.reference, self.optimizer, self.params, pairs, cfg, lr,
                                           self.tokenizer.pad_token_id, dist, self.filler)
        faults.point("step.update")
        state.step += 1
        state.tokens_seen += result["tokens"]
        elapsed = time.perf_counter() - started
        row = {
            "step": state.step, "epoch": round(state.step / self.steps_per_epoch, 4), "loss": result["loss"],
            "lr": lr, "grad_norm": result["grad_norm"], "tokens": result["tokens"],
            "tokens_per_s": result["tokens"] / elapsed if elapsed > 0 else 0.0,
            "peak_rss_mb": round(peak_rss_mb(), 1), "time": datetime.now(UTC).isoformat(),
            **training_step_stats(self.gpu), **result.get("figures", {}),
        }
        if self.device.type == "cuda":
            row["peak_accel_mb"] = torch.cuda.max_memory_allocated() / 2**20
        if result["problem"]:  # the same on every rank: loss and gradients are the world's
            state.bad_in_a_row += 1
            state.bad_total += 1
            row["skipped"] = result["problem"]
            log.warning("run %s step %d: %s (policy %s)", spec.run_id, state.step, result["problem"],
                        cfg.nonfinite_policy)
            if cfg.nonfinite_policy == "fail" or state.bad_in_a_row >= cfg.max_bad_steps:
                self.log_metrics([row])
                raise TrainingDiverged(f"step {state.step}: {result['problem']} "
                                       f"(train.nonfinite_policy = {cfg.nonfinite_policy})")
            if cfg.nonfinite_policy == "lower_lr":
                state.lr_scale *= 0.5
        else:
            state.bad_in_a_row = 0
        self.log_metrics([row])
        faults.point("step.logged")
        self.last_row = row
        return row

    def validate(self) -> float | None:
        """The held-out loss now, logged (None without held-out examples)."""
        if self.cfg.objective == "sft":
            val = validation_loss(self.model, self.heldout_examples, self.cfg, self.tokenizer.pad_token_id)
        else:
            val = preference_validation_loss(self.model, self.reference, self.heldout_examples, self.cfg,
                                             self.tokenizer.pad_token_id)
        if val is not None:
            self.log_metrics([{"step": self.state.step, "val_loss": val}], "eval")
        return val

    def log_metrics(self, rows: list[dict], kind: str = "train") -> None:
        if self.metrics_file is None:
            return
        with writing(self.metrics_file.name):
            for row in rows:
                self.metrics_file.write(json.dumps({"kind": kind, "attempt": self.attempt, **row}) + "\n")
            self.metrics_file.flush()
        self.store.append_metrics(self.spec.run_id, rows, attempt=self.attempt, kind=kind)
        if self.trackers is not None and kind in ("train", "eval"):
            for row in rows:
                self.trackers.log(row["step"], row, prefix=f"{kind}/")

    # --- save_checkpoint -------------------------------------------------------------------

    def save_checkpoint(self) -> None:
        """Write an atomic checkpoint of this step and record it; keep the last few."""
        with writing(self.checkpoints_dir), faults.scope("checkpoint"):
            info = save_checkpoint(self.model, self.optimizer, self.state, self.checkpoints_dir, self.dist)
        if info is None:
            return  # not rank 0
        self.store.record_checkpoint(self.spec.run_id, self.state.step, str(info.path), attempt=self.attempt)
        self.recorded.add(self.state.step)
        ckpt.prune_checkpoints(self.checkpoints_dir, self.cfg.keep_checkpoints)
        if self.on_checkpoint:
            self.on_checkpoint(self.state.step, info.path)

    # --- finish ------------------------------------------------------------------------------

    def finish(self, status: RunStatus, error: str | None, *, mark_trained: bool) -> RunOutcome:
        """Validate and save the adapter when the run has a result, then (rank 0) record
        the outcome, the attempt's energy, what was learned and the manifest."""
        spec, state, dist = self.spec, self.state, self.dist
        final = {"step": state.step, "total_steps": self.total, "tokens_seen": state.tokens_seen,
                 "bad_steps": state.bad_total}
        if self.last_row:
            final["loss"] = self.last_row["loss"]
        adapter = None
        if status.has_adapter and self.together:
            val = self.validate()
            if val is not None:
                final["val_loss"] = val
            whole = dist.lora_state(self.model)
            if dist.main:
                with writing(spec.adapter_out), faults.scope("adapter"):
                    adapter = save_adapter(self.model, spec.adapter_out, whole)
        outcome = RunOutcome(status, state.step, self.total, self.attempt, final, adapter, error)
        if not dist.main:
            return outcome
        self.record_energy(status)
        self.store.finish_run(spec.run_id, status=status, final_metrics=final, error=error,
                              adapter_path=str(adapter) if adapter else None, attempt=self.attempt)
        if self.trackers is not None:
            self.trackers.finish({"status": str(status), "step": state.step,
                                  **{f"final/{k}": v for k, v in final.items()},
                                  **({"adapter_path": str(adapter)} if adapter else {}),
                                  **({"error": error} if error else {})})
        if mark_trained and status.has_adapter:
            mark_learned(self.store, spec.run_id, spec.run_dir, spec.track, spec.base_version)
        self.write_manifest(outcome)
        return outcome

    def finish_crashed(self, exc: Exception) -> None:
        """Record a crashed attempt (its energy too) before the exception goes on up."""
        if not self.dist.main:
            return
        error = f"{type(exc).__name__}: {exc}"
        attempt = self.attempt
        if not attempt:  # it crashed before starting in the store: the run's current attempt
            run = self.store.get_run(self.spec.run_id)
            attempt = run.attempt if run else 0
        self.attempt = attempt
        try:
            self.record_energy("crashed")
        except OSError as energy_error:  # a full disk must not hide why the attempt crashed
            log.warning("run %s: energy not recorded: %s", self.spec.run_id, energy_error)
        self.store.finish_run(self.spec.run_id, status=RunStatus.FAILED, error=error + "\n" + traceback.format_exc(),
                              attempt=attempt or None)
        if self.trackers is not None:
            self.trackers.finish({"status": "crashed", "step": self.state.step, "error": error})

    def record_energy(self, status: str) -> None:
        from honed.telemetry.energy_log import record_attempt_energy

        if self.meter is not None:
            record_attempt_energy(self.spec.run_dir, attempt=self.attempt, status=status, reading=self.meter.read())

    def write_manifest(self, outcome: RunOutcome) -> None:
        """The run's manifest: what it trained on, from which base, with what result."""
        from honed.telemetry.energy_log import run_energy
        from honed.training.manifest import base_record, write_manifest

        spec, store = self.spec, self.store
        run = store.get_run(spec.run_id)
        write_manifest(
            spec.run_dir, run=run, datasets=[store.get_dataset(i) for i in run.dataset_ids],
            plan_info=run.config["plan"], outcome=outcome,
            checkpoints=[{"step": c.step, "path": c.path} for c in store.list_checkpoints(spec.run_id)],
            base=base_record(store, spec.base_version, spec.base),
            store_url=store.display_url, metrics_path=spec.run_dir / "metrics.jsonl",
            energy=run_energy(spec.run_dir, run.attempt), kto_weights=self.weights,
        )

    # --- cleanup --------------------------------------------------------------------------

    def cleanup(self) -> None:
        if self.trackers is not None:  # finished already unless finishing itself failed
            self.trackers.finish({"status": "crashed", "step": self.state.step})
        if self.metrics_file is not None:
            try:
                self.metrics_file.close()
            except OSError as exc:  # a full disk: the rows are in the store; the attempt's own error goes on up
                log.warning("run %s: metrics.jsonl not closed cleanly: %s", self.spec.run_id, exc)
            self.metrics_file = None


def start_energy_meter(spec: RunSpec):
    """An :class:`EnergyMeter` for one attempt of ``spec``, started: on the GPU the
    attempt trains on, if any, with the workspace's watts per core for the estimate."""
    from honed.telemetry.energy import EnergyMeter

    gpu = nvml_uuid(pick_device())
    return EnergyMeter(spec.telemetry.cpu_watts_per_core, gpu_uuids=[gpu] if gpu else []).start()

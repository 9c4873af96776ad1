"""The settings themselves: one pydantic model per section of ``honed.toml``, every field
with its description and unit. What reads and writes them is in :mod:`honed.config.layering`
and :mod:`honed.config.toml_file`.

Long because it is every setting honed has, one section after another in ``honed.toml``
order; there is no logic here to split.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from honed.states import Priority


class _Section(BaseModel):
    # Unknown keys are an error: a typo in honed.toml must not be silently ignored.
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class StoreSettings(_Section):
    """Where honed keeps its state."""

    url: str = Field(
        "",
        description="SQLAlchemy URL of the store. Empty means the SQLite file honed.db in the "
        "workspace. PostgreSQL: postgresql+psycopg://user@host:5432/dbname (the password is "
        "best given in the environment, HONED_STORE__URL, never in this file).",
    )
    artifacts: str = Field(
        "",
        description="Directory for datasets, bases, runs and adapters. Empty means the workspace "
        "itself. Daemons on several machines that share one PostgreSQL store point this at the "
        "same shared directory, mounted at the same path on every machine.",
    )


class StorageSettings(_Section):
    """What honed keeps on disk and for how long (see ``honed gc``)."""

    min_free_gb: float = Field(
        2.0, ge=0, description="Free space (GiB) below which the daemon starts nothing new, on the disks of "
        "the workspace and of store.artifacts; 0 = no floor.",
    )
    max_gb: float = Field(
        0.0, ge=0, description="Most space (GiB) honed's artefacts (runs, adapters, datasets, bases, exports) "
        "may take; above it the daemon collects, and starts nothing new while still above. 0 = no cap.",
    )
    keep_deployments: int = Field(
        5, ge=2, description="Adapters of a track's last N deployments keep their weights, for rollback (at "
        "least the one before the deployed one).",
    )
    checkpoint_days: float = Field(
        7.0, ge=0, description="Checkpoints of a finished run are removed this many days after it ended.",
    )
    rejected_days: float = Field(
        14.0, ge=0, description="Weights of rejected candidates (and of adapters superseded past "
        "keep_deployments) are removed this many days after they were made; their numbers stay.",
    )
    gc_every_s: float = Field(
        3600.0, ge=0, description="How often the daemon collects by this policy, in seconds; 0 = never "
        "('honed gc' still does).",
    )


class IngestSettings(_Section):
    """How JSONL files are validated when they are added."""

    mode: Literal["strict", "lenient"] = Field(
        "lenient",
        description="strict: a file with any bad line is rejected whole. lenient: the good "
        "lines are kept and the bad ones written to a reject file beside the report.",
    )
    max_record_chars: int = Field(
        32768, gt=0, description="Longest record accepted, in characters of content."
    )


class LoraSettings(_Section):
    """The LoRA adapter attached to the base."""

    r: int = Field(16, gt=0, description="LoRA rank.")
    alpha: float = Field(32.0, gt=0, description="LoRA alpha (scale = alpha / r).")
    dropout: float = Field(0.0, ge=0, lt=1, description="Dropout on the LoRA input, 0..1.")
    target_modules: list[str] = Field(
        default_factory=lambda: [
            "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj",
        ],
        description="Names of the linear modules that get an adapter.",
    )


class TrainSettings(_Section):
    """One training run: schedule, batching, checkpoints and failure policy."""

    objective: Literal["sft", "dpo", "kto"] = Field(
        "sft", description="What the run learns from: sft on answers (messages or text), dpo on "
        "preference pairs (prompt, chosen, rejected), kto on unpaired judgements (prompt, "
        "completion, label). The reference policy of dpo and kto is the base without the adapter.",
    )
    beta: float = Field(
        0.1, gt=0, description="dpo and kto: how far the policy may move from the reference "
        "(higher stays closer); the rewards reported are beta x the log-probability ratio.",
    )
    desirable_weight: float = Field(
        1.0, gt=0, description="kto: weight of the loss on thumbs-up examples.",
    )
    undesirable_weight: float = Field(
        1.0, gt=0, description="kto: weight of the loss on thumbs-down examples (raise it when "
        "thumbs-down are rarer).",
    )
    kto_balance: bool = Field(
        True, description="kto: raise the weight of the rarer label (thumbs up or down) by the ratio of "
        "the counts in the training split, so that both carry the same total weight (TRL advises a ratio "
        "between 1 and 4/3; most feedback is one-sided). The weights used are in the run's manifest.",
    )
    epochs: float = Field(3.0, gt=0, description="Passes over the training records.")
    max_steps: int = Field(
        0, ge=0, description="Stop after this many optimizer steps; 0 means no limit."
    )
    batch_size: int = Field(
        32, gt=0, description="Examples per micro-batch (packed into as few rows as fit)."
    )
    grad_accum: int = Field(1, gt=0, description="Micro-batches per optimizer step.")
    fit_memory: bool = Field(
        True, description="Before training, estimate the memory of the largest micro-batch (the "
        "loaded weights measured, the activations at its padded length, the LoRA's optimizer state) "
        "and, when it would not fit what the device has left with a margin, split batch_size into "
        "smaller micro-batches with more accumulation: the same examples per step, the same loss "
        "curve. The choice is a job event ('memory_plan').",
    )
    lr: float = Field(3e-3, gt=0, description="Peak learning rate of AdamW.")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    warmup_steps: int = Field(20, ge=0, description="Linear warm-up, in optimizer steps.")
    schedule: Literal["cosine", "linear", "constant"] = Field(
        "cosine", description="Decay of the learning rate after warm-up."
    )
    max_grad_norm: float = Field(
        1.0, gt=0, description="Gradients are clipped to this global L2 norm."
    )
    seed: int = Field(0, description="Seed for data order, the held-out split and init.")
    max_seq_len: int = Field(
        512, gt=8, description="Longest packed row, in tokens; longer examples are refused."
    )
    pack: bool = Field(
        True, description="Pack several examples into one row (no attention across them)."
    )
    heldout_fraction: float = Field(
        0.05, ge=0, lt=0.5, description="Share of records set aside for validation loss."
    )
    eval_every: int = Field(
        50, ge=0, description="Validation loss every this many optimizer steps; 0 = only at end."
    )
    checkpoint_every: int = Field(
        50, gt=0, description="Write a checkpoint every this many optimizer steps."
    )
    keep_checkpoints: int = Field(
        3, gt=0, description="Complete checkpoints kept per run (older ones are pruned)."
    )
    nonfinite_policy: Literal["skip", "lower_lr", "fail"] = Field(
        "skip",
        description="On a non-finite loss or a gradient norm above grad_norm_limit: skip the "
        "batch, halve the learning rate and skip it, or fail the run. The bad update is "
        "never applied.",
    )
    grad_norm_limit: float = Field(
        1e4, gt=0, description="A gradient norm above this (before clipping) counts as exploding."
    )
    max_bad_steps: int = Field(
        20, gt=0, description="Fail the run after this many consecutive bad steps."
    )
    retrain_seen: bool = Field(
        False,
        description="Train again on records already trained on for the same base and track.",
    )
    replay_ratio: float = Field(
        0.0,
        ge=0,
        lt=1,
        description="Share of each epoch drawn from earlier datasets of the track (guards "
        "against forgetting).",
    )
    everyday_replay: float = Field(
        0.0,
        ge=0,
        lt=1,
        description="Share of each epoch made of the base's own answers to honed's 100 shipped "
        "everyday prompts (worked out once per base version): keeps a chat base that learns one "
        "narrow task answering everything else as before, when the track has no history to "
        "replay yet.",
    )
    threads: int = Field(0, ge=0, description="CPU threads for torch; 0 = torch's default.")
    nproc: int = Field(
        1, ge=1, description="Trainer processes for data-parallel training on each machine. Above "
        "1 (or with nnodes > 1) the daemon launches the trainer under torchrun; batch_size is per "
        "process, so an optimizer step sees batch_size x grad_accum x nproc x nnodes examples.",
    )
    nnodes: int = Field(
        1, ge=1, description="Machines a job trains on. Above 1 the daemon's machine is node 0 "
        "and hosts the rendezvous at rdzv_endpoint; every other machine runs 'honed node "
        "--node-rank K' (K = 1 .. nnodes-1) on the same workspace (a shared folder, the store "
        "on PostgreSQL) and joins each job as it starts.",
    )
    rdzv_endpoint: str = Field(
        "", description="With nnodes > 1: HOST:PORT of the daemon's machine as the other "
        "machines reach it; torchrun's rendezvous (and the process group's store) listens there.",
    )
    rdzv_timeout_s: int = Field(
        600, gt=0, description="With nnodes > 1: how long a job's processes wait for every "
        "machine to join before the attempt fails (and is retried), in seconds.",
    )
    distributed: Literal["ddp", "fsdp"] = Field(
        "ddp", description="With nproc > 1: ddp keeps a whole copy of the model in every process; "
        "fsdp shards it across them (for a base that does not fit one device).",
    )
    backend: Literal["auto", "nccl", "gloo"] = Field(
        "auto", description="torch.distributed backend with nproc > 1: auto is nccl on CUDA, gloo "
        "on the CPU.",
    )
    gradient_checkpointing: bool = Field(
        False, description="Recompute activations in the backward pass instead of keeping them: "
        "less memory for longer sequences or larger batches, about a third more compute.",
    )
    compile: bool = Field(
        False, description="torch.compile every decoder layer (inductor; on the CPU it needs a C++ "
        "compiler, gcc or clang). Measured on SmolLM2-135M on 2 CPU cores: x1.16 tokens/s once "
        "compiled, after about a minute of compiling at the start of each attempt, so it pays "
        "for attempts with ten minutes or more of training.",
    )
    quantization: Literal["none", "4bit"] = Field(
        "none", description="4bit: QLoRA, the base loaded in 4-bit NF4 through bitsandbytes "
        "(needs CUDA and 'pip install bitsandbytes'); the base computes in bfloat16, the LoRA "
        "weights stay in float32.",
    )
    report_to: list[Literal["tensorboard", "mlflow", "wandb"]] = Field(
        default_factory=list,
        description="Experiment trackers that also get the run: its settings at the start, every "
        "step's figures (the train and eval rows honed stores), the final metrics, and after "
        "evaluation the eval figures, the gates' verdict and the adapter's path. Any of "
        "'tensorboard', 'mlflow', 'wandb' (each needs its extra: pip install 'honed[mlflow]'); "
        "where each writes is under [report].",
    )

    @field_validator("report_to", mode="before")
    @classmethod
    def _report_to_from_text(cls, value: Any) -> Any:
        # --set train.report_to=tensorboard,mlflow and HONED_TRAIN__REPORT_TO=wandb read as lists.
        if isinstance(value, str):
            return [name.strip() for name in value.split(",") if name.strip()]
        return value

    def with_micro_batch(self, micro_batch: dict[str, Any]) -> TrainSettings:
        """These settings with the ``batch_size`` and ``grad_accum`` of ``micro_batch`` when
        they keep the global batch (``batch_size x grad_accum``); these settings otherwise."""
        size, accum = micro_batch.get("batch_size"), micro_batch.get("grad_accum")
        if size is None or accum is None or size * accum != self.batch_size * self.grad_accum:
            return self
        return self.model_copy(update={"batch_size": size, "grad_accum": accum})

    @property
    def world_size(self) -> int:
        """The job's trainer processes over all its machines."""
        return self.nproc * self.nnodes

    @model_validator(mode="after")
    def _check_preference_sharding(self) -> TrainSettings:
        # The reference pass of dpo and kto runs per record, as each rank's cache needs it;
        # sharded parameters would make every rank wait on the others' reference passes.
        if self.objective != "sft" and self.world_size > 1 and self.distributed == "fsdp":
            raise ValueError(f"train.objective = {self.objective!r} with several trainer processes trains "
                             "with distributed = 'ddp'; 'fsdp' is for sft (set train.distributed = 'ddp')")
        return self

    @model_validator(mode="after")
    def _check_rendezvous(self) -> TrainSettings:
        if self.nnodes > 1:
            split_endpoint(self.rdzv_endpoint, f"train.nnodes = {self.nnodes}: train.rdzv_endpoint")
        return self


def split_endpoint(text: str, what: str = "train.rdzv_endpoint") -> tuple[str, int]:
    """``HOST:PORT`` as ``(HOST, PORT)``; ValueError naming ``what`` otherwise."""
    host, _, port = text.strip().rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{what} = {text!r}: expected HOST:PORT of the daemon's machine as the other "
                         "machines reach it, for example 10.0.0.5:29400")
    return host.strip("[]"), int(port)


class DaemonSettings(_Section):
    """The daemon: how it watches the inbox, supervises trainers and fills idle time."""

    poll_interval_s: float = Field(
        0.5, gt=0, description="How often the daemon looks at the queue, the inbox and its "
        "trainer, in seconds.",
    )
    settle_s: float = Field(
        1.0, ge=0, description="A file written into the inbox counts as complete once its size "
        "and modification time stayed the same this long, in seconds (a file renamed into the "
        "inbox, or closed by its writer, is taken at once).",
    )
    watcher: Literal["auto", "polling"] = Field(
        "auto", description="auto: the OS's file events (inotify) via watchdog, polling if they "
        "are unavailable. polling: look every poll_interval_s.",
    )
    inbox_priority: Priority = Field(
        Priority.NORMAL, description="Priority of the jobs queued for inbox files.",
    )
    max_attempts: int = Field(
        3, gt=0, description="Trainer attempts per job; a job whose trainer crashed this many "
        "times fails with the last reason.",
    )
    backoff_s: float = Field(
        10.0, ge=0, description="Wait before retrying a crashed attempt, in seconds; doubles "
        "with each further failure.",
    )
    backoff_max_s: float = Field(600.0, ge=0, description="Longest wait between attempts, in seconds.")
    heartbeat_timeout_s: float = Field(
        600.0, gt=0, description="A trainer that reports nothing for this long is killed and "
        "the attempt counts as failed, in seconds.",
    )
    stop_grace_s: float = Field(
        300.0, gt=0, description="How long a stopping daemon waits for its trainer to "
        "checkpoint and exit before killing it, in seconds.",
    )
    trainer_memory_mb: int = Field(
        0, ge=0, description="Most data memory (heap and anonymous mappings, RLIMIT_DATA) of each "
        "trainer process, in MiB; 0 = no limit. A job that outgrows it fails with an out-of-memory "
        "error, and its next attempt halves the micro-batch (the kernel's OOM killer would pick a "
        "victim of its own, perhaps the daemon or the server).",
    )
    trainer_nice: int = Field(
        10, ge=0, le=19, description="Niceness of trainer processes (0 = as the daemon): training is "
        "batch work, so the API, the monitor and whatever else runs on the machine answer first.",
    )
    warm_trainer: bool = Field(
        True, description="Keep the next trainer process started, with torch imported, so a "
        "job begins training without the import delay.",
    )
    training_window: str = Field(
        "", description="Local hours in which jobs may train, e.g. '02:00-06:00' (may wrap "
        "midnight). Empty: any time. A job still training when the window closes is paused "
        "and continues in the next window.",
    )
    idle: Literal["none", "synthetic", "command"] = Field(
        "none", description="What the daemon does when the queue is empty: nothing, write a "
        "synthetic dataset of idle_family into the inbox, or run idle_command.",
    )
    idle_command: str = Field(
        "", description="Shell command run when idle = 'command'; it should write JSONL into "
        "$HONED_INBOX.",
    )
    idle_family: str = Field("arithmetic", description="Synthetic family used when idle = 'synthetic'.")
    idle_records: int = Field(500, gt=0, description="Records per idle synthetic dataset.")
    idle_every_s: float = Field(
        3600.0, ge=0, description="Least time between two idle datasets, in seconds.",
    )
    lease_s: float = Field(
        60.0, gt=0, description="A claimed job is leased to its daemon for this long and renewed "
        "every third of it; a job whose lease ran out (its daemon died, hung or lost the store) is "
        "taken over by another daemon sharing the store, and the old one's writes are refused.",
    )

    @field_validator("training_window")
    @classmethod
    def _check_window(cls, value: str) -> str:
        from honed.daemon.schedule import parse_window

        parse_window(value)  # raises ValueError with what to write instead
        return value

    @field_validator("idle_family")
    @classmethod
    def _check_family(cls, value: str) -> str:
        from honed.data.synthetic import FAMILIES

        if value not in FAMILIES:
            raise ValueError(f"unknown synthetic family; allowed: {', '.join(FAMILIES)}")
        return value


class EvalSetSettings(_Section):
    """A user-defined eval set: a chat JSONL file and the scorers it is judged by."""

    name: str = Field(description="Name of the set in results and gate rules.")
    path: str = Field(description="Chat JSONL file (relative to the workspace or absolute).")
    scorers: list[str] = Field(
        default_factory=lambda: ["exact_match"],
        description="exact_match, contains, answer (the reference as a whole word in the output, any "
        "case), json (valid rate and required-field rate), loss "
        "(and perplexity), or a Python function 'module:function'(output, record) -> 0..1.",
    )
    required_fields: list[str] = Field(
        default_factory=list, description="Keys the json scorer expects in each output object.",
    )


class EvalSettings(_Section):
    """How candidates and the deployed adapter are scored (greedy decoding, batched)."""

    max_records: int = Field(200, gt=0, description="Most records scored per set (a fixed sample).")
    regression_records: int = Field(
        200, ge=0, description="Records of the track's earlier datasets in the regression set "
        "(guards against forgetting); 0 turns it off.",
    )
    max_new_tokens: int = Field(64, gt=0, description="Longest generated answer, in tokens.")
    batch_size: int = Field(64, gt=0, description="Prompts generated at once.")
    samples_kept: int = Field(5, ge=0, description="Outputs kept per set for inspection.")
    sets: list[EvalSetSettings] = Field(default_factory=list, description="User-defined eval sets.")
    control_path: str = Field(
        "", description="A chat JSONL of your own control prompts (relative to the workspace): what a "
        "candidate may not forget. Empty: only the track's regression set and the general set shipped "
        "with honed make the control set.",
    )
    win_rate: Literal["off", "scorer", "judge"] = Field(
        "off", description="Also compare the candidate with the live model prompt by prompt on the sets of "
        "win_rate_sets (both answer each prompt, greedy): 'scorer' scores both answers with the track's "
        "learn.scorer (the higher wins), 'judge' asks the teacher (learn.teacher) in both orders, a "
        "disagreement counting as a tie. 'off': no win rate (what 'win_rate' gate rules need).",
    )
    win_rate_temperature: float = Field(
        0.0, ge=0, le=2, description="How both models answer the win rate's prompts: 0 greedy; above 0 "
        "sampled at this temperature, as an application that samples is served (set it to what your "
        "application asks for: the gate then judges the answers people get).",
    )
    win_rate_samples: int = Field(
        1, ge=1, le=16, description="Answers per prompt and model when sampling (win_rate_temperature > 0): "
        "sample k of the candidate is compared with sample k of the live model (the same seed), and the "
        "prompt is won by whichever wins more of its comparisons. Each costs two more generation passes.",
    )
    win_rate_sets: list[str] = Field(
        default_factory=lambda: ["heldout"], description="The sets whose prompts the win rate compares "
        "(heldout, regression, control, general or a user-defined set). Each costs two more generation "
        "passes, and with the judge two teacher calls per prompt whose answers differ.",
    )


class GateRule(_Section):
    """One condition a candidate must meet on one set and scorer.

    ``kind`` says how it is judged: ``threshold`` compares the set's figure with ``min``
    and ``max_regression`` (the rules honed had first); ``gain``, ``regression`` and
    ``retention`` compare the candidate with the live model record by record (an exact
    one-sided McNemar test on the same prompts), so a difference must be more than noise;
    ``win_rate`` reads the win rate of ``eval.win_rate`` (a sign test on wins and losses)."""

    set: str = Field(description="heldout, regression, control (the pooled control set), or the name of a "
                     "user-defined set.")
    scorer: str = Field("", description="exact_match, contains, json_valid, json_fields, loss, perplexity, "
                        "or a 'module:function' scorer. win_rate rules take none (eval.win_rate decides).")
    kind: Literal["threshold", "gain", "regression", "retention", "win_rate"] = Field(
        "threshold", description="threshold: min and max_regression on the set's figure. gain: the candidate "
        "must beat the live model on the set with confidence (p < alpha). regression: it must not be shown "
        "worse (p < alpha), nor may the upper confidence bound of its drop exceed max_drop (or what the set "
        "can resolve, if more). retention: on the records the live model answers right (for set 'control': "
        "those of the regression set, the general set shipped with honed and eval.control_path), it must "
        "not be shown worse nor drop more than max_drop. win_rate: the candidate's win rate over the live "
        "model on the set (ties count half) must be at least min, and a one-sided sign test on its wins and "
        "losses must show it better (p < alpha); one shown worse fails.",
    )
    min: float | None = Field(None, description="Lowest acceptable value (for loss: highest; for win_rate: the "
                              "least win rate, 0..1).")
    max_regression: float | None = Field(
        None, description="threshold only: how much worse than the deployed adapter (or the bare base) the "
        "candidate may be, in the scorer's units.",
    )
    alpha: float = Field(0.05, gt=0, lt=1, description="gain, regression, retention, win_rate: significance "
                         "level of the one-sided paired test.")
    max_drop: float | None = Field(
        None, ge=0, le=1, description="regression, retention: largest drop allowed, as a fraction of the "
        "set's records (0.05 = 5 points).",
    )
    min_examples: int = Field(
        20, ge=1, description="gain, regression, win_rate: fewer records (prompts) than this and the candidate "
        "is held for a person (awaiting approval), never deployed on its own.",
    )

    @model_validator(mode="after")
    def _check_kind(self) -> GateRule:
        if self.kind == "win_rate":
            if self.scorer not in ("", "win_rate"):
                raise ValueError(f"a win_rate rule takes no scorer (eval.win_rate decides), not {self.scorer!r}")
            if self.max_regression is not None or self.max_drop is not None:
                raise ValueError("a win_rate rule takes min (the least win rate) and alpha, not max_regression "
                                 "or max_drop")
            if self.min is not None and not 0.0 <= self.min <= 1.0:
                raise ValueError(f"a win_rate rule's min is a win rate in 0..1, not {self.min:g}")
            return self
        if not self.scorer:
            raise ValueError(f"a {self.kind} rule needs a scorer: exact_match, contains, json_valid, json_fields, "
                             "loss, perplexity or 'module:function'")
        # Paired tests need a right/wrong outcome per record; loss has none.
        if self.kind != "threshold" and self.scorer in ("loss", "perplexity"):
            raise ValueError(f"a {self.kind} rule needs a generation scorer (exact_match, contains, json_valid, "
                             f"json_fields or 'module:function'), not {self.scorer}")
        if self.kind != "threshold" and self.max_regression is not None:
            raise ValueError(f"max_regression belongs to threshold rules; a {self.kind} rule takes max_drop")
        return self


def _default_rules() -> list[GateRule]:
    return [
        GateRule(kind="gain", set="heldout", scorer="exact_match"),
        GateRule(kind="regression", set="regression", scorer="exact_match", max_drop=0.05),
        GateRule(kind="retention", set="control", scorer="exact_match", max_drop=0.05),
    ]


class GateSettings(_Section):
    """The rules a candidate must pass to be deployed."""

    require_approval: bool = Field(False, description="Passing candidates wait for 'honed approve'.")
    rules: list[GateRule] = Field(
        default_factory=_default_rules, description="All must hold. A rule that has too little evidence "
        "either way holds the candidate for 'honed approve' instead of deploying it.",
    )


class DeploySettings(_Section):
    """What happens after a track's deployment switches (the hooks). A failing hook is
    reported with the deployment; it does not undo the switch."""

    command: str = Field(
        "", description="Shell command run after every switch, with HONED_TRACK, HONED_ACTION, "
        "HONED_ADAPTER_ID, HONED_ADAPTER_NAME and HONED_ADAPTER_PATH (empty for the bare base) set.",
    )
    vllm_url: str = Field(
        "", description="Base URL of a vLLM server (e.g. http://127.0.0.1:8000); each deployed "
        "adapter is loaded there with POST /v1/load_lora_adapter under its own new name.",
    )
    vllm_api_key_env: str = Field(
        "", description="Name of the environment variable holding the vLLM server's API key, if any.",
    )
    llama_cpp_url: str = Field(
        "", description="Base URL of the llama.cpp server 'honed serve-llama' runs (e.g. "
        "http://127.0.0.1:8080). On each switch the track's live version is exported as a merged f16 GGUF, "
        "written into that server's model list under its own new name (e.g. main-a7), and the hook waits until "
        "the restarted server lists it: llama-cpp-python's server can neither load a model nor a LoRA at run time.",
    )
    ollama_url: str = Field(
        "", description="Base URL of an Ollama server (e.g. http://127.0.0.1:11434). On each switch the track's "
        "live version is exported as a merged f16 GGUF, its file uploaded as a blob and a model created with "
        "POST /api/create under its own new name (e.g. main-a7), with the Modelfile's template, system prompt "
        "and stop strings.",
    )
    hook_timeout_s: float = Field(60.0, gt=0, description="Longest a hook may take, in seconds.")

    @field_validator("llama_cpp_url", "ollama_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if value and not re.fullmatch(r"https?://([^/\s:\[\]]+|\[[0-9A-Fa-f:.]+\])(:\d+)?/?", value):
            raise ValueError("an http:// or https:// base URL with a host and no path, e.g. http://127.0.0.1:8080, "
                             "or empty (off)")
        return value.rstrip("/")


class ServerSettings(_Section):
    """The HTTP API and web monitor (``honed serve``). It binds to 127.0.0.1; any other
    address needs a token, and then every route checks it."""

    host: str = Field("127.0.0.1", description="Address to bind; anything but loopback needs a token.")
    port: int = Field(8321, ge=0, le=65535, description="TCP port (0 = any free port).")
    token_env: str = Field(
        "HONED_API_TOKEN",
        description="Name of the environment variable holding the API token (sent as "
        "'Authorization: Bearer TOKEN'); required when host is not loopback.",
    )
    allowed_hosts: list[str] = Field(
        default_factory=list, description="Names (the Host header, without its port) the server answers "
        "to besides loopback (localhost, 127.0.0.1, ::1) and the address it is bound to, e.g. "
        "['honed.example.com'] behind a proxy; '*' answers to any. Requests by other names get 400, "
        "against DNS rebinding. Bound to 0.0.0.0 or :: (a token is required there), any name is "
        "answered unless this list is set.",
    )
    allowed_origins: list[str] = Field(
        default_factory=list, description="Web origins (scheme://host[:port]) besides the server's own "
        "whose pages may send changes (POST, PUT, PATCH, DELETE), e.g. 'https://honed.example.com' "
        "behind a TLS proxy. A browser's change from any other origin gets 403; clients that send no "
        "Origin header (curl, SDKs) are not affected.",
    )
    upload_max_mb: float = Field(256.0, gt=0, description="Largest dataset upload, in MiB.")
    max_json_body_bytes: int = Field(
        2 * 2**20, ge=1024, description="Largest JSON request body, in bytes (2 MiB: room for a record of "
        "ingest.max_record_chars characters even with every character escaped); larger ones get 413. "
        "Dataset uploads have their own limit, upload_max_mb.",
    )
    max_prompt_tokens: int = Field(
        4096, gt=0, description="Longest prompt /v1/chat/completions answers, in tokens after the chat "
        "template; longer ones get 400 before they wait for the model. Generating costs time in proportion "
        "to the prompt, and the answer adds at most max_tokens more.",
    )
    default_temperature: float = Field(
        0.0, ge=0, le=2, description="Temperature of a chat request that sets none (0: greedy, the same "
        "answer every time; OpenAI's own default is 1.0). A request's temperature, top_p and seed decide "
        "its own sampling.",
    )
    status_cache_s: float = Field(
        0.25, ge=0, description="Longest a status answer may be reused for other clients, in seconds "
        "(0 = compute it for every request); changes made through the server show at once.",
    )
    live_poll_s: float = Field(
        0.5, gt=0, description="How often the server reads new metrics and events for its live "
        "streams, in seconds (one reader for all clients).",
    )
    on_training: Literal["unload", "cpu", "keep"] = Field(
        "unload", description="What the server does with its models while a trainer claims their "
        "accelerator: unload (free the memory; chat requests get 503 with Retry-After until the "
        "job ends), cpu (move them to the CPU and keep answering, slower), keep (share the device "
        "and risk running out of memory).",
    )
    yield_devices: list[str] = Field(
        default_factory=lambda: ["cuda", "mps"], description="Device types a trainer gets to itself "
        "(the server yields them, per on_training); the CPU is shared unless listed here.",
    )
    threads_while_training: int = Field(
        1, ge=0, description="Torch threads the server decodes with while a trainer on this machine "
        "trains on the CPU the server also runs on (0: keep its usual count). Two processes that each "
        "run a thread per core slow each other down far more than they would by sharing the cores: on "
        "2 cores, SmolLM2 training beside a busy server, one server thread made serving x2.6 and "
        "training x1.36 as fast as two (benchmarks/cpu_sharing.py).",
    )
    yield_timeout_s: float = Field(
        30.0, ge=0, description="Longest a trainer waits for the servers on its device to release "
        "their models before it loads its own anyway, in seconds.",
    )
    device_poll_s: float = Field(
        0.5, gt=0, description="How often the server looks for a trainer's claim on its device, "
        "in seconds.",
    )
    retry_after_s: int = Field(
        30, ge=1, description="Retry-After sent with a 503 while the models are released to "
        "training, in seconds (the job's own estimate is sent instead when it has one and is shorter).",
    )
    max_batch: int = Field(
        16, ge=0, le=256, description="Dynamic batching: concurrent requests on one model are decoded "
        "together, up to N at a time (each joins the batch between decode steps and leaves it when it "
        "ends). 0: one request at a time through transformers' generate.",
    )
    upstream_url: str = Field(
        "", description="Proxy capture: an OpenAI-compatible engine (vLLM, llama.cpp, Ollama, a hosted "
        "API) whose /chat/completions answers honed's, e.g. 'http://127.0.0.1:8080/v1'. Each exchange "
        "is recorded as an experience as the built-in server's are; empty: honed answers itself.",
    )
    upstream_api_key_env: str = Field(
        "", description="Environment variable holding the upstream's API key (sent as 'Authorization: "
        "Bearer KEY'); empty: none is sent.",
    )
    upstream_models: dict[str, str] = Field(
        default_factory=dict, description="Track -> the upstream's model name for it (default: the "
        "track's name). '{deployed}' in a name becomes the track's live version, as the deploy targets "
        "name their exports (e.g. 'main-a7', or 'main-base-v0' with nothing deployed), so a deploy "
        "switches new requests to it.",
    )
    upstream_timeout_s: float = Field(
        120.0, gt=0, description="Longest wait for the upstream's answer (or its next streamed piece), "
        "in seconds; then the client gets 504.",
    )

    @field_validator("upstream_url")
    @classmethod
    def _check_upstream(cls, url: str) -> str:
        if url and not re.fullmatch(r"https?://[^\s/]+(/\S*)?", url):
            raise ValueError(f"{url!r}: an http:// or https:// URL of an OpenAI-compatible API, e.g. "
                             "'http://127.0.0.1:8080/v1'")
        return url.rstrip("/")

    @field_validator("allowed_hosts")
    @classmethod
    def _check_hosts(cls, hosts: list[str]) -> list[str]:
        for host in hosts:
            if host != "*" and not re.fullmatch(r"[A-Za-z0-9._:-]+", host):
                raise ValueError(f"{host!r}: a host name or address without scheme, port or path, e.g. "
                                 "'honed.example.com', or '*' for any")
        return hosts

    @field_validator("allowed_origins")
    @classmethod
    def _check_origins(cls, origins: list[str]) -> list[str]:
        for origin in origins:
            if not re.fullmatch(r"https?://[A-Za-z0-9.\[\]:-]+", origin.rstrip("/")):
                raise ValueError(f"{origin!r}: an origin is scheme://host[:port] without a path, e.g. "
                                 "'https://honed.example.com'")
        return origins


class TelemetrySettings(_Section):
    """System, accelerator and energy figures, and per-layer LoRA change."""

    layer_stats_every: int = Field(
        10, ge=0, description="Log the norm of B·A per layer and module every N steps (0 = never).",
    )
    cpu_watts_per_core: float = Field(
        12.0, gt=0, description="Power of one busy CPU core, in watts, for the energy estimate "
        "used where nothing measures energy (no NVML, no readable RAPL).",
    )


class ReportSettings(_Section):
    """Where the experiment trackers of train.report_to write."""

    tensorboard_dir: str = Field(
        "", description="Directory of TensorBoard logs; each run writes into a subdirectory named by "
        "its id (tensorboard --logdir DIR compares runs). Empty: the run's own directory, "
        "runs/RUN/tensorboard. A relative path is taken from the workspace.",
    )
    mlflow_tracking_uri: str = Field(
        "", description="MLflow tracking URI (http://host:5000, sqlite:///path.db, databricks). Empty: "
        "MLFLOW_TRACKING_URI when set, else an SQLite store beside the runs, sqlite:///ARTIFACTS/mlflow.db "
        "(the workspace unless store.artifacts moves it; MLflow 3's file store is in maintenance mode); "
        "open it with mlflow ui --backend-store-uri sqlite:///ARTIFACTS/mlflow.db. Daemons on several "
        "machines sharing one store are better served by a tracking server.",
    )
    mlflow_experiment: str = Field("", description="MLflow experiment the runs go to. Empty: the run's track.")
    wandb_project: str = Field("", description="W&B project the runs go to. Empty: the run's track.")
    wandb_entity: str = Field("", description="W&B entity (user or team). Empty: WANDB_ENTITY, else W&B's default.")
    wandb_mode: Literal["", "offline", "online", "disabled"] = Field(
        "", description="W&B mode. Empty: WANDB_MODE when set, else offline (the run is written under "
        "runs/RUN/wandb; 'wandb sync' uploads it later). online needs 'wandb login' or WANDB_API_KEY.",
    )


class TeacherSettings(_Section):
    """The teacher: a stronger model behind any OpenAI-compatible API that writes
    corrected outputs for experiences that went badly."""

    base_url: str = Field(
        "", description="The teacher's API base, e.g. 'https://api.openai.com/v1' or "
        "'http://127.0.0.1:8400/v1' (empty: no teacher; only people's corrections are used).",
    )
    model: str = Field("", description="The model name sent to the teacher.")
    api_key_env: str = Field(
        "HONED_TEACHER_API_KEY", description="Environment variable holding the teacher's API key "
        "(the key itself never goes in honed.toml; may be unset for a local teacher).",
    )
    system_prompt: str = Field("", description="A system message put before each prompt (empty: none).")
    max_tokens: int = Field(256, gt=0, description="Longest corrected output, in tokens.")
    timeout_s: float = Field(60.0, gt=0, description="Longest wait for one teacher answer, in seconds.")
    batch_size: int = Field(8, gt=0, description="Most experiences sent to the teacher in one pass.")
    cooldown_s: float = Field(60.0, ge=0, description="Least time between two teacher passes, in seconds.")
    daily_budget: int = Field(
        500, ge=0, description="Most teacher calls per UTC day, failed ones included (0 = none).",
    )
    retry_after_s: float = Field(
        600.0, ge=0, description="Wait before asking again about an experience whose teacher answer "
        "failed or was invalid, in seconds.",
    )
    max_attempts: int = Field(3, gt=0, description="Teacher attempts per experience before it is left alone.")


class LearnSettings(_Section):
    """The continuous-learning loop: which experiences are good, which the teacher
    corrects, and when they become a training job."""

    enabled: bool = Field(
        False, description="Let the daemon run the loop by itself: teacher passes and the trigger "
        "('honed learn run-now' works either way).",
    )
    threshold: int = Field(
        50, gt=0, description="Usable untrained experiences (good or corrected) a track needs before "
        "the trigger fires.",
    )
    cooldown_s: float = Field(
        3600.0, ge=0, description="Least time since the track's last run (or assembled batch) before "
        "the trigger fires again, in seconds.",
    )
    window: str = Field(
        "", description="When the trigger may fire, local time, e.g. '22:00-06:00' (empty: any time).",
    )
    check_every_s: float = Field(30.0, gt=0, description="How often the daemon looks at the loop, in seconds.")
    good_score: float = Field(
        0.8, ge=0, le=1, description="An experience scored at least this is good; below, it needs "
        "improvement. Thumbs up/down decide when there is no score.",
    )
    scorer: str = Field(
        "", description="Judges outputs that have no feedback, and every teacher answer: "
        "'json_valid', 'json_fields' or a Python 'module:function' taking (output, record) "
        "(empty: only feedback classifies).",
    )
    scorer_bar: float = Field(
        1.0, ge=0, le=1, description="Least score (by the scorer) a teacher answer needs to be used.",
    )
    answer_format: Literal["text", "json"] = Field(
        "text", description="'json': a teacher answer must parse as a JSON object.",
    )
    required_fields: list[str] = Field(
        default_factory=list, description="Keys a JSON teacher answer must have (with answer_format = 'json').",
    )
    experience_fraction: float = Field(
        0.7, gt=0, le=1, description="Share of an assembled dataset drawn from experiences; the rest is "
        "replay of what the track already learned.",
    )
    max_batch: int = Field(1000, gt=0, description="Most experiences in one assembled dataset.")
    objective: Literal["sft", "dpo", "kto", "auto"] = Field(
        "sft", description="What a batch trains: 'sft' (corrections and good outputs as answers), 'dpo' "
        "(corrections against the served outputs as preference pairs), 'kto' (thumbs and scores as unpaired "
        "judgements, a correction as one good and one bad example), or 'auto': 'dpo' when at least "
        "learn.threshold pairs exist, 'kto' when no output is corrected and some were judged bad, else 'sft'.",
    )
    priority: Priority = Field(Priority.NORMAL, description="Priority of the jobs it queues.")
    teacher: TeacherSettings = Field(default_factory=TeacherSettings)

    @field_validator("window")
    @classmethod
    def _check_window(cls, value: str) -> str:
        from honed.daemon.schedule import parse_window

        parse_window(value)
        return value

    @field_validator("scorer")
    @classmethod
    def _check_scorer(cls, value: str) -> str:
        if value in ("", "json_valid", "json_fields") or (":" in value and all(value.partition(":")[::2])):
            return value
        raise ValueError("allowed: '' (none), 'json_valid', 'json_fields' or a Python 'module:function'")


class McpSettings(_Section):
    """The MCP server (``honed mcp``): what its clients may make it read."""

    allowed_dirs: list[str] = Field(
        default_factory=list, description="Directories besides the workspace whose files MCP clients may "
        "give to train_model (relative ones are taken from the workspace; '~' is your home). A path is "
        "checked after following symbolic links and '..'; any other path is refused unread.",
    )


class TrackSettings(_Section):
    """What one track does differently from the workspace's defaults."""

    gates: GateSettings | None = Field(None, description="The track's gates (default: [gates]).")
    eval_sets: list[EvalSetSettings] | None = Field(
        None, description="The track's user-defined eval sets (default: [eval] sets).",
    )
    learn: LearnSettings | None = Field(None, description="The track's learning loop (default: [learn]).")


class Settings(_Section):
    """Everything in honed.toml."""

    base: str = Field(
        "tiny",
        description="The base model: 'tiny' (honed's own small model, built locally), a "
        "Hugging Face id, or a local directory.",
    )
    track: str = Field("main", description="Default track for new data and runs.")
    store: StoreSettings = Field(default_factory=StoreSettings)
    storage: StorageSettings = Field(default_factory=StorageSettings)
    ingest: IngestSettings = Field(default_factory=IngestSettings)
    lora: LoraSettings = Field(default_factory=LoraSettings)
    train: TrainSettings = Field(default_factory=TrainSettings)
    daemon: DaemonSettings = Field(default_factory=DaemonSettings)
    eval: EvalSettings = Field(default_factory=EvalSettings)
    gates: GateSettings = Field(default_factory=GateSettings)
    deploy: DeploySettings = Field(default_factory=DeploySettings)
    server: ServerSettings = Field(default_factory=ServerSettings)
    telemetry: TelemetrySettings = Field(default_factory=TelemetrySettings)
    report: ReportSettings = Field(default_factory=ReportSettings)
    learn: LearnSettings = Field(default_factory=LearnSettings)
    mcp: McpSettings = Field(default_factory=McpSettings)
    tracks: dict[str, TrackSettings] = Field(
        default_factory=dict,
        description="Per-track settings, e.g. [tracks.support-bot.gates] with the keys of [gates], or "
        "eval_sets under [tracks.support-bot].",
    )

    @model_validator(mode="after")
    def _check_win_rate_rules(self) -> Settings:
        if self.eval.win_rate_samples > 1 and self.eval.win_rate_temperature == 0:
            raise ValueError(f"eval.win_rate_samples = {self.eval.win_rate_samples} needs sampling: greedy answers "
                             "are the same every time; set eval.win_rate_temperature above 0 (or samples to 1)")
        # A win_rate rule with nothing measuring it would hold every candidate.
        gates = [("gates", self.gates)] + [(f"tracks.{name}.gates", t.gates) for name, t in self.tracks.items()
                                           if t.gates is not None]
        for where, settings in gates:
            for rule in settings.rules:
                if rule.kind != "win_rate":
                    continue
                if self.eval.win_rate == "off":
                    raise ValueError(f"{where}.rules has a win_rate rule on {rule.set!r}, but eval.win_rate is "
                                     "'off'; set it to 'scorer' or 'judge'")
                if rule.set not in self.eval.win_rate_sets:
                    raise ValueError(f"{where}.rules has a win_rate rule on {rule.set!r}, which is not in "
                                     f"eval.win_rate_sets {self.eval.win_rate_sets}")
        return self

    def gates_for(self, track: str) -> GateSettings:
        """The gates of ``track``: its own, else the workspace's."""
        own = self.tracks.get(track)
        return own.gates if own is not None and own.gates is not None else self.gates

    def learn_for(self, track: str) -> LearnSettings:
        """The learning loop of ``track``: its own, else the workspace's."""
        own = self.tracks.get(track)
        return own.learn if own is not None and own.learn is not None else self.learn

    def eval_sets_for(self, track: str) -> list[EvalSetSettings]:
        """The user-defined eval sets of ``track``: its own, else the workspace's."""
        own = self.tracks.get(track)
        return own.eval_sets if own is not None and own.eval_sets is not None else self.eval.sets


class SettingsError(ValueError):
    """A setting has a wrong value; the message names key, value and what is allowed."""


def describe_validation_error(err: ValidationError, origin: str) -> str:
    """One line per wrong value: where it came from, the key, the value and what is allowed."""
    lines = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"])
        value = e.get("input")
        if e["type"] == "extra_forbidden":
            lines.append(f"{origin}: unknown key '{key}'")
            continue
        allowed = e.get("ctx", {}).get("expected") or e["msg"]
        if not key:  # a rule across sections (Settings' own validator): its message names the keys
            lines.append(f"{origin}: {allowed.removeprefix('Value error, ')}")
            continue
        lines.append(f"{origin}: {key} = {value!r} is not allowed: {allowed}")
    return "\n".join(lines)

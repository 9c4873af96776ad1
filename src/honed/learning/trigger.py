"""The trigger policy of a track and the batches it assembles.

:func:`learning_state` reads where a track's loop stands: its open experiences by
judgement, what they would teach, the teacher's record, the cooldown, the window and any
batch still in the queue, and whether the trigger would fire now (or why not). The
trigger fires when every one of these holds:

- at least ``learn.threshold`` experiences would teach something under the batch's
  objective (``learn.objective``, see :mod:`honed.learning.feedback`): for SFT, good or
  corrected by a person or the teacher; for DPO, a correction that differs from what was
  served; for KTO, judged or corrected. At least one of them was never in a batch before
  (a failed batch is not retried alone, over and over);
- ``learn.cooldown_s`` has passed since the track's last run or batch;
- now is inside ``learn.window``;
- no batch of the track is still queued or training.

:func:`assemble` writes the lessons (``learn.experience_fraction`` of the dataset, 70% by
default) and replay of records the track already learned (the rest) as an ordinary JSONL
dataset of the objective's kind (SFT chats, preference pairs or unpaired judgements),
with a provenance file beside it naming the source of every line: the experience, the
teacher answer, or the earlier dataset and record of a replayed line. Replay is drawn
from the track's earlier datasets of the same kind only; when there are none, the batch
has no replay and its manifest says so.
It is ingested like any other file and queued as a job; the experiences are marked
trained when that job's run succeeds (never before, and never twice). An experience
excluded by hand is never offered; one that cannot be a training line is set aside:
recorded as excluded ("set aside: REASON"), listed in the state, not offered again until
someone includes it.
"""

from __future__ import annotations

import json
import logging
import random
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from honed.atomic_files import write_bytes_atomically, write_json_atomically
from honed.daemon.schedule import in_window, parse_window
from honed.data.kinds import batch_kind, describe_kind
from honed.data.plan import read_jsonl
from honed.learning.curriculum import day_start, needs_teacher, teacher_pass
from honed.learning.feedback import (
    Taught,
    choose_objective,
    dpo_taught,
    judged_bad,
    judged_by,
    kto_taught,
    pair_of,
    sft_taught,
)
from honed.learning.judge import GOOD, NEEDS_IMPROVEMENT, UNRATED, Lesson, judgement, lesson
from honed.store import LearningBatchInfo
from honed.store.experiences import MAX_REASON_CHARS, SET_ASIDE_PREFIX
from honed.store.schema import JOB_FINAL_STATES

log = logging.getLogger("honed.learning")

# A learning job trains every line of its dataset (some replay lines were trained before,
# on purpose) and adds no replay of its own: the batch already holds its replay.
JOB_OVERRIDES = {"train": {"retrain_seen": True, "replay_ratio": 0.0}}
SET_ASIDE_SHOWN = 5  # the set-aside experiences a status lists, newest first


class LearnError(Exception):
    """The loop cannot do what was asked; the message says why."""


@dataclass
class LearningState:
    """Where one track's learning loop stands."""

    track: str
    enabled: bool
    open: int = 0
    good: int = 0
    needs_improvement: int = 0
    unrated: int = 0
    corrected_by_person: int = 0
    corrected_by_teacher: int = 0
    awaiting_teacher: int = 0
    teacher_given_up: int = 0
    ready: int = 0
    threshold: int = 0
    teacher: str | None = None
    teacher_calls_today: int = 0
    teacher_budget: int = 0
    cooldown_left_s: float = 0.0
    window: str = ""
    in_window: bool = True
    in_flight: dict | None = None  # the batch still queued or training: {"batch", "job", "state"}
    excluded: int = 0  # experiences not trained on and kept out of batches, by hand or set aside
    set_aside: int = 0  # of those, the ones a batch set aside (could not be a training line)
    set_aside_recent: list[dict] = field(default_factory=list)  # newest first: {"experience_id", "reason"}
    last_batch: dict | None = None
    fires: bool = False
    why_not: str | None = None
    objective: str = "sft"  # what a batch would train now: sft, dpo or kto (learn.objective, resolved)
    objective_why: str = ""
    pairs: int = 0  # corrections that differ from what was served: preference pairs
    unpaired: int = 0  # uncorrected outputs judged by thumbs, a score or the scorer: unpaired judgements
    lessons: list[Lesson] = field(default_factory=list, repr=False)
    taught: list[Taught] = field(default_factory=list, repr=False)  # what a batch of ``objective`` holds

    def summary(self) -> dict:
        out = asdict(self)
        out.pop("lessons")
        out.pop("taught")
        return out


def job_overrides(objective: str) -> dict:
    """The settings a learning job of ``objective`` trains with."""
    return {"train": {**JOB_OVERRIDES["train"], "objective": objective}}


def learning_state(workspace, store, track: str, *, now: datetime | None = None) -> LearningState:
    """Read where ``track``'s loop stands and whether its trigger would fire now."""
    now = now or datetime.now(UTC)
    cfg = workspace.settings.learn_for(track)
    store.require_track(track)
    experiences = store.open_experiences(track)
    answers = store.teacher_answers_for(e.id for e in experiences)
    state = LearningState(track=track, enabled=cfg.enabled, open=len(experiences), threshold=cfg.threshold,
                          teacher_budget=cfg.teacher.daily_budget, window=cfg.window,
                          teacher=f"{cfg.teacher.model} at {cfg.teacher.base_url}" if cfg.teacher.base_url else None)
    taught_by: dict[int, Lesson | None] = {}
    bad = 0  # uncorrected outputs judged bad
    for exp in experiences:
        verdict = judgement(exp, cfg.good_score)
        state.good += verdict == GOOD
        state.needs_improvement += verdict == NEEDS_IMPROVEMENT
        state.unrated += verdict == UNRATED
        taught = taught_by[exp.id] = lesson(exp, answers[exp.id], cfg.good_score)
        if taught is not None:
            state.lessons.append(taught)
            state.corrected_by_person += taught.source == "person"
            state.corrected_by_teacher += taught.source == "teacher"
        elif verdict == NEEDS_IMPROVEMENT and len(answers[exp.id]) >= cfg.teacher.max_attempts:
            state.teacher_given_up += 1
        state.pairs += pair_of(exp, taught) is not None
        corrected = taught is not None and taught.source != "good"
        state.unpaired += not corrected and judged_by(exp) is not None and bool(exp.output.strip())
        bad += judged_bad(exp, taught, cfg.good_score)
    state.objective, state.objective_why = choose_objective(
        cfg.objective, threshold=cfg.threshold, pairs=state.pairs,
        corrections=state.corrected_by_person + state.corrected_by_teacher, bad=bad)
    for exp in experiences:
        one = _taught(state.objective, exp, taught_by[exp.id], cfg.good_score)
        if one is not None:
            state.taught.append(one)
    batched = {e.id for e in experiences if e.batch_id is not None}
    fresh = any(t.experience_id not in batched for t in state.taught)  # a ready experience never in a batch
    state.awaiting_teacher = len(needs_teacher(cfg, experiences, answers, now)) if state.teacher else 0
    state.ready = len(state.taught)
    state.teacher_calls_today, _ = store.teacher_calls_since(track, day_start(now))
    counts = store.count_excluded(track)
    state.excluded, state.set_aside = counts["excluded"], counts["set_aside"]
    if state.set_aside:
        state.set_aside_recent = [{"experience_id": e.id, "reason": e.excluded_reason.removeprefix(SET_ASIDE_PREFIX)}
                                  for e in store.list_experiences(track, set_aside=True, untrained_only=True,
                                                                  limit=SET_ASIDE_SHOWN)]

    # Only the latest batch can still be in the queue: none is assembled while one is.
    last = next(iter(store.list_learning_batches(track, limit=1)), None)
    if last is not None:
        state.last_batch = {"batch": last.id, "job": last.job_id, "dataset": last.dataset_id,
                            "experiences": len(last.experience_ids), "created_at": last.created_at.isoformat(),
                            "trained_run_id": last.trained_run_id}
        job = store.get_job(last.job_id) if last.job_id is not None else None
        if job is not None and job.state not in JOB_FINAL_STATES:
            state.in_flight = {"batch": last.id, "job": job.id, "state": job.state}
    runs = store.list_runs(track, limit=1)
    since = [t for t in ((runs[0].started_at if runs else None), (last.created_at if last else None)) if t]
    if since:
        state.cooldown_left_s = max(0.0, cfg.cooldown_s - (now - max(since)).total_seconds())
    state.in_window = in_window(parse_window(cfg.window), now.astimezone())

    if state.ready < cfg.threshold:
        what = "" if state.objective == "sft" else f" for {state.objective.upper()}"
        state.why_not = f"{state.ready} of {cfg.threshold} experiences ready{what} (learn.threshold)"
    elif not fresh:
        state.why_not = "no experience is new since the last batch"
    elif state.in_flight:
        flight = state.in_flight
        state.why_not = f"batch {flight['batch']} is still {flight['state']} (job {flight['job']})"
    elif state.cooldown_left_s > 0:
        state.why_not = f"cooling down for {state.cooldown_left_s:.0f}s more (learn.cooldown_s)"
    elif not state.in_window:
        state.why_not = f"outside the window {cfg.window} (learn.window)"
    state.fires = state.why_not is None
    return state


def _taught(objective: str, experience, taught: Lesson | None, good_score: float) -> Taught | None:
    """What ``experience`` puts in a batch of ``objective``, or None."""
    if objective == "dpo":
        return dpo_taught(experience, taught)
    if objective == "kto":
        return kto_taught(experience, taught, good_score)
    return sft_taught(taught) if taught is not None else None


@dataclass
class Assembled:
    """A batch written, ingested and queued."""

    batch: LearningBatchInfo
    job_id: int
    dataset_id: int
    path: Path
    provenance_path: Path
    counts: dict
    # Experiences that could not become a training line, with why: left out, not blocking.
    set_aside: list[dict] = field(default_factory=list)
    objective: str = "sft"


def assemble(workspace, store, state: LearningState, *, trigger: str) -> Assembled:
    """Write ``state``'s lessons (in the kind of its objective) plus replay of the same
    kind as a dataset with its provenance, ingest it, queue its job and record the batch."""
    from honed.data.datasets import add_dataset_file

    track = state.track
    cfg = workspace.settings.learn_for(track)
    objective, kind = state.objective, batch_kind(state.objective)
    taught = sorted(state.taught, key=lambda t: t.experience_id)[:cfg.max_batch]
    if not taught:
        raise LearnError(f"track {track}: no experience is ready to train on ({state.good} good, "
                         f"{state.needs_improvement} needing improvement without a correction"
                         + ("" if objective == "sft" else f"; {state.objective_why}") + ")")
    # Lenient per line: one experience that cannot be a training line (stored before
    # capture checked it, or with a role the ingest does not train) is set aside with its
    # reason; the others go on. It is recorded as excluded ("set aside: REASON"), so it is
    # listed and not offered again until someone includes it.
    max_chars = workspace.settings.ingest.max_record_chars
    set_aside = [{"experience_id": t.experience_id, "reason": reason}
                 for t in taught if (reason := _first_problem(t, max_chars))]
    if set_aside:
        aside = {s["experience_id"] for s in set_aside}
        taught = [t for t in taught if t.experience_id not in aside]
        for s in set_aside:
            log.warning("track %s: experience %d set aside: %s", track, s["experience_id"], s["reason"])
            store.exclude_experience(s["experience_id"], (SET_ASIDE_PREFIX + s["reason"])[:MAX_REASON_CHARS])
    if not taught:
        raise LearnError(f"track {track}: every experience ready to train on was set aside: "
                         + "; ".join(f"experience {s['experience_id']}: {s['reason']}" for s in set_aside))
    base_version = store.require_track(track).base_version
    stamp = datetime.now(UTC)
    rng = random.Random(f"{track}:{stamp.isoformat()}")
    n_lessons = sum(len(t.lines) for t in taught)
    want = round(n_lessons * (1 - cfg.experience_fraction) / cfg.experience_fraction)
    replay = _replay(store, track, base_version, want, rng, kind)
    notes = []
    if want and len(replay) < want:
        notes.append(f"replay: {len(replay)} of {want} lines wanted: the track's earlier datasets of "
                     f"{describe_kind(kind)} hold no more records it learned on base v{base_version}"
                     + ("; the batch has no replay" if not replay else ""))

    lines, provenance = [], []
    for t in taught:
        for record, source in t.lines:
            lines.append(record)
            provenance.append({"line": len(lines), **source})
    for dataset_id, record in replay:
        lines.append({k: v for k, v in record.items() if k not in ("line", "hash")})
        provenance.append({"line": len(lines), "source": "replay", "dataset_id": dataset_id,
                           "record_hash": record["hash"]})
    counts = _counts(objective, taught, len(replay), want)
    folder = workspace.datasets_dir / "assembled" / track
    folder.mkdir(parents=True, exist_ok=True)
    name = f"learn-{track}-{stamp:%Y%m%dT%H%M%S%f}"
    path = folder / f"{name}.jsonl"
    write_bytes_atomically(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in lines).encode())
    manifest = {
        "track": track, "base_version": base_version, "trigger": trigger, "created_at": stamp.isoformat(),
        "objective": objective, "objective_why": state.objective_why, "kind": kind,
        "experience_fraction": cfg.experience_fraction, "counts": counts,
        "replay_sources": sorted({d for d, _ in replay}), "teacher_model": cfg.teacher.model or None,
        "lines": provenance, "set_aside": set_aside, "notes": notes,
    }
    provenance_path = folder / f"{name}.provenance.json"
    write_json_atomically(provenance_path, manifest)

    added = add_dataset_file(workspace, store, path, track=track, mode="strict")
    if not added.accepted:
        raise LearnError(f"the assembled dataset was refused: {added.describe()}")
    if added.dataset.kind != kind:  # the lines are built of one kind; a mismatch is a bug, said plainly
        raise LearnError(f"the assembled dataset {added.dataset.id} is of kind {added.dataset.kind!r}, "
                         f"not {kind!r} as train.objective = {objective!r} needs")
    batch = store.queue_learning_batch(track=track, base_version=base_version, dataset_id=added.dataset.id,
                                       trigger=trigger, experience_ids=[t.experience_id for t in taught],
                                       counts=counts, provenance_path=str(provenance_path),
                                       overrides=job_overrides(objective), priority=cfg.priority)
    log.info("learn: track %s: batch %d (%s: %s; %d replay) queued as job %d", track, batch.id, objective,
             ", ".join(f"{v} {k}" for k, v in counts.items() if k not in ("replay", "replay_wanted")),
             counts["replay"], batch.job_id)
    for note in notes:
        log.info("learn: track %s: batch %d: %s", track, batch.id, note)
    return Assembled(batch, batch.job_id, added.dataset.id, path, provenance_path, counts, set_aside, objective)


def _counts(objective: str, taught: list[Taught], replay: int, want: int) -> dict:
    """What a batch holds, by where its lines came from."""
    sources = [source for t in taught for _, source in t.lines]
    by = {name: sum(s["source"] == name for s in sources) for name in ("person", "teacher", "good")}
    counts = {"lessons": len(taught), **by}
    if objective == "dpo":
        counts["pairs"] = len(sources)
    elif objective == "kto":
        counts.pop("good")
        counts.update({name: sum(s["source"] == name for s in sources) for name in ("score", "thumbs", "scorer")},
                      desirable=sum(s["label"] for s in sources), undesirable=sum(not s["label"] for s in sources))
    return {**counts, "replay": replay, "replay_wanted": want}


def _first_problem(taught: Taught, max_chars: int) -> str | None:
    """Why one of ``taught``'s lines would be refused by the ingest, or None."""
    return next((problem for record, _ in taught.lines if (problem := training_problem(record, max_chars))), None)


def training_problem(record: dict, max_chars: int) -> str | None:
    """Why ``record`` (a chat, a preference pair or an unpaired judgement) would be
    refused by the ingest as a training line, or None."""
    from honed.data.formats import RecordError, normalize_record, text_problem

    try:
        normalize_record(record, max_chars)
    except RecordError as exc:
        return str(exc)
    for key in ("messages", "prompt", "chosen", "rejected", "completion"):
        for i, message in enumerate(record.get(key, ())):
            problem = text_problem(message["content"])
            if problem:
                return f"{key}[{i}].content {problem}"
    return None


def _replay(store, track: str, base_version: int, want: int, rng: random.Random,
            kind: str = "sft") -> list[tuple[int, dict]]:
    """Up to ``want`` records the track already learned on this base, drawn evenly at
    random from its earlier datasets of ``kind`` (reservoir sampling: one pass, bounded
    memory). Replay stays within the batch's kind: pairs replay pairs, chats chats."""
    if want <= 0:
        return []
    trained = store.trained_record_hashes(track, base_version)
    if not trained:
        return []
    picked: list[tuple[int, dict]] = []
    seen = 0
    for dataset in store.list_datasets(track, kind=kind):
        if not dataset.stored_path or not Path(dataset.stored_path).is_file():
            continue
        for record in read_jsonl(Path(dataset.stored_path)):
            if record["hash"] not in trained:
                continue
            seen += 1
            if len(picked) < want:
                picked.append((dataset.id, record))
            elif (j := rng.randrange(seen)) < want:
                picked[j] = (dataset.id, record)
    return picked


def run_now(workspace, store, track: str, *, teacher: bool = True) -> tuple[Assembled, object | None]:
    """Correct what the teacher can now (unless ``teacher`` is False), then assemble and
    queue a batch whatever the threshold, cooldown and window say."""
    report = teacher_pass(workspace, store, track, force=True) if teacher else None
    state = learning_state(workspace, store, track)
    if state.in_flight:
        raise LearnError(f"track {track}: batch {state.in_flight['batch']} is still {state.in_flight['state']} "
                         f"(job {state.in_flight['job']}); wait for it or cancel it")
    return assemble(workspace, store, state, trigger="run-now"), report


def tick(workspace, store, track: str) -> Assembled | None:
    """One turn of the loop for ``track``: a teacher pass when due, then the trigger."""
    teacher_pass(workspace, store, track)
    state = learning_state(workspace, store, track)
    if not state.fires:
        log.debug("learn: track %s: not now: %s", track, state.why_not)
        return None
    return assemble(workspace, store, state, trigger="threshold")

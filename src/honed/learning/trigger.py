"""The trigger policy of a track and the batches it assembles.

:func:`learning_state` reads where a track's loop stands: its open experiences by
judgement, what they would teach, the teacher's record, the cooldown, the window and any
batch still in the queue, and whether the trigger would fire now (or why not). The
trigger fires when every one of these holds:

- at least ``learn.threshold`` experiences would teach something (good, or corrected by a
  person or the teacher), and at least one of them was never in a batch before (a failed
  batch is not retried alone, over and over);
- ``learn.cooldown_s`` has passed since the track's last run or batch;
- now is inside ``learn.window``;
- no batch of the track is still queued or training.

:func:`assemble` writes the lessons (``learn.experience_fraction`` of the dataset, 70% by
default) and replay of records the track already learned (the rest) as an ordinary JSONL
dataset, with a provenance file beside it naming the source of every line: the
experience, the teacher answer, or the earlier dataset and record of a replayed line.
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
from honed.data.plan import read_jsonl
from honed.learning.curriculum import day_start, needs_teacher, teacher_pass
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
    lessons: list[Lesson] = field(default_factory=list, repr=False)

    def summary(self) -> dict:
        out = asdict(self)
        out.pop("lessons")
        return out


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
    fresh = False  # a ready experience that was never in a batch
    for exp in experiences:
        verdict = judgement(exp, cfg.good_score)
        state.good += verdict == GOOD
        state.needs_improvement += verdict == NEEDS_IMPROVEMENT
        state.unrated += verdict == UNRATED
        taught = lesson(exp, answers[exp.id], cfg.good_score)
        if taught is not None:
            state.lessons.append(taught)
            fresh = fresh or exp.batch_id is None
            state.corrected_by_person += taught.source == "person"
            state.corrected_by_teacher += taught.source == "teacher"
        elif verdict == NEEDS_IMPROVEMENT and len(answers[exp.id]) >= cfg.teacher.max_attempts:
            state.teacher_given_up += 1
    state.awaiting_teacher = len(needs_teacher(cfg, experiences, answers, now)) if state.teacher else 0
    state.ready = len(state.lessons)
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
        state.why_not = f"{state.ready} of {cfg.threshold} experiences ready (learn.threshold)"
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


def assemble(workspace, store, state: LearningState, *, trigger: str) -> Assembled:
    """Write ``state``'s lessons plus replay as a dataset with its provenance, ingest it,
    queue its job and record the batch."""
    from honed.data.datasets import add_dataset_file

    track = state.track
    cfg = workspace.settings.learn_for(track)
    lessons = sorted(state.lessons, key=lambda t: t.experience_id)[:cfg.max_batch]
    if not lessons:
        raise LearnError(f"track {track}: no experience is ready to train on ({state.good} good, "
                         f"{state.needs_improvement} needing improvement without a correction)")
    # Lenient per line: one experience that cannot be a training line (stored before
    # capture checked it, or with a role the ingest does not train) is set aside with its
    # reason; the others go on. It is recorded as excluded ("set aside: REASON"), so it is
    # listed and not offered again until someone includes it.
    max_chars = workspace.settings.ingest.max_record_chars
    set_aside = [{"experience_id": t.experience_id, "reason": reason}
                 for t in lessons if (reason := training_problem(t.record(), max_chars))]
    if set_aside:
        aside = {s["experience_id"] for s in set_aside}
        lessons = [t for t in lessons if t.experience_id not in aside]
        for s in set_aside:
            log.warning("track %s: experience %d set aside: %s", track, s["experience_id"], s["reason"])
            store.exclude_experience(s["experience_id"], (SET_ASIDE_PREFIX + s["reason"])[:MAX_REASON_CHARS])
    if not lessons:
        raise LearnError(f"track {track}: every experience ready to train on was set aside: "
                         + "; ".join(f"experience {s['experience_id']}: {s['reason']}" for s in set_aside))
    base_version = store.require_track(track).base_version
    stamp = datetime.now(UTC)
    rng = random.Random(f"{track}:{stamp.isoformat()}")
    want = round(len(lessons) * (1 - cfg.experience_fraction) / cfg.experience_fraction)
    replay = _replay(store, track, base_version, want, rng)

    lines, provenance = [], []
    for t in lessons:
        lines.append(t.record())
        provenance.append({"line": len(lines), "source": t.source, "experience_id": t.experience_id,
                           "teacher_answer_id": t.teacher_answer_id, "teacher_model": t.teacher_model})
    for dataset_id, record in replay:
        lines.append({"messages": record["messages"]})
        provenance.append({"line": len(lines), "source": "replay", "dataset_id": dataset_id,
                           "record_hash": record["hash"]})
    counts = {"lessons": len(lessons), "person": sum(t.source == "person" for t in lessons),
              "teacher": sum(t.source == "teacher" for t in lessons),
              "good": sum(t.source == "good" for t in lessons), "replay": len(replay), "replay_wanted": want}
    folder = workspace.datasets_dir / "assembled" / track
    folder.mkdir(parents=True, exist_ok=True)
    name = f"learn-{track}-{stamp:%Y%m%dT%H%M%S%f}"
    path = folder / f"{name}.jsonl"
    write_bytes_atomically(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in lines).encode())
    manifest = {
        "track": track, "base_version": base_version, "trigger": trigger, "created_at": stamp.isoformat(),
        "experience_fraction": cfg.experience_fraction, "counts": counts,
        "replay_sources": sorted({d for d, _ in replay}), "teacher_model": cfg.teacher.model or None,
        "lines": provenance, "set_aside": set_aside,
    }
    provenance_path = folder / f"{name}.provenance.json"
    write_json_atomically(provenance_path, manifest)

    added = add_dataset_file(workspace, store, path, track=track, mode="strict")
    if not added.accepted:
        raise LearnError(f"the assembled dataset was refused: {added.describe()}")
    batch = store.queue_learning_batch(track=track, base_version=base_version, dataset_id=added.dataset.id,
                                       trigger=trigger, experience_ids=[t.experience_id for t in lessons],
                                       counts=counts, provenance_path=str(provenance_path),
                                       overrides=JOB_OVERRIDES, priority=cfg.priority)
    log.info("learn: track %s: batch %d (%d lessons: %d by a person, %d by the teacher, %d good; %d replay) "
             "queued as job %d", track, batch.id, counts["lessons"], counts["person"], counts["teacher"],
             counts["good"], counts["replay"], batch.job_id)
    return Assembled(batch, batch.job_id, added.dataset.id, path, provenance_path, counts, set_aside)


def training_problem(record: dict, max_chars: int) -> str | None:
    """Why ``record`` would be refused by the ingest as a training line, or None."""
    from honed.data.formats import RecordError, normalize_record, text_problem

    try:
        normalize_record(record, max_chars)
    except RecordError as exc:
        return str(exc)
    for i, message in enumerate(record["messages"]):
        problem = text_problem(message["content"])
        if problem:
            return f"messages[{i}].content {problem}"
    return None


def _replay(store, track: str, base_version: int, want: int, rng: random.Random) -> list[tuple[int, dict]]:
    """Up to ``want`` records the track already learned on this base, drawn evenly at
    random from its earlier datasets (reservoir sampling: one pass, bounded memory)."""
    if want <= 0:
        return []
    trained = store.trained_record_hashes(track, base_version)
    if not trained:
        return []
    picked: list[tuple[int, dict]] = []
    seen = 0
    for dataset in store.list_datasets(track, kind="sft"):  # a batch is supervised examples
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

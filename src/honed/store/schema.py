"""The tables of honed's store, declared once with SQLAlchemy Core.

These declarations are what the queries use; the migrations under ``migrations/``
create the same tables (a test compares the two, so they cannot drift). To add a table
or a column: change it here, then add a new revision under ``migrations/versions/``.

Long because it is every table, declared once.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.types import TypeDecorator

from honed.data.kinds import KINDS
from honed.states import AdapterState, Command, CommandState, DeployAction, JobState, Priority, RunStatus

# Ids are INTEGER columns: 32 bits on PostgreSQL. A larger number names no row, and
# asking the database about it would fail there (and overflow SQLite's 64 bits).
MAX_ID = 2**31 - 1


def storable_id(value: int) -> bool:
    """Whether ``value`` can be a row id (1..MAX_ID): anything else names no row, and is
    answered "not found" before it reaches a database that would overflow on it."""
    return 0 < value <= MAX_ID

# Explicit constraint names: SQLite can only change constraints by rebuilding a table
# (Alembic's batch mode), and that needs names to find them.
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

metadata = sa.MetaData(naming_convention=NAMING_CONVENTION)

# The allowed values of the state columns: honed.states is their one definition.
RUN_STATUSES = tuple(RunStatus)
JOB_STATES = tuple(JobState)
JOB_FINAL_STATES = tuple(s for s in JobState if s.final)
JOB_PRIORITIES = {p: p.rank for p in Priority}
JOB_COMMANDS = tuple(Command)
COMMAND_STATES = tuple(CommandState)
ADAPTER_STATES = tuple(AdapterState)
DEPLOY_ACTIONS = tuple(DeployAction)
DATASET_MODES = ("strict", "lenient")
DATASET_KINDS = KINDS  # what its records are: sft, preference or unpaired
# "layers": per-layer LoRA delta norms ({"layer.3.q_proj": 0.012, ...}) every
# telemetry.layer_stats_every steps.
METRIC_KINDS = ("train", "eval", "layers")

# JSON cannot carry NaN or infinity, and PostgreSQL rejects them; a diverging loss is
# exactly what the metrics must keep, so non-finite floats travel as these strings.
_NON_FINITE = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}


def utc_now() -> datetime:
    """The current time, timezone-aware in UTC (the only kind of time the store keeps)."""
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator):
    """A timestamp that goes in and comes out timezone-aware in UTC on every dialect.

    SQLite keeps no zone, so values are normalised to UTC on the way in and tagged as UTC
    on the way out.
    """

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: sa.Dialect) -> Any:
        """Refuse naive datetimes (their zone is unknowable); store UTC."""
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r} given to the store; use UTC")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: sa.Dialect) -> Any:
        """Return an aware UTC datetime whatever the dialect handed back."""
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


def json_type() -> sa.types.TypeEngine:
    """JSON on SQLite, JSONB on PostgreSQL (indexable and compact)."""
    return sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def encode_non_finite(value: Any) -> Any:
    """Replace NaN and infinities anywhere in a JSON value by their string names."""
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, dict):
        return {k: encode_non_finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [encode_non_finite(v) for v in value]
    return value


def decode_non_finite(value: Any) -> Any:
    """Inverse of :func:`encode_non_finite` for the values of a metrics mapping."""
    if isinstance(value, str) and value in _NON_FINITE:
        return _NON_FINITE[value]
    if isinstance(value, dict):
        return {k: decode_non_finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [decode_non_finite(v) for v in value]
    return value


HASH = sa.String(128)
NAME = sa.String(200)

bases = sa.Table(
    "bases",
    metadata,
    sa.Column("version", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("source", sa.Text, nullable=False),
    sa.Column("description", sa.Text, nullable=False, default=""),
    sa.Column("parent_version", sa.Integer, sa.ForeignKey("bases.version"), nullable=True),
    sa.Column("lineage", json_type(), nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
)

tracks = sa.Table(
    "tracks",
    metadata,
    sa.Column("name", NAME, primary_key=True),
    sa.Column("base_version", sa.Integer, sa.ForeignKey("bases.version"), nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
)

datasets = sa.Table(
    "datasets",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("name", NAME, nullable=False),
    sa.Column("track", NAME, sa.ForeignKey("tracks.name"), nullable=False),
    sa.Column("file_hash", HASH, nullable=False),
    sa.Column("source_path", sa.Text, nullable=False),
    sa.Column("stored_path", sa.Text, nullable=False),
    sa.Column("mode", sa.String(16), nullable=False),
    sa.Column("n_records", sa.Integer, nullable=False),
    sa.Column("n_rejected", sa.Integer, nullable=False),
    sa.Column("reject_path", sa.Text, nullable=True),
    sa.Column("created_at", UTCDateTime, nullable=False),
    # Every record of a dataset is of this kind (honed.data.kinds); rows from before
    # preference data existed are SFT.
    sa.Column("kind", sa.String(16), nullable=False, server_default="sft"),
    sa.UniqueConstraint("track", "file_hash"),
    # Never reuse an id: runs refer to datasets by id inside their JSON.
    sqlite_autoincrement=True,
)

records = sa.Table(
    "records",
    metadata,
    sa.Column("dataset_id", sa.Integer, sa.ForeignKey("datasets.id"), primary_key=True),
    sa.Column("line_no", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("record_hash", HASH, nullable=False),
    sa.Index(None, "record_hash"),
)

runs = sa.Table(
    "runs",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("track", NAME, sa.ForeignKey("tracks.name"), nullable=False),
    sa.Column("base_version", sa.Integer, sa.ForeignKey("bases.version"), nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("config", json_type(), nullable=False),
    sa.Column("dataset_ids", json_type(), nullable=False),
    sa.Column("attempt", sa.Integer, nullable=False),
    sa.Column("started_at", UTCDateTime, nullable=False),
    sa.Column("ended_at", UTCDateTime, nullable=True),
    sa.Column("final_metrics", json_type(), nullable=True),
    sa.Column("error", sa.Text, nullable=True),
    sa.Column("adapter_path", sa.Text, nullable=True),
    sa.Index(None, "track", "started_at"),
)

checkpoints = sa.Table(
    "checkpoints",
    metadata,
    sa.Column("run_id", sa.String(64), sa.ForeignKey("runs.id"), primary_key=True),
    sa.Column("step", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("path", sa.Text, nullable=False),
    sa.Column("complete", sa.Boolean, nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
)

# One row per (run, kind, step, attempt); the metric values of that step sit in one JSON
# mapping so that new metrics need no migration. Note: read the column as
# ``metrics.c["values"]`` because ``.c.values`` is a method of the column collection.
metrics = sa.Table(
    "metrics",
    metadata,
    sa.Column("run_id", sa.String(64), sa.ForeignKey("runs.id"), primary_key=True),
    sa.Column("kind", sa.String(16), primary_key=True),
    sa.Column("step", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("attempt", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("values", json_type(), nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Index(None, "run_id", "step"),
)

# The key is (record_hash, base_version, track); track and base version lead it because
# planning reads all hashes of one (track, base version) at once. No foreign keys: a run
# marks hundreds of thousands of rows at once and three FK checks per row tripled the
# time on PostgreSQL; the store checks track, base and run once per call instead.
trained_records = sa.Table(
    "trained_records",
    metadata,
    sa.Column("track", NAME, primary_key=True),
    sa.Column("base_version", sa.Integer, primary_key=True),
    sa.Column("record_hash", HASH, primary_key=True),
    sa.Column("run_id", sa.String(64), nullable=False),
)

# A request to train a track. ``id`` orders jobs of one priority first in, first out.
jobs = sa.Table(
    "jobs",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("track", NAME, sa.ForeignKey("tracks.name"), nullable=False),
    sa.Column("dataset_ids", json_type(), nullable=False),
    sa.Column("overrides", json_type(), nullable=False),
    sa.Column("priority", sa.SmallInteger, nullable=False),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("source", sa.String(32), nullable=False),
    # Set when the job is first claimed; the run is created by its first trainer, so no
    # foreign key (the id exists before the row).
    sa.Column("run_id", sa.String(64), nullable=True),
    sa.Column("failures", sa.Integer, nullable=False),
    sa.Column("not_before", UTCDateTime, nullable=True),
    sa.Column("error", sa.Text, nullable=True),
    sa.Column("worker", sa.String(200), nullable=True),
    sa.Column("trainer_pid", sa.Integer, nullable=True),
    sa.Column("heartbeat_at", UTCDateTime, nullable=True),
    sa.Column("progress", json_type(), nullable=True),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("updated_at", UTCDateTime, nullable=False),
    sa.Column("started_at", UTCDateTime, nullable=True),
    sa.Column("ended_at", UTCDateTime, nullable=True),
    # The claim that holds the job: its fencing token (incremented by every claim; each
    # write made for a claim carries it) and when its lease runs out unless renewed.
    sa.Column("fence", sa.Integer, nullable=False, server_default="0"),
    sa.Column("lease_until", UTCDateTime, nullable=True),
    sa.Index(None, "state", "priority", "id"),
    sa.Index(None, "run_id", unique=True),  # a run belongs to one job
    sqlite_autoincrement=True,
)

# What happened to a job, in order, like a hosted fine-tuning API's job events.
job_events = sa.Table(
    "job_events",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("job_id", sa.Integer, sa.ForeignKey("jobs.id"), nullable=False),
    sa.Column("at", UTCDateTime, nullable=False),
    sa.Column("kind", sa.String(32), nullable=False),
    sa.Column("message", sa.Text, nullable=False),
    sa.Column("data", json_type(), nullable=True),
    sa.Index(None, "job_id", "id"),
    sqlite_autoincrement=True,
)

# Control is a command in the store: pending until a trainer takes it at a step
# boundary (or the store applies it at once to a job that is not training), done once
# the job reached the state the command asked for.
job_commands = sa.Table(
    "job_commands",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("job_id", sa.Integer, sa.ForeignKey("jobs.id"), nullable=False),
    sa.Column("command", sa.String(16), nullable=False),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("requested_at", UTCDateTime, nullable=False),
    sa.Column("taken_at", UTCDateTime, nullable=True),
    sa.Column("taken_step", sa.Integer, nullable=True),
    sa.Column("done_at", UTCDateTime, nullable=True),
    sa.Column("outcome", sa.Text, nullable=True),
    sa.Index(None, "job_id", "state"),
    sqlite_autoincrement=True,
)

# Daemons that run (or ran) on this store: who, where, since when, last sign of life.
workers = sa.Table(
    "workers",
    metadata,
    sa.Column("id", sa.String(200), primary_key=True),
    sa.Column("host", sa.String(200), nullable=False),
    sa.Column("pid", sa.Integer, nullable=False),
    sa.Column("workspace", sa.Text, nullable=False),
    sa.Column("started_at", UTCDateTime, nullable=False),
    sa.Column("heartbeat_at", UTCDateTime, nullable=False),
    sa.Column("stopped_at", UTCDateTime, nullable=True),
    sa.Column("state", json_type(), nullable=True),
)

# The artifacts runs produce, with their evaluation and gate verdict. At most one adapter
# per track is deployed: a partial unique index makes that a rule of the database.
adapters = sa.Table(
    "adapters",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("track", NAME, sa.ForeignKey("tracks.name"), nullable=False),
    sa.Column("run_id", sa.String(64), nullable=True),
    sa.Column("job_id", sa.Integer, nullable=True),
    sa.Column("base_version", sa.Integer, sa.ForeignKey("bases.version"), nullable=False),
    sa.Column("path", sa.Text, nullable=False),
    sa.Column("state", sa.String(24), nullable=False),
    sa.Column("evaluation", json_type(), nullable=True),
    sa.Column("verdict", json_type(), nullable=True),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("updated_at", UTCDateTime, nullable=False),
    sa.Index("uq_adapters_one_deployed_per_track", "track", unique=True,
             sqlite_where=sa.text("state = 'deployed'"), postgresql_where=sa.text("state = 'deployed'")),
    sqlite_autoincrement=True,
)

# Every change of a track's deployment pointer, newest last: rollback walks it back.
deployments = sa.Table(
    "deployments",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("track", NAME, sa.ForeignKey("tracks.name"), nullable=False),
    sa.Column("adapter_id", sa.Integer, sa.ForeignKey("adapters.id"), nullable=True),
    sa.Column("previous_adapter_id", sa.Integer, sa.ForeignKey("adapters.id"), nullable=True),
    sa.Column("action", sa.String(16), nullable=False),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("at", UTCDateTime, nullable=False),
    sa.Column("hooks", json_type(), nullable=True),
    sa.Index(None, "track", "id"),
    sqlite_autoincrement=True,
)

# One interaction of an application with a track's model: what it asked (messages), what
# the model answered (output) and with which adapter, and what people or scorers said of
# it afterwards (score 0..1, thumbs up/down, a corrected output). ``trained_run_id`` is
# set once a run that trained on it succeeded. ``excluded_reason`` set: it is kept and
# listed but never put into a training batch (by hand, or "set aside: ..." when a batch
# could not use it as a training line).
EXPERIENCE_SOURCES = ("served", "logged")
THUMBS = ("up", "down")
experiences = sa.Table(
    "experiences",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("track", NAME, sa.ForeignKey("tracks.name"), nullable=False),
    sa.Column("base_version", sa.Integer, sa.ForeignKey("bases.version"), nullable=False),
    sa.Column("adapter_id", sa.Integer, sa.ForeignKey("adapters.id"), nullable=True),
    sa.Column("source", sa.String(16), nullable=False),
    sa.Column("messages", json_type(), nullable=False),
    sa.Column("output", sa.Text, nullable=False),
    sa.Column("latency_ms", sa.Float, nullable=True),
    sa.Column("prompt_tokens", sa.Integer, nullable=True),
    sa.Column("completion_tokens", sa.Integer, nullable=True),
    sa.Column("meta", json_type(), nullable=True),
    sa.Column("score", sa.Float, nullable=True),
    sa.Column("thumbs", sa.String(8), nullable=True),
    sa.Column("corrected_output", sa.Text, nullable=True),
    sa.Column("feedback_at", UTCDateTime, nullable=True),
    sa.Column("trained_run_id", sa.String(64), nullable=True),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("auto_score", sa.Float, nullable=True),
    sa.Column("batch_id", sa.Integer, nullable=True),
    sa.Column("excluded_reason", sa.Text, nullable=True),
    sa.Column("excluded_at", UTCDateTime, nullable=True),
    sa.Index(None, "track", "id"),
    sqlite_autoincrement=True,
)

# Each time honed asked the teacher to correct an experience: the answer it kept
# (``accepted``), or why not (``invalid``: it answered, the answer failed validation;
# ``failed``: no answer, e.g. the teacher was down or slow). Failed and invalid answers
# are never trained on; the experience is asked about again after learn.teacher.retry_after_s.
TEACHER_STATUSES = ("accepted", "invalid", "failed")

teacher_answers = sa.Table(
    "teacher_answers",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("experience_id", sa.Integer, sa.ForeignKey("experiences.id"), nullable=False),
    sa.Column("track", NAME, sa.ForeignKey("tracks.name"), nullable=False),
    sa.Column("model", NAME, nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("output", sa.Text, nullable=True),
    sa.Column("reason", sa.Text, nullable=True),
    sa.Column("score", sa.Float, nullable=True),
    sa.Column("latency_ms", sa.Float, nullable=True),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Index(None, "experience_id"),
    sa.Index(None, "track", "created_at"),
    sqlite_autoincrement=True,
)

# A dataset the learning loop assembled from experiences (and replay), with the job it
# queued: ``experience_ids`` are the experiences in it, marked trained when its run
# succeeds; ``provenance`` says where every record came from.
learning_batches = sa.Table(
    "learning_batches",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("track", NAME, sa.ForeignKey("tracks.name"), nullable=False),
    sa.Column("base_version", sa.Integer, sa.ForeignKey("bases.version"), nullable=False),
    sa.Column("dataset_id", sa.Integer, sa.ForeignKey("datasets.id"), nullable=True),
    sa.Column("job_id", sa.Integer, sa.ForeignKey("jobs.id"), nullable=True),
    sa.Column("trigger", sa.String(32), nullable=False),
    sa.Column("experience_ids", json_type(), nullable=False),
    sa.Column("counts", json_type(), nullable=False),
    sa.Column("provenance_path", sa.Text, nullable=False),
    sa.Column("trained_run_id", sa.String(64), nullable=True),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Index(None, "track", "id"),
    sqlite_autoincrement=True,
)

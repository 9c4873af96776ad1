"""``honed doctor``: check a workspace end to end and say what to fix.

Every check gives one or more :class:`Finding` lines, each ``ok``, ``warn`` or ``fail``
with the fix beside it: the workspace and its config, the store (reachable, schema
current, SQLite's journal and PostgreSQL's version), the daemon (its lock, heartbeat and
any trainer stuck past its heartbeat), the base files (present, the GGUF a base came
from still the file its lineage hashed), the deployed adapters (present and whole), free
disk and memory against what the next job needs, the installed packages against the lock
file, the accelerator, and the server's bind and token.

Doctor only reads: it never migrates the store or changes a file, and a check that
breaks becomes a ``fail`` line naming it rather than a traceback. It imports no torch,
so a monitoring system can call it every minute; the exit status is 0, 1 or 2 for ok,
warn or fail.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from honed.config.models import ServerSettings
    from honed.store import Store
    from honed.workspace import Workspace

LEVELS = ("ok", "warn", "fail")
GB = 2**30
LOW_FREE_DISK_GB = 10.0  # a warning before storage.min_free_gb stops the daemon
# Before any run has measured itself: a LoRA job holds the base's weights, the activations
# and the logits of a batch, and the adapter's optimizer state. Measured on SmolLM2 at its
# workspace defaults (batch 32): peak RSS 4.9 GB for 514 MB of weights.
JOB_MEMORY_FACTOR = 10.0


@dataclass(frozen=True)
class Finding:
    """One line of the report."""

    area: str
    level: str  # ok | warn | fail
    message: str
    fix: str = ""


def size(n: float) -> str:
    """Bytes for people: GiB, or MiB below one GiB."""
    return f"{n / GB:.1f} GiB" if n >= GB else f"{n / 2**20:.1f} MiB"


def exit_status(findings: list[Finding]) -> int:
    """0 when everything is ok, 1 with a warning, 2 with a failure."""
    return max((LEVELS.index(f.level) for f in findings), default=0)


def diagnose(root: Path | None = None) -> list[Finding]:
    """Every check, in order; a check that raises becomes a ``fail`` naming it."""
    from honed.config import SettingsError
    from honed.workspace import WorkspaceError, open_workspace

    findings: list[Finding] = []
    try:
        ws = open_workspace(root)
    except (WorkspaceError, SettingsError) as exc:
        findings.append(Finding("config", "fail", str(exc), "fix honed.toml as the message says, or point -w at "
                                "a workspace ('honed init DIR' makes one)"))
        findings += _run("packages", check_packages) + _run("accelerator", check_accelerator)
        return findings
    findings.append(Finding("config", "ok", f"workspace {ws.root}, honed.toml valid"))
    if ws.stop_file.exists():
        findings.append(Finding("config", "warn", f"{ws.stop_file} exists: nothing trains while it does",
                                f"rm {ws.stop_file} when training may go on"))
    try:
        store_findings, store = _open_store(ws)
    except Exception as exc:  # noqa: BLE001 - as in _run
        store_findings, store = [_broken("store", exc)], None
    findings += store_findings
    try:
        findings += _run("daemon", lambda: check_daemon(ws, store))
        if store is not None:
            findings += _run("bases", lambda: check_bases(ws, store))
            findings += _run("adapters", lambda: check_adapters(store))
        findings += _run("disk", lambda: check_disk(ws))
        if store is not None:
            findings += _run("disk", lambda: check_reclaimable(ws, store))
        findings += _run("memory", lambda: check_memory(ws, store))
    finally:
        if store is not None:
            store.close()
    findings += _run("packages", check_packages)
    findings += _run("accelerator", check_accelerator)
    findings += _run("server", lambda: check_server(ws.settings.server))
    return findings


def _run(area: str, check: Callable[[], Iterator[Finding] | list[Finding]]) -> list[Finding]:
    try:
        return list(check())
    except Exception as exc:  # noqa: BLE001 - doctor reports a broken check, it does not crash on it
        return [_broken(area, exc)]


def _broken(area: str, exc: Exception) -> Finding:
    return Finding(area, "fail", f"the check itself failed: {type(exc).__name__}: {exc}",
                   "report this with 'honed doctor --json' attached")


# --- the store --------------------------------------------------------------------------


def _open_store(ws: Workspace) -> tuple[list[Finding], Store | None]:
    """The store's findings, and the store opened for the other checks when its schema
    is current (opening it otherwise would migrate it, and doctor only reads)."""
    import sqlalchemy as sa

    from honed.store import Store, StoreError
    from honed.store.engine import create_engine, display, parse_url, sqlite_file
    from honed.store.migrate import current_revision, head_revision

    try:
        url = parse_url(ws.store_url)
    except StoreError as exc:
        return [Finding("store", "fail", str(exc), "set store.url in honed.toml")], None
    where = display(url)
    path = sqlite_file(url)
    if path is not None and not path.exists():
        return [Finding("store", "warn", f"{path} does not exist yet", "any honed command creates it "
                        "('honed status')")], None
    engine = create_engine(url, busy_timeout_s=5.0)
    out: list[Finding] = []
    try:
        with engine.connect() as conn:
            revision = current_revision(conn)
            if conn.dialect.name == "postgresql":
                version = conn.execute(sa.text("SHOW server_version")).scalar_one()
                major = int(str(version).split(".")[0])
                out.append(Finding("store", "ok" if major >= 13 else "warn", f"PostgreSQL {version} at {where}",
                                   "" if major >= 13 else "PostgreSQL 13 or newer is what honed is tested on"))
            else:
                journal = conn.execute(sa.text("PRAGMA journal_mode")).scalar_one()
                out.append(Finding("store", "ok" if journal == "wal" else "warn",
                                   f"SQLite {where}, journal mode {journal}",
                                   "" if journal == "wal" else "the daemon and the server read while the trainer "
                                   "writes only in WAL mode: check the file's filesystem supports it"))
    except (sa.exc.OperationalError, sa.exc.InterfaceError, sa.exc.DatabaseError) as exc:
        reason = str(getattr(exc, "orig", exc)).strip().splitlines()[0]
        return [Finding("store", "fail", f"cannot reach the store at {where}: {reason}",
                        "start the database, or fix store.url")], None
    finally:
        engine.dispose()
    head = head_revision()
    if revision == head:
        out.append(Finding("store", "ok", f"schema at the newest revision ({head})"))
    elif revision is None:
        out.append(Finding("store", "warn", "the store is empty (no schema yet)", "any honed command creates "
                           "it ('honed status')"))
        return out, None
    else:
        from alembic.script import ScriptDirectory
        from alembic.util import CommandError

        from honed.store.migrate import alembic_config

        try:
            known = ScriptDirectory.from_config(alembic_config()).get_revision(revision) is not None
        except CommandError:
            known = False
        if known:
            out.append(Finding("store", "warn", f"schema at revision {revision}, older than this honed's {head}",
                               "any honed command upgrades it ('honed status'); back the store up first"))
        else:
            out.append(Finding("store", "fail", f"schema at revision {revision}, which this honed does not know: "
                               "a newer honed wrote it", "upgrade honed to the version that wrote the store"))
        return out, None
    return out, Store.open(ws.store_url, busy_timeout_s=5.0)


# --- the daemon ---------------------------------------------------------------------------


def check_daemon(ws: Workspace, store: Store | None) -> Iterator[Finding]:
    from honed.daemon.lock import daemon_running, read_info

    if not daemon_running(ws.root):
        yield Finding("daemon", "warn", "no daemon runs for this workspace: nothing trains on its own",
                      f"honed daemon --detach -w {ws.root}")
        return
    info = read_info(ws.root)
    yield Finding("daemon", "ok", f"daemon up, pid {info.pid} on {info.host} since {info.started_at}")
    if store is None:
        return
    now = datetime.now(UTC)
    worker = store.get_worker(info.worker) if info.worker else None
    lease_s = ws.settings.daemon.lease_s
    if worker is not None:
        age = (now - worker.heartbeat_at).total_seconds()
        if age > lease_s:
            yield Finding("daemon", "fail", f"the daemon's last heartbeat is {age:.0f} s old (its jobs' leases "
                          f"last {lease_s:g} s): it is stuck", f"look at {ws.logs_dir / 'daemon.log'}; "
                          f"kill {info.pid} and start it again")
        else:
            yield Finding("daemon", "ok", f"heartbeat {age:.0f} s ago")
    timeout = ws.settings.daemon.heartbeat_timeout_s
    for job in store.list_jobs(states=("running", "evaluating")):
        if job.heartbeat_at is not None and (now - job.heartbeat_at).total_seconds() > timeout:
            yield Finding("daemon", "fail", f"job {job.id}'s trainer (pid {job.trainer_pid}) has reported nothing "
                          f"for {(now - job.heartbeat_at).total_seconds():.0f} s, past daemon.heartbeat_timeout_s "
                          f"= {timeout:g}", f"the daemon kills it at its next check; if it does not, "
                          f"kill {job.trainer_pid}")
        elif job.lease_until is not None and job.lease_until < now:
            yield Finding("daemon", "warn", f"job {job.id}'s lease ran out at {job.lease_until:%Y-%m-%d %H:%M:%S}: "
                          "the daemon holding it stopped renewing it", "a daemon sharing the store takes it "
                          "over; check that daemon's log")


# --- bases and adapters ---------------------------------------------------------------------


def _weight_files(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.safetensors")) + sorted(folder.glob("*.bin"))


def check_bases(ws: Workspace, store: Store) -> Iterator[Finding]:
    from honed.data.datasets import file_sha256
    from honed.workspace import looks_local

    latest = store.get_base()
    if latest is None:
        yield Finding("bases", "fail", "the store records no base", f"honed init {ws.root} --base BASE")
        return
    for version in range(latest.version + 1):
        base = store.get_base(version)
        if base is None:
            continue
        where = ws.resolve_base_path(store, version)
        folder = Path(where)
        if not folder.is_dir():
            if looks_local(where):
                yield Finding("bases", "fail", f"base v{version}: {where} is not a model directory",
                              "put the base back where it was, or add it again ('honed base add')")
            else:  # a hub id, loaded from the Hugging Face cache
                yield Finding("bases", "warn", f"base v{version} is the hub id {where!r}: doctor cannot check "
                              "its files", "download it once where the trainer runs")
            continue
        if not (folder / "config.json").is_file() or not _weight_files(folder):
            yield Finding("bases", "fail", f"base v{version}: {folder} lacks config.json or its weights",
                          "put the base's files back, or add it again ('honed base add')")
            continue
        gguf = base.lineage.get("gguf")
        if gguf and base.lineage.get("sha256"):
            source = Path(gguf)
            if not source.is_file():
                yield Finding("bases", "warn", f"base v{version}: its conversion is here, but the GGUF it came from "
                              f"({source}) is gone", "nothing to do to train; keep the file to prove the lineage")
                continue
            if file_sha256(source) != base.lineage["sha256"]:
                yield Finding("bases", "fail", f"base v{version}: {source} changed since it was added (sha256 no "
                              "longer the lineage's)", "restore the original file, or add the new one as a new "
                              "base ('honed base add')")
                continue
        yield Finding("bases", "ok", f"base v{version} at {folder}")


def safetensors_problem(path: Path) -> str | None:
    """What is wrong with a safetensors file (missing, truncated, a header that does not
    parse), or None for a whole one; reads the header alone."""
    if not path.is_file():
        return f"{path} is missing"
    size = path.stat().st_size
    with path.open("rb") as f:
        head = f.read(8)
        if len(head) < 8:
            return f"{path} is truncated ({size} bytes)"
        (length,) = struct.unpack("<Q", head)
        if length > size - 8:
            return f"{path} is truncated (its header says {length} bytes, the file has {size})"
        try:
            header = json.loads(f.read(length))
        except ValueError:
            return f"{path} has a header that does not parse"
    end = max((t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"), default=0)
    if 8 + length + end > size:
        return f"{path} is truncated ({size} bytes of {8 + length + end})"
    return None


def check_adapters(store: Store) -> Iterator[Finding]:
    for track in store.list_tracks():
        adapter = store.deployed_adapter(track.name)
        if adapter is None:
            yield Finding("adapters", "ok", f"track {track.name}: serves the bare base v{track.base_version}")
            continue
        folder = Path(adapter.path)
        problem = (f"{folder}/adapter_config.json is missing" if not (folder / "adapter_config.json").is_file()
                   else safetensors_problem(folder / "adapter_model.safetensors"))
        if problem is None and store.get_base(adapter.base_version) is None:
            problem = f"its base v{adapter.base_version} is not in the store"
        if problem:
            yield Finding("adapters", "fail", f"track {track.name}: deployed adapter {adapter.id} ({adapter.name}): "
                          f"{problem}", f"honed rollback --track {track.name} (to the previous version), or "
                          "restore the adapter's files")
        else:
            yield Finding("adapters", "ok", f"track {track.name}: adapter {adapter.id} ({adapter.name}) is whole")


# --- the machine ---------------------------------------------------------------------------


def check_disk(ws: Workspace) -> Iterator[Finding]:
    from honed.retention import free_bytes

    floor = ws.settings.storage.min_free_gb
    for label, path in (("workspace", ws.root), ("artefacts", ws.artifacts_dir)):
        free = free_bytes(Path(path)) / GB
        level = "fail" if free < floor else "warn" if free < max(LOW_FREE_DISK_GB, 2 * floor) else "ok"
        yield Finding("disk", level, f"{label} {path}: {size(free * GB)} free"
                      + (f", below storage.min_free_gb = {floor:g}: the daemon starts nothing new" if free < floor
                         else ""),
                      "" if level == "ok" else "'honed gc --dry-run' shows what honed can free; free space on "
                      "that disk")
        if ws.artifacts_dir == ws.root:
            break


def check_reclaimable(ws: Workspace, store: Store) -> Iterator[Finding]:
    from honed.retention import plan

    found = plan(ws, store)
    user = sum(r.bytes for r in found.kept_for_user)
    yield Finding("disk", "ok", f"'honed gc' would free {size(found.bytes)} by the [storage] policy"
                  + (f"; {size(user)} more of exports and ingested originals with --yes" if user else ""))


def _base_weight_bytes(ws: Workspace, store: Store | None) -> int | None:
    if store is None:
        return None
    folder = Path(ws.resolve_base_path(store))
    files = _weight_files(folder) if folder.is_dir() else []
    return sum(f.stat().st_size for f in files) or None


def _measured_peak(store: Store) -> tuple[float, str] | None:
    """The largest peak RSS (bytes) among the last few runs that recorded one, and the run."""
    best = None
    for run in store.list_runs(limit=5):
        rows = store.get_metrics(run.id, limit=None)
        peak = max((r.get("peak_rss_mb") or 0 for r in rows), default=0) * 2**20
        if peak and (best is None or peak > best[0]):
            best = (peak, run.id)
    return best


def check_memory(ws: Workspace, store: Store | None) -> Iterator[Finding]:
    import psutil  # type: ignore[import-untyped]

    available = psutil.virtual_memory().available
    weights = _base_weight_bytes(ws, store)
    measured = _measured_peak(store) if store is not None else None
    if measured is not None:
        need, why = measured[0], f"the peak of run {measured[1]}"
    elif weights is not None:
        need, why = weights * JOB_MEMORY_FACTOR, f"about {JOB_MEMORY_FACTOR:g}x its {size(weights)} of weights"
    else:
        yield Finding("memory", "ok", f"{size(available)} available")
        return
    level = "fail" if available < need / 2 else "warn" if available < need else "ok"
    yield Finding("memory", level, f"{size(available)} available; a job on this base needs {size(need)} ({why})",
                  "" if level == "ok" else "free memory, or lower train.batch_size / train.max_seq_len, or set "
                  "train.gradient_checkpointing = true")


def lock_file() -> Path | None:
    """constraints.txt of the source tree honed runs from, if it runs from one."""
    import honed

    candidate = Path(honed.__file__).resolve().parents[2] / "constraints.txt"
    return candidate if candidate.is_file() else None


def check_packages() -> Iterator[Finding]:
    from packaging.requirements import InvalidRequirement, Requirement

    lock = lock_file()
    if lock is None:
        yield Finding("packages", "ok", f"honed {metadata.version('honed')} (installed without its lock file: "
                      "nothing to compare)")
        return
    differ, compared = [], 0
    for line in lock.read_text().splitlines():
        text = line.split("#", 1)[0].strip()
        if not text:
            continue
        try:
            req = Requirement(text)
        except InvalidRequirement:
            continue
        pinned = next((s.version for s in req.specifier if s.operator == "=="), None)
        try:
            installed = metadata.version(req.name)
        except metadata.PackageNotFoundError:
            continue  # an extra this install did not ask for
        compared += 1
        if pinned is not None and installed.split("+")[0] != pinned.split("+")[0]:
            differ.append(f"{req.name} {installed} (lock: {pinned})")
    if differ:
        yield Finding("packages", "warn", f"{len(differ)} of {compared} installed packages differ from {lock}: "
                      + ", ".join(differ[:5]) + (" ..." if len(differ) > 5 else ""),
                      f"pip install -c {lock} -e . (results are reproduced with the locked versions)")
    else:
        yield Finding("packages", "ok", f"{compared} installed packages match {lock}")


def check_accelerator() -> Iterator[Finding]:
    from honed.telemetry.system import accelerator_stats

    gpus = accelerator_stats()
    if not gpus:
        yield Finding("accelerator", "ok", f"no GPU: training runs on the CPU ({os.cpu_count()} cores)")
        return
    for gpu in gpus:
        used, total = gpu.get("memory_used_mb"), gpu.get("memory_total_mb")
        yield Finding("accelerator", "ok", f"GPU {gpu['index']} {gpu['name']}"
                      + (f", {used:.0f} of {total:.0f} MiB in use" if used is not None and total else ""))


def check_server(settings: ServerSettings) -> Iterator[Finding]:
    from honed.server.security import ServerConfigError, server_token

    try:
        token = server_token(settings, settings.host)
    except ServerConfigError as exc:
        yield Finding("server", "fail", str(exc).split(". ")[0], f"set {settings.token_env}, or server.host = "
                      "'127.0.0.1'")
        return
    yield Finding("server", "ok", f"binds {settings.host}:{settings.port}"
                  + (f", token from {settings.token_env}" if token else ", loopback without a token"))


def as_json(findings: list[Finding]) -> dict[str, Any]:
    """The report as ``--json`` prints it."""
    return {"status": LEVELS[exit_status(findings)], "findings": [asdict(f) for f in findings]}

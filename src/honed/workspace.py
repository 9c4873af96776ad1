"""A workspace: one directory holding everything of one deployment.

``honed init DIR`` makes one: ``honed.toml`` (commented settings), ``inbox/`` (drop
JSONL here), ``datasets/`` (validated, normalised copies and their reports), the store
(``honed.db`` unless ``store.url`` points elsewhere), ``bases/`` (local base versions),
``runs/``, ``adapters/`` and ``logs/``.

With ``store.artifacts`` set, ``datasets/``, ``bases/``, ``runs/`` and ``adapters/`` live
in that directory instead (created when missing): daemons on several machines that share
one PostgreSQL store share their artifacts there. The store records absolute paths, so
the directory must be mounted at the same path on every machine. The inbox, the logs,
``STOP`` and the daemon's lock always stay in the workspace.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from honed.config import CONFIG_FILE, Settings, load_settings, render_commented_toml
from honed.models.gguf_base import SMOLLM2, is_gguf_base

if TYPE_CHECKING:
    from honed.store import Store

SUBDIRS = ("inbox", "datasets", "bases", "runs", "adapters", "logs")
ARTIFACT_SUBDIRS = ("datasets", "bases", "runs", "adapters")
DB_FILE = "honed.db"


class WorkspaceError(Exception):
    """A workspace is missing, already exists, or is malformed."""


@dataclass
class Workspace:
    """Paths and settings of one workspace."""

    root: Path
    settings: Settings

    @property
    def inbox(self) -> Path:
        return self.root / "inbox"

    @property
    def artifacts_dir(self) -> Path:
        """Where datasets, bases, runs and adapters live: ``store.artifacts`` (a relative
        path is taken from the workspace), or the workspace itself."""
        artifacts = self.settings.store.artifacts
        return (self.root / Path(artifacts).expanduser()).resolve() if artifacts else self.root

    @property
    def datasets_dir(self) -> Path:
        return self.artifacts_dir / "datasets"

    @property
    def local_datasets_dir(self) -> Path:
        """The workspace's own ``datasets/``, for files on their way in from the inbox
        (``received/``, idle data being written): on the inbox's filesystem, so moving
        them there and back is one rename even when the artifacts are on a shared mount,
        and never seen by the daemons of other workspaces."""
        return self.root / "datasets"

    @property
    def bases_dir(self) -> Path:
        return self.artifacts_dir / "bases"

    @property
    def runs_dir(self) -> Path:
        return self.artifacts_dir / "runs"

    @property
    def adapters_dir(self) -> Path:
        return self.artifacts_dir / "adapters"

    def ensure_artifact_dirs(self) -> None:
        """Create the artifact directories where they are missing (a shared directory
        configured after init starts empty). WorkspaceError when that is impossible."""
        for sub in ARTIFACT_SUBDIRS:
            try:
                (self.artifacts_dir / sub).mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise WorkspaceError(f"store.artifacts = {self.settings.store.artifacts!r}: cannot create "
                                     f"{self.artifacts_dir / sub}: {exc}") from exc

    @property
    def logs_dir(self) -> Path:
        return self.root / "logs"

    @property
    def stop_file(self) -> Path:
        """The emergency brake: training halts at the next step while this file exists."""
        return self.root / "STOP"

    @property
    def store_url(self) -> str:
        return self.settings.store.url or f"sqlite:///{(self.root / DB_FILE).resolve()}"

    def open_store(self, busy_timeout_s: float = 30.0) -> Store:
        """Open (and migrate) this workspace's store; ``busy_timeout_s`` is how long a
        SQLite writer waits for another one."""
        from honed.store import Store

        return Store.open(self.store_url, busy_timeout_s=busy_timeout_s)

    def resolve_base_path(self, store: Store, version: int | None = None) -> str:
        """The directory or hub id that loads base ``version`` (default: latest)."""
        base = store.get_base(version)
        if base is None:
            raise WorkspaceError(f"{self.root}: no base recorded; was it made by 'honed init'?")
        # The workspace's own bases/ too: init copied the tiny base there if store.artifacts came later.
        for bases in (self.bases_dir, self.root / "bases"):
            local = bases / f"v{base.version}"
            if local.is_dir():
                return str(local)
        converted = base.lineage.get("converted")  # a GGUF base: its cached conversion
        if converted and Path(converted).is_dir():
            return converted
        return base.source

    def base_cache_file(self, version: int, name: str) -> Path:
        """Where honed keeps something it worked out once for base ``version`` (its
        general control set, its everyday answers): ``bases/vN/NAME`` when the workspace
        holds the base, else ``bases/vN.NAME`` beside where it would be, so nothing is
        written into a base folder of the user's."""
        folder = self.bases_dir / f"v{version}"
        return folder / name if folder.is_dir() else folder.parent / f"{folder.name}.{name}"


def _converted_gguf(base: str) -> tuple[Path, dict]:
    """The cached conversion of the GGUF base ``base`` names, and its lineage."""
    from honed.models.gguf_base import GGUFBaseError, base_lineage, convert_gguf, gguf_source

    try:
        source = gguf_source(base)
        converted = convert_gguf(source)
    except GGUFBaseError as exc:
        raise WorkspaceError(f"--base {base}: {exc}") from exc
    return converted, base_lineage(converted, source)


def looks_local(base: str) -> bool:
    """Whether ``base`` names a directory rather than a hub id: it exists on disk, starts
    like a path (``/``, ``./``, ``../``, ``~``), or has more slashes than ``org/name``."""
    return (base.startswith(("/", "./", "../", "~")) or base in (".", "..") or base.count("/") > 1
            or Path(base).expanduser().exists())


def find_workspace(start: Path | None = None) -> Path:
    """The workspace to use: ``HONED_WORKSPACE``, else the nearest directory upwards
    from ``start`` (default: the current directory) that holds ``honed.toml``."""
    env = os.environ.get("HONED_WORKSPACE")
    if env:
        root = Path(env).expanduser()
        if not (root / CONFIG_FILE).is_file():
            raise WorkspaceError(f"HONED_WORKSPACE={env}: no {CONFIG_FILE} there")
        return root.resolve()
    here = (start or Path.cwd()).resolve()
    for candidate in (here, *here.parents):
        if (candidate / CONFIG_FILE).is_file():
            return candidate
    raise WorkspaceError(
        f"no honed workspace at {here} or above it (looked for {CONFIG_FILE}); "
        "make one with 'honed init DIR' or pass --workspace"
    )


def open_workspace(root: Path | None = None, overrides: dict | None = None) -> Workspace:
    """Load a workspace's settings (honed.toml + HONED_* env + overrides)."""
    root = find_workspace(root) if root is None else Path(root).resolve()
    if not (root / CONFIG_FILE).is_file():
        raise WorkspaceError(f"{root}: not a honed workspace (no {CONFIG_FILE}); run 'honed init {root}'")
    workspace = Workspace(root=root, settings=load_settings(root, overrides))
    if workspace.settings.store.artifacts:
        workspace.ensure_artifact_dirs()
    return workspace


# Files this large (the weights) are hard-linked into a workspace rather than copied:
# nothing rewrites them in place. Smaller ones (config, tokenizer) are copied, so editing
# one workspace's config.json never changes the cache or another workspace.
LINK_AT_BYTES = 16 << 20


def _link_or_copy(src: str, dst: str) -> None:
    """Hard-link a large ``src`` to ``dst`` (bases are hundreds of MB); copy small files,
    and large ones where a link cannot be made (another filesystem), fsynced."""
    if os.path.getsize(src) >= LINK_AT_BYTES:
        try:
            os.link(src, dst)
            return
        except OSError:
            pass
    from honed.atomic_files import fsync_path

    shutil.copy2(src, dst)
    fsync_path(Path(dst))


def place_base(source: Path, target: Path) -> Path:
    """Put the model directory ``source`` at ``target`` (a workspace's ``bases/vN``) whole:
    linked or copied, durably (:func:`~honed.atomic_files.atomic_directory`). Another
    process that placed ``target`` first wins; ours is removed. Returns ``target``."""
    from honed.atomic_files import atomic_directory

    try:
        with atomic_directory(target, replace=False) as staging:
            shutil.copytree(source, staging, copy_function=_link_or_copy, dirs_exist_ok=True)
    except FileExistsError:
        if not target.is_dir():
            raise  # the other one got there first, or something else is in the way
    return target


def init_workspace(root: Path, base: str = "tiny", store_url: str = "", artifacts: str = "") -> Workspace:
    """Create a workspace at ``root`` on ``base`` ('tiny', 'smollm2', a GGUF file, a hub
    id or a local directory), with its store at ``store_url`` and its artifacts in
    ``artifacts`` (defaults: in the workspace).

    Refuses to touch a directory that already holds a workspace. The tiny base is built,
    a GGUF base converted (both cached, see :mod:`honed.models.gguf_base`), and placed in
    ``bases/v0`` so the workspace stands alone (a shared artifact directory that has a
    ``bases/v0`` already keeps it). A GGUF base's lineage (file, sha256, conversion) is
    recorded with base v0.
    """
    root = Path(root).expanduser().resolve()
    if (root / CONFIG_FILE).exists():
        raise WorkspaceError(f"{root} already holds a honed workspace ({CONFIG_FILE} exists); "
                             "honed init never overwrites one")
    source = base
    local_base = Path(base).expanduser()
    prepared, lineage = None, {}
    if is_gguf_base(base):
        prepared, lineage = _converted_gguf(base)
        source = base if base == SMOLLM2 else lineage["gguf"]
    elif base != "tiny" and not local_base.exists() and looks_local(base):
        raise WorkspaceError(f"--base {base}: no such directory ({local_base.absolute()}); give a directory "
                             "that holds a Hugging Face model, or a hub id such as Qwen/Qwen3-0.6B")
    elif base != "tiny" and local_base.exists():
        if not (local_base / "config.json").is_file():
            raise WorkspaceError(f"--base {base}: a directory must hold a Hugging Face model "
                                 "(config.json not found)")
        source = str(local_base.resolve())

    settings = Settings(base=source)
    if store_url:
        settings.store.url = store_url
    if artifacts:
        settings.store.artifacts = artifacts
    root.mkdir(parents=True, exist_ok=True)
    for sub in SUBDIRS:
        (root / sub).mkdir(exist_ok=True)
    workspace = Workspace(root=root, settings=settings)
    workspace.ensure_artifact_dirs()

    if base == "tiny" and not (workspace.bases_dir / "v0").is_dir():
        from honed.models.tiny import tiny_base

        prepared = tiny_base()
    if prepared is not None and not (workspace.bases_dir / "v0").is_dir():
        place_base(prepared, workspace.bases_dir / "v0")

    store = workspace.open_store()
    try:
        if store.get_base(0) is None:
            version = store.add_base(source, description="base as configured at init", lineage=lineage)
            store.ensure_track(settings.track, version)
    finally:
        store.close()
    # Written last: a workspace without honed.toml is not a workspace, so a crash above
    # leaves a directory that 'honed init' can simply be run on again.
    from honed.atomic_files import write_bytes_atomically

    # A store password written here is for this user's eyes alone.
    secret = bool(store_url) and store_password(store_url) is not None
    write_bytes_atomically(root / CONFIG_FILE, render_commented_toml(settings).encode(),
                           mode=0o600 if secret else 0o666)
    return workspace


def store_password(url: str) -> str | None:
    """The password in a store URL, if it has one."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        return make_url(url).password
    except ArgumentError:
        return None

"""The one door for artefact writes: a reader never sees half of a file or a directory,
and a crash at any instant loses neither the new version nor the previous one.

- :func:`atomic_file` / :func:`write_bytes_atomically`: a file (temp name, fsync,
  rename, fsync parent).
- :func:`atomic_directory`: a directory (an adapter, a merged base, a checkpoint, a
  converted model): filled in a hidden staging directory beside it, every file fsynced,
  then renamed into place and the parent fsynced. A previous version is moved aside
  just before the rename and removed only once the new one is durable; a crash between
  the two renames leaves it as ``.replaced-NAME-<hex>``: readers find it through
  :func:`current_directory`, and :func:`recover_directory` (run by every writer before
  it writes) puts it back. Hidden leftovers are named ``.staging-NAME-<hex>`` and ``.replaced-NAME-<hex>``.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import re
import secrets
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

log = logging.getLogger(__name__)

# The phases of atomic_directory, in order; the two "old_*" ones only when a previous
# version is replaced. Callers may report phases of their own while they fill the staging
# directory (the checkpoints do).
DIRECTORY_PHASES = ("staging_created", "staging_synced", "old_moved_aside", "renamed", "parent_synced",
                    "old_removed")

# Test seam: the kill tests set this to a function that SIGKILLs the process at one phase.
_phase_hook: Callable[[str], None] | None = None


class DiskFull(OSError):
    """A write that met a full disk (or quota), with the path it was writing."""

    def __init__(self, path: Path | str, cause: BaseException) -> None:
        reason = getattr(cause, "strerror", None) or str(cause).splitlines()[0]
        super().__init__(errno.ENOSPC, f"disk full writing {path}: {reason}")
        self.path = str(path)

    def __str__(self) -> str:
        return str(self.strerror)


DISK_FULL_WORDS = ("No space left on device", "Disk quota exceeded", "file write failed")


def is_disk_full(exc: BaseException) -> bool:
    """Whether ``exc`` is a write refused for lack of space: ENOSPC or EDQUOT, also as the
    libraries that write artefacts report them (safetensors' I/O error, torch's
    "file write failed")."""
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    return any(words in str(exc) for words in DISK_FULL_WORDS)


@contextmanager
def writing(path: Path | str) -> Iterator[None]:
    """Turn a disk-full error inside the block into :class:`DiskFull` naming ``path``."""
    try:
        yield
    except DiskFull:
        raise
    except Exception as exc:
        if is_disk_full(exc):
            raise DiskFull(path, exc) from exc
        raise


def fsync_path(path: Path) -> None:
    """fsync a file's data, or (for a directory) the renames made inside it."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: Path) -> None:
    """Make a rename inside ``path`` durable."""
    fsync_path(path)


def report_phase(phase: str) -> None:
    """Tell the kill tests' hook (if any) that a write reached ``phase``."""
    hook = _phase_hook
    if hook is not None:
        hook(phase)


def hidden_name(kind: str, name: str) -> str:
    """``.KIND-NAME-<hex>``: a staging or moved-aside sibling of ``NAME``."""
    return f".{kind}-{name}-{secrets.token_hex(4)}"


def leftovers(final: Path, kind: str) -> list[Path]:
    """The hidden ``kind`` siblings (``staging`` or ``replaced``) of ``final``, oldest first."""
    pattern = re.compile(rf"\.{kind}-{re.escape(final.name)}-[0-9a-f]+")
    if not final.parent.is_dir():
        return []
    found = [p for p in final.parent.iterdir() if pattern.fullmatch(p.name)]
    return sorted(found, key=lambda p: p.lstat().st_mtime)


def current_directory(final: Path) -> Path:
    """Where the latest complete version of ``final`` is: ``final`` itself, or (while a
    replacing write is between its two renames, or was killed there) its moved-aside
    copy. Readers load through this; it changes nothing on disk."""
    final = Path(final)
    if os.path.lexists(final):
        return final
    asides = leftovers(final, "replaced")
    return asides[-1] if asides else final


def recover_directory(final: Path) -> None:
    """Undo what a killed :func:`atomic_directory` left: put the previous version back
    when the new one never arrived, and remove staging and moved-aside copies. Run it only
    while no other process writes ``final``."""
    final = Path(final)
    asides = leftovers(final, "replaced")
    if asides and not os.path.lexists(final):
        os.rename(asides.pop(), final)  # the newest moved-aside copy is the latest version
        log.info("restored %s from its moved-aside copy (a write was interrupted)", final)
    for path in leftovers(final, "staging") + asides:
        shutil.rmtree(path, ignore_errors=True)
    if asides or os.path.lexists(final):
        fsync_dir(final.parent)


@contextmanager
def atomic_directory(final: Path, *, replace: bool = True) -> Iterator[Path]:
    """Yield an empty staging directory; when the block ends without an error, make its
    contents ``final`` durably and in one step (see the module's docstring).

    An existing ``final`` is replaced when ``replace`` is true, and a FileExistsError
    otherwise (checked before the block and by the rename: honed never overwrites a base). On an
    error inside the block the staging directory is removed and ``final`` is untouched."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    if not replace and os.path.lexists(final):
        raise FileExistsError(f"{final} already exists")
    staging = final.parent / hidden_name("staging", final.name)
    staging.mkdir()
    report_phase("staging_created")
    try:
        yield staging
        fsync_tree(staging)
        report_phase("staging_synced")
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    install_directory(staging, final, replace=replace)


def install_directory(staging: Path, final: Path, *, replace: bool = True) -> None:
    """Rename a durable ``staging`` to ``final``, replacing a previous version that stays
    on disk (moved aside) until the new one is in place and durable; without ``replace``
    an existing non-empty ``final`` (another writer was first) raises FileExistsError."""
    # rename() cannot replace a non-empty directory, so an old one goes aside first; in the
    # window before the next rename it is the only copy, and recover_directory finds it.
    aside: Path | None = None
    try:
        if replace and os.path.lexists(final):
            aside = final.parent / hidden_name("replaced", final.name)
            os.rename(final, aside)
            report_phase("old_moved_aside")
        try:
            os.rename(staging, final)
        except OSError as exc:
            if os.path.isdir(final) and not replace:
                raise FileExistsError(f"{final} already exists") from exc
            raise
    except BaseException:
        if aside is not None and not os.path.lexists(final):
            os.rename(aside, final)
        shutil.rmtree(staging, ignore_errors=True)
        raise
    report_phase("renamed")
    fsync_dir(final.parent)
    report_phase("parent_synced")
    if aside is not None:
        try:
            shutil.rmtree(aside)
        except OSError as exc:
            # The new version is durable; failing now would lose the caller's next step.
            log.warning("could not remove the replaced %s (%s); the next write will", aside, exc)
        report_phase("old_removed")


def fsync_tree(root: Path) -> None:
    """fsync every file and directory under ``root`` (a model directory staged before its
    rename: save_pretrained does not fsync what it writes)."""
    for folder, _, files in os.walk(root):
        for name in files:
            fsync_path(Path(folder) / name)
        fsync_path(Path(folder))


@contextmanager
def atomic_file(path: Path, mode: int = 0o666) -> Iterator[BinaryIO]:
    """Yield a binary file to write; when the block ends without an error it replaces
    ``path`` in one step, durably. On an error nothing is left behind. ``mode`` (less the
    umask) is the file's from its first byte: 0o600 keeps a secret from other users."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.unlink(missing_ok=True)  # a killed writer's: reopened, it would keep its old mode
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
        with open(fd, "wb") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)  # a failed write leaves nothing behind
        raise
    fsync_dir(path.parent)


def write_bytes_atomically(path: Path, data: bytes, mode: int = 0o666) -> None:
    """Replace ``path`` with ``data`` in one step (``mode``: see :func:`atomic_file`)."""
    with atomic_file(path, mode) as fh:
        fh.write(data)


def write_json_atomically(path: Path, obj: object) -> None:
    """Replace ``path`` with ``obj`` as indented JSON."""
    write_bytes_atomically(path, (json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n").encode())

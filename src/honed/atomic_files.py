"""Write small files so that a reader never sees half of one: temp name, fsync, rename."""

from __future__ import annotations

import json
import os
from pathlib import Path


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


def fsync_tree(root: Path) -> None:
    """fsync every file and directory under ``root`` (a model directory staged before its
    rename: save_pretrained does not fsync what it writes)."""
    for folder, _, files in os.walk(root):
        for name in files:
            fsync_path(Path(folder) / name)
        fsync_path(Path(folder))


def write_bytes_atomically(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` in one step."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)  # a failed write leaves nothing behind
        raise
    fsync_dir(path.parent)


def write_json_atomically(path: Path, obj) -> None:
    """Replace ``path`` with ``obj`` as indented JSON."""
    write_bytes_atomically(path, (json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n").encode())

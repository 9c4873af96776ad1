"""Fault injection for the reliability tests: SIGKILL this process at a named point, as a
power cut or the kernel's OOM killer would.

``HONED_FAULT=POINT`` (or ``POINT@N``: the N-th time this process reaches it) together
with ``HONED_FAULT_ONCE=FILE``: the first process to reach the point creates ``FILE`` and
kills itself with SIGKILL; every later one finds ``FILE`` and goes on, so the attempt
that follows a kill runs clean. Without ``HONED_FAULT`` nothing happens: the variable is
read once, at import, and :func:`point` returns at once.

The points, in the order one job reaches them:

- ``step.start``, ``step.backward`` (gradients accumulated, the update not applied),
  ``step.update`` (applied, not logged), ``step.logged`` (logged, before any checkpoint);
- ``checkpoint.PHASE`` and ``adapter.PHASE``: the phases of an atomic directory write
  (:data:`honed.training.checkpoints.PHASES`, :data:`honed.atomic_files.DIRECTORY_PHASES`);
- ``eval.registered`` (the candidate recorded, not scored), ``eval.scored`` (scored, the
  verdict not recorded), ``eval.recorded`` (recorded, the attempt's outcome not written).
"""

from __future__ import annotations

import os
import signal
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

_SPEC = os.environ.get("HONED_FAULT", "")
_ONCE = os.environ.get("HONED_FAULT_ONCE", "")
_target, _, _nth = _SPEC.partition("@")
_reached: Counter[str] = Counter()
_scope: list[str] = []


def point(name: str) -> None:
    """Reached ``name``: SIGKILL this process if it is the armed point (see the module)."""
    if not _target or name != _target:
        return
    _reached[name] += 1
    if _reached[name] != (int(_nth) if _nth else 1):
        return
    if _ONCE:
        try:
            Path(_ONCE).touch(exist_ok=False)
        except FileExistsError:
            return  # an earlier attempt was killed here already
    os.kill(os.getpid(), signal.SIGKILL)


@contextmanager
def scope(name: str) -> Iterator[None]:
    """Name the atomic writes inside the block: their phases are ``NAME.PHASE`` points."""
    if not _target:
        yield
        return
    from honed import atomic_files

    _scope.append(name)
    previous, atomic_files._phase_hook = atomic_files._phase_hook, lambda phase: point(f"{_scope[-1]}.{phase}")
    try:
        yield
    finally:
        _scope.pop()
        atomic_files._phase_hook = previous

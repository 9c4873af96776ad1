"""The trainer process: one attempt at one job, in a child of the daemon.

``python -m honed.daemon.trainer_process --workspace WS --parent PID --job N --fence F``
runs an attempt at once; with ``--warm`` instead of ``--job`` it imports torch and the
training code first, then waits for a line ``job N fence=F LOGPATH`` on stdin (the daemon
keeps one such process ready so that a job starts training without the import delay; end
of input means "not needed", and it exits).

``F`` is the fence of the daemon's claim on the job (:mod:`honed.daemon.fencing`).
The attempt itself, and the outcome it records for the daemon, are
:mod:`honed.daemon.attempt`; this module keeps what is the process's own: its
arguments, the warm spare's wait, its priority and its output.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from pathlib import Path

from honed.daemon.attempt import run_attempt

log = logging.getLogger("honed.trainer")


def warm_up(root: Path) -> None:
    """Do now what every attempt starts with: import torch, transformers, peft and the
    trainer, and load the default track's base (tokenizer and weights). A job on another
    base simply loads its own. On a device the server must give up first
    (``server.yield_devices``) the weights wait in CPU memory: a spare claims nothing,
    and the job moves them over once it has its claim."""
    import honed.evaluation.evaluate  # noqa: F401
    import honed.training.recipe  # noqa: F401
    from honed.store import StoreError
    from honed.training.model_loading import pick_device, preload
    from honed.workspace import WorkspaceError, open_workspace

    try:
        workspace = open_workspace(root)
        with workspace.open_store() as store:
            track = store.get_track(workspace.settings.track)
            base = workspace.resolve_base_path(store, track.base_version if track else None)
        device = pick_device()
        if device.type in workspace.settings.server.yield_devices:
            import torch

            device = torch.device("cpu")
        if workspace.settings.train.quantization == "none":  # a 4-bit load has no use for these weights
            preload(base, device)
        import peft  # noqa: F401

        log.info("warm trainer ready: %s preloaded", base)
    except (StoreError, WorkspaceError, OSError, ValueError) as exc:
        log.warning("warm-up could not preload the base (%s); the job will load it", exc)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m honed.daemon.trainer_process")
    parser.add_argument("--workspace", required=True, type=Path)
    parser.add_argument("--parent", type=int, default=None, help="pid of the supervising daemon")
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--job", type=int)
    group.add_argument("--warm", action="store_true", help="import first, then read 'job N' from stdin")
    parser.add_argument("--fence", type=int, default=None, help="the fence of the daemon's claim on the job")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s trainer[%(process)d] %(levelname)s %(name)s: %(message)s")
    from honed.training.model_loading import quiet_libraries

    quiet_libraries()
    logging.getLogger("alembic").setLevel(logging.WARNING)
    _lower_priority(args.workspace)
    job_id, fence = args.job, args.fence
    if args.warm:
        # While waiting, a SIGTERM from the daemon simply ends the spare.
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
        warm_up(args.workspace)
        line = sys.stdin.readline()
        if not line.startswith("job "):
            return 0
        job_id, fence, log_path = parse_job_line(line)
        if log_path:
            _redirect_output(Path(log_path))
    return run_attempt(args.workspace, job_id, args.parent, fence)


def parse_job_line(line: str) -> tuple[int, int | None, str | None]:
    """``job N [fence=F] [LOGPATH]`` (what the daemon writes to a warm trainer) as
    ``(N, F, LOGPATH)``; a missing fence or log path is None."""
    words = line.strip().split(maxsplit=2)
    rest = words[2] if len(words) > 2 else ""
    fence = None
    if rest.startswith("fence="):
        token, _, rest = rest.partition(" ")
        fence = int(token.removeprefix("fence="))
    return int(words[1]), fence, rest.strip() or None


def _lower_priority(root: Path) -> None:
    """Run at ``daemon.trainer_nice`` (on a busy machine, interactive work answers first),
    within ``daemon.trainer_memory_mb`` of data memory."""
    import resource

    from honed.config import SettingsError, load_settings

    try:
        settings = load_settings(root).daemon
    except SettingsError:
        return  # the attempt itself reports the bad setting
    if settings.trainer_nice:
        os.nice(settings.trainer_nice)
    if settings.trainer_memory_mb:
        limit = settings.trainer_memory_mb * 2**20
        resource.setrlimit(resource.RLIMIT_DATA, (limit, limit))


def _redirect_output(path: Path) -> None:
    """Send this process's stdout and stderr (fds 1 and 2) to the job's log."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    sys.stdout.flush()
    sys.stderr.flush()
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)


if __name__ == "__main__":
    code = main()
    # Everything is written and closed by now; skip the interpreter's teardown of torch and
    # transformers (about a second) so the daemon can move on.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)

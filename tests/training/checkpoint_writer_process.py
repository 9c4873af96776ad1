"""Child process for the checkpoint kill tests: writes checkpoints, SIGKILLs itself on cue.

Usage: python checkpoint_writer_process.py DIR STEP GENERATION (--kill-at PHASE | --kill-mid-file)

Writes step 1 (generation 0) completely, then writes STEP with GENERATION's content and
kills itself with SIGKILL at PHASE, or halfway through the first file. The test imports
``file_contents`` to know what each (step, generation) must contain byte for byte.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
from pathlib import Path

from honed import atomic_files
from honed.training import checkpoints

FILE_SIZES = {"adapter_model.bin": 300_000, "optimizer/state.bin": 200_000}
CHUNK = 40_000


def file_contents(step: int, generation: int) -> dict[str, bytes]:
    """The files checkpoint (step, generation) holds: random bytes from a fixed seed."""
    rng = random.Random(f"step={step} generation={generation}")
    return {name: rng.randbytes(size) for name, size in FILE_SIZES.items()}


def meta_for(step: int, generation: int) -> dict:
    return {"generation": generation, "data_position": step * 8}


def kill_self() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def make_write_files(step: int, generation: int, kill_mid_file: bool = False):
    def write_files(directory: Path) -> None:
        for name, data in file_contents(step, generation).items():
            target = directory / name
            target.parent.mkdir(parents=True, exist_ok=True)
            with open(target, "wb") as f:
                for start in range(0, len(data), CHUNK):
                    f.write(data[start : start + CHUNK])
                    f.flush()
                    if kill_mid_file and start + CHUNK >= len(data) // 2:
                        kill_self()

    return write_files


def write(directory: Path, step: int, generation: int, kill_mid_file: bool = False):
    return checkpoints.write_checkpoint_atomically(
        directory,
        step,
        make_write_files(step, generation, kill_mid_file),
        meta_for(step, generation),
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("directory", type=Path)
    parser.add_argument("step", type=int)
    parser.add_argument("generation", type=int)
    cue = parser.add_mutually_exclusive_group(required=True)
    cue.add_argument("--kill-at", choices=checkpoints.PHASES)
    cue.add_argument("--kill-mid-file", action="store_true")
    args = parser.parse_args()

    write(args.directory, 1, 0)
    if args.kill_at:
        atomic_files._phase_hook = lambda phase: kill_self() if phase == args.kill_at else None
    write(args.directory, args.step, args.generation, kill_mid_file=args.kill_mid_file)


if __name__ == "__main__":
    main()

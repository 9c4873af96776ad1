"""How many torch threads the server decodes with: its usual count, or fewer while a
trainer on this machine trains on the same CPU.

Two processes that each run a thread per core do not share the cores, they fight over
them: torch's threads wait for each other at every parallel region, and a preempted one
holds up the rest. On 2 cores with SmolLM2 (``benchmarks/cpu_sharing.py``), a trainer
and a busy server with 2 threads each trained at 0.057 steps/s and decoded 2.95 tokens/s;
with the server at 1 thread, 0.077 and 7.64 (the trainer alone: 0.173 steps/s, the
server alone: 10.55 tokens/s). So while a
trainer's claim on the CPU lives (see :mod:`honed.daemon.device_claims`), the server
decodes with ``server.threads_while_training`` threads.

torch's thread count is per thread once a thread has used it (OpenMP keeps it per
thread; a new thread starts from the count last set anywhere), so the count is not set
once for the process: each thread that decodes calls :func:`apply` before its forward
passes, which sets it when it differs. The state is the process's, as torch's count is.
"""

from __future__ import annotations

import threading

_lock = threading.Lock()
_usual: int | None = None  # the process's count before any sharing; None until sharing is set up
_wanted: int | None = None  # while a trainer shares the CPU: the server's count; None otherwise


def set_up() -> None:
    """Remember the process's usual count (called when a server on the CPU starts to
    watch for trainers, before any change)."""
    global _usual
    import torch

    with _lock:
        if _usual is None:
            _usual = torch.get_num_threads()


def share(threads: int | None) -> None:
    """Decode with ``threads`` threads from the next forward pass on (None: the usual count)."""
    global _wanted
    with _lock:
        _wanted = threads


def usual() -> int | None:
    """The process's count before any sharing (None: sharing never set up)."""
    with _lock:
        return _usual


def wanted() -> int | None:
    """The count the server's decoding uses now (None: sharing never set up)."""
    with _lock:
        return _wanted or _usual


def apply() -> None:
    """Set the calling thread's torch thread count to :func:`wanted` where it differs."""
    want = wanted()
    if want is None:
        return
    import torch

    if torch.get_num_threads() != want:
        torch.set_num_threads(want)


def reset() -> None:
    """Back to the usual count and no sharing (the server stops)."""
    global _usual, _wanted
    with _lock:
        usual, _usual, _wanted = _usual, None, None
    if usual is not None:
        import torch

        torch.set_num_threads(usual)

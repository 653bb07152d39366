"""How many threads the compiled kernels use: what the machine has free right now, not what it has.

A parallel region waits for its slowest thread. With every core busy (a data loader, another job, CI), one
of our threads is descheduled in each of the dozens of parallel regions of a mean-field call (numba's and
PyTorch's own, whose idle threads also spin and take the CPU from each other) and the whole call runs several
times slower than with a single thread (measured in ``benchmarks/bench_engine.py``, "contended"). So for
each call the number of threads is chosen from the instantaneous count of runnable tasks that the kernel
reports in ``/proc/loadavg`` (our own threads excluded), capped by numba's and PyTorch's settings
(``NUMBA_NUM_THREADS`` / :func:`numba.set_num_threads`, :func:`torch.set_num_threads`) and the CPUs this
process may run on. Where that information does not exist (not Linux) the settings are used as they are.
"""

from __future__ import annotations

import contextlib
import functools
import os
import threading
import time
from typing import Callable, Iterator, Optional, TypeVar

import torch

__all__ = ["adaptive_threads", "free_cpus", "limit_threads"]


def _running_elsewhere() -> Optional[int]:
    """Runnable tasks on the machine that are not threads of this process, or None where unknown."""
    try:
        with open("/proc/loadavg") as f:
            running = int(f.read().split()[3].split("/")[0])
        own = 0
        for tid in os.listdir("/proc/self/task"):
            try:
                with open(f"/proc/self/task/{tid}/stat") as f:
                    stat = f.read()
            except OSError:
                continue
            if stat[stat.rindex(")") + 2] == "R":
                own += 1
    except (OSError, ValueError, IndexError):
        return None
    return max(0, running - own)


def free_cpus(samples: int = 3) -> int:
    """CPUs this process may use that no other runnable task is using now (at least 1).

    The fewest other runnable tasks seen in ``samples`` looks half a millisecond apart: a CPU-bound competitor
    is runnable in every look, while kernel threads and short-lived tasks, which also show in the count, are
    not (taking the most instead made a quiet machine look busy in about half the calls).
    """
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    if cpus == 1:
        return 1
    others = None
    for i in range(samples):
        seen = _running_elsewhere()
        if seen is None:
            return cpus
        others = seen if others is None else min(others, seen)
        if others == 0:
            break
        if i + 1 < samples:
            time.sleep(0.0005)
    return max(1, cpus - (others or 0))


_state = threading.local()
_torch_lock = threading.Lock()
_torch_users = 0
_torch_original = 0


@contextlib.contextmanager
def limit_threads() -> Iterator[int]:
    """Run the block with numba's and PyTorch's thread counts lowered to the free CPUs, then restore them.

    numba's setting is thread-local. PyTorch's is process-wide: while any block runs it is only ever lowered,
    and the last block to finish restores the original value (so concurrent calls cannot leave it changed).
    Nested blocks keep the outer decision.
    """
    global _torch_users, _torch_original
    if getattr(_state, "active", False):
        yield -1
        return
    import numba

    numba_before = numba.get_num_threads()
    free = free_cpus()
    n_numba = max(1, min(numba_before, free))
    _state.active = True
    with _torch_lock:
        if _torch_users == 0:
            _torch_original = torch.get_num_threads()
        _torch_users += 1
        if free < torch.get_num_threads():
            torch.set_num_threads(max(1, free))
    try:
        if n_numba != numba_before:
            numba.set_num_threads(n_numba)
        yield n_numba
    finally:
        if n_numba != numba_before:
            numba.set_num_threads(numba_before)
        with _torch_lock:
            _torch_users -= 1
            if _torch_users == 0 and torch.get_num_threads() != _torch_original:
                torch.set_num_threads(_torch_original)
        _state.active = False


F = TypeVar("F", bound=Callable)


def adaptive_threads(fn: F) -> F:
    """Decorate a public entry point so that its whole call runs under :func:`limit_threads`."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        if torch.compiler.is_compiling():  # the compiled graph has its own threads; nothing to trace here
            return fn(*args, **kwargs)
        with limit_threads():
            return fn(*args, **kwargs)

    return wrapper  # type: ignore[return-value]

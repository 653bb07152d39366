"""How many threads the compiled kernels use: what the machine has free right now, not what it has.

A parallel region waits for its slowest thread. With every core busy (a data loader, another job, CI), one
of our threads is descheduled in each of the dozens of parallel regions of a mean-field call and the whole
call runs several times slower than with a single thread (measured in ``benchmarks/bench_refine.py``,
"contended"). So before each call the number of threads is chosen from the instantaneous count of runnable
tasks that the kernel reports in ``/proc/loadavg`` (our own threads excluded), capped by numba's setting
(``NUMBA_NUM_THREADS`` / :func:`numba.set_num_threads`) and the CPUs this process may run on. Where that
information does not exist (not Linux) numba's setting is used as it is.
"""

from __future__ import annotations

import contextlib
import os
from typing import Iterator, Optional

__all__ = ["free_cpus", "limit_threads"]


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


def free_cpus() -> int:
    """CPUs this process may use that no other runnable task is using now (at least 1)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    others = _running_elsewhere()
    if others is None:
        return cpus
    return max(1, cpus - others)


@contextlib.contextmanager
def limit_threads() -> Iterator[int]:
    """Run the block with numba's thread count lowered to the free CPUs (numba's setting is thread-local)."""
    import numba

    before = numba.get_num_threads()
    n = max(1, min(before, free_cpus()))
    if n == before:
        yield n
        return
    numba.set_num_threads(n)
    try:
        yield n
    finally:
        numba.set_num_threads(before)

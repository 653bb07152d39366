"""Shared benchmark helpers: timing with warm-up and medians, peak memory in a child process, metadata."""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time
from typing import Callable, Optional

import numpy as np


def time_it(fn: Callable[[], object], *, warmup: int = 1, repeats: int = 5) -> dict:
    """Median and spread (min, max, interquartile range) of ``repeats`` timed calls after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    q1, q3 = np.percentile(times, [25, 75])
    return {
        "median": statistics.median(times),
        "min": min(times),
        "max": max(times),
        "iqr": float(q3 - q1),
        "repeats": repeats,
    }


def paired_ratio(fn: Callable[[], object], base: Callable[[], object], *, warmup: int = 1, repeats: int = 9) -> dict:
    """Time ``fn`` and ``base`` in turn, call by call, and summarise the per-pair ratios ``fn / base``.

    On a machine whose speed drifts from minute to minute (a shared VM), two medians taken one after the
    other can differ by more than the effect measured; the ratio of two calls made back to back cancels most
    of the drift. The order inside each pair alternates, so neither side always runs second (warm caches).
    Returns the medians of both, the median ratio and its interquartile range.
    """
    return paired_ratios([(fn, base)], warmup=warmup, repeats=repeats)[0]


def paired_ratios(pairs: list, *, warmup: int = 1, repeats: int = 9) -> list:
    """:func:`paired_ratio` for several ``(fn, base)`` pairs timed in the same moments: each repeat times every
    pair back to back, so the pairs see the same drift of the machine (a control beside the measurement).
    Returns one summary per pair, in order.
    """
    for _ in range(warmup):
        for fn, base in pairs:
            base()
            fn()
    got: list = [([], [], []) for _ in pairs]
    for i in range(repeats):
        for (fn, base), (ours, theirs, ratios) in zip(pairs, got):
            pair = {}
            for name, f in (("fn", fn), ("base", base)) if i % 2 == 0 else (("base", base), ("fn", fn)):
                t = time.perf_counter()
                f()
                pair[name] = time.perf_counter() - t
            ours.append(pair["fn"])
            theirs.append(pair["base"])
            ratios.append(pair["fn"] / pair["base"])
    out = []
    for ours, theirs, ratios in got:
        q1, q3 = np.percentile(ratios, [25, 75])
        out.append(
            {
                "median": statistics.median(ours),
                "base_median": statistics.median(theirs),
                "ratio": statistics.median(ratios),
                "ratio_q1": float(q1),
                "ratio_q3": float(q3),
                "repeats": repeats,
            }
        )
    return out


def _status(field: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(field)


def peak_memory(fn: Callable[[], object], warmup: Optional[Callable[[], object]] = None) -> int:
    """Bytes of resident memory the call adds at its peak (Linux: resets the high-water mark first).

    ``warmup`` (default: ``fn`` itself) runs first, to load compiled kernels. Warming up with the same call
    would leave its large buffers in the allocator's pools and hide them from the measurement, so callers
    pass the same work on a tiny input instead.
    """
    (warmup or fn)()
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")  # reset VmHWM to the current RSS
    before = _status("VmRSS")
    fn()
    return _status("VmHWM") - before


def in_child(script: str, args: list[str]) -> dict:
    """Run ``python script args`` and parse the JSON it prints on its last line (fresh process, fresh memory)."""
    out = subprocess.run([sys.executable, script, *args], check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def metadata() -> dict:
    import torch

    info = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cpus": os.cpu_count(),
        "machine": platform.machine(),
    }
    try:
        with open("/proc/cpuinfo") as fh:
            info["cpu"] = next(line.split(":", 1)[1].strip() for line in fh if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    try:
        import numba

        info["numba"] = numba.__version__
        info["numba_threads"] = numba.get_num_threads()
    except ImportError:
        pass
    return info


def report(result: dict, json_path: Optional[str]) -> None:
    """Write ``result`` (with the machine's metadata added) to ``json_path`` if given; print the metadata."""
    result["machine"] = metadata()
    if json_path:
        with open(json_path, "w") as fh:
            json.dump(result, fh, indent=2)
    print(json.dumps(result["machine"]))

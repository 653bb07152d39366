"""Which stages of ``dense_crf`` scale with threads: per stage, 1-thread CPU time and wall time at 1 and 2 threads.

For each size (21 labels, 10 iterations, densecrf's widths; a blocky random photo with random probabilities, the
inputs of issue 26), ``dense_crf`` runs under :mod:`cProfile` three times after a warm-up: with 1 thread timed by
the process's CPU time (roughly independent of the machine's load), then with 1 and with 2 threads by the wall
clock (meaningful on a quiet machine only). A stage is a function of ``crfrnn`` (its own time, without the
functions it calls; the compiled kernels are one call each), and the ratio column is its 1-thread wall time over
its 2-thread wall time: a stage near 1.0 does not scale, one near 2.0 does (a stage with nan in a column does not
run there: the vertex hash is `insert_all` on 1 thread, `insert_runs` on more). Also printed per run: page faults
and system CPU time (the first touch of large arrays), the call's total times, and the own time of everything
outside the compiled kernels (Python, torch, NumPy: the part that waits for no added thread, save torch's own).

The adaptive thread count of :mod:`crfrnn._utils.threads` (which lowers the threads on a busy machine) is
bypassed here: the threads asked for are the threads used.

    python benchmarks/profile_threads.py                      # 500x375 and 1000x750
    python benchmarks/profile_threads.py --sizes 750x1000 --threads 4 --repeats 5
"""

from __future__ import annotations

import argparse
import cProfile
import functools
import pstats
import resource
import time

import numpy as np


def make_inputs(h: int, w: int, num_labels: int = 21, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Issue 26's inputs: ``(H, W, 3)`` uint8 image of 25-pixel blocks, ``(L, H, W)`` float32 random probabilities."""
    rng = np.random.default_rng(seed)
    img = rng.random((h // 25 + 1, w // 25 + 1, 3)) * 255
    img = np.kron(img, np.ones((25, 25, 1)))[:h, :w].astype(np.uint8)
    p = rng.random((num_labels, h, w)).astype(np.float32)
    p[3] += 3
    p /= p.sum(0)
    return img, p


def set_threads(n: int) -> None:
    import numba
    import torch

    numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))
    torch.set_num_threads(n)


@functools.lru_cache(maxsize=None)
def _compiled(path: str, line: int) -> bool:
    """Whether the profiled function at ``path:line`` is a compiled kernel (its first line, where a decorated
    function's code starts, is ``@njit``).
    """
    try:
        with open(path) as fh:
            lines = fh.read().splitlines()
    except OSError:
        return False
    return 0 < line <= len(lines) and lines[line - 1].strip().startswith("@njit")


def profile(fn, timer, repeats: int) -> tuple[dict, float, dict]:
    """Own time per ``crfrnn`` function (least over ``repeats`` profiled calls), the least total, and resources
    (with ``outside``: the least own time of everything but the compiled kernels: Python, torch, NumPy).
    """
    best: dict = {}
    total = float("inf")
    usage = {"outside": float("inf")}
    for _ in range(repeats):
        r0 = resource.getrusage(resource.RUSAGE_SELF)
        t0 = timer()
        pr = cProfile.Profile(timer)
        pr.enable()
        fn()
        pr.disable()
        elapsed = timer() - t0
        r1 = resource.getrusage(resource.RUSAGE_SELF)
        stats = pstats.Stats(pr).stats.items()  # type: ignore[attr-defined]
        outside = sum(row[2] for (path, line, _), row in stats if not _compiled(path, line))
        if elapsed < total:
            total = elapsed
            usage |= {"minflt": r1.ru_minflt - r0.ru_minflt, "sys_s": r1.ru_stime - r0.ru_stime}
        usage["outside"] = min(usage["outside"], outside)
        for (path, line, name), row in stats:
            if "crfrnn" not in path:
                continue
            key = f"{path.split('crfrnn/')[-1]}:{line}({name})"
            best[key] = min(best.get(key, float("inf")), row[2])  # tottime
    return best, total, usage


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", default=["375x500", "750x1000"], help="HxW")
    parser.add_argument("--threads", type=int, default=2, help="the many-thread count compared with 1")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--iterations", type=int, default=10)
    parser.add_argument("--top", type=int, default=12, help="stages shown, the costliest first")
    parser.add_argument(
        "--inputs",
        choices=["blocks", "photo"],
        default="blocks",
        help="issue 26's blocky photo (default) or bench_threads.py's astronaut photo",
    )
    args = parser.parse_args()

    import crfrnn._utils.threads as threads
    from crfrnn import dense_crf

    threads.free_cpus = lambda samples=3: 1 << 16  # measure the threads asked for, not what the load allows
    for size in args.sizes:
        h, w = (int(v) for v in size.split("x"))
        if args.inputs == "photo":
            import os
            import sys

            sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
            from bench_refine import make_inputs as photo_inputs

            img, probs = photo_inputs(h, w, 21, seed=0)
        else:
            img, probs = make_inputs(h, w)

        def call() -> None:
            dense_crf(img, probs, num_iterations=args.iterations)

        set_threads(args.threads)
        call()  # compile and warm up both thread counts
        set_threads(1)
        call()
        cpu1, cpu_total, cpu_use = profile(call, time.process_time, args.repeats)
        wall1, wall1_total, use1 = profile(call, time.perf_counter, args.repeats)
        set_threads(args.threads)
        wallt, wallt_total, uset = profile(call, time.perf_counter, args.repeats)
        t = args.threads
        print(
            f"\n{h}x{w}, {args.iterations} iterations: 1 thread {cpu_total:.3f} s CPU (sys {cpu_use['sys_s']:.3f} s, "
            f"{cpu_use['minflt']} page faults); wall {wall1_total:.3f} s at 1 thread, {wallt_total:.3f} s at {t} "
            f"({wall1_total / wallt_total:.2f}x; {uset['minflt']} page faults, sys {uset['sys_s']:.3f} s)"
        )
        print(f"{'stage':<58} {'CPU 1t':>8} {'wall 1t':>8} {f'wall {t}t':>8} {'ratio':>6}")
        for key in sorted(set(cpu1) | set(wallt), key=lambda k: -max(cpu1.get(k, 0.0), wallt.get(k, 0.0)))[: args.top]:
            a, b = wall1.get(key, float("nan")), wallt.get(key, float("nan"))
            ratio = a / b if b > 0 else float("nan")
            print(
                f"{key[-58:]:<58} {cpu1.get(key, float('nan')) * 1e3:8.1f} {a * 1e3:8.1f} {b * 1e3:8.1f} {ratio:6.2f}"
            )
        print("(ms; the own time of each function, least of the repeats)")
        print(
            f"outside the compiled kernels (Python, torch, NumPy; sequential but for torch's own threads): "
            f"{use1['outside'] * 1e3:.1f} ms at 1 thread, {uset['outside'] * 1e3:.1f} ms at {t}",
            flush=True,
        )


if __name__ == "__main__":
    main()

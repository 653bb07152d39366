"""How ``dense_crf`` scales with threads, and one batched call against single calls.

21 labels, 10 iterations, densecrf's usual parameters, on the astronaut photo resized to each size with
probabilities made as in ``bench_refine.py`` (coarse random logits upsampled, plus noise):

- threads: for each size (500x375 and 1000x750 by default) and each N of --threads (default 2), ``dense_crf``
  with N threads against 1 thread (torch's and numba's), called in turn, the order alternating pair by pair
  (:func:`_harness.paired_ratio`), medians after a warm-up; printed as the speed-up ``t(1) / t(N)`` beside its
  target (2 threads >= 1.85x 1 thread);
- two controls: beside every pair of calls (in the same moments), a loop of pure arithmetic split evenly over N
  threads and over 1 (:func:`control_loop`), and a pass over 256 MB of memory split the same way
  (:func:`stream_loop`), each printed as its speed-up: arithmetic about N.00x on N free cores of equal speed,
  less where the machine gives less (a shared VM, a busy core); memory near N.00x where one core cannot fill
  the memory system, near 1.0x where it can or where a VM's share is capped. A target on the speed-up alone
  cannot tell the machine's part from the code's (``--no-control`` skips the controls);
- a third control, the ceiling: the same ``dense_crf`` call on 1 thread in each of N worker processes at once
  against one such call alone (:func:`single_thread_processes`), printed as its throughput gain ``N t(alone) /
  t(N at once)``: what the machine gives this very work on N cores at that moment (its caches, memory and
  neighbours included), with no code shared between the threads. The threads' speed-up is printed as a share of
  it, the part the code is responsible for;
- batch: --batch B images (seeds 0..B-1) refined by one batched call (``(B, 3, H, W)`` and ``(B, L, H, W)``
  tensors) against B single calls, at the default threads, paired the same way.

    python benchmarks/bench_threads.py
    python benchmarks/bench_threads.py --threads 2 4 --sizes 500x375 --repeats 5
    python benchmarks/bench_threads.py --sizes 50x40 --repeats 1 --iterations 2   # checks that it runs
    python benchmarks/bench_threads.py --sizes 500x375 --threads 16 --batch 16 --singles-threads 1  # 16 cores
    python benchmarks/bench_threads.py --sizes 500x375 --batch 0 --chunksize 16   # dynamic scheduling
    python benchmarks/bench_threads.py --batch 0 --repeats 1 --spread 15   # each call's faults and preemptions
    python benchmarks/bench_threads.py --compare-taking --busy 1   # threads taking work from each other, or not
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _harness import paired_ratio, paired_ratios  # noqa: E402
from bench_refine import make_inputs  # noqa: E402

TARGET_2_THREADS = 1.85  # 2 threads at least this many times as fast as 1
CONTROL_ROWS = 64  # the control loop's rows: the same total work split evenly for 1, 2, 4, ... 64 threads


@functools.lru_cache(maxsize=None)
def _control_kernel():
    """The control's compiled loop and its rows: one array for every thread count, aligned to 64 bytes (a row
    that straddles cache lines doubles the time of this loop, which made two arrays of one process differ 2x)."""
    import numpy as np
    from numba import njit, prange

    @njit(parallel=True, fastmath=True)
    def busy(rows, regions, reps):  # pragma: no cover - compiled
        for _ in range(regions):
            for t in prange(rows.shape[0]):
                x = rows[t]
                for _ in range(reps):
                    for i in range(x.shape[0]):
                        x[i] = x[i] * np.float32(0.999) + np.float32(0.001)

    raw = np.ones(CONTROL_ROWS * 128 + 16, np.float32)
    skip = (-raw.ctypes.data % 64) // 4
    rows = raw[skip : skip + CONTROL_ROWS * 128].reshape(CONTROL_ROWS, 128)
    assert rows.ctypes.data % 64 == 0
    busy(rows, 1, 1)  # compiles
    return busy, rows


@functools.lru_cache(maxsize=None)
def _stream_kernel():
    """The memory control's compiled loop and its two 128 MB arrays (far beyond any cache)."""
    import numpy as np
    from numba import njit, prange

    @njit(parallel=True, fastmath=True)
    def stream(src, dst):  # pragma: no cover - compiled
        for i in prange(src.shape[0]):
            dst[i] = src[i] * np.float32(2.0) + np.float32(1.0)

    src = np.ones(32 << 20, np.float32)
    dst = np.zeros_like(src)
    stream(src, dst)  # compiles, and faults the pages in
    return stream, src, dst


def stream_loop(n: int):
    """The memory control for ``n`` threads, as a callable: one pass that reads 128 MB and writes 128 MB, split
    evenly over the threads. Its speed-up over 1 thread is how much more memory bandwidth ``n`` threads got than
    one: near ``n`` where one core cannot fill the memory system (most servers), near 1.0x where it can or where a
    virtual machine's share of it is capped.
    """
    stream, src, dst = _stream_kernel()

    def run():
        with threads(n):
            stream(src, dst)

    return run


def control_loop(n: int, regions: int = 100, reps: int = 400):
    """The control for ``n`` threads: a loop of pure arithmetic with nothing to share and nothing to wait for but
    its threads, as a callable. ``regions`` parallel loops one after the other (``dense_crf`` runs about a
    hundred), each splitting :data:`CONTROL_ROWS` rows of 128 float32 (in the first-level cache, no memory
    traffic) evenly over the threads, ``reps`` vector multiply-adds per element: the same total work at any thread
    count. Its speed-up over 1 thread is what the hardware gave at that moment: ``n`` on ``n`` free cores of
    equal speed, less on shared or unequal ones.
    """
    busy, rows = _control_kernel()

    def run():
        with threads(n):
            busy(rows, regions, reps)

    return run


def _worker(conn, size: tuple, labels: int, iterations: int) -> None:
    """A process of :func:`single_thread_processes`: one ``dense_crf`` call on 1 thread each time it is asked."""
    import numba
    import torch

    from crfrnn import dense_crf

    numba.set_num_threads(1)
    torch.set_num_threads(1)
    w, h = size
    image, probs = make_inputs(h, w, labels, seed=0)
    dense_crf(image, probs, num_iterations=iterations)  # loads the kernels, faults in the buffers
    conn.send("ready")
    while conn.recv():
        dense_crf(image, probs, num_iterations=iterations)
        conn.send("done")


@contextlib.contextmanager
def single_thread_processes(n: int, size: tuple, labels: int, iterations: int):
    """``n`` worker processes, each with the inputs of ``size`` and 1 thread, idle until asked. Yields ``at_once(k)``:
    a callable that has the first ``k`` workers make one ``dense_crf`` call each, at the same time, and returns when
    all have finished.
    """
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    pipes, procs = [], []
    for _ in range(n):
        parent, child = ctx.Pipe()
        proc = ctx.Process(target=_worker, args=(child, size, labels, iterations), daemon=True)
        proc.start()
        pipes.append(parent)
        procs.append(proc)
    try:
        for conn in pipes:
            if conn.recv() != "ready":
                raise RuntimeError("a worker process of the ceiling control failed to start")

        def at_once(k: int):
            def run():
                for conn in pipes[:k]:
                    conn.send(True)
                for conn in pipes[:k]:
                    conn.recv()

            return run

        yield at_once
    finally:
        for conn in pipes:
            with contextlib.suppress(OSError):
                conn.send(False)
        for proc in procs:
            proc.join(timeout=10)
            if proc.is_alive():
                proc.kill()


@contextlib.contextmanager
def threads(n: int):
    """torch and numba both on ``n`` threads inside the block."""
    import numba
    import torch

    before = torch.get_num_threads(), numba.get_num_threads()
    torch.set_num_threads(n)
    numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))
    try:
        yield
    finally:
        torch.set_num_threads(before[0])
        numba.set_num_threads(before[1])


def _spread(with_threads, n: int, calls: int, label: str) -> None:
    """Time ``calls`` calls on ``n`` threads and on 1, in turn, and print each with what the kernel saw."""
    import resource

    rows: dict = {n: [], 1: []}
    for _ in range(calls + 1):  # the first pair warms up
        for k in (n, 1):
            r0 = resource.getrusage(resource.RUSAGE_SELF)
            start = time.perf_counter()
            with_threads(k)()
            took = time.perf_counter() - start
            r1 = resource.getrusage(resource.RUSAGE_SELF)
            rows[k].append((took, r1.ru_minflt - r0.ru_minflt, r1.ru_stime - r0.ru_stime, r1.ru_nivcsw - r0.ru_nivcsw))
    for k, got in rows.items():
        got = sorted(got[1:])
        print(
            f"{label}, {k} thread(s), {calls} calls, fastest first (s/page faults/system s/involuntary switches): "
            + "  ".join(f"{t:.3f}/{f}/{sy:.2f}/{c}" for t, f, sy, c in got),
            flush=True,
        )


def _size(text: str) -> tuple:
    w, h = (int(v) for v in text.lower().split("x"))
    return w, h


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", type=_size, default=[(500, 375), (1000, 750)], metavar="WxH")
    parser.add_argument("--threads", nargs="+", type=int, default=[2], metavar="N", help="compared with 1 thread")
    parser.add_argument("--batch", type=int, default=4, metavar="B", help="images of the batched call (0: skip)")
    parser.add_argument(
        "--singles-threads",
        type=int,
        default=0,
        metavar="N",
        help="threads of the single calls the batch is compared with (0: the default threads)",
    )
    parser.add_argument(
        "--chunksize",
        type=int,
        default=0,
        metavar="N",
        help="numba.set_parallel_chunksize(N) for every call (0: numba's default static split of each parallel loop)",
    )
    parser.add_argument(
        "--spread",
        type=int,
        default=0,
        metavar="N",
        help="also time N single calls at each thread count in turn, each with its page faults, system time and "
        "involuntary context switches (what makes a parallel call slow on a busy or virtual machine)",
    )
    parser.add_argument(
        "--no-control",
        action="store_true",
        help="skip the control: a pure-arithmetic parallel loop timed at N and 1 threads beside each pair of calls",
    )
    parser.add_argument(
        "--compare-taking",
        action="store_true",
        help="instead: N-thread calls whose idle threads take work from the others (the default) against the same "
        "calls without (CRFRNN_TAKE_WORK=0), paired, each beside a 1-thread call; the adaptive thread count is "
        "bypassed (the threads asked for are used, also with --busy)",
    )
    parser.add_argument("--busy", type=int, default=0, metavar="K", help="spinning competitor processes while timing")
    parser.add_argument("--labels", type=int, default=21)
    parser.add_argument("--iterations", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=9, help="pairs timed after one warm-up pair")
    args = parser.parse_args()

    import numba
    import torch

    numba.set_parallel_chunksize(args.chunksize)  # this thread's parallel loops: every call below runs here
    print(
        f"cores {os.cpu_count()}, numba threads {numba.config.NUMBA_NUM_THREADS}, torch {torch.__version__}, "
        f"chunk size {args.chunksize}, {args.busy} spinning processes"
    )
    with competitors(args.busy):
        if args.compare_taking:
            _compare_taking(args)
        else:
            _measure(args)


@contextlib.contextmanager
def competitors(count: int):
    """``count`` processes spinning on the CPU inside the block."""
    import multiprocessing as mp

    stop = mp.Event()
    procs = [mp.Process(target=_spin, args=(stop,), daemon=True) for _ in range(count)]
    for p in procs:
        p.start()
    try:
        yield
    finally:
        stop.set()
        for p in procs:
            p.join(timeout=5)


def _spin(stop) -> None:
    while not stop.is_set():
        pass


def _compare_taking(args) -> None:
    import crfrnn._utils.threads as adaptive
    from crfrnn import dense_crf

    adaptive.free_cpus = lambda samples=3: 1 << 16  # the threads asked for, also on a busy machine
    for w, h in args.sizes:
        image, probs = make_inputs(h, w, args.labels, seed=0)

        def call(n: int, take: bool):
            def run():
                os.environ["CRFRNN_TAKE_WORK"] = "1" if take else "0"
                try:
                    with threads(n):
                        dense_crf(image, probs, num_iterations=args.iterations)
                finally:
                    del os.environ["CRFRNN_TAKE_WORK"]

            return run

        for n in args.threads:
            taking, static = paired_ratios(
                [(call(n, True), call(1, True)), (call(n, False), call(1, True))], repeats=args.repeats
            )
            print(
                f"{w}x{h}, L={args.labels}, T={args.iterations}, {n} threads: taking work {taking['median']:.3f} s "
                f"(speed-up {1 / taking['ratio']:.2f}x), without {static['median']:.3f} s (speed-up "
                f"{1 / static['ratio']:.2f}x), 1 thread {taking['base_median']:.3f} s; taking / without "
                f"{taking['median'] / static['median']:.2f} [{args.repeats} rounds]",
                flush=True,
            )


def _measure(args) -> None:
    import torch

    from crfrnn import dense_crf

    for w, h in args.sizes:
        image, probs = make_inputs(h, w, args.labels, seed=0)

        def with_threads(n: int):
            def run():
                with threads(n):
                    dense_crf(image, probs, num_iterations=args.iterations)

            return run

        if args.spread > 0:
            _spread(with_threads, args.threads[0], args.spread, f"{w}x{h}")
        for n in args.threads:
            pairs = [(with_threads(n), with_threads(1))]
            workers = contextlib.ExitStack()
            if not args.no_control:
                with_threads(1)()  # the kernels compile here (an empty cache), not once in each worker at a time
                pairs += [(control_loop(n), control_loop(1)), (stream_loop(n), stream_loop(1))]
                at_once = workers.enter_context(single_thread_processes(n, (w, h), args.labels, args.iterations))
                pairs.append((at_once(n), at_once(1)))
            with workers:
                r, *control = paired_ratios(pairs, repeats=args.repeats)
            speedup = 1.0 / r["ratio"]
            target = f" (target >= {TARGET_2_THREADS}x)" if n == 2 else ""
            print(
                f"{w}x{h}, L={args.labels}, T={args.iterations}: {n} threads {r['median']:.3f} s, 1 thread "
                f"{r['base_median']:.3f} s; speed-up {speedup:.2f}x{target} "
                f"[ratio IQR {r['ratio_q1']:.2f}..{r['ratio_q3']:.2f}, {r['repeats']} pairs]",
                flush=True,
            )
            for c, what in zip(control, ("arithmetic in the first-level cache", "a pass over 256 MB of memory")):
                print(
                    f"  control in the same moments, the same work on {n} threads and on 1, {what}: "
                    f"{1.0 / c['ratio']:.2f}x [IQR {1 / c['ratio_q3']:.2f}..{1 / c['ratio_q1']:.2f}; "
                    f"{c['median'] * 1e3:.1f} ms / {c['base_median'] * 1e3:.1f} ms]",
                    flush=True,
                )
            if len(control) == 3:
                c = control[2]
                ceiling = n / c["ratio"]
                print(
                    f"  ceiling in the same moments, the same call on 1 thread in {n} processes at once against one "
                    f"alone: {ceiling:.2f}x the throughput [IQR {n / c['ratio_q3']:.2f}..{n / c['ratio_q1']:.2f}; "
                    f"{c['median']:.3f} s / {c['base_median']:.3f} s]; the threads' speed-up is "
                    f"{speedup / ceiling:.0%} of it",
                    flush=True,
                )
        if args.batch > 0:
            inputs = [make_inputs(h, w, args.labels, seed=s) for s in range(args.batch)]
            images = torch.stack([torch.from_numpy(i).permute(2, 0, 1).float() for i, _ in inputs])
            scores = torch.stack([torch.from_numpy(p) for _, p in inputs])

            def batched():
                dense_crf(images, scores, num_iterations=args.iterations)

            def singles():
                with threads(args.singles_threads) if args.singles_threads > 0 else contextlib.nullcontext():
                    for i, p in inputs:
                        dense_crf(i, p, num_iterations=args.iterations)

            r = paired_ratio(batched, singles, repeats=args.repeats)
            singles_threads = f" on {args.singles_threads} thread(s)" if args.singles_threads > 0 else ""
            print(
                f"{w}x{h}, L={args.labels}, T={args.iterations}: one call of {args.batch} images {r['median']:.3f} s, "
                f"{args.batch} single calls{singles_threads} {r['base_median']:.3f} s; "
                f"batched / singles {r['ratio']:.2f} "
                f"[IQR {r['ratio_q1']:.2f}..{r['ratio_q3']:.2f}, {r['repeats']} pairs]",
                flush=True,
            )


if __name__ == "__main__":
    main()

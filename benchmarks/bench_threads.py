"""How ``dense_crf`` scales with threads, and one batched call against single calls.

21 labels, 10 iterations, densecrf's usual parameters, on the astronaut photo resized to each size with
probabilities made as in ``bench_refine.py`` (coarse random logits upsampled, plus noise):

- threads: for each size (500x375 and 1000x750 by default) and each N of --threads (default 2), ``dense_crf``
  with N threads against 1 thread (torch's and numba's), called in turn, the order alternating pair by pair
  (:func:`_harness.paired_ratio`), medians after a warm-up; printed as the speed-up ``t(1) / t(N)`` beside its
  target (2 threads >= 1.85x 1 thread);
- batch: --batch B images (seeds 0..B-1) refined by one batched call (``(B, 3, H, W)`` and ``(B, L, H, W)``
  tensors) against B single calls, at the default threads, paired the same way.

    python benchmarks/bench_threads.py
    python benchmarks/bench_threads.py --threads 2 4 --sizes 500x375 --repeats 5
    python benchmarks/bench_threads.py --sizes 50x40 --repeats 1 --iterations 2   # checks that it runs
    python benchmarks/bench_threads.py --sizes 500x375 --threads 16 --batch 16 --singles-threads 1  # 16 cores
    python benchmarks/bench_threads.py --sizes 500x375 --batch 0 --chunksize 16   # dynamic scheduling
    python benchmarks/bench_threads.py --batch 0 --repeats 1 --spread 15   # each call's faults and preemptions
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _harness import paired_ratio  # noqa: E402
from bench_refine import make_inputs  # noqa: E402

TARGET_2_THREADS = 1.85  # 2 threads at least this many times as fast as 1


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
    parser.add_argument("--labels", type=int, default=21)
    parser.add_argument("--iterations", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=9, help="pairs timed after one warm-up pair")
    args = parser.parse_args()

    import numba
    import torch

    from crfrnn import dense_crf

    numba.set_parallel_chunksize(args.chunksize)  # this thread's parallel loops: every call below runs here
    print(
        f"cores {os.cpu_count()}, numba threads {numba.config.NUMBA_NUM_THREADS}, torch {torch.__version__}, "
        f"chunk size {args.chunksize}"
    )
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
            r = paired_ratio(with_threads(n), with_threads(1), repeats=args.repeats)
            speedup = 1.0 / r["ratio"]
            target = f" (target >= {TARGET_2_THREADS}x)" if n == 2 else ""
            print(
                f"{w}x{h}, L={args.labels}, T={args.iterations}: {n} threads {r['median']:.3f} s, 1 thread "
                f"{r['base_median']:.3f} s; speed-up {speedup:.2f}x{target} "
                f"[ratio IQR {r['ratio_q1']:.2f}..{r['ratio_q3']:.2f}, {r['repeats']} pairs]",
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

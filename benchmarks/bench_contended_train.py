"""CNN training on a busy machine: the default threads (the free-CPU rule, per epoch) against ``--threads 1``.

A parallel region waits for its slowest thread: with every core taken by other processes, a CNN on two threads
ran its epochs many times slower than on one. ``crfrnn train`` without ``--threads`` now sets torch's threads at
the start of each epoch from the CPUs free then (:func:`crfrnn.workflow._distributed.threads_for_now`). This
script trains a tiny SmallFCN (a few steps) with ``--busy`` spinning processes competing, the default and
``threads=1`` in turn (paired, order alternating), and prints the median ratio default / one thread; the target
is <= 1.0x (the default no slower than the best fixed choice under load).

    python benchmarks/bench_contended_train.py                      # 3 spinning processes, 5 pairs
    python benchmarks/bench_contended_train.py --busy 0             # a quiet machine, for comparison
    python benchmarks/bench_contended_train.py --json out.json
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _harness import metadata, paired_ratio, report  # noqa: E402


def _spin(stop) -> None:  # pragma: no cover - a competing process
    x = 0
    while not stop.is_set():
        for _ in range(100_000):
            x += 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--busy", type=int, default=3, help="spinning competitor processes (default 3)")
    parser.add_argument("--repeats", type=int, default=5, help="pairs timed (default 5)")
    parser.add_argument("--epochs", type=int, default=2, help="epochs per training (default 2)")
    parser.add_argument("--num-train", type=int, default=16, help="training images (default 16, 4 steps an epoch)")
    parser.add_argument("--json", help="also write the result as JSON")
    args = parser.parse_args()

    import torch

    from crfrnn.workflow import TrainConfig, train

    cores = os.cpu_count() or 1
    work = tempfile.mkdtemp(prefix="bench_contended_train_")
    count = [0]

    def run(threads):
        def once() -> None:
            count[0] += 1
            if threads is None:
                torch.set_num_threads(cores)  # a fresh process's default (threads=1 left the process at 1)
            config = TrainConfig(
                out_dir=os.path.join(work, f"run{count[0]}"),
                num_train=args.num_train,
                num_val=0,
                image_size=64,
                crop_size=64,
                batch_size=4,
                epochs=args.epochs,
                model_kwargs={"width": 16},
                threads=threads,
                device="cpu",
            )
            train(config, progress=False)

        return once

    stop = mp.Event()
    competitors = [mp.Process(target=_spin, args=(stop,), daemon=True) for _ in range(args.busy)]
    for p in competitors:
        p.start()
    try:
        result = paired_ratio(run(None), run(1), warmup=1, repeats=args.repeats)
    finally:
        stop.set()
        for p in competitors:
            p.join(timeout=5)
    result.update(metadata())
    result.update(busy=args.busy, cores=cores, epochs=args.epochs, num_train=args.num_train)
    print(
        f"train {args.epochs} epochs x {args.num_train} images, {args.busy} spinning processes on {cores} cores: "
        f"default {result['median']:.2f} s, --threads 1 {result['base_median']:.2f} s, ratio {result['ratio']:.2f}x "
        f"(IQR {result['ratio_q1']:.2f}-{result['ratio_q3']:.2f}; target <= 1.0x)"
    )
    report(result, args.json)


if __name__ == "__main__":
    main()

"""``crfrnn refine --images`` on a folder: the default settings against one single-threaded process, torchrun.

Writes --count photos of 500x375 (default 200) with 21-label probabilities (the inputs of ``bench_refine.py``,
seeds 0..count-1) to a temporary folder, then runs the real command line (each run a fresh process or process
group, start-up included, into an empty output folder) in these modes (--modes picks some):

- ``single``: one process with one thread (``--jobs 1``, ``OMP_NUM_THREADS=1``, ``NUMBA_NUM_THREADS=1``);
- ``default``: no flags (worker processes on the free CPUs for a folder this large);
- ``torchrun2``: ``python -m torch.distributed.run --standalone --nproc-per-node 2 -m crfrnn refine ...``
  (two ranks, torchrun's ``OMP_NUM_THREADS=1``);
- ``shards2``: two processes started together, ``--jobs 1 --shard 0/2`` and ``--shard 1/2`` with
  ``OMP_NUM_THREADS=1`` (a torchrun rank's work, without the launcher);
- ``jobs1``, ``jobs2``: ``--jobs 1`` (one process, all its threads) and ``--jobs 2``.

The modes run in turn for --rounds rounds, the order reversed every other round (drift on a shared machine), and
the median images/s of each is printed, then the ratios beside their targets: default / single >= 1.9x, and
torchrun2 within 5% of default.

    python benchmarks/bench_folder.py                          # 200 images, single, default, torchrun2
    python benchmarks/bench_folder.py --count 6 --rounds 1     # checks that it runs
    python benchmarks/bench_folder.py --modes jobs1 jobs2 --count 40
    python benchmarks/bench_folder.py --modes default shards2 torchrun2 --rounds 3   # torchrun's own cost
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_refine import make_inputs  # noqa: E402

MODES = ("single", "default", "torchrun2", "shards2", "jobs1", "jobs2")
TARGET_DEFAULT_OVER_SINGLE = 1.9
TARGET_TORCHRUN_WITHIN = 0.05


def command(mode: str, images: str, probs: str, out: str) -> tuple:
    """The command line and the environment of one mode."""
    refine = ["refine", "--images", images, "--probs", probs, "-o", out]
    env = dict(os.environ, CRFRNN_QUIET="1")
    if mode == "single":
        env |= {"OMP_NUM_THREADS": "1", "NUMBA_NUM_THREADS": "1"}
        return [sys.executable, "-m", "crfrnn", *refine, "--jobs", "1"], env
    if mode == "default":
        return [sys.executable, "-m", "crfrnn", *refine], env
    if mode == "torchrun2":
        launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
        return [*launcher, "-m", "crfrnn", *refine], env
    return [sys.executable, "-m", "crfrnn", *refine, "--jobs", mode[-1]], env


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=200, help="images in the folder (default 200)")
    parser.add_argument("--modes", nargs="+", choices=MODES, default=["single", "default", "torchrun2"])
    parser.add_argument("--rounds", type=int, default=3, help="runs of every mode, alternating (default 3)")
    args = parser.parse_args()
    from PIL import Image

    with tempfile.TemporaryDirectory() as root:
        images, probs = os.path.join(root, "img"), os.path.join(root, "p")
        os.makedirs(images)
        os.makedirs(probs)
        for i in range(args.count):
            image, p = make_inputs(375, 500, 21, seed=i)
            Image.fromarray(image).save(os.path.join(images, f"{i:04d}.png"))
            np.save(os.path.join(probs, f"{i:04d}.npy"), p)
        rates: dict = {m: [] for m in args.modes}
        for r in range(args.rounds):
            for mode in args.modes if r % 2 == 0 else args.modes[::-1]:
                out = os.path.join(root, f"out-{mode}")
                shutil.rmtree(out, ignore_errors=True)
                start = time.perf_counter()
                if mode == "shards2":
                    argv, env = command("jobs1", images, probs, out)
                    env |= {"OMP_NUM_THREADS": "1"}
                    procs = [
                        subprocess.Popen(
                            [*argv, "--shard", f"{k}/2"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
                        )
                        for k in range(2)
                    ]
                    if any(p.wait() != 0 for p in procs):
                        raise SystemExit(f"{mode}: a shard failed")
                else:
                    argv, env = command(mode, images, probs, out)
                    subprocess.run(argv, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                rates[mode].append(args.count / (time.perf_counter() - start))
                print(f"round {r + 1}, {mode}: {rates[mode][-1]:.2f} images/s", flush=True)
        median = {m: statistics.median(v) for m, v in rates.items()}
        for mode, rate in median.items():
            print(f"{args.count} images of 500x375, {mode}: median {rate:.2f} images/s over {args.rounds} runs")
        if "default" in median and "single" in median:
            ratio = median["default"] / median["single"]
            print(f"default / single-threaded process: {ratio:.2f}x (target >= {TARGET_DEFAULT_OVER_SINGLE}x)")
        if "default" in median and "torchrun2" in median:
            ratio = median["torchrun2"] / median["default"]
            print(f"torchrun 2 ranks / default: {ratio:.3f} (target within {TARGET_TORCHRUN_WITHIN:.0%}: 0.95 to 1.05)")
        if "single" in median and "torchrun2" in median:
            ratio = median["torchrun2"] / median["single"]
            floor = TARGET_DEFAULT_OVER_SINGLE * (1 - TARGET_TORCHRUN_WITHIN)
            print(
                f"torchrun 2 ranks / single-threaded process: {ratio:.2f}x (the other reading of the target: "
                f"{TARGET_DEFAULT_OVER_SINGLE}x within {TARGET_TORCHRUN_WITHIN:.0%}, at least {floor:.3f}x)"
            )
        if "default" in median and "shards2" in median:
            print(f"two --shard processes / default: {median['shards2'] / median['default']:.3f}")
        if "jobs1" in median and "jobs2" in median:
            print(f"--jobs 2 / --jobs 1: {median['jobs2'] / median['jobs1']:.2f}x")


if __name__ == "__main__":
    main()

"""``crfrnn refine`` on a folder: one process with all its threads against single-threaded worker processes.

Writes --count photos of 500x375 with 21-label probabilities (the inputs of ``bench_refine.py``, seeds 0..count-1)
to a temporary folder, then runs the real command line with ``--jobs 1`` and ``--jobs 2`` in turn (each a fresh
process, start-up included) and prints the wall time of each and their ratio.

    python benchmarks/bench_folder.py              # 40 images
    python benchmarks/bench_folder.py --count 4    # where worker start-up dominates
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_refine import make_inputs  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=40)
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
        times = {}
        for jobs in (1, 2):
            out = os.path.join(root, f"out{jobs}")
            start = time.perf_counter()
            subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "crfrnn",
                    "refine",
                    "--images",
                    images,
                    "--probs",
                    probs,
                    "-o",
                    out,
                    "--jobs",
                    str(jobs),
                ],
                check=True,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            times[jobs] = time.perf_counter() - start
            print(f"{args.count} images, --jobs {jobs}: {times[jobs]:.1f} s", flush=True)
        print(f"--jobs 2 / --jobs 1: {times[2] / times[1]:.2f}")


if __name__ == "__main__":
    main()

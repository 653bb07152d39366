"""The same workloads on two revisions of crfrnn, side by side: did a change make anything slower?

Checks out ``--base`` (default: the parent of HEAD) into a temporary git worktree, then runs each workload in
alternating child processes, one importing the base's ``src/`` and one this tree's, and prints the median of the
per-pair time ratios (this tree / base) with its interquartile range. Each child warms up (the compiled kernels come
from each tree's own numba cache) before it times its calls, so compilation is not measured.

Workloads (the engine, training and volume paths):

- ``engine``: ``dense_crf`` on a 500x375 image with 21 labels (its default 5 iterations);
- ``train``: ``CrfRnn(21)`` forward and backward at 250x188 (T=5);
- ``volume``: ``dense_crf`` on a 32x64x64 volume with 2 labels.

Usage::

    python benchmarks/compare_revisions.py --base 49d5513 --pairs 7
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]

CHILD = r"""
import json, sys, time
import numpy as np
import torch
from crfrnn import CrfRnn, dense_crf

rng = np.random.default_rng(0)
kind, repeats = sys.argv[1], int(sys.argv[2])
if kind == "engine":
    image = rng.integers(0, 256, (375, 500, 3), dtype=np.uint8)
    probs = rng.random((21, 375, 500), dtype=np.float32) + 0.1
    probs /= probs.sum(0, keepdims=True)
    run = lambda: dense_crf(image, probs)
elif kind == "volume":
    image = rng.integers(0, 256, (32, 64, 64), dtype=np.uint8)
    probs = rng.random((2, 32, 64, 64), dtype=np.float32) + 0.1
    probs /= probs.sum(0, keepdims=True)
    run = lambda: dense_crf(image, probs)
else:
    torch.manual_seed(0)
    crf = CrfRnn(21)
    unary = torch.randn(1, 21, 188, 250, requires_grad=True)
    image = torch.rand(1, 3, 188, 250) * 255

    def run():
        crf.zero_grad(set_to_none=True)
        unary.grad = None
        crf(unary, image).square().mean().backward()

run()
run()
times = []
for _ in range(repeats):
    t = time.perf_counter()
    run()
    times.append(time.perf_counter() - t)
print(json.dumps(sorted(times)[len(times) // 2]))
"""


def child_time(src: Path, kind: str, repeats: int) -> float:
    """Median seconds of ``repeats`` calls of workload ``kind`` in a child process importing ``src``."""
    env = dict(os.environ, PYTHONPATH=str(src), PYTHONWARNINGS="ignore")
    out = subprocess.run([sys.executable, "-c", CHILD, kind, str(repeats)], env=env, capture_output=True, text=True)
    if out.returncode:
        raise RuntimeError(f"{kind} under {src} failed:\n{out.stderr[-2000:]}")
    return float(json.loads(out.stdout.strip().splitlines()[-1]))


def main() -> None:
    """Parse the arguments, run the pairs and print one line per workload."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", default="HEAD~1", help="the revision to compare with (default: HEAD~1)")
    parser.add_argument("--pairs", type=int, default=5, help="child-process pairs per workload (default: 5)")
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per child (default: 5)")
    parser.add_argument("--workloads", default="engine,train,volume")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp) / "base"
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "-q", str(base), args.base], check=True)
        try:
            for kind in args.workloads.split(","):
                for src in (base / "src", ROOT / "src"):  # warm the numba caches of both trees
                    child_time(src, kind, 1)
                ratios, ours, theirs = [], [], []
                for i in range(args.pairs):
                    order = [("base", base / "src"), ("head", ROOT / "src")]
                    pair = {name: child_time(src, kind, args.repeats) for name, src in order[:: 1 if i % 2 else -1]}
                    ours.append(pair["head"])
                    theirs.append(pair["base"])
                    ratios.append(pair["head"] / pair["base"])
                q1, q3 = np.percentile(ratios, [25, 75])
                head_ms, base_ms = statistics.median(ours) * 1e3, statistics.median(theirs) * 1e3
                print(
                    f"{kind:7s} this tree {head_ms:7.1f} ms, base {base_ms:7.1f} ms: "
                    f"ratio {statistics.median(ratios):.3f} (IQR {q1:.3f}-{q3:.3f}, {args.pairs} pairs)",
                    flush=True,
                )
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(base)], check=False)


if __name__ == "__main__":
    main()

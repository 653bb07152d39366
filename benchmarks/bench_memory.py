"""Estimated against measured peak memory of ``crfrnn refine`` (issue 25 item 5).

Each case runs ``crfrnn refine`` in a fresh child process (``crfrnn.cli.main`` on files written beforehand) and
reads the child's peak resident memory (``resource.getrusage(RUSAGE_SELF).ru_maxrss``, which sees torch's and
the compiled kernels' buffers, unlike tracemalloc). The estimate is :func:`crfrnn.io.estimate_memory` with the
guide's features and widths, which is what ``crfrnn refine`` checks before it starts. Guides are uniform noise,
the worst case for the lattice (every pixel's colour far from its neighbours'); a photograph occupies fewer
lattice vertices, so its estimate is higher than its peak by more.

    python benchmarks/bench_memory.py
    python benchmarks/bench_memory.py --cases 500x375-21 --json out.json

Memory figures are not disturbed by other processes' CPU use; they depend on the allocator and on the numba and
torch versions.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _harness import metadata, report  # noqa: E402

#: name -> (guide shape (spatial axes, then channels), labels, extra flags)
CASES = {
    "500x375-21": ((375, 500, 3), 21, []),
    "500x375-21-w0.01": ((375, 500, 3), 21, ["--bilateral-sxy", "0.01", "--bilateral-srgb", "0.01"]),
    "volume-32x32x16-8ch": ((32, 32, 16, 8), 3, []),
    "1000x750-5": ((750, 1000, 3), 5, []),
}


def write_inputs(folder: str, shape: tuple, labels: int, seed: int = 0) -> list[str]:
    from PIL import Image

    rng = np.random.default_rng(seed)
    spatial = shape[:-1]
    probs = rng.dirichlet(np.ones(labels), spatial).astype(np.float32)
    probs = np.moveaxis(probs, -1, 0)  # (L, *S)
    pfile = os.path.join(folder, "probs.npy")
    np.save(pfile, probs)
    if len(spatial) == 2 and shape[-1] == 3:
        gfile = os.path.join(folder, "image.png")
        Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(gfile)
        out = os.path.join(folder, "labels.png")
    else:
        gfile = os.path.join(folder, "guide.npy")
        np.save(gfile, rng.uniform(0, 255, shape).astype(np.float32))
        out = os.path.join(folder, "labels.npy")
    return [gfile, pfile, "-o", out]


def estimate(shape: tuple, labels: int, flags: list[str]) -> int:
    from crfrnn.io import estimate_memory, kernel_spans

    options = {flag.lstrip("-").replace("-", "_"): float(value) for flag, value in zip(flags[::2], flags[1::2])}
    spatial, channels = shape[:-1], shape[-1]
    kernels = kernel_spans(spatial, [255.0] * channels, **options)  # uniform noise spans 0..255 in every channel
    return estimate_memory(1, int(np.prod(spatial)), labels, kernels=kernels)


def child(argv: list[str]) -> None:
    os.environ.setdefault("CRFRNN_QUIET", "1")
    from crfrnn.cli import main

    code = main(["refine", *argv])
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB
    print(json.dumps({"code": code, "peak": peak}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cases", nargs="+", choices=list(CASES), default=list(CASES))
    parser.add_argument("--json", metavar="FILE")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        child(json.loads(args.child))
        return
    rows = {}
    for name in args.cases:
        shape, labels, flags = CASES[name]
        with tempfile.TemporaryDirectory() as folder:
            argv = write_inputs(folder, shape, labels) + flags + ["--max-memory", "1T"]
            out = subprocess.run(
                [sys.executable, os.path.abspath(__file__), "--child", json.dumps(argv)],
                capture_output=True,
                text=True,
                check=True,
            )
        measured = json.loads(out.stdout.strip().splitlines()[-1])
        if measured["code"] != 0:
            raise SystemExit(f"{name}: crfrnn refine exited {measured['code']}: {out.stderr}")
        est = estimate(shape, labels, flags)
        rows[name] = {"estimate_mb": est / 2**20, "peak_mb": measured["peak"] / 2**20, "ratio": est / measured["peak"]}
        print(
            f"{name:24s} estimate {est / 2**20:8.0f} MB  peak {measured['peak'] / 2**20:8.0f} MB  "
            f"estimate/peak {est / measured['peak']:.2f}",
            flush=True,
        )
    ratios = [r["ratio"] for r in rows.values()]
    print(f"estimate/peak from {min(ratios):.2f} to {max(ratios):.2f}")
    report({"meta": metadata(), "cases": rows}, args.json)


if __name__ == "__main__":
    main()

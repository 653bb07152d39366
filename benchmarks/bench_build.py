"""The lattice build on a GPU: the Triton device build against the PyTorch reference build, in the same run.

One image's bilateral features (positions / 80 and colours / 13, densecrf's defaults: 5 features, 500x375 by
default, the scikit-image astronaut when scikit-image is installed), float32, batch 1. For each backend of
--backends: the median of --repeats builds (``PermutohedralLattice(features, backend=...)``) after a warm-up that
compiles, with ``torch.cuda.synchronize()`` around each, and of the self weights (the operator's, uncached)
likewise; then the two lattices' vertex counts (they must be equal) and the largest difference of one filtering of
random values. Without a GPU it says so and exits 0.

    python benchmarks/bench_build.py --json build.json
    TRITON_INTERPRET=1 python benchmarks/bench_build.py --device cpu --size 12x16 --repeats 1   # the logic only
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _harness import report  # noqa: E402
from gpu_dense_check import _guide  # noqa: E402


def _size(text: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"the size is HxW, e.g. 375x500, got {text!r}") from None
    return h, w


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=_size, default=(375, 500), help="HxW (default 375x500)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--backends", default="torch,triton", help="comma-separated: torch, triton")
    parser.add_argument("--device", default="cuda", help="cuda (default), or cpu with TRITON_INTERPRET=1")
    parser.add_argument("--json")
    args = parser.parse_args()

    import torch

    from crfrnn import PermutohedralLattice

    cuda = args.device == "cuda"
    if cuda and not torch.cuda.is_available():
        print("bench_build: no CUDA GPU here (torch.cuda.is_available() is False); nothing to measure.")
        return 0
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    h, w = args.size
    image, source = _guide(h, w)
    device = torch.device(args.device)
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij")
    rgb = torch.from_numpy(image).float()
    features = torch.cat([torch.stack([xs, ys], -1) / 80.0, rgb / 13.0], -1).reshape(1, h * w, 5).to(device)
    values = torch.randn(1, h * w, 4, generator=torch.Generator().manual_seed(0)).to(device)

    rows, lattices = [], {}
    for backend in [b.strip() for b in args.backends.split(",") if b.strip()]:

        def build(backend=backend):
            return PermutohedralLattice(features, backend=backend)

        lattices[backend] = build()  # warm-up: compiles the kernels
        sync()
        times = []
        for _ in range(args.repeats):
            t = time.perf_counter()
            build()
            sync()
            times.append(time.perf_counter() - t)
        lattices[backend]._operator.self_weights()  # warm-up
        sync()
        self_times = []
        for _ in range(args.repeats):
            t = time.perf_counter()
            lattices[backend]._operator.self_weights()
            sync()
            self_times.append(time.perf_counter() - t)
        build_s, self_s = statistics.median(times), statistics.median(self_times)
        rows.append({"backend": backend, "build_s": build_s, "times_s": times, "self_weights_s": self_s})
        print(
            f"{backend}: build {build_s * 1e3:.2f} ms, self weights {self_s * 1e3:.2f} ms (medians of {args.repeats})"
        )
    result = {"benchmark": "bench_build", "size": [h, w], "features": 5, "image": source, "rows": rows}
    if "torch" in lattices and "triton" in lattices:
        ref, new = lattices["torch"], lattices["triton"]
        result["num_vertices"] = {"torch": ref.num_vertices, "triton": new.num_vertices}
        own, want = new._operator.self_weights(), ref._operator.self_weights()
        gap = (own - want).abs().max() / want.abs().max()
        result["self_weights_max_relative_difference"] = float(gap)
        diff = (new.filter(values) - ref.filter(values)).abs().max() / ref.filter(values).abs().max()
        result["filter_max_relative_difference"] = float(diff)
        print(f"vertices: torch {ref.num_vertices}, triton {new.num_vertices}; filter max rel. diff {float(diff):.2e}")
        if ref.num_vertices != new.num_vertices:
            print("bench_build: the two builds' vertex counts differ", file=sys.stderr)
            report(result, args.json)
            return 1
    report(result, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())

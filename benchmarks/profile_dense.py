"""Where the time of dense_crf goes on the CPU: the profile behind the compiled path's design.

At 500x375 with 21 labels (scikit-image's astronaut, densecrf's parameters), medians of --repeats calls
after a warm-up, with the compiled (numba) kernels:

- lattice construction of the spatial (2-D) and bilateral (5-D) kernels;
- splat + slice of C float32 channels on the bilateral lattice, for C = 21 and for C = 24 (21 padded to a
  multiple of the 8-wide SIMD registers, which is what the kernels do);
- blur of 24 channels, and the softmax of (N, 24) rows;
- dense_crf end to end with 0 and 10 iterations (both lattices built in every call), and so the cost of
  one iteration.

    python benchmarks/profile_dense.py
"""

from __future__ import annotations

import argparse
import os
import sys

import numba
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _harness import report, time_it  # noqa: E402
from bench_refine import make_inputs  # noqa: E402


def main() -> None:
    import torch

    from crfrnn import dense_crf
    from crfrnn._kernels import filtering, softmax
    from crfrnn.crf import bilateral_features, spatial_features
    from crfrnn.lattice import PermutohedralLattice

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=21)
    parser.add_argument("--json")
    args = parser.parse_args()
    h, w, num_labels = 375, 500, 21
    image, probs = make_inputs(h, w, num_labels)
    img = torch.from_numpy(image).permute(2, 0, 1)[None].float()
    feats = {"spatial": spatial_features(1, h, w, 3.0), "bilateral": bilateral_features(img, 80.0, 13.0)}
    rows: dict[str, float] = {}

    def ms(name: str, fn) -> None:
        rows[name] = time_it(fn, repeats=args.repeats)["median"] * 1e3
        print(f"{name:<44} {rows[name]:7.2f} ms", flush=True)

    for name, f in feats.items():
        ms(f"build lattice: {name}", lambda f=f: PermutohedralLattice(f))
    ops = PermutohedralLattice(feats["bilateral"]).operators(torch.float32)
    ones = np.ones(h * w, np.float32)
    for c in (21, 24):
        q = np.ascontiguousarray(np.random.default_rng(0).random((h * w, c), np.float32))
        out = np.empty_like(q)
        buf, tmp, parts = ops.workspace(c)
        ms(
            f"bilateral splat + slice, {c} channels",
            lambda: filtering.slice_vertices(
                ops.splat(q, ones, buf, parts), ops.weights, ops.offsets, np.float32(1), out
            ),
        )
    ms(
        "bilateral blur, 24 channels",
        lambda: filtering.blur_vertices(buf, tmp, ops.neighbours, False, numba.get_num_threads()),
    )
    logits = np.ascontiguousarray(np.log(probs.reshape(num_labels, -1).T))
    padded = np.zeros((h * w, 24), np.float32)
    padded[:, :num_labels] = logits
    ms("softmax of (N, 24) rows", lambda: softmax.softmax_rows_into(padded, out, num_labels))

    def cold(iterations: int):
        def run():
            dense_crf(image, probs, num_iterations=iterations)  # no cache: both lattices built every call

        return run

    ms("dense_crf, 0 iterations (set-up)", cold(0))
    ms("dense_crf, 10 iterations", cold(10))
    rows["per_iteration"] = (rows["dense_crf, 10 iterations"] - rows["dense_crf, 0 iterations (set-up)"]) / 10
    print(f"{'one mean-field iteration':<44} {rows['per_iteration']:7.2f} ms")
    report({"benchmark": "profile_dense", "size": [h, w], "labels": num_labels, "rows_ms": rows}, args.json)


if __name__ == "__main__":
    main()

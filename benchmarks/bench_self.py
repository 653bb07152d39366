"""Self-exclusion: the lattice's self weights compiled, against the PyTorch walk of every blur path it replaced.

Excluding ``j == i`` from a lattice message subtracts each point's own weight through the lattice
(``PermutohedralLattice.self_weights``), which depends on where the point sits in its simplex and is computed
once per lattice. ``dense_crf_loss`` excludes it by default, and every training step has a new image, so a new
bilateral lattice; ``CrfRnn(exclude_self=True)`` pays it on every image too. 500x375 photo (scikit-image's
astronaut), 21 labels, in one run, each pair called in turn (median of the per-pair ratios, with its IQR):

- ``self_weights()`` of the 5-D bilateral lattice (widths 80 / 13), compiled against the PyTorch walk;
- ``dense_crf_loss`` forward+backward (its defaults: exclude_self=True, bilateral 80 / 15), with the compiled
  self weights against the PyTorch walk, and against ``exclude_self=False`` (what excluding costs now);
- ``CrfRnn(21, exclude_self=True).eval()`` under no_grad (T=10, both lattices built every call), against the
  same layer without self-exclusion.

    python benchmarks/bench_self.py
    python benchmarks/bench_self.py --repeats 5 --json out.json
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _harness import paired_ratio, report, time_it  # noqa: E402
from bench_refine import make_inputs  # noqa: E402


@contextlib.contextmanager
def torch_walk():
    """Self weights by the PyTorch walk of every path, point by point (what the CPU path ran before)."""
    from crfrnn import _kernels
    from crfrnn.lattice._reference import walk_self_weights

    compiled = _kernels.self_weights
    _kernels.self_weights = lambda offsets, weights, rank, neighbours, alpha, steps, path_w: walk_self_weights(
        offsets, weights, rank, neighbours, alpha
    )
    try:
        yield
    finally:
        _kernels.self_weights = compiled


def walked(fn):
    def run():
        with torch_walk():
            return fn()

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--size", type=int, nargs=2, default=(375, 500), metavar=("H", "W"))
    parser.add_argument("--json")
    args = parser.parse_args()
    import torch

    import crfrnn
    from crfrnn import PermutohedralLattice, bilateral_features

    h, w = args.size
    image, probs = make_inputs(h, w, 21)
    img = torch.from_numpy(image).permute(2, 0, 1)[None].float()
    logits = torch.from_numpy(np.log(np.clip(probs, 1e-5, 1.0)))[None]
    feats = bilateral_features(img, 80.0, 13.0)

    def self_weights():
        return PermutohedralLattice(feats).self_weights()

    build = time_it(lambda: PermutohedralLattice(feats), repeats=args.repeats)
    diff = float((walked(self_weights)() - self_weights()).abs().max())

    def loss(exclude_self=True):
        def run():
            s = torch.softmax(logits, 1).requires_grad_()
            crfrnn.dense_crf_loss(s, img, exclude_self=exclude_self).backward()
            return s.grad

        return run

    def layer(exclude_self):
        crf = crfrnn.CrfRnn(
            21,
            theta_alpha=80.0,
            theta_beta=13.0,
            theta_gamma=3.0,
            normalization="symmetric",
            num_eval_iterations=10,
            exclude_self=exclude_self,
        ).eval()

        def run():
            crf.cache.clear()  # both lattices every call, as for a new image
            with torch.no_grad():
                return crf(logits, img)

        return run

    rows = {}
    print(f"{w}x{h}, 21 labels (median of per-pair ratios, IQR); self weights max |compiled - walk| {diff:.1e}")
    for name, fn, base in [
        ("self_weights(), bilateral lattice (plus its build)", self_weights, walked(self_weights)),
        ("dense_crf_loss fwd+bwd, compiled / walk", loss(), walked(loss())),
        ("dense_crf_loss fwd+bwd, exclude_self True / False", loss(), loss(False)),
        ("CrfRnn.eval(), exclude_self True / False", layer(True), layer(False)),
    ]:
        r = paired_ratio(fn, base, repeats=args.repeats)
        rows[name] = {
            "ms": r["median"] * 1e3,
            "base_ms": r["base_median"] * 1e3,
            "ratio": r["ratio"],
            "ratio_iqr": [r["ratio_q1"], r["ratio_q3"]],
        }
        print(
            f"  {name:<52} {r['median'] * 1e3:8.1f} ms  against {r['base_median'] * 1e3:8.1f} ms  "
            f"{r['ratio']:5.2f}x  (IQR {r['ratio_q1']:.2f}-{r['ratio_q3']:.2f})",
            flush=True,
        )
    print(f"  (building the bilateral lattice alone: {build['median'] * 1e3:.1f} ms)")
    report({"benchmark": "bench_self", "size": [h, w], "labels": 21, "rows": rows, "max_abs_diff": diff}, args.json)


if __name__ == "__main__":
    main()

"""Where a lattice's construction spends its time, stage by stage, on one thread (CPU time).

The four lattices of the benchmarks: the 500x375 photo's spatial (2-D) and bilateral (5-D) lattices (densecrf's
widths: 3; 80 and 13) and the 64x128x128 volume's spatial (3-D) and bilateral (4-D) ones (``bench_volume.py``'s
model). For each: the bounds of the elevated coordinates, the enclosing simplices (``_simplices``, compiled once
per feature count), the vertex hash (sequential), the neighbour look-ups
and the whole ``PermutohedralLattice`` with its operators. Least CPU time of --repeats calls after a warm-up.

    python benchmarks/profile_build.py
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def cpu(fn, repeats: int) -> float:
    fn()
    best = float("inf")
    for _ in range(repeats):
        t = time.process_time()
        fn()
        best = min(best, time.process_time() - t)
    return best * 1e3


def lattices() -> dict:
    import numpy as np
    import torch

    import crfrnn
    from bench_refine import make_inputs
    from bench_volume import BIL_I, BIL_POS, BIL_W, POS, POS_W, make_volume
    from crfrnn import _kernels
    from crfrnn.crf import bilateral_features, spatial_features

    image, _ = make_inputs(375, 500, 21)
    img = torch.from_numpy(image).permute(2, 0, 1)[None].float()
    out = {
        "photo spatial (2-D)": spatial_features(1, 375, 500, 3.0)[0],
        "photo bilateral (5-D)": bilateral_features(img, 80.0, 13.0)[0],
    }
    vol, probs = make_volume((64, 128, 128), 2)
    seen = []
    build = _kernels.build
    _kernels.build = lambda f, b, bits: (seen.append(f.clone()), build(f, b, bits))[1]  # the volume's features
    try:
        crfrnn.dense_crf(
            vol,
            probs,
            num_iterations=1,
            gaussian_sxy=POS,
            gaussian_compat=POS_W,
            bilateral_sxy=BIL_POS,
            bilateral_srgb=BIL_I,
            bilateral_compat=BIL_W,
        )
    finally:
        _kernels.build = build
    for f in seen:
        out[f"volume {'spatial' if f.shape[1] == 3 else 'bilateral'} ({f.shape[1]}-D)"] = f
    del np
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    import numba
    import numpy as np
    import torch

    numba.set_num_threads(1)
    torch.set_num_threads(1)
    from crfrnn._kernels import construct
    from crfrnn.lattice import PermutohedralLattice

    r = args.repeats
    for name, f in lattices().items():
        feats = np.ascontiguousarray(f.numpy(), dtype=np.float64)
        p, d = feats.shape
        d1 = d + 1
        scale = math.sqrt(2.0 / 3.0) * d1 / np.sqrt((np.arange(d) + 1.0) * (np.arange(d) + 2.0))
        chunks = max(1, min(p // 1024, 8))
        bounds = construct.elevated_bounds(feats, scale, chunks)
        lo = np.floor(bounds[:, 0].min(0)).astype(np.int64) - (2 * d1 + 2 * d)
        hi = np.ceil(bounds[:, 1].max(0)).astype(np.int64) + (2 * d1 + 2 * d)
        strides = np.cumprod(np.concatenate([[1], np.append(hi - lo + 1, 1)[:-1]])).astype(np.int64)
        codes = np.empty(p * d1, np.int64)
        weights = np.empty((p, d1), np.float32)
        ranks = np.empty((p, d1), np.int8)
        t = {
            "bounds": cpu(lambda: construct.elevated_bounds(feats, scale, chunks), r),
            "simplices": cpu(
                lambda: construct.simplices(feats, scale, lo, strides, p, chunks, codes, weights, ranks), r
            ),
            "hash": cpu(lambda: construct.insert_all(codes, d1), r),
        }
        ids, uniq, table, qbits = construct.insert_all(codes, d1)
        off = -np.ones((d1, d), np.int64) + d1 * np.eye(d1, d, dtype=np.int64)
        deltas = (off * strides[:d]).sum(1)
        t["neighbours"] = cpu(lambda: construct.neighbour_ids(uniq, deltas, table, qbits), r)
        f32 = f[None].float()
        t["lattice"] = cpu(lambda: PermutohedralLattice(f32).operators(torch.float32), r)
        print(
            f"{name:<24} {p:>8} points {uniq.shape[0]:>7} vertices | "
            + "  ".join(f"{k} {v:6.1f}" for k, v in t.items())
            + " ms CPU",
            flush=True,
        )


if __name__ == "__main__":
    main()

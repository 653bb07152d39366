"""Ties on an exact grid: how far crfrnn's and pydensecrf's marginals are apart when the features lie exactly on
lattice boundaries, next to how far pydensecrf moves itself when they are shifted off them.

Features are integer coordinates of a volume (``create_pairwise_gaussian(sdims=(1, 1, 1))``: 3-D positions with
width 1) plus a bilateral kernel on a piecewise-constant intensity; the unary is noisy probabilities of a few
labels. Points exactly on the permutohedral lattice's boundaries tie in the simplex's rank / rounding, and the
tie-break decides which vertices a point splats to; a shift of 1e-3 moves the points off the ties. Printed:

1. max |Q_crfrnn - Q_pydensecrf| on the exact grid, and the share of equal labels;
2. max |Q_pydensecrf(f) - Q_pydensecrf(f + shift)|: pydensecrf against itself;
3. max |Q_crfrnn - Q_pydensecrf| with both given the shifted features (no ties);

and the share of grid positions whose elevated coordinates tie exactly in the simplex rank (and half-way in the
rounding). Both lattices break a rank tie by the same rule (of two equal residuals the later coordinate ranks
higher), but densecrf elevates in float32 and crfrnn in float64, so residuals that are equal in exact arithmetic
compare equal in one and an ulp apart in the other: the tie goes a different way, and the point splats to other
vertices.

    python benchmarks/grid_ties.py
    python benchmarks/grid_ties.py --shape 16 32 32 --iterations 50 --shift 1e-3
"""

from __future__ import annotations

import argparse
import math

import numpy as np


def rank_ties(features: np.ndarray) -> tuple[float, float]:
    """Shares of points ``(N, D)`` whose elevated coordinates (float64, densecrf's elevation) have an exact tie in
    the simplex rank (two equal residuals) and a half-way tie in the rounding to the remainder-0 vertex.
    """
    n, d = features.shape
    d1 = d + 1
    scale = math.sqrt(2.0 / 3.0) * d1 / np.sqrt((np.arange(d) + 1.0) * (np.arange(d) + 2.0))
    el = np.empty((n, d1))
    sm = np.zeros(n)
    for j in range(d, 0, -1):
        cf = features[:, j - 1] * scale[j - 1]
        el[:, j] = sm - j * cf
        sm = sm + cf
    el[:, 0] = sm
    v = el / d1
    half = (np.abs(v - np.floor(v) - 0.5) < 1e-9).any(1)
    res = el - np.rint(v) * d1
    tie = np.zeros(n, bool)
    for i in range(d1):
        for j in range(i + 1, d1):
            tie |= np.abs(res[:, i] - res[:, j]) < 1e-9
    return float(tie.mean()), float(half.mean())


def run(module, utils, vol: np.ndarray, probs: np.ndarray, shift: float, iterations: int) -> np.ndarray:
    d = module.DenseCRF(vol.size, probs.shape[0])
    d.setUnaryEnergy(np.ascontiguousarray(utils.unary_from_softmax(probs)))
    gauss = utils.create_pairwise_gaussian(sdims=(1.0, 1.0, 1.0), shape=vol.shape) + np.float32(shift)
    bil = utils.create_pairwise_bilateral(sdims=(2.0, 2.0, 2.0), schan=(10.0,), img=vol[..., None], chdim=-1)
    d.addPairwiseEnergy(np.ascontiguousarray(gauss, dtype=np.float32), compat=3)
    d.addPairwiseEnergy(np.ascontiguousarray(bil + np.float32(shift), dtype=np.float32), compat=5)
    return np.array(d.inference(iterations))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", type=int, nargs=3, default=(12, 24, 24), metavar=("D", "H", "W"))
    parser.add_argument("--labels", type=int, default=3)
    parser.add_argument("--iterations", type=int, default=30)
    parser.add_argument("--shift", type=float, default=1e-3)
    args = parser.parse_args()
    import pydensecrf.densecrf as pdc
    import pydensecrf.utils as putils

    import crfrnn.compat.densecrf as cdc
    import crfrnn.compat.utils as cutils

    rng = np.random.default_rng(0)
    shape = tuple(args.shape)
    vol = np.clip(rng.normal(100, 20, shape) + 80 * (np.arange(shape[-1]) >= shape[-1] // 2), 0, 255).astype(np.uint8)
    p = rng.random((args.labels, *shape)) + 0.5 * (np.arange(shape[-1]) >= shape[-1] // 2) * (
        np.arange(args.labels)[:, None, None, None] == 0
    )
    probs = (p / p.sum(0)).astype(np.float32)
    t = args.iterations
    ours = run(cdc, cutils, vol, probs, 0.0, t)
    theirs = run(pdc, putils, vol, probs, 0.0, t)
    theirs_shifted = run(pdc, putils, vol, probs, args.shift, t)
    ours_shifted = run(cdc, cutils, vol, probs, args.shift, t)
    same = float((ours.argmax(0) == theirs.argmax(0)).mean())
    grid = putils.create_pairwise_gaussian(sdims=(1.0, 1.0, 1.0), shape=shape).T.astype(np.float64)
    ties, halves = rank_ties(grid)
    print(f"volume {shape}, {args.labels} labels, {t} iterations, integer positions (width 1)")
    print(f"  positions with an exact tie in the simplex rank {ties:.1%}, a half-way rounding tie {halves:.1%}")
    print(
        f"  exact grid:     max |Q_crfrnn - Q_pydensecrf| = {np.abs(ours - theirs).max():.3g}, labels equal {same:.3%}"
    )
    moved = np.abs(theirs - theirs_shifted).max()
    print(f"  pydensecrf itself, features shifted by {args.shift:g}: max |dQ| = {moved:.3g}")
    print(f"  both shifted:   max |Q_crfrnn - Q_pydensecrf| = {np.abs(ours_shifted - theirs_shifted).max():.3g}")


if __name__ == "__main__":
    main()

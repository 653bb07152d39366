"""Reductions over marginals in the padded layout: densecrf's free-energy sums in one pass
(:func:`free_energy_sums`).
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from crfrnn._kernels.layout import BLOCK

__all__ = ["free_energy_sums"]


@njit(cache=True, parallel=True, nogil=True)
def _free_energy_sums(q, logits, cr):  # pragma: no cover - compiled
    """Per block of points: ``sum q log max(q, 1e-20)``, ``sum q logits`` (float64), the count of non-finite and
    of negative values of ``q``, and the largest ``|sum_l q - 1|``, over the first ``cr`` channels.
    """
    n = q.shape[0]
    blocks = (n + BLOCK - 1) // BLOCK
    out = np.zeros((blocks, 5))
    for blk in prange(blocks):
        ent = 0.0
        eng = 0.0
        bad = 0
        neg = 0
        dev = 0.0
        for i in range(blk * BLOCK, min(n, (blk + 1) * BLOCK)):
            tot = 0.0
            for ch in range(cr):
                v = np.float64(q[i, ch])
                if not np.isfinite(v):
                    bad += 1
                    continue
                if v < 0:
                    neg += 1
                tot += v
                ent += v * np.log(max(v, 1e-20))
                eng += v * np.float64(logits[i, ch])
            dev = max(dev, abs(tot - 1.0))
        out[blk, 0] = ent
        out[blk, 1] = eng
        out[blk, 2] = bad
        out[blk, 3] = neg
        out[blk, 4] = dev
    return out


def free_energy_sums(q: np.ndarray, logits: np.ndarray, num_labels: int) -> dict:
    """The free-energy sums (densecrf's) of padded marginals ``q (P, C)`` and logits ``(P, C)`` (first ``L`` channels).

    Returns:
        ``entropy`` (``sum q log q``, with ``q`` floored at 1e-20 inside the log), ``energy`` (``sum q logits``),
        ``nonfinite`` and ``negative`` (counts of such values of ``q``) and ``deviation`` (the largest
        ``|sum_l q - 1|`` over points).
    """
    st = _free_energy_sums(q, logits, num_labels)
    return {
        "entropy": float(st[:, 0].sum()),
        "energy": float(st[:, 1].sum()),
        "nonfinite": int(st[:, 2].sum()),
        "negative": int(st[:, 3].sum()),
        "deviation": float(st[:, 4].max()) if len(st) else 0.0,
    }

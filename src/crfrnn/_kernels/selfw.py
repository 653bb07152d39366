"""Compiled self weights: each point's own weight through a lattice (the lattice operator's diagonal, for
self-exclusion), from the blur paths between its simplex's corners, walked once per distinct simplex of each chunk
of points.
"""

from __future__ import annotations

import numpy as np
import torch
from numba import njit, prange
from torch import Tensor

from crfrnn._kernels.construct import mix

__all__ = ["self_weights"]

_SELF_CHUNK = 16384  # points per chunk of :func:`_self_weights` (fixed: the result never depends on it)


@njit(cache=True, parallel=True, nogil=True)
def _self_weights(offsets, weights, rank, moves, path_r, path_q, path_w, path_steps, alpha, out):  # pragma: no cover
    """``out[p] = alpha sum_{r,q} w_pr w_pq B[o_pr, o_pq]``: each point's own weight through the lattice.

    ``B[u, v]`` sums the blur's paths from corner ``q`` to corner ``r`` of the point's simplex: along direction
    ``j`` a path stays (weight 1) or moves to a neighbour (weight 1/2), and dies where a vertex is absent.
    ``moves (D+1, 3, M+1)``: where a step of ``-1, 0, +1`` along direction ``j`` leads from each vertex (``M``,
    absent, leads to ``M``). The canonical simplex's paths (:func:`crfrnn.lattice._canonical_paths`), those
    with a weight only: ``path_r``, ``path_q``, ``path_w (n,)``, ``path_steps (D+1, n)``: path ``k``'s step
    plus 1 (0, 1, 2) along canonical coordinate ``i``; coordinate ``j`` of point ``p`` moves as the canonical
    coordinate of rank ``rank[p, j]``.

    ``B`` depends only on the simplex's vertices, and many points share a simplex (at 500x375, 187500 pixels
    lie in about 48000 simplices of either kernel). Each chunk of points finds its distinct simplices with a
    hash of the vertex rows, walks the paths once per simplex, all paths advancing together direction by
    direction (independent loads: one walk at a time runs at the latency of each load), and then gives every
    point ``w^T B w``. Sums in float64; ``out (P,)`` float64.
    """
    num_points, d1 = offsets.shape
    npaths = path_r.shape[0]
    stride = moves.shape[2]
    chunks = (num_points + _SELF_CHUNK - 1) // _SELF_CHUNK
    for ch in prange(chunks):
        lo = ch * _SELF_CHUNK
        n = min(num_points, lo + _SELF_CHUNK) - lo
        size = 1
        while size < 2 * n:
            size *= 2
        mask = size - 1
        table = np.full(size, -1, np.int32)  # slot -> distinct simplex id
        rep = np.empty(n, np.int64)  # distinct simplex -> its first point
        ids = np.empty(n, np.int32)
        count = 0
        for i in range(n):
            p = lo + i
            code = np.uint64(0)
            for r in range(d1):
                code = code * np.uint64(0x100000001B3) + np.uint64(offsets[p, r])
            h = mix(code, mask)
            while True:
                e = table[h]
                if e < 0:
                    table[h] = count
                    rep[count] = p
                    ids[i] = count
                    count += 1
                    break
                same = True
                for r in range(d1):
                    if offsets[rep[e], r] != offsets[p, r]:
                        same = False
                        break
                if same:
                    ids[i] = e
                    break
                h = (h + 1) & mask
        b = np.zeros((count, d1, d1))
        cur = np.empty(npaths, np.int32)
        for u in range(count):
            p = rep[u]
            for k in range(npaths):
                cur[k] = offsets[p, path_q[k]]
            for j in range(d1):
                mj = moves[j].reshape(-1)
                sj = path_steps[rank[p, j]]
                for k in range(npaths):
                    cur[k] = mj[sj[k] * stride + cur[k]]
            for k in range(npaths):
                if cur[k] == offsets[p, path_r[k]]:
                    b[u, path_r[k], path_q[k]] += path_w[k]
        for i in range(n):
            p = lo + i
            bu = b[ids[i]]
            total = 0.0
            for r in range(d1):
                wr = float(weights[p, r])
                for q in range(d1):
                    total += wr * float(weights[p, q]) * bu[r, q]
            out[p] = alpha * total


def self_weights(
    offsets: Tensor, weights: Tensor, rank: Tensor, neighbours: Tensor, alpha: float, steps: Tensor, path_w: Tensor
) -> Tensor:
    """``(P,)`` every point's own weight through a lattice, in the weights' dtype (see :func:`_self_weights`;
    ``steps (D+1, D+1, 3, D+1)`` and ``path_w (D+1, D+1, 3)`` are :func:`crfrnn.lattice._canonical_paths` for the
    lattice's dimension).

    The same sums as the PyTorch path's walk of every blur path, compiled: at 500x375 with 5-D bilateral features
    the PyTorch walk took as long as ten mean-field iterations.
    """
    nb = np.ascontiguousarray(neighbours.numpy(), dtype=np.int32)
    d1, _, m = nb.shape
    moves = np.empty((d1, 3, m + 1), np.int32)
    moves[:, 0, :m] = nb[:, 1]  # step -1
    moves[:, 1] = np.arange(m + 1, dtype=np.int32)  # step 0: stay
    moves[:, 2, :m] = nb[:, 0]  # step +1
    moves[:, :, m] = m
    pw = path_w.numpy()
    r, q, c = np.nonzero(pw)
    out = np.empty(offsets.shape[0], np.float64)
    w = np.ascontiguousarray(weights.detach().numpy())
    _self_weights(
        np.ascontiguousarray(offsets.numpy(), dtype=np.int32),
        w,
        np.ascontiguousarray(rank.numpy()),
        moves,
        r.astype(np.int64),
        q.astype(np.int64),
        pw[r, q, c].astype(np.float64),
        np.ascontiguousarray(steps.numpy()[r, q, c].T + 1, dtype=np.int32),
        float(alpha),
        out,
    )
    return torch.from_numpy(out).to(weights.dtype)

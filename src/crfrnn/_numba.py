"""Compiled CPU kernels for the permutohedral lattice (numba), used automatically on the CPU.

They compute exactly what the pure PyTorch path in :mod:`crfrnn.lattice` computes (which stays the
reference on every device), but with fewer passes over memory:

- construction: simplex coordinates of all points in parallel, then one sequential pass that hashes
  each vertex key's int64 code (skipping the hash when a point shares a vertex with the previous point,
  which is the common case on images), then all neighbour look-ups in parallel;
- splat with one private accumulation buffer per thread (each thread scatters its own run of points,
  then the buffers are summed), so that it is parallel without atomics or races; blur and slice are
  gathers by construction.

Kernels are compiled on first use and cached on disk (``cache=True``), so later processes start warm.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

try:
    import numba
    from numba import njit, prange

    AVAILABLE = True
except ImportError:  # pragma: no cover - exercised only where numba is missing
    AVAILABLE = False

__all__ = ["AVAILABLE", "build", "NumbaOperators"]

if AVAILABLE:

    @njit(cache=True, parallel=True)
    def _coordinates(features, keys, weights, ranks):  # pragma: no cover - compiled
        num_points, d = features.shape
        d1 = d + 1
        inv_std_dev = math.sqrt(2.0 / 3.0) * d1
        scale = np.empty(d)
        for i in range(d):
            scale[i] = inv_std_dev / math.sqrt((i + 1.0) * (i + 2.0))
        for p in prange(num_points):
            elevated = np.empty(d1)
            rem0 = np.empty(d1)
            rank = np.zeros(d1, np.int64)
            bary = np.zeros(d + 2)
            sm = 0.0
            for j in range(d, 0, -1):
                cf = features[p, j - 1] * scale[j - 1]
                elevated[j] = sm - j * cf
                sm += cf
            elevated[0] = sm
            total = 0
            for i in range(d1):
                r = np.rint(elevated[i] / d1)
                rem0[i] = r * d1
                total += np.int64(r)
            for i in range(d):
                di = elevated[i] - rem0[i]
                for j in range(i + 1, d1):
                    if di < elevated[j] - rem0[j]:
                        rank[i] += 1
                    else:
                        rank[j] += 1
            for i in range(d1):
                rank[i] += total
                if rank[i] < 0:
                    rank[i] += d1
                    rem0[i] += d1
                elif rank[i] > d:
                    rank[i] -= d1
                    rem0[i] -= d1
            for i in range(d1):
                v = (elevated[i] - rem0[i]) / d1
                bary[d - rank[i]] += v
                bary[d - rank[i] + 1] -= v
            bary[0] += 1.0 + bary[d + 1]
            for r in range(d1):
                weights[p, r] = bary[r]
                ranks[p, r] = rank[r]
                for i in range(d):
                    c = r if rank[i] <= d - r else r - d1
                    keys[p, r, i] = np.int64(rem0[i]) + c

    @njit(cache=True)
    def _mix(code, mask):  # pragma: no cover - compiled
        h = np.uint64(code) * np.uint64(0x9E3779B97F4A7C15)
        return np.int64((h >> np.uint64(32)) ^ (h & np.uint64(0xFFFFFFFF))) & mask

    @njit(cache=True)
    def _insert_all(codes, d1):  # pragma: no cover - compiled
        """Dense vertex id of every code (first-seen order) and the hash table that finds them."""
        n = codes.shape[0]
        cap = 1 << 12
        table_code = np.empty(cap, np.int64)
        table_id = np.full(cap, -1, np.int64)
        uniq = np.empty(max(n, 1), np.int64)
        ids = np.empty(n, np.int64)
        m = 0
        for k in range(n):
            c = codes[k]
            if k >= d1 and codes[k - d1] == c:  # same vertex as the previous point's
                ids[k] = ids[k - d1]
                continue
            mask = cap - 1
            h = _mix(c, mask)
            while True:
                e = table_id[h]
                if e < 0:
                    table_id[h] = m
                    table_code[h] = c
                    uniq[m] = c
                    ids[k] = m
                    m += 1
                    break
                if table_code[h] == c:
                    ids[k] = e
                    break
                h = (h + 1) & mask
            if 2 * m > cap:  # grow and re-insert
                cap *= 4
                mask = cap - 1
                table_code = np.empty(cap, np.int64)
                table_id = np.full(cap, -1, np.int64)
                for e in range(m):
                    h = _mix(uniq[e], mask)
                    while table_id[h] >= 0:
                        h = (h + 1) & mask
                    table_id[h] = e
                    table_code[h] = uniq[e]
        return ids, uniq[:m].copy(), table_code, table_id

    @njit(cache=True, parallel=True)
    def _neighbour_ids(uniq, deltas, table_code, table_id):  # pragma: no cover - compiled
        m = uniq.shape[0]
        d1 = deltas.shape[0]
        mask = table_code.shape[0] - 1
        out = np.empty((d1, 2, m), np.int64)
        for v in prange(m):
            for j in range(d1):
                for s in range(2):
                    c = uniq[v] + deltas[j] if s == 0 else uniq[v] - deltas[j]
                    h = _mix(c, mask)
                    found = m
                    while True:
                        e = table_id[h]
                        if e < 0:
                            break
                        if table_code[h] == c:
                            found = e
                            break
                        h = (h + 1) & mask
                    out[j, s, v] = found
        return out

    @njit(cache=True, parallel=True)
    def _bounds(keys):  # pragma: no cover - compiled
        num_points, d1, d = keys.shape
        lo = np.empty(d, np.int64)
        hi = np.empty(d, np.int64)
        for i in prange(d):
            a = keys[0, 0, i]
            b = a
            for p in range(num_points):
                for r in range(d1):
                    k = keys[p, r, i]
                    a = min(a, k)
                    b = max(b, k)
            lo[i] = a
            hi[i] = b
        return lo, hi

    @njit(cache=True, parallel=True)
    def _encode(keys, lo, strides, per_image):  # pragma: no cover - compiled
        num_points, d1, d = keys.shape
        codes = np.empty(num_points * d1, np.int64)
        for p in prange(num_points):
            base = (p // per_image) * strides[d]
            for r in range(d1):
                c = base
                for i in range(d):
                    c += (keys[p, r, i] - lo[i]) * strides[i]
                codes[p * d1 + r] = c
        return codes

    @njit(cache=True, parallel=True)
    def _filter(values, weights, offsets, neighbours, num_vertices, alpha, reverse, nthreads):  # pragma: no cover
        num_points, c = values.shape
        d1 = offsets.shape[1]
        m = num_vertices
        # splat: each thread scatters its own run of points into a private buffer (no races, and
        # deterministic for a given thread count), then the buffers are summed
        bufs = np.zeros((nthreads, m + 1, c), values.dtype)
        chunk = (num_points + nthreads - 1) // nthreads
        for t in prange(nthreads):
            b = bufs[t]
            for p in range(t * chunk, min(num_points, (t + 1) * chunk)):
                for r in range(d1):
                    o = offsets[p, r]
                    w = weights[p, r]
                    for ch in range(c):
                        b[o, ch] += w * values[p, ch]
        buf = bufs[0]
        for t in range(1, nthreads):
            for v in prange(m):
                for ch in range(c):
                    buf[v, ch] += bufs[t, v, ch]
        # blur along each lattice direction; row m stays zero and stands for an absent neighbour
        tmp = bufs[1] if nthreads > 1 else np.zeros((m + 1, c), values.dtype)
        for step in range(d1):
            j = d1 - 1 - step if reverse else step
            for v in prange(m):
                a = neighbours[j, 0, v]
                b2 = neighbours[j, 1, v]
                for ch in range(c):
                    tmp[v, ch] = buf[v, ch] + 0.5 * (buf[a, ch] + buf[b2, ch])
            buf, tmp = tmp, buf
        out = np.empty((num_points, c), values.dtype)
        for p in prange(num_points):  # slice
            for ch in range(c):
                out[p, ch] = 0.0
            for r in range(d1):
                w = weights[p, r] * alpha
                o = offsets[p, r]
                for ch in range(c):
                    out[p, ch] += w * buf[o, ch]
        return out


def build(features: Tensor, batch_size: int) -> tuple[Tensor, Tensor, Tensor, Tensor, int] | None:
    """Lattice of ``(P, D)`` CPU features (``P = B * N``, images contiguous), or None if keys overflow int64.

    Returns ``(offsets (P, D+1) int64, weights (P, D+1) float64, rank (P, D+1) int64,
    neighbours (D+1, 2, M) int64 with M for an absent neighbour, M)``.
    """
    feats = np.ascontiguousarray(features.detach().numpy(), dtype=np.float64)
    num_points, d = feats.shape
    d1 = d + 1
    keys = np.empty((num_points, d1, d), np.int64)
    weights = np.empty((num_points, d1), np.float64)
    ranks = np.empty((num_points, d1), np.int64)
    _coordinates(feats, keys, weights, ranks)
    # int64 codes of (lattice key, batch index), with room for neighbours (at most d away per coordinate)
    lo, hi = _bounds(keys)
    lo = lo - d
    span = np.append(hi + d - lo + 1, batch_size)
    from crfrnn.lattice import _MAX_CODE_BITS

    if float(np.log2(span.astype(np.float64)).sum()) >= _MAX_CODE_BITS:
        return None
    strides = np.cumprod(np.concatenate([[1], span[:-1]])).astype(np.int64)
    codes = _encode(keys, lo, strides, num_points // batch_size)
    ids, uniq, table_code, table_id = _insert_all(codes, d1)
    # code of the neighbour along direction j: key - 1 + (d + 1) e_j on the first d coordinates
    off = -np.ones((d1, d), np.int64) + d1 * np.eye(d1, d, dtype=np.int64)
    deltas = (off * strides[:d]).sum(1)
    neighbours = _neighbour_ids(uniq, deltas, table_code, table_id)
    m = uniq.shape[0]
    return (
        torch.from_numpy(ids.reshape(num_points, d1)),
        torch.from_numpy(weights),
        torch.from_numpy(ranks),
        torch.from_numpy(neighbours),
        m,
    )


class NumbaOperators:
    """Splat/blur/slice of one lattice in one dtype with the compiled kernels (CPU tensors only)."""

    def __init__(self, offsets: Tensor, weights: Tensor, neighbours: Tensor, num_vertices: int, alpha: float):
        self.offsets = np.ascontiguousarray(offsets.numpy(), dtype=np.int64)
        self.weights = np.ascontiguousarray(weights.numpy())
        self.neighbours = np.ascontiguousarray(neighbours.numpy(), dtype=np.int64)
        self.num_vertices = num_vertices
        self.alpha = alpha

    def __call__(self, values: Tensor, reverse: bool) -> Tensor:
        vals = values.detach().numpy()
        out = _filter(
            vals, self.weights, self.offsets, self.neighbours, self.num_vertices, vals.dtype.type(self.alpha), reverse,
            numba.get_num_threads(),
        )
        return torch.from_numpy(out)

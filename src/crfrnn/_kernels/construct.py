"""Compiled construction of the permutohedral lattice: elevation, enclosing simplices, the vertex hash, neighbours.

Simplex coordinates of all points in parallel, then the vertex hash: each run of points hashes its vertex keys'
int64 codes (skipping the hash when a point shares a vertex with the previous point, which is the common case on
images), the runs' distinct codes are merged in first-seen order in parallel (partitioned by hash), and all
neighbour look-ups run in parallel. :func:`build` runs them all; :func:`mix` is the hash's slot function (also used by
:mod:`crfrnn._kernels.selfw`).
"""

from __future__ import annotations

import functools
import math

import numba
import numpy as np
import torch
from numba import njit, prange
from torch import Tensor

__all__ = ["build", "elevated_bounds", "insert_all", "insert_runs", "mix", "neighbour_ids", "simplices"]


@njit(cache=True, inline="always")
def _elevate(features, p, scale, elevated):  # pragma: no cover - compiled
    """Embed point ``p`` in the hyperplane ``x . 1 = 0`` of R^(d+1) (Adams et al., p. 5)."""
    d = features.shape[1]
    sm = 0.0
    for j in range(d, 0, -1):
        cf = features[p, j - 1] * scale[j - 1]
        elevated[j] = sm - j * cf
        sm += cf
    elevated[0] = sm


@njit(cache=True, inline="always")
def _elevate_d(features, p, scale, elevated, d):  # pragma: no cover - compiled
    """:func:`_elevate` for ``d`` features given by the caller (a compile-time constant in ``_simplices_for``)."""
    sm = 0.0
    for j in range(d, 0, -1):
        cf = features[p, j - 1] * scale[j - 1]
        elevated[j] = sm - j * cf
        sm += cf
    elevated[0] = sm


@njit(cache=True, parallel=True, nogil=True)
def elevated_bounds(features, scale, num_chunks):  # pragma: no cover - compiled
    """Per-chunk minimum and maximum of the first ``d`` elevated coordinates ``(chunks, 2, d)``, chunks in parallel
    (sequential, it was the one stage of the build that did not shrink with threads). ``features`` float32 or
    float64; the coordinates are float64 either way.
    """
    num_points, d = features.shape
    out = np.empty((num_chunks, 2, d))
    chunk = (num_points + num_chunks - 1) // num_chunks
    for k in prange(num_chunks):
        elevated = np.empty(d + 1)
        lo = np.full(d, np.inf)
        hi = np.full(d, -np.inf)
        for p in range(k * chunk, min(num_points, (k + 1) * chunk)):
            _elevate(features, p, scale, elevated)
            for i in range(d):
                lo[i] = min(lo[i], elevated[i])
                hi[i] = max(hi[i], elevated[i])
        for i in range(d):  # element by element: an array assignment compiles numba's shape-error formatting
            out[k, 0, i] = lo[i]
            out[k, 1, i] = hi[i]
    return out


@functools.lru_cache(maxsize=None)
def _simplices_for(d: int):
    """:func:`simplices` for ``d`` features: ``d`` is a compile-time constant there, so LLVM unrolls every
    per-point loop (faster than with ``d`` read from the array; cached on disk per ``d``).
    """
    d1 = d + 1

    @njit(cache=True, parallel=True, nogil=True)
    def simplices(features, scale, lo, strides, per_image, num_chunks, codes, weights, ranks):  # pragma: no cover
        """Enclosing simplex of every point: int64 codes of its ``d + 1`` vertex keys, weights, ranks (``features``
        float32 or float64, computed in float64 either way).

        The same arithmetic as ``crfrnn.lattice._simplex_coordinates`` (densecrf's construction); the
        code of key ``k`` of a point in image ``b`` is ``sum_i (k_i - lo_i) strides_i + b strides_d``.
        """
        num_points = features.shape[0]
        chunk = (num_points + num_chunks - 1) // num_chunks
        stride_sum = 0
        for i in range(d):
            stride_sum += strides[i]
        for k in prange(num_chunks):  # scratch allocated once per chunk, not per point
            elevated = np.empty(d1)
            rem0 = np.empty(d1)
            rank = np.empty(d1, np.int64)
            by_rank = np.empty(d1, np.int64)
            bary = np.empty(d + 2)
            for p in range(k * chunk, min(num_points, (k + 1) * chunk)):
                _elevate_d(features, p, scale, elevated, d)
                total = 0
                for i in range(d1):
                    r = np.rint(elevated[i] / d1)
                    rem0[i] = r * d1
                    total += np.int64(r)
                    rank[i] = 0
                if d <= 2:  # few comparisons, and on a grid they follow a pattern the branch predictor learns
                    for i in range(d):
                        di = elevated[i] - rem0[i]
                        for j in range(i + 1, d1):
                            if di < elevated[j] - rem0[j]:
                                rank[i] += 1
                            else:
                                rank[j] += 1
                else:  # d (d + 1) / 2 comparisons of residuals whose order is random: branch-free
                    for i in range(d1):
                        bary[i] = elevated[i] - rem0[i]
                    for i in range(d):
                        di = bary[i]
                        for j in range(i + 1, d1):
                            less = np.int64(di < bary[j])
                            rank[i] += less
                            rank[j] += 1 - less
                if d <= 2:  # wrap the ranks into 0..d
                    for i in range(d1):
                        rank[i] += total
                        if rank[i] < 0:
                            rank[i] += d1
                            rem0[i] += d1
                        elif rank[i] > d:
                            rank[i] -= d1
                            rem0[i] -= d1
                else:  # branch-free: which ranks wrap is as random
                    for i in range(d1):
                        ri = rank[i] + total
                        wrap = np.int64(ri < 0) - np.int64(ri > d)
                        rank[i] = ri + d1 * wrap
                        rem0[i] += d1 * wrap
                bary[:] = 0.0
                for i in range(d1):
                    v = (elevated[i] - rem0[i]) / d1
                    bary[d - rank[i]] += v
                    bary[d - rank[i] + 1] -= v
                bary[0] += 1.0 + bary[d + 1]
                # Key r adds r to every coordinate of the remainder-0 key and takes d + 1 off those of rank
                # above d - r: from key r to key r + 1 one more coordinate wraps, the one of rank d - r (O(d) per
                # point, not O(d^2)).
                c = (p // per_image) * strides[d]
                for i in range(d):
                    c += (np.int64(rem0[i]) - lo[i]) * strides[i]
                    by_rank[rank[i]] = i
                by_rank[rank[d]] = d
                for r in range(d1):
                    weights[p, r] = bary[r]
                    ranks[p, r] = rank[r]
                    codes[p * d1 + r] = c
                    i = by_rank[d - r]
                    c += stride_sum - (d1 * strides[i] if i < d else 0)

    return simplices


def simplices(features, scale, lo, strides, per_image, num_chunks, codes, weights, ranks):
    """Enclosing simplex of every point of ``features (P, D)`` (see :func:`_simplices_for`), into the outputs."""
    _simplices_for(features.shape[1])(features, scale, lo, strides, per_image, num_chunks, codes, weights, ranks)


@njit(cache=True, nogil=True)
def mix(code, mask):  # pragma: no cover - compiled
    h = np.uint64(code) * np.uint64(0x9E3779B97F4A7C15)
    return np.int64((h >> np.uint64(32)) ^ (h & np.uint64(0xFFFFFFFF))) & mask


@njit(cache=True, inline="always")
def _find_or_add(table, mask, c, m):  # pragma: no cover - compiled
    """The id of code ``c`` in the hash table, or ``m`` after adding it with that id (linear probing)."""
    h = mix(c, mask)
    while True:
        e = table[2 * h + 1]
        if e < 0:
            table[2 * h] = c
            table[2 * h + 1] = m
            return m
        if table[2 * h] == c:
            return e
        h = (h + 1) & mask


@njit(cache=True, inline="always")
def _insert_range(codes, d1, start, stop, ids, uniq, first):  # pragma: no cover - compiled
    """Hash ``codes[start:stop]``: ``ids[k]`` = the dense id of code ``k`` in first-seen order within the range,
    ``uniq[first + i]`` = the code of id ``i``; returns ``(count, table)``.

    The table is open addressing with linear probing, ``(code, id)`` pairs side by side so that a probe reads
    one cache line (two separate arrays were slower); an empty slot has id -1. A point
    that shares a vertex with the previous point in the range (the common case on images) skips the hash.
    """
    cap = 1 << 12
    mask = cap - 1
    table = np.full(2 * cap, -1, np.int64)
    m = 0
    for k in range(start, stop):
        c = codes[k]
        if k - d1 >= start and codes[k - d1] == c:  # same vertex as the previous point's
            ids[k] = ids[k - d1]
            continue
        e = _find_or_add(table, mask, c, m)
        ids[k] = e
        if e == m:  # a new code
            uniq[first + m] = c
            m += 1
        if 2 * m > cap:  # grow and re-insert
            cap *= 4
            mask = cap - 1
            table = np.full(2 * cap, -1, np.int64)
            for e in range(m):
                h = mix(uniq[first + e], mask)
                while table[2 * h + 1] >= 0:
                    h = (h + 1) & mask
                table[2 * h] = uniq[first + e]
                table[2 * h + 1] = e
    return m, table


@njit(cache=True, nogil=True)
def insert_all(codes, d1):  # pragma: no cover - compiled
    """Dense vertex id of every code (first-seen order), the distinct codes, the hash table that finds them and its
    partition bits (0: one partition; :func:`_insert_range` over all codes; the reference for :func:`insert_runs`).
    """
    n = codes.shape[0]
    uniq = np.empty(max(n, 1), np.int64)
    ids = np.empty(n, np.int32)
    m, table = _insert_range(codes, d1, 0, n, ids, uniq, 0)
    return ids, uniq[:m].copy(), table, 0


_PARTITION_BITS = 6  # the parallel merge's 64 partitions of the codes (by hash): work for up to 64 threads
_CODE_PIECE = 16_384  # codes per piece of insert_runs' last pass


@njit(cache=True, inline="always")
def _slot(c, qbits, seg_mask):  # pragma: no cover - compiled
    """First slot of code ``c`` in a table of ``2**qbits`` segments of ``seg_mask + 1`` slots: the segment is the
    hash's low ``qbits`` bits, the slot in it the next ones (with ``qbits = 0``, :func:`mix` itself).
    """
    h = mix(c, 0xFFFFFFFF)
    return (h & ((1 << qbits) - 1)) * (seg_mask + 1), (h >> qbits) & seg_mask


@njit(cache=True, parallel=True, nogil=True)
def insert_runs(codes, d1, runs):  # pragma: no cover - compiled
    """:func:`insert_all` in ``runs`` parallel runs of whole points, with the same ids and distinct codes.

    Each run hashes its own codes (first-seen order within the run); their distinct codes, run after run, are in
    the global first-seen order. They are merged in parallel by partition (the hash's low bits): each partition
    walks its codes in that order in its own segment of the table and keeps the position of each code's first
    occurrence; a count of first occurrences run by run then numbers them, and a last parallel pass maps each
    code's run id to its global id. Nothing here depends on the thread count.
    """
    if runs <= 1:  # one thread now (a busy machine): the sequential hash, in the same compiled function
        return insert_all(codes, d1)
    n = codes.shape[0]
    per = ((n // d1 + runs - 1) // runs) * d1
    local = np.empty(n, np.int32)
    uniq = np.empty(max(n, 1), np.int64)
    counts = np.zeros(runs, np.int64)
    nq = 1 << _PARTITION_BITS
    pcount = np.zeros((runs, nq), np.int64)
    for j in prange(runs):
        start = min(n, j * per)
        m, _ = _insert_range(codes, d1, start, min(n, start + per), local, uniq, start)
        counts[j] = m
        for i in range(m):
            pcount[j, _slot(uniq[start + i], _PARTITION_BITS, 0)[0]] += 1
    offs = np.zeros(runs + 1, np.int64)  # run j's distinct codes are positions offs[j]... of the merge
    for j in range(runs):
        offs[j + 1] = offs[j] + counts[j]
    total = offs[runs]
    qoff = np.zeros((nq, runs + 1), np.int64)  # run j's codes of partition q start at qoff[q, j] of the buckets
    largest = 0
    acc = 0
    for q in range(nq):
        qoff[q, 0] = acc
        for j in range(runs):
            acc += pcount[j, q]
            qoff[q, j + 1] = acc
        largest = max(largest, qoff[q, runs] - qoff[q, 0])
    seg = 16
    while seg < 2 * largest:
        seg *= 2
    bucket = np.empty(max(total, 1), np.int64)  # merge positions, by partition, in merge order within each
    merged = np.empty(max(total, 1), np.int64)  # the code at every merge position
    for j in prange(runs):
        start = min(n, j * per)
        fill = qoff[:, j].copy()
        for i in range(counts[j]):
            c = uniq[start + i]
            merged[offs[j] + i] = c
            q = _slot(c, _PARTITION_BITS, 0)[0]
            bucket[fill[q]] = offs[j] + i
            fill[q] += 1
    first = np.empty(max(total, 1), np.int64)  # merge position of each code's first occurrence
    firsts = np.zeros((nq, runs), np.int64)  # first occurrences by partition and run
    table = np.empty(2 * nq * seg, np.int64)
    for q in prange(nq):  # each partition fills its own segment (first touch in parallel)
        base = 2 * q * seg
        table[base : base + 2 * seg] = -1
        for j in range(runs):
            for k in range(qoff[q, j], qoff[q, j + 1]):  # run j's codes of partition q
                pos = bucket[k]
                c = merged[pos]
                _, h = _slot(c, _PARTITION_BITS, seg - 1)
                while True:
                    e = table[base + 2 * h + 1]
                    if e < 0:
                        table[base + 2 * h] = c
                        table[base + 2 * h + 1] = pos
                        first[pos] = pos
                        firsts[q, j] += 1
                        break
                    if table[base + 2 * h] == c:
                        first[pos] = e
                        break
                    h = (h + 1) & (seg - 1)
    new = np.zeros(runs + 1, np.int64)  # first occurrences in the runs before run j
    for j in range(runs):
        new[j + 1] = new[j] + firsts[:, j].sum()
    gid = np.empty(max(total, 1), np.int64)  # global id of the first occurrences (at their merge positions)
    out = np.empty(max(new[runs], 1), np.int64)
    for j in prange(runs):
        g = new[j]
        for pos in range(offs[j], offs[j + 1]):
            if first[pos] == pos:
                gid[pos] = g
                out[g] = merged[pos]
                g += 1
    for q in prange(nq):  # the table's positions become ids
        for h in range(q * seg, (q + 1) * seg):
            if table[2 * h + 1] >= 0:
                table[2 * h + 1] = gid[table[2 * h + 1]]
    # In place, the run ids become the global ids. Run 0's already are (its codes come first in the merge, each a
    # first occurrence, numbered in order); the other runs' codes go in pieces to every thread.
    head = min(n, per)
    for i in prange((n - head + _CODE_PIECE - 1) // _CODE_PIECE):
        k = head + i * _CODE_PIECE
        stop = min(n, k + _CODE_PIECE)
        while k < stop:  # a piece may span the end of a run
            j = k // per
            end = min(stop, (j + 1) * per)
            o = offs[j]
            for kk in range(k, end):
                local[kk] = gid[first[o + local[kk]]]
            k = end
    return local, out[: new[runs]].copy(), table, _PARTITION_BITS


@njit(cache=True, parallel=True, nogil=True)
def neighbour_ids(uniq, deltas, table, qbits):  # pragma: no cover - compiled
    """``(D + 1, 2, M)`` the id of each vertex's neighbours ``uniq[v] +- deltas[j]`` (``M`` where absent) in the hash
    table of :func:`insert_all` or :func:`insert_runs` with its partition bits ``qbits``.
    """
    m = uniq.shape[0]
    d1 = deltas.shape[0]
    seg_mask = (table.shape[0] // 2 >> qbits) - 1
    out = np.empty((d1, 2, m), np.int32)
    for v in prange(m):
        for j in range(d1):
            for s in range(2):
                c = uniq[v] + deltas[j] if s == 0 else uniq[v] - deltas[j]
                base, h = _slot(c, qbits, seg_mask)
                found = m
                while True:
                    e = table[2 * (base + h) + 1]
                    if e < 0:
                        break
                    if table[2 * (base + h)] == c:
                        found = e
                        break
                    h = (h + 1) & seg_mask
                out[j, s, v] = found
    return out


def build(features: Tensor, batch_size: int, max_code_bits: int) -> tuple[Tensor, Tensor, Tensor, Tensor, int] | None:
    """Lattice of ``(P, D)`` CPU features (``P = B * N``, images contiguous), or None if a vertex key's code
    would need ``max_code_bits`` bits or more (the caller then uses its general construction).

    Returns ``(offsets (P, D+1) int32, weights (P, D+1) in the features' dtype, rank (P, D+1) int8,
    neighbours (D+1, 2, M) int32 with M for an absent neighbour, M)``.
    """
    feats = features.detach().numpy()
    if feats.dtype != np.float32:  # float32 is read as it is (the kernels compute in float64 either way): no copy
        feats = feats.astype(np.float64, copy=False)
    feats = np.ascontiguousarray(feats)
    num_points, d = feats.shape
    d1 = d + 1
    scale = math.sqrt(2.0 / 3.0) * d1 / np.sqrt((np.arange(d) + 1.0) * (np.arange(d) + 2.0))
    num_chunks = max(1, min(num_points // 1024, 8 * numba.get_num_threads()))
    bounds = elevated_bounds(feats, scale, num_chunks)
    # Keys lie within d1 + d of the elevated coordinates (rounding to a multiple of d1, the wrap
    # adjustment and the simplex offset); neighbours are a further d away.
    lo = np.floor(bounds[:, 0].min(0)).astype(np.int64) - (2 * d1 + 2 * d)
    hi = np.ceil(bounds[:, 1].max(0)).astype(np.int64) + (2 * d1 + 2 * d)
    span = np.append(hi - lo + 1, batch_size)
    if float(np.log2(span.astype(np.float64)).sum()) >= max_code_bits:
        return None
    strides = np.cumprod(np.concatenate([[1], span[:-1]])).astype(np.int64)
    codes = np.empty(num_points * d1, np.int64)
    weights = np.empty((num_points, d1), np.float32 if features.dtype == torch.float32 else np.float64)
    ranks = np.empty((num_points, d1), np.int8)
    simplices(feats, scale, lo, strides, num_points // batch_size, num_chunks, codes, weights, ranks)
    # the same ids either way (tested): in parallel runs where there are threads and enough points. Which function
    # runs follows the configured thread maximum, not the threads of the moment (fewer on a busy machine, and then
    # insert_runs hashes sequentially itself): a process whose kernels were cached on a quiet machine compiled the
    # other one, half a minute's message included, the first time the machine was busy.
    parallel = numba.config.NUMBA_NUM_THREADS > 1 and num_points >= 16_384  # type: ignore[attr-defined]
    hashed = insert_runs(codes, d1, numba.get_num_threads()) if parallel else insert_all(codes, d1)
    ids, uniq, table, qbits = hashed
    # code of the neighbour along direction j: key - 1 + (d + 1) e_j on the first d coordinates
    off = -np.ones((d1, d), np.int64) + d1 * np.eye(d1, d, dtype=np.int64)
    deltas = (off * strides[:d]).sum(1)
    neighbours = neighbour_ids(uniq, deltas, table, qbits)
    return (
        torch.from_numpy(ids.reshape(num_points, d1)),
        torch.from_numpy(weights),
        torch.from_numpy(ranks),
        torch.from_numpy(neighbours),
        uniq.shape[0],
    )

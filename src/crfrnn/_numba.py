"""Compiled CPU kernels for the permutohedral lattice (numba), used automatically on the CPU.

They compute exactly what the pure PyTorch path in :mod:`crfrnn.lattice` computes (which stays the
reference on every device), but with fewer passes over memory:

- construction: simplex coordinates of all points in parallel, then one sequential pass that hashes
  each vertex key's int64 code (skipping the hash when a point shares a vertex with the previous point,
  which is the common case on images), then all neighbour look-ups in parallel;
- splat with one private accumulation buffer per run of points (each run scatters its points in order,
  then the buffers are summed in order), so that it is parallel without atomics or races and gives the
  same sums for any number of threads; blur and slice are gathers by construction;
- the softmax is LLVM vector code (an intrinsic) for the usual padded channel counts (2, 4, 8, 16, 24, 32):
  each row's maximum and sum are vector reductions, four rows interleaved; other counts use loops;
- each point's self weight (the lattice operator's diagonal, for self-exclusion) from the blur paths between
  its simplex's corners, walked once per distinct simplex of each chunk of points.

Kernels are compiled on first use and cached on disk (``cache=True``), so later processes start warm.
"""

from __future__ import annotations

import functools
import math
import threading
from typing import NamedTuple, Optional

import numpy as np
import torch
from torch import Tensor

try:
    import numba
    from numba import njit, prange, types
    from llvmlite import ir
    from numba.core import cgutils
    from numba.extending import intrinsic, overload

    AVAILABLE = True
except ImportError:  # pragma: no cover - exercised only where numba is missing
    AVAILABLE = False

__all__ = [
    "AVAILABLE", "NumbaOperators", "Prepared", "adjoint_slice", "blur", "blur_result", "build", "channels_first",
    "channels_last", "gram", "mean_field", "padded_channels", "prepare", "self_weights", "softmax_backward",
    "softmax_rows", "splat", "splat_parts", "splat_runs", "unary_from_scores",
]

if AVAILABLE:

    # Fast-math flags for the kernels that take softmaxes and the splat: reassociation lets LLVM vectorise the row maxima and
    # sums (inputs are finite: the unary is checked, and exp is clamped, so no NaN or inf flags are needed).
    _FAST = {"nsz", "arcp", "contract", "afn", "reassoc"}

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
    def _elevated_bounds(features, scale, num_chunks):  # pragma: no cover - compiled
        """Per-chunk minimum and maximum of the first ``d`` elevated coordinates ``(chunks, 2, d)``."""
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
            out[k, 0] = lo
            out[k, 1] = hi
        return out

    @functools.lru_cache(maxsize=None)
    def _simplices_for(d: int):
        """:func:`_simplices` for ``d`` features: ``d`` is a compile-time constant there, so LLVM unrolls every
        per-point loop (0.55x to 0.7x of the time with ``d`` read from the array; cached on disk per ``d``)."""
        d1 = d + 1

        @njit(cache=True, parallel=True, nogil=True)
        def simplices(features, scale, lo, strides, per_image, num_chunks, codes, weights, ranks):  # pragma: no cover
            """Enclosing simplex of every point: int64 codes of its ``d + 1`` vertex keys, weights, ranks.

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
                    else:  # d (d + 1) / 2 comparisons of residuals whose order is random: branch-free (5-D 0.7x)
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

    def _simplices(features, scale, lo, strides, per_image, num_chunks, codes, weights, ranks):
        """Enclosing simplex of every point of ``features (P, D)`` (see :func:`_simplices_for`), into the outputs."""
        _simplices_for(features.shape[1])(features, scale, lo, strides, per_image, num_chunks, codes, weights, ranks)

    @njit(cache=True, nogil=True)
    def _mix(code, mask):  # pragma: no cover - compiled
        h = np.uint64(code) * np.uint64(0x9E3779B97F4A7C15)
        return np.int64((h >> np.uint64(32)) ^ (h & np.uint64(0xFFFFFFFF))) & mask

    @njit(cache=True, inline="always")
    def _find_or_add(table, mask, c, m):  # pragma: no cover - compiled
        """The id of code ``c`` in the hash table, or ``m`` after adding it with that id (linear probing)."""
        h = _mix(c, mask)
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
        one cache line (two separate arrays took 1.15x the time on a 5-D lattice); an empty slot has id -1. A point
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
                    h = _mix(uniq[first + e], mask)
                    while table[2 * h + 1] >= 0:
                        h = (h + 1) & mask
                    table[2 * h] = uniq[first + e]
                    table[2 * h + 1] = e
        return m, table

    @njit(cache=True, nogil=True)
    def _insert_all(codes, d1):  # pragma: no cover - compiled
        """Dense vertex id of every code (first-seen order), the distinct codes, and the hash table that finds them
        (:func:`_insert_range` over all codes; the reference for :func:`_insert_runs`)."""
        n = codes.shape[0]
        uniq = np.empty(max(n, 1), np.int64)
        ids = np.empty(n, np.int32)
        m, table = _insert_range(codes, d1, 0, n, ids, uniq, 0)
        return ids, uniq[:m].copy(), table

    @njit(cache=True, parallel=True, nogil=True)
    def _insert_runs(codes, d1, runs):  # pragma: no cover - compiled
        """:func:`_insert_all` in ``runs`` parallel runs of whole points, with the same result.

        Each run hashes its own codes (first-seen order within the run), then one sequential pass adds the runs'
        distinct codes to the global table in run order, which is the global first-seen order; a last parallel pass
        maps each code's run id to its global id. The sequential part touches each run's distinct codes once
        instead of every code (on a 64x128x128 volume about 9 million codes hashed, of which a few percent
        are distinct).
        """
        n = codes.shape[0]
        per = ((n // d1 + runs - 1) // runs) * d1
        local = np.empty(n, np.int32)
        uniq = np.empty(max(n, 1), np.int64)
        counts = np.zeros(runs, np.int64)
        for j in prange(runs):
            start = min(n, j * per)
            m, _ = _insert_range(codes, d1, start, min(n, start + per), local, uniq, start)
            counts[j] = m
        offs = np.zeros(runs + 1, np.int64)
        for j in range(runs):
            offs[j + 1] = offs[j] + counts[j]
        total = offs[runs]
        cap = 1 << 12
        while cap < 2 * total:
            cap *= 4
        mask = cap - 1
        table = np.full(2 * cap, -1, np.int64)
        out = np.empty(max(total, 1), np.int64)
        remap = np.empty(max(total, 1), np.int32)  # run j's id i -> global id, at offs[j] + i
        m = 0
        for j in range(runs):
            start = min(n, j * per)
            for i in range(counts[j]):
                c = uniq[start + i]
                e = _find_or_add(table, mask, c, m)
                remap[offs[j] + i] = e
                if e == m:  # first seen in this run
                    out[m] = c
                    m += 1
        for j in prange(runs):  # in place: the run ids become the global ids
            start = min(n, j * per)
            o = offs[j]
            for k in range(start, min(n, start + per)):
                local[k] = remap[o + local[k]]
        return local, out[:m].copy(), table

    @njit(cache=True, parallel=True, nogil=True)
    def _neighbour_ids(uniq, deltas, table):  # pragma: no cover - compiled
        m = uniq.shape[0]
        d1 = deltas.shape[0]
        mask = table.shape[0] // 2 - 1
        out = np.empty((d1, 2, m), np.int32)
        for v in prange(m):
            for j in range(d1):
                for s in range(2):
                    c = uniq[v] + deltas[j] if s == 0 else uniq[v] - deltas[j]
                    h = _mix(c, mask)
                    found = m
                    while True:
                        e = table[2 * h + 1]
                        if e < 0:
                            break
                        if table[2 * h] == c:
                            found = e
                            break
                        h = (h + 1) & mask
                    out[j, s, v] = found
        return out

    # Hot row operations written as LLVM vector code (numba intrinsics), where numba's loops compile badly (see
    # :func:`_axpy` and :func:`_softmax_rows_v`). The flags allow reassociation and assume finite values, which
    # holds: the unary is checked finite, the messages are finite sums, and the exponent is clamped.
    _VFLAGS = ("nnan", "ninf", "nsz", "arcp", "contract", "afn", "reassoc")

    def _llvm_fn(builder, name, ret, arg_types):
        fn = builder.module.globals.get(name)
        return fn if fn is not None else ir.Function(builder.module, ir.FunctionType(ret, arg_types), name=name)

    def _row_ptr(context, builder, aryty, ary_value, row):
        """Pointer to ``ary[row, 0]`` of a 2-D array value."""
        ary = context.make_array(aryty)(context, builder, ary_value)
        zero = context.get_constant(types.intp, 0)
        return cgutils.get_item_pointer(context, builder, aryty, ary, [row, zero], wraparound=False)

    def _broadcast(builder, x, vty):
        """The scalar ``x`` in every lane of the vector type ``vty`` (insert into lane 0, then shuffle)."""
        undef = ir.Constant(vty, None)
        one = builder.insert_element(undef, x, ir.Constant(ir.IntType(32), 0))
        zeros = ir.Constant(ir.VectorType(ir.IntType(32), vty.count), [0] * vty.count)
        return builder.shuffle_vector(one, undef, zeros)

    def _axpy_codegen(scaled):
        def codegen(context, builder, signature, args):
            if scaled:
                dst_t, _, scale_t, src_t, _, w_t, c_t = signature.args
                dst, di, scale, src, si, w, c = args
            else:
                dst_t, _, src_t, _, w_t, c_t = signature.args
                dst, di, src, si, w, c = args
            dtype = dst_t.dtype
            ft = context.get_value_type(dtype)
            width = 8 if dtype == types.float32 else 4
            vty = ir.VectorType(ft, width)
            intp = context.get_value_type(types.intp)
            pd = _row_ptr(context, builder, dst_t, dst, context.cast(builder, di, signature.args[1], types.intp))
            si_t = signature.args[4 if scaled else 3]
            ps = _row_ptr(context, builder, src_t, src, context.cast(builder, si, si_t, types.intp))
            pk = None
            if scaled:
                sc = context.make_array(scale_t)(context, builder, scale)
                pk = sc.data
            wf = context.cast(builder, w, w_t, dtype)
            wv = _broadcast(builder, wf, vty)  # w in every lane
            n = context.cast(builder, c, c_t, types.intp)
            groups = builder.udiv(n, ir.Constant(intp, width))
            align = 4 if dtype == types.float32 else 8

            def step(index, ty, weight, cast):
                qd, qs = builder.gep(pd, [index]), builder.gep(ps, [index])
                if cast:
                    qd, qs = builder.bitcast(qd, ty.as_pointer()), builder.bitcast(qs, ty.as_pointer())
                f = weight
                if scaled:
                    qk = builder.gep(pk, [index])
                    if cast:
                        qk = builder.bitcast(qk, ty.as_pointer())
                    f = builder.fmul(weight, builder.load(qk, align=align), flags=_VFLAGS)
                prod = builder.fmul(f, builder.load(qs, align=align), flags=_VFLAGS)
                builder.store(builder.fadd(builder.load(qd, align=align), prod, flags=_VFLAGS), qd, align=align)

            with cgutils.for_range(builder, groups) as loop:
                step(builder.mul(loop.index, ir.Constant(intp, width)), vty, wv, True)
            done = builder.mul(groups, ir.Constant(intp, width))
            with cgutils.for_range(builder, builder.sub(n, done)) as loop:
                step(builder.add(done, loop.index), ft, wf, False)
            return context.get_dummy_value()

        return codegen

    def _axpy_typing(dst, src, w, c):
        """Whether :func:`_axpy`'s arguments type: two C-contiguous 2-D float arrays of one dtype, a float, an int."""
        return (isinstance(dst, types.Array) and isinstance(src, types.Array) and dst.ndim == 2 and src.ndim == 2
                and dst.layout == "C" and src.layout == "C" and dst.dtype == src.dtype
                and dst.dtype in (types.float32, types.float64) and isinstance(w, types.Float)
                and isinstance(c, types.Integer))

    @intrinsic
    def _axpy(typingctx, dst, di, src, si, w, c):  # pragma: no cover - compiled
        """``dst[di, :c] += w * src[si, :c]`` in vectors of 8 float32 (4 float64), then a scalar remainder: for the
        splat and slice's per-vertex row updates. Written as loops over a runtime ``c``, LLVM vectorised them at 4
        lanes (its main body wants 32 floats; ``c`` is 24 at 21 labels); with ``c`` a constant it unrolled them to
        scalar code. Same operations in the same order as the loops: the same bits."""
        if not _axpy_typing(dst, src, w, c):
            return None
        return types.void(dst, di, src, si, w, c), _axpy_codegen(False)

    @intrinsic
    def _axpy_scaled(typingctx, dst, di, scale, src, si, w, c):  # pragma: no cover - compiled
        """``dst[di, :c] += (w * scale[:c]) * src[si, :c]`` (:func:`_axpy` with a per-channel factor)."""
        if not (_axpy_typing(dst, src, w, c) and isinstance(scale, types.Array) and scale.dtype == dst.dtype
                and scale.ndim == 1 and scale.layout == "C"):
            return None
        return types.void(dst, di, scale, src, si, w, c), _axpy_codegen(True)

    @njit(cache=True, inline="always")
    def _scatter_rows(values, first, pre, offsets, weights, part, start, stop, c):  # pragma: no cover - compiled
        """``part[o] += w * pre[p] * values[p - first, :c]`` for points ``start <= p < stop`` and their simplex vertices
        ``o`` with barycentric weights ``w``, in the order of the points."""
        d1 = offsets.shape[1]
        for p in range(start, stop):
            s = pre[p]
            i = p - first
            for r in range(d1):
                _axpy(part, offsets[p, r], values, i, weights[p, r] * s, c)

    @njit(cache=True, parallel=True, nogil=True, fastmath=_FAST)
    def _scatter(values, pre, offsets, weights, parts):  # pragma: no cover - compiled
        """The splat's partial sums: ``parts[j] (M + 1, C)`` = ``S^T(pre * values)`` over the ``j``-th of ``K = len(parts)``
        runs of whole blocks of points (:func:`_run_length`; row ``M``, the absent neighbour, stays 0); :func:`_reduce`
        adds them.

        A scatter point by point reads ``values`` once, in order, into a buffer that stays in cache (the gather
        vertex by vertex it replaced read ``values`` in random order: 2x slower at 500x375 on one thread). Each run
        has its own buffer, so the runs go in parallel without atomics, and since ``K`` does not depend on the
        number of threads, neither does the result.
        """
        k, rows, c = parts.shape
        n = values.shape[0]
        per = _run_length(n, k)
        for j in prange(k):
            part = parts[j]
            part[:] = 0.0
            start = min(n, j * per)
            stop = min(n, start + per)
            _scatter_rows(values, 0, pre, offsets, weights, part, start, stop, c)
        return parts

    @njit(cache=True, inline="always")
    def _run_length(n, k):  # pragma: no cover - compiled
        """Points per run of the splat's ``k`` partial sums: whole blocks of ``_BLOCK`` points, so that the fused loop
        (which scatters block by block) and :func:`_scatter` add in the same order."""
        blocks = (n + _BLOCK - 1) // _BLOCK
        return ((blocks + k - 1) // k) * _BLOCK

    @njit(cache=True, parallel=True, nogil=True)
    def _reduce(parts, buf):  # pragma: no cover - compiled
        """``buf = parts[0] + parts[1] + ...`` (in that order); returns ``buf`` ``(M + 1, C)``."""
        k, rows, c = parts.shape
        for blk in prange((rows + _BLOCK - 1) // _BLOCK):
            for v in range(blk * _BLOCK, min(rows, (blk + 1) * _BLOCK)):
                for ch in range(c):
                    buf[v, ch] = parts[0, v, ch]
                for j in range(1, k):
                    for ch in range(c):
                        buf[v, ch] += parts[j, v, ch]
        return buf

    @njit(cache=True, parallel=True, nogil=True)
    def _blur(buf, tmp, neighbours, reverse):  # pragma: no cover - compiled
        """``[1/2, 1, 1/2]`` along each lattice direction (reversed order for the adjoint); returns the result."""
        d1, _, m = neighbours.shape
        c = buf.shape[1]
        tmp[m, :] = 0.0
        for step in range(d1):
            j = d1 - 1 - step if reverse else step
            for v in prange(m):
                a = neighbours[j, 0, v]
                b = neighbours[j, 1, v]
                for ch in range(c):
                    tmp[v, ch] = buf[v, ch] + 0.5 * (buf[a, ch] + buf[b, ch])
            buf, tmp = tmp, buf
        return buf

    @njit(cache=True, parallel=True, nogil=True)
    def _slice(buf, weights, offsets, alpha, out):  # pragma: no cover - compiled
        num_points, c = out.shape
        d1 = offsets.shape[1]
        for p in prange(num_points):
            for ch in range(c):
                out[p, ch] = 0.0
            for r in range(d1):
                _axpy(out, p, buf, offsets[p, r], weights[p, r] * alpha, c)

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
                h = _mix(code, mask)
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

    # float32 exp in a form LLVM vectorises (no vector math library is needed): range reduction
    # x = n ln2 + r, |r| <= ln2 / 2, a degree-6 polynomial for exp(r) (Cephes' expf, ~1 ulp) and 2^n
    # written straight into the exponent bits. Softmax spends most of its time in exp, and a scalar
    # expf call per element took 40% of a mean-field iteration.
    _LOG2E = np.float32(1.44269504088896341)
    _LN2_HI = np.float32(0.693359375)
    _LN2_LO = np.float32(-2.12194440e-4)
    _EXP_MIN = np.float32(-87.0)  # 2^-126 and above: no denormals; smaller inputs give ~1e-38, not 0
    _EXP_MAX = np.float32(88.0)
    _P0, _P1, _P2 = np.float32(1.9875691500e-4), np.float32(1.3981999507e-3), np.float32(8.3334519073e-3)
    _P3, _P4, _P5 = np.float32(4.1665795894e-2), np.float32(1.6666665459e-1), np.float32(5.0000001201e-1)
    _HALF, _ONE = np.float32(0.5), np.float32(1.0)

    def exp_inplace(x, scratch):  # pragma: no cover - replaced by the overload below when compiled
        """``x[:] = exp(x)`` for a 1-D float array; ``scratch`` is an int32 array at least as long."""
        x[:] = np.exp(x)

    @overload(exp_inplace, jit_options={"cache": True})
    def _exp_inplace_overload(x, scratch):  # pragma: no cover - compiled
        if x.dtype == types.float32:

            def impl32(x, scratch):
                n = x.shape[0]
                bits = scratch[:n]
                for i in range(n):
                    v = min(max(x[i], _EXP_MIN), _EXP_MAX)
                    k = np.floor(v * _LOG2E + _HALF)
                    r = v - k * _LN2_HI - k * _LN2_LO
                    y = (((((_P0 * r + _P1) * r + _P2) * r + _P3) * r + _P4) * r + _P5) * (r * r) + r + _ONE
                    x[i] = y
                    bits[i] = (np.int32(k) + np.int32(127)) << np.int32(23)
                scale = bits.view(np.float32)
                for i in range(n):
                    x[i] *= scale[i]

            return impl32

        def impl64(x, scratch):
            for i in range(x.shape[0]):
                x[i] = np.exp(x[i])

        return impl64

    _BLOCK = 256  # points per softmax block: exp runs over BLOCK * C contiguous values at once

    @intrinsic
    def _softmax_rows_v(typingctx, flat, offset, cr, c_lit, rows_lit):  # pragma: no cover - compiled
        """In place, the softmax over the first ``cr`` of ``c`` values of each of ``rows`` rows of ``flat`` from
        ``offset`` (``rows * c`` values), padding ``cr..c-1`` set to 0; ``c`` and ``rows`` literal integers, ``flat``
        a contiguous 1-D float32 or float64 array.

        Each row is ``c / w`` vectors of ``w`` lanes (``w`` the largest of 8 float32 / 4 float64, 4, 2, 1 that
        divides ``c``); the maximum and the sum are vector reductions; float32 takes the exp as
        :func:`exp_inplace` does (Cephes' polynomial, exponent bits), float64 LLVM's exp. The ``rows`` rows are
        emitted stage by stage, so that their independent dependency chains interleave (4 rows: 0.8x the time of 1).

        Written as loops, numba compiled the maximum and the sum of a 24-channel row to 23 dependent scalar
        instructions each (LLVM fully unrolls the short loop, and a select-based max never reassociates): 6 ms of a
        23 ms iteration on one thread at 500x375, against 1 ms for the whole softmax in vectors of 8.
        """
        if not (isinstance(c_lit, types.IntegerLiteral) and isinstance(rows_lit, types.IntegerLiteral)):
            return None
        if not (isinstance(flat, types.Array) and flat.ndim == 1 and flat.dtype in (types.float32, types.float64)):
            return None
        c, rows = c_lit.literal_value, rows_lit.literal_value
        single = flat.dtype == types.float32
        width = next(w for w in ((8, 4, 2, 1) if single else (4, 2, 1)) if c % w == 0)
        groups = c // width
        sig = types.void(flat, offset, cr, c_lit, rows_lit)

        def codegen(context, builder, signature, args):
            ary = context.make_array(signature.args[0])(context, builder, args[0])
            off, ncr = args[1], args[2]
            ft = ir.FloatType() if single else ir.DoubleType()
            i32 = ir.IntType(32)
            vty, ity = ir.VectorType(ft, width), ir.VectorType(i32, width)
            sfx = f"v{width}{'f32' if single else 'f64'}"
            vmax = _llvm_fn(builder, f"llvm.maxnum.{sfx}", vty, [vty, vty])
            vfloor = _llvm_fn(builder, f"llvm.floor.{sfx}", vty, [vty])
            vexp = _llvm_fn(builder, f"llvm.exp.{sfx}", vty, [vty])
            rmax = _llvm_fn(builder, f"llvm.vector.reduce.fmax.{sfx}", ft, [vty])
            radd = _llvm_fn(builder, f"llvm.vector.reduce.fadd.{sfx}", ft, [ft, vty])

            def const(x):
                return ir.Constant(vty, [x] * width)

            def op(name, a, b):
                return getattr(builder, name)(a, b, flags=_VFLAGS)

            def call(fn, *a):
                return builder.call(fn, list(a), fastmath=_VFLAGS)

            crv = _broadcast(builder, builder.trunc(ncr, i32), ity)
            masks = [builder.icmp_signed("<", ir.Constant(ity, [j * width + i for i in range(width)]), crv)
                     for j in range(groups)]
            base = builder.bitcast(builder.gep(ary.data, [off]), vty.as_pointer())
            ptrs = [[builder.gep(base, [ir.Constant(i32, r * groups + j)]) for j in range(groups)]
                    for r in range(rows)]
            align = 4 if single else 8
            vals = [[builder.select(masks[j], builder.load(ptrs[r][j], align=align), const(-1e30))
                     for j in range(groups)] for r in range(rows)]
            shifts = []
            for r in range(rows):
                m = vals[r][0]
                for v in vals[r][1:]:
                    m = call(vmax, m, v)
                shifts.append(_broadcast(builder, call(rmax, m), vty))
            exps = []
            for r in range(rows):
                row = []
                for j in range(groups):
                    t = op("fsub", vals[r][j], shifts[r])  # <= 0
                    if single:
                        t = call(vmax, t, const(float(_EXP_MIN)))
                        k = call(vfloor, op("fadd", op("fmul", t, const(float(_LOG2E))), const(0.5)))
                        x = op("fsub", op("fsub", t, op("fmul", k, const(float(_LN2_HI)))),
                               op("fmul", k, const(float(_LN2_LO))))
                        y = const(float(_P0))
                        for coef in (_P1, _P2, _P3, _P4, _P5):
                            y = op("fadd", op("fmul", y, x), const(float(coef)))
                        y = op("fadd", op("fadd", op("fmul", y, op("fmul", x, x)), x), const(1.0))
                        bits = builder.shl(builder.add(builder.fptosi(k, ity), ir.Constant(ity, [127] * width)),
                                           ir.Constant(ity, [23] * width))
                        e = op("fmul", y, builder.bitcast(bits, vty))
                    else:
                        e = call(vexp, t)
                    row.append(builder.select(masks[j], e, const(0.0)))
                exps.append(row)
            for r in range(rows):
                total = exps[r][0]
                for e in exps[r][1:]:
                    total = op("fadd", total, e)
                inv = _broadcast(builder, builder.fdiv(ir.Constant(ft, 1.0), call(radd, ir.Constant(ft, -0.0), total)), vty)
                for j in range(groups):
                    builder.store(op("fmul", exps[r][j], inv), ptrs[r][j], align=align)
            return context.get_dummy_value()

        return sig, codegen


    @njit(cache=True, inline="always")
    def _softmax_block(flat, c, cr, start, stop, scratch):  # pragma: no cover - compiled
        """Softmax over the first ``cr`` channels of each row of ``flat.reshape(-1, c)[start:stop]``, in place.

        Channels ``cr..c-1`` are padding (see :func:`padded_channels`): they enter the maxima and the exp as a large
        negative number and leave as 0. The exp runs over the whole block at once (``scratch``: int32, ``(stop -
        start) * c`` long). Inlined with a constant ``c`` (see :func:`_scatter`), the per-row maxima and sums
        vectorise across the channels: 0.6x of the time of transposing each block to take them across rows.
        """
        neg = flat.dtype.type(-1e30)
        base = start * c
        for o in range(base, stop * c, c):
            for ch in range(cr, c):
                flat[o + ch] = neg
            mx = flat[o]
            for ch in range(1, c):
                mx = max(mx, flat[o + ch])
            for ch in range(c):
                flat[o + ch] -= mx
        exp_inplace(flat[base : stop * c], scratch)
        for o in range(base, stop * c, c):
            tot = flat[o]
            for ch in range(1, c):
                tot += flat[o + ch]
            inv = 1.0 / tot
            for ch in range(cr):
                flat[o + ch] *= inv
            for ch in range(cr, c):
                flat[o + ch] = 0.0

    @njit(cache=True, inline="always")
    def _softmax_v(flat, c, cr, start, stop):  # pragma: no cover - compiled
        """Rows ``start..stop-1`` of ``flat.reshape(-1, c)`` through :func:`_softmax_rows_v`, four at a time; ``c`` a
        constant at the call (inlining keeps it literal)."""
        o = start * c
        end = stop * c
        while o + 4 * c <= end:
            _softmax_rows_v(flat, o, cr, c, 4)
            o += 4 * c
        while o < end:
            _softmax_rows_v(flat, o, cr, c, 1)
            o += c

    @njit(cache=True, inline="always")
    def _softmax_any(flat, c, cr, start, stop, scratch):  # pragma: no cover - compiled
        """The softmax of rows ``start..stop-1`` of ``flat.reshape(-1, c)`` over their first ``cr`` channels (the rest
        set to 0): in vector code for the usual padded channel counts, else :func:`_softmax_block`."""
        if c == 2:
            _softmax_v(flat, 2, cr, start, stop)
        elif c == 4:
            _softmax_v(flat, 4, cr, start, stop)
        elif c == 8:
            _softmax_v(flat, 8, cr, start, stop)
        elif c == 16:
            _softmax_v(flat, 16, cr, start, stop)
        elif c == 24:
            _softmax_v(flat, 24, cr, start, stop)
        elif c == 32:
            _softmax_v(flat, 32, cr, start, stop)
        else:
            _softmax_block(flat, c, cr, start, stop, scratch)

    @njit(cache=True, parallel=True, nogil=True, fastmath=_FAST)
    def _softmax_rows(x, out, cr):  # pragma: no cover - compiled
        """``out[:, :cr] = softmax(x[:, :cr], axis=1)``, ``out[:, cr:] = 0``; C-contiguous ``(N, C)`` arrays."""
        n, c = x.shape
        out[:] = x
        flat = out.reshape(-1)
        num_blocks = (n + _BLOCK - 1) // _BLOCK
        for blk in prange(num_blocks):
            scratch = np.empty(_BLOCK * c, np.int32)
            _softmax_any(flat, c, cr, blk * _BLOCK, min(n, (blk + 1) * _BLOCK), scratch)

    @njit(cache=True, inline="always")
    def _add_product(src, s0, count, mat, cr, out, o0):  # pragma: no cover - compiled
        """``out[o0 + j] += src[s0 + j, :cr] @ mat[:cr]`` for ``j < count`` (at most 8): a full group of eight rows
        at once, so that each row of ``mat`` is loaded once for eight (twice as fast as row by row at L = 21)."""
        c = out.shape[1]
        if count == 8:
            for ci in range(cr):
                v0, v1, v2, v3 = src[s0, ci], src[s0 + 1, ci], src[s0 + 2, ci], src[s0 + 3, ci]
                v4, v5, v6, v7 = src[s0 + 4, ci], src[s0 + 5, ci], src[s0 + 6, ci], src[s0 + 7, ci]
                for ch in range(c):
                    x = mat[ci, ch]
                    out[o0, ch] += v0 * x
                    out[o0 + 1, ch] += v1 * x
                    out[o0 + 2, ch] += v2 * x
                    out[o0 + 3, ch] += v3 * x
                    out[o0 + 4, ch] += v4 * x
                    out[o0 + 5, ch] += v5 * x
                    out[o0 + 6, ch] += v6 * x
                    out[o0 + 7, ch] += v7 * x
        else:
            for j in range(count):
                for ci in range(cr):
                    v = src[s0 + j, ci]
                    for ch in range(c):
                        out[o0 + j, ch] += v * mat[ci, ch]

    _GRAM_CHUNKS = 16  # fixed, so that the sums do not depend on the number of threads

    @njit(cache=True, parallel=True, nogil=True, fastmath=_FAST)
    def _gram(a, b, w, cr, diagonal):  # pragma: no cover - compiled
        """``sum_v w_v a[v, :cr]^T b[v]`` (``(cr, C)``; ``w`` empty: 1), or its diagonal ``sum_v w_v a[v] b[v]`` (``(1, C)``)
        with ``diagonal``: partial sums over fixed chunks of rows added in order, the same for any number of threads
        (BLAS splits such long reductions by its thread count, and the gradients moved with it in the last bit)."""
        rows, c = b.shape
        weighted = w.shape[0] > 0
        height = 1 if diagonal else cr
        parts = np.zeros((_GRAM_CHUNKS, height, c), b.dtype)
        chunk = (rows + _GRAM_CHUNKS - 1) // _GRAM_CHUNKS
        for t in prange(_GRAM_CHUNKS):
            part = parts[t]
            start = t * chunk
            stop = min(rows, start + chunk)
            v = start
            while not diagonal and v + 8 <= stop:  # eight rows per update of the sums: 3.9x faster (BLAS: 1.2x)
                for ci in range(cr):
                    a0, a1, a2, a3 = a[v, ci], a[v + 1, ci], a[v + 2, ci], a[v + 3, ci]
                    a4, a5, a6, a7 = a[v + 4, ci], a[v + 5, ci], a[v + 6, ci], a[v + 7, ci]
                    if weighted:
                        a0, a1, a2, a3 = a0 * w[v], a1 * w[v + 1], a2 * w[v + 2], a3 * w[v + 3]
                        a4, a5, a6, a7 = a4 * w[v + 4], a5 * w[v + 5], a6 * w[v + 6], a7 * w[v + 7]
                    for ch in range(c):
                        part[ci, ch] += (a0 * b[v, ch] + a1 * b[v + 1, ch] + a2 * b[v + 2, ch] + a3 * b[v + 3, ch]
                                         + a4 * b[v + 4, ch] + a5 * b[v + 5, ch] + a6 * b[v + 6, ch]
                                         + a7 * b[v + 7, ch])  # fmt: skip
                v += 8
            for u in range(v, stop):
                if diagonal:
                    for ch in range(c):
                        x = a[u, ch] * w[u] if weighted else a[u, ch]
                        part[0, ch] += x * b[u, ch]
                else:
                    for ci in range(cr):
                        x = a[u, ci] * w[u] if weighted else a[u, ci]
                        for ch in range(c):
                            part[ci, ch] += x * b[u, ch]
        out = parts[0].copy()
        for t in range(1, _GRAM_CHUNKS):
            out += parts[t]
        return out

    @njit(cache=True, parallel=True, nogil=True, fastmath=_FAST)
    def _vertex_matmul(b, mat, cr, out):  # pragma: no cover - compiled
        """``out (M + 1, C) = b[:, :cr] @ mat[:cr]``: a label transform applied to blurred vertex values; returns ``out``.

        Eight rows at a time (:func:`_add_product`), as the fused loop's point-by-point product.
        """
        rows, c = b.shape
        for blk in prange((rows + _BLOCK - 1) // _BLOCK):
            start = blk * _BLOCK
            stop = min(rows, start + _BLOCK)
            for v in range(start, stop):
                for ch in range(c):
                    out[v, ch] = 0.0
            for i0 in range(start, stop, 8):
                _add_product(b, i0, min(8, stop - i0), mat, cr, out, i0)
        return out

    @njit(cache=True, inline="always")
    def _block(unary, src, q_out, start, stop, cr, c, alphas, offsets, weights, pre, post, selfw, has_self, is_full,
               diag, mat, blurred, parts, j, scatter, logits, out_t, to_t, keep, scratch, msg, acc):  # pragma: no cover
        """One block of points ``start..stop-1`` of a fused iteration: the unary, every kernel's sliced message and
        label transform, the softmax (unless ``logits``) into ``q_out`` (if ``keep``), and if ``scatter`` the new
        marginals' splat into the partial sums ``parts[k][j]`` of the next iteration (the block is still in cache);
        the result goes to ``out_t`` labels first instead if ``to_t``. ``has_self[k]``: kernel ``k`` has a
        self-exclusion term (only then are ``selfw[k]`` and ``src`` read). The other arguments are
        :func:`_mean_field`'s."""
        m = stop - start
        nk = alphas.shape[0]
        for i in range(m):
            for ch in range(c):
                acc[i, ch] = unary[start + i, ch]
        for k in range(nk):  # self-exclusion of the vector kernels (reads q before it is overwritten)
            if has_self[k] and not is_full[k]:
                for i in range(m):
                    p = start + i
                    coef = post[k, p] * selfw[k, p] * pre[k, p]
                    if coef != 0.0:
                        for ch in range(c):
                            acc[i, ch] -= coef * diag[k, ch] * src[p, ch]
        # Kernels outside, points inside: each kernel's arrays are fetched once per block, not once per point
        # (fetching an array from a tuple touches its shared reference count, which two threads doing it per point
        # fight over).
        for k in range(nk):
            b = blurred[k]
            off = offsets[k]
            wk = weights[k]
            d1 = off.shape[1]
            alpha = alphas[k]
            if is_full[k]:
                mk = mat[k]
                for i0 in range(0, m, 8):  # eight points at a time
                    count = min(8, m - i0)
                    for jj in range(count):
                        p = start + i0 + jj
                        if has_self[k]:
                            s = selfw[k, p] * pre[k, p] / alpha
                            for ch in range(c):
                                msg[jj, ch] = -s * src[p, ch]
                        else:
                            for ch in range(c):
                                msg[jj, ch] = 0.0
                        for r in range(d1):
                            _axpy(msg, jj, b, off[p, r], wk[p, r], c)
                        g = post[k, p] * alpha
                        for ch in range(c):
                            msg[jj, ch] *= g
                    _add_product(msg, 0, count, mk, cr, acc, i0)  # the L x L product, eight points at once
            else:
                dk = diag[k]
                for i in range(m):
                    p = start + i
                    g = post[k, p] * alpha
                    for r in range(d1):
                        _axpy_scaled(acc, i, dk, b, off[p, r], wk[p, r] * g, c)
        if not logits:
            _softmax_any(acc.reshape(-1), c, cr, 0, m, scratch)
        if to_t:  # the result, labels first: read across the block in cache, written in order
            for ch in range(cr):
                for i in range(m):
                    out_t[ch, start + i] = acc[i, ch]
        elif keep:
            for i in range(m):
                for ch in range(c):
                    q_out[start + i, ch] = acc[i, ch]
        if scatter:
            for k in range(nk):
                _scatter_rows(acc, start, pre[k], offsets[k], weights[k], parts[k][j], start, stop, c)

    @njit(cache=True, parallel=True, nogil=True, fastmath=_FAST)
    def _mean_field(unary, q, q_out, q_ready, cr, iterations, return_logits, splatted, scatter_out, out_t, alphas, offsets,
                    weights, neighbours, parts, pre, post, selfw, has_self, is_full, on_vertices, diag, mat, bufs,
                    tmps, vbufs):  # pragma: no cover
        """Mean field with any number of Gaussian kernels, in place in ``q`` (no autograd).

        Args:
            unary: ``(P, C)`` logits with ``cr`` real labels and ``C - cr`` padding channels (0).
            q: ``(P, C)`` the first marginals: ``softmax(unary)`` on entry if ``q_ready``, else written here.
            q_out: ``(P, C)`` output (``q`` itself to work in place; a separate array keeps ``q``): the marginals
                (padding 0), or the last iteration's logits if ``return_logits``. The first iteration reads ``q``,
                later ones work in place on ``q_out``.
            cr: number of real labels.
            iterations: number of mean-field iterations (``>= 1``).
            splatted: ``parts`` already hold the splat of ``q`` (a previous call's ``scatter_out``).
            scatter_out: leave the splat of the result's marginals in ``parts`` for a following call (not with
                ``return_logits``).
            out_t: ``(cr, P)``: where the last iteration writes its result, labels first, instead of ``q_out``
                (``q_out`` is then scratch: without self-exclusion no iteration writes it); ``(0, 0)`` to write
                ``q_out``.
            alphas: ``(K,)`` each lattice's slice constant.
            offsets, weights: tuples of ``K`` arrays ``(P, D_k + 1)``: each point's simplex vertices and
                barycentric weights in lattice ``k``.
            neighbours: tuple of ``K`` arrays ``(D_k + 1, 2, M_k)``: vertex neighbours (``M_k`` if absent).
            parts: tuple of ``K`` arrays ``(R, M_k + 1, C)``: the splat's partial sums over ``R`` runs of points
                (:func:`_scatter`; ``R`` the same for every kernel). The block pass runs the same ``R`` runs, each
                adding its marginals to its own partial sums.
            pre, post, selfw: ``(K, P)``: kernel ``k``'s message is ``post * (K_k(pre * q) - selfw * pre * q)``.
            has_self: ``(K,)`` bool: ``selfw[k]`` is not all zero (the others skip the self term).
            is_full: ``(K,)`` bool: kernel ``k``'s message goes through the matrix ``mat[k]`` (``logits +=
                msg @ mat[k]``) point by point instead of the per-label vector ``diag[k]`` (``logits += diag[k] * msg``).
            on_vertices: ``(K,)`` bool: apply ``mat[k]`` to the blurred vertex buffer instead (``S (B mat) = (S B) mat``
                for the slice ``S``, and the normalisation and alpha are per point), then slice it as a vector kernel
                with ``diag[k] = 1``: ``M_k + 1`` rows of products instead of ``P``. Only for kernels without
                self-exclusion (whose ``selfw pre q`` term would need the product point by point again).
            diag: ``(K, C)``; mat: ``(K, C, C)`` (zero padding).
            bufs, tmps: tuples of ``K`` vertex buffers ``(M_k + 1, C)``; the blur leaves ``B_k`` in one of them
                (:func:`blur_result`).
            vbufs: tuple of ``K`` buffers ``(M_k + 1, C)`` for ``B_k mat[k]`` where ``on_vertices[k]`` (else any).

        Each iteration adds up and blurs every kernel's splat, then one pass over each block of points slices all
        kernels, applies the label transforms, adds the unary, takes the softmax and splats the result for the
        next iteration.
        """
        num_points, c = unary.shape
        nk = alphas.shape[0]
        if not q_ready:
            _softmax_rows(unary, q, cr)
        if not splatted:
            for k in range(nk):
                _scatter(q, pre[k], offsets[k], weights[k], parts[k])
        # an iteration's marginals are read back (beyond its own splat) only by the next one's self-exclusion, and
        # the caller reads q_out only when the last iteration writes there: other iterations skip the write (a
        # fifth of an iteration's memory traffic)
        any_self = has_self.any()
        runs = parts[0].shape[0]
        num_blocks = (num_points + _BLOCK - 1) // _BLOCK
        per = _run_length(num_points, runs) // _BLOCK
        for it in range(iterations):
            src = q if it == 0 else q_out
            blurred = []
            for k in range(nk):
                bk = _blur(_reduce(parts[k], bufs[k]), tmps[k], neighbours[k], False)
                if on_vertices[k]:
                    bk = _vertex_matmul(bk, mat[k], cr, vbufs[k])
                blurred.append(bk)
            last = it == iterations - 1
            logits = last and return_logits
            scatter = not logits and (not last or scatter_out)
            to_t = last and out_t.shape[0] > 0
            keep = any_self or (last and not to_t)
            for j in prange(runs):
                scratch = np.empty(_BLOCK * c, np.int32)
                msg = np.empty((8, c), unary.dtype)
                acc = np.empty((_BLOCK, c), unary.dtype)
                if scatter:
                    for k in range(nk):
                        parts[k][j][:] = 0.0
                for blk in range(j * per, min(num_blocks, (j + 1) * per)):
                    start = blk * _BLOCK
                    stop = min(num_points, start + _BLOCK)
                    _block(unary, src, q_out, start, stop, cr, c, alphas, offsets, weights, pre, post, selfw, has_self,
                           is_full, diag, mat, blurred, parts, j, scatter, logits, out_t, to_t, keep, scratch, msg, acc)

    # float32 log in the same vectorisable form (Cephes' logf): x = m 2^e with m in [sqrt(1/2), sqrt(2)), a degree-8
    # polynomial in m - 1. Subtracting the bits of sqrt(1/2) first moves that range onto one binade, so e and m come
    # from one integer shift and mask without a select (2.3x the speed of the select form; 1.2e-7 relative error).
    _SQRTHF_BITS = np.int32(0x3F3504F3)
    _L0, _L1, _L2 = np.float32(7.0376836292e-2), np.float32(-1.1514610310e-1), np.float32(1.1676998740e-1)
    _L3, _L4, _L5 = np.float32(-1.2420140846e-1), np.float32(1.4249322787e-1), np.float32(-1.6668057665e-1)
    _L6, _L7, _L8 = np.float32(2.0000714765e-1), np.float32(-2.4999993993e-1), np.float32(3.3333331174e-1)

    def log_inplace(x, scratch):  # pragma: no cover - replaced by the overload below when compiled
        """``x[:] = log(x)`` for a 1-D array of positive normal floats; ``scratch``: int32, as long."""
        x[:] = np.log(x)

    @overload(log_inplace, jit_options={"cache": True, "fastmath": _FAST})
    def _log_inplace_overload(x, scratch):  # pragma: no cover - compiled
        if x.dtype == types.float32:

            def impl32(x, scratch):
                n = x.shape[0]
                bits = x.view(np.int32)
                mant = scratch[:n]
                for i in range(n):
                    ix = bits[i] - _SQRTHF_BITS
                    mant[i] = (ix & np.int32(0x007FFFFF)) + _SQRTHF_BITS  # m in [sqrt(1/2), sqrt(2))
                    bits[i] = ix >> np.int32(23)  # e, kept in x's bits for the second loop
                m_all = mant.view(np.float32)
                for i in range(n):
                    e = np.float32(bits[i])
                    m = m_all[i] - _ONE
                    z = m * m
                    y = ((((((((_L0 * m + _L1) * m + _L2) * m + _L3) * m + _L4) * m + _L5) * m + _L6) * m + _L7) * m
                         + _L8) * m * z
                    y = y + _LN2_LO * e - _HALF * z
                    x[i] = m + y + _LN2_HI * e

            return impl32

        def impl64(x, scratch):
            for i in range(x.shape[0]):
                x[i] = np.log(x[i])

        return impl64

    @njit(cache=True, parallel=True, nogil=True, fastmath=_FAST)
    def _unary_from_scores(src, clip, from_probs, out, q0):  # pragma: no cover - compiled
        """``out[b * N + n, l] = log(max(src[b, l, n], clip))`` (or ``src`` itself for logits), padding 0.

        One pass over ``src (B, L, N)`` that also checks it. For probabilities it also writes the first
        marginals ``q0 = softmax(out)`` (``max(p, clip)`` normalised: no exp needed). Returns
        ``(B * blocks, 4)`` per-block statistics: count of non-finite values, count of negative values,
        smallest and largest sum over labels. A block of probabilities that fails the check is left without
        its log (the caller raises).
        """
        b_count, num_labels, n = src.shape
        c = out.shape[1]
        flat = out.reshape(-1)
        blocks = (n + _BLOCK - 1) // _BLOCK
        stats = np.zeros((b_count * blocks, 4))
        for job in prange(b_count * blocks):
            b = job // blocks
            start = (job % blocks) * _BLOCK
            stop = min(n, start + _BLOCK)
            m = stop - start
            scratch = np.empty(_BLOCK * c, np.int32)
            tot = np.zeros(_BLOCK)  # float64: the sums checked against 1
            kept = np.zeros(_BLOCK, out.dtype)
            bad = 0
            neg = 0
            base = b * n + start
            for ch in range(num_labels):  # label by label: each label's run of the block is read in order
                row = src[b, ch, start:stop]
                for i in range(m):
                    v = row[i]
                    bad += 0 if np.isfinite(v) else 1
                    neg += 1 if v < 0 else 0
                    tot[i] += v
                if from_probs:
                    for i in range(m):
                        v = max(row[i], clip)
                        kept[i] += v
                        out[base + i, ch] = v
                else:
                    for i in range(m):
                        out[base + i, ch] = row[i]
            pad = 1.0 if from_probs else 0.0
            for i in range(m):
                for ch in range(num_labels, c):
                    out[base + i, ch] = pad
            lo = np.inf
            hi = -np.inf
            for i in range(m):
                lo = min(lo, tot[i])
                hi = max(hi, tot[i])
            if from_probs:
                for i in range(m):
                    inv = 1.0 / kept[i] if kept[i] > 0 else 0.0
                    for ch in range(num_labels):
                        q0[base + i, ch] = out[base + i, ch] * inv
                    for ch in range(num_labels, c):
                        q0[base + i, ch] = 0.0
                if bad == 0 and neg == 0:
                    log_inplace(flat[base * c : (base + m) * c], scratch)
            stats[job, 0] = bad
            stats[job, 1] = neg
            stats[job, 2] = lo
            stats[job, 3] = hi
        return stats

    @njit(cache=True, parallel=True, nogil=True)
    def _channels_first(q, cr, out):  # pragma: no cover - compiled
        """``out[l, n] = q[n, l]`` for the first ``cr`` channels of ``q (N, C)``; ``out (cr, N)``."""
        n = q.shape[0]
        blocks = (n + _BLOCK - 1) // _BLOCK
        for blk in prange(blocks):
            for ch in range(cr):
                for i in range(blk * _BLOCK, min(n, (blk + 1) * _BLOCK)):
                    out[ch, i] = q[i, ch]


    @njit(cache=True, parallel=True, nogil=True)
    def _channels_last(src, out):  # pragma: no cover - compiled
        """``out[n, l] = src[l, n]`` for ``src (L, N)`` into padded ``out (N, C)``, padding set to 0."""
        cr, n = src.shape
        c = out.shape[1]
        blocks = (n + _BLOCK - 1) // _BLOCK
        for blk in prange(blocks):
            stop = min(n, (blk + 1) * _BLOCK)
            for i in range(blk * _BLOCK, stop):
                for ch in range(cr, c):
                    out[i, ch] = 0.0
            for ch in range(cr):
                for i in range(blk * _BLOCK, stop):
                    out[i, ch] = src[ch, i]

    @njit(cache=True, parallel=True, nogil=True, fastmath=_FAST)
    def _softmax_backward(q, grad, cr, dlogits, du):  # pragma: no cover - compiled
        """The softmax's vector-Jacobian product: ``dlogits = q * (grad - sum_l q_l grad_l)`` over the first ``cr``
        channels of each row (padding 0), and ``du += dlogits``; all ``(P, C)``."""
        n, c = q.shape
        blocks = (n + _BLOCK - 1) // _BLOCK
        for blk in prange(blocks):
            for p in range(blk * _BLOCK, min(n, (blk + 1) * _BLOCK)):
                dot = q[p, 0] * grad[p, 0]
                for ch in range(1, cr):
                    dot += q[p, ch] * grad[p, ch]
                for ch in range(cr):
                    v = q[p, ch] * (grad[p, ch] - dot)
                    dlogits[p, ch] = v
                    du[p, ch] += v
                for ch in range(cr, c):
                    dlogits[p, ch] = 0.0

    @njit(cache=True, parallel=True, nogil=True, fastmath=_FAST)
    def _message_backward(buf, weights, offsets, alpha, pre, post, selfw, scale, dmsg, out, accumulate):  # pragma: no cover
        """The adjoint of one kernel's message ``post * (K(pre * q) - selfw * pre * q)`` after the adjoint splat and
        blur: ``out (+)= scale * pre * (alpha * slice(buf) - selfw * post * dmsg)``.

        ``buf`` holds ``blur^T(splat(post * dmsg))`` (blur directions reversed) and ``scale (C,)`` is a per-label
        factor (a vector label transform, folded in here because the filter acts on each channel alone).
        """
        num_points, c = out.shape
        d1 = offsets.shape[1]
        blocks = (num_points + _BLOCK - 1) // _BLOCK
        for blk in prange(blocks):
            acc = np.empty(c, out.dtype)
            for p in range(blk * _BLOCK, min(num_points, (blk + 1) * _BLOCK)):
                s = selfw[p] * post[p] / alpha
                for ch in range(c):
                    acc[ch] = -s * dmsg[p, ch]
                for r in range(d1):
                    w = weights[p, r]
                    o = offsets[p, r]
                    for ch in range(c):
                        acc[ch] += w * buf[o, ch]
                g = pre[p] * alpha
                if accumulate:
                    for ch in range(c):
                        out[p, ch] += g * scale[ch] * acc[ch]
                else:
                    for ch in range(c):
                        out[p, ch] = g * scale[ch] * acc[ch]


def padded_channels(channels: int, dtype: np.dtype) -> int:
    """Channel count the compiled kernels work with: a multiple of the SIMD width (8 float32 or 4 float64
    values) for 5 channels and more, of 4 for 3 or 4 channels, none for 1 or 2, so that every per-vertex loop
    vectorises without a scalar tail while padding never doubles the work. Measured at 500x375 in 5-D: splat
    and slice of 21 float32 channels take 7.1 ms, of 24 channels 3.8 ms (``benchmarks/README.md``)."""
    if channels <= 2:
        return channels
    width = 8 if np.dtype(dtype) == np.float32 and channels > 4 else 4
    return -(-channels // width) * width


def channels_first(q: np.ndarray, num_labels: int, out: np.ndarray) -> np.ndarray:
    """``out (L, P)`` = the first ``L`` channels of padded ``q (P, C)``, labels first."""
    _channels_first(q, num_labels, out)
    return out


def channels_last(src: np.ndarray, out: np.ndarray) -> np.ndarray:
    """``out (P, C)`` = ``src (L, P)`` channels last, padding channels set to 0."""
    _channels_last(src, out)
    return out


def softmax_backward(q: np.ndarray, grad: np.ndarray, num_labels: int, dlogits: np.ndarray, du: np.ndarray) -> None:
    """``dlogits = q * (grad - <q, grad>)`` row by row (the softmax's vector-Jacobian product), and ``du +=
    dlogits``; padded ``(P, C)`` arrays, padding channels 0."""
    _softmax_backward(q, grad, num_labels, dlogits, du)


def splat(ops: "NumbaOperators", values: np.ndarray, pre: np.ndarray, buf: np.ndarray,
          parts: Optional[np.ndarray] = None) -> np.ndarray:
    """``buf (M + 1, C) = S^T (pre * values)``: the lattice's splat of ``values (P, C)`` weighted by ``pre (P,)``
    (row ``M``, the absent neighbour, is 0). ``parts``: scratch for the partial sums, ``(ops.runs, M + 1, C)``
    (allocated if None)."""
    if parts is None:
        parts = np.empty((ops.runs,) + buf.shape, buf.dtype)
    return _reduce(_scatter(values, pre, ops.offsets, ops.weights, parts), buf)


_MAX_RUNS = 64  # the block pass runs its runs in parallel: this caps its threads


def splat_runs(num_points: int, num_vertices: int) -> int:
    """How many runs of points a splat of ``num_points`` onto ``num_vertices`` vertices adds up separately (in
    parallel, each into its own ``(M + 1, C)`` buffer): one per thread numba may start (its configured maximum,
    not the thread count of the moment, so that the sums do not depend on the machine's load), at most 64, and at
    most about ``4 N / M`` where the lattice has many vertices (the buffers' memory), but 2 where 2 threads can
    run. The same for every call with the same sizes in one process."""
    blocks = -(-num_points // _BLOCK)
    runs = min(_MAX_RUNS, numba.config.NUMBA_NUM_THREADS, blocks)
    return max(1, min(runs, max(2, (4 * num_points) // (num_vertices + 1))))


def blur(ops: "NumbaOperators", buf: np.ndarray, tmp: np.ndarray, reverse: bool) -> np.ndarray:
    """The lattice's blur of ``buf (M + 1, C)`` (directions reversed for the adjoint), ``tmp`` as scratch; returns
    whichever of the two holds the result (see :func:`blur_result`)."""
    return _blur(buf, tmp, ops.neighbours, reverse)


def blur_result(ops: "NumbaOperators", buf: np.ndarray, tmp: np.ndarray) -> np.ndarray:
    """Which of a blur's two buffers holds its result: it swaps them once per lattice direction (``D + 1``), so
    ``buf`` after an even number of directions, ``tmp`` after an odd one (also inside the fused loop)."""
    return tmp if ops.neighbours.shape[0] % 2 else buf


def adjoint_slice(ops: "NumbaOperators", buf: np.ndarray, dmsg: np.ndarray, pre: np.ndarray, post: np.ndarray,
                  selfw: np.ndarray, scale: np.ndarray, out: np.ndarray, accumulate: bool) -> None:
    """The last step of a message's adjoint: ``out (+)= scale * pre * (alpha * S buf - selfw * post * dmsg)`` with
    ``buf = blur^T(S^T(post * dmsg))`` already computed (``dmsg`` is read only where ``selfw`` is not 0)."""
    _message_backward(buf, ops.weights, ops.offsets, buf.dtype.type(ops.alpha), pre, post, selfw, scale, dmsg, out,
                      accumulate)  # fmt: skip


def gram(a: np.ndarray, b: np.ndarray, num_labels: int, weights: Optional[np.ndarray] = None,
         diagonal: bool = False) -> np.ndarray:
    """``sum_v w_v a[v, :L]^T b[v, :L]`` ``(L, L)`` over the rows of two ``(R, C)`` arrays (``weights (R,)``, default 1),
    or only its diagonal ``(L,)``; summed in an order that does not depend on the number of threads."""
    w = np.empty(0, b.dtype) if weights is None else weights
    out = _gram(a, b, w, num_labels, diagonal)
    return out[0, :num_labels] if diagonal else out[:, :num_labels]


def softmax_rows(x: np.ndarray, out: np.ndarray, num_labels: int) -> np.ndarray:
    """``out[:, :L] = softmax(x[:, :L])`` over each row of padded ``(P, C)`` arrays, padding set to 0."""
    _softmax_rows(x, out, num_labels)
    return out


def unary_from_scores(scores: Tensor, clip: float, from_probs: bool,
                      out: Optional[np.ndarray] = None) -> tuple[np.ndarray, Optional[np.ndarray], dict]:
    """Padded channels-last unary ``(B * N, C)`` from ``(B, L, *S)`` CPU scores, and what a check found.

    ``out``: where to write the unary (``(B * N, C)`` in the scores' dtype), e.g. a buffer kept between training steps
    (a fresh one of 72 MB at 500x375 x 4 images cost 30 ms of page faults per step); allocated if None.

    Returns:
        ``(unary, q0, stats)``: ``q0`` the first marginals ``softmax(unary)`` for probabilities (None for
        logits); ``stats`` holds ``nonfinite`` and ``negative`` (counts) and ``min_sum`` / ``max_sum`` (of
        the scores over labels at one pixel).
    """
    b, num_labels = scores.shape[:2]
    src = np.ascontiguousarray(scores.detach().numpy()).reshape(b, num_labels, -1)
    shape = (src.shape[0] * src.shape[2], padded_channels(num_labels, src.dtype))
    if out is None:
        out = np.empty(shape, src.dtype)
    elif out.shape != shape or out.dtype != src.dtype:
        raise ValueError(f"out must be a {shape} {src.dtype} array, got {out.shape} {out.dtype}.")
    q0 = np.empty_like(out) if from_probs else np.empty((0, out.shape[1]), src.dtype)
    st = _unary_from_scores(src, src.dtype.type(clip), from_probs, out, q0)
    stats = {"nonfinite": int(st[:, 0].sum()), "negative": int(st[:, 1].sum()),
             "min_sum": float(st[:, 2].min()), "max_sum": float(st[:, 3].max())}  # fmt: skip
    return out, (q0 if from_probs else None), stats


def self_weights(offsets: Tensor, weights: Tensor, rank: Tensor, neighbours: Tensor, alpha: float,
                 steps: Tensor, path_w: Tensor) -> Tensor:
    """``(P,)`` every point's own weight through a lattice, in the weights' dtype (see :func:`_self_weights`;
    ``steps (D+1, D+1, 3, D+1)`` and ``path_w (D+1, D+1, 3)`` are :func:`crfrnn.lattice._canonical_paths` for the
    lattice's dimension).

    The same sums as the PyTorch path's walk of every blur path, compiled: at 500x375 with 5-D bilateral features
    the PyTorch walk took 1.9 s, as long as ten mean-field iterations.
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
    _self_weights(np.ascontiguousarray(offsets.numpy(), dtype=np.int32), w, np.ascontiguousarray(rank.numpy()),
                  moves, r.astype(np.int64), q.astype(np.int64),
                  pw[r, q, c].astype(np.float64), np.ascontiguousarray(steps.numpy()[r, q, c].T + 1, dtype=np.int32),
                  float(alpha), out)  # fmt: skip
    return torch.from_numpy(out).to(weights.dtype)


def build(features: Tensor, batch_size: int, max_code_bits: int) -> tuple[Tensor, Tensor, Tensor, Tensor, int] | None:
    """Lattice of ``(P, D)`` CPU features (``P = B * N``, images contiguous), or None if a vertex key's code
    would need ``max_code_bits`` bits or more (the caller then uses its general construction).

    Returns ``(offsets (P, D+1) int32, weights (P, D+1) in the features' dtype, rank (P, D+1) int8,
    neighbours (D+1, 2, M) int32 with M for an absent neighbour, M)``.
    """
    feats = np.ascontiguousarray(features.detach().numpy(), dtype=np.float64)
    num_points, d = feats.shape
    d1 = d + 1
    scale = math.sqrt(2.0 / 3.0) * d1 / np.sqrt((np.arange(d) + 1.0) * (np.arange(d) + 2.0))
    num_chunks = max(1, min(num_points // 1024, 8 * numba.get_num_threads()))
    bounds = _elevated_bounds(feats, scale, num_chunks)
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
    _simplices(feats, scale, lo, strides, num_points // batch_size, num_chunks, codes, weights, ranks)
    runs = numba.get_num_threads()
    # the same ids either way (tested): in parallel runs where there are threads and enough points
    ids, uniq, table = _insert_runs(codes, d1, runs) if runs > 1 and num_points >= 16_384 else _insert_all(codes, d1)
    # code of the neighbour along direction j: key - 1 + (d + 1) e_j on the first d coordinates
    off = -np.ones((d1, d), np.int64) + d1 * np.eye(d1, d, dtype=np.int64)
    deltas = (off * strides[:d]).sum(1)
    neighbours = _neighbour_ids(uniq, deltas, table)
    return (
        torch.from_numpy(ids.reshape(num_points, d1)),
        torch.from_numpy(weights),
        torch.from_numpy(ranks),
        torch.from_numpy(neighbours),
        uniq.shape[0],
    )


class NumbaOperators:
    """Splat/blur/slice of one lattice in one dtype with the compiled kernels (CPU tensors only).

    The vertex buffers are kept between calls (per channel count): allocating fresh multi-megabyte
    buffers on every call costs more in page faults than the blur itself. They are shared, so one filtering
    runs at a time per lattice (the fused mean field allocates its own and needs no lock).
    """

    def __init__(self, offsets: Tensor, weights: Tensor, neighbours: Tensor, num_vertices: int, alpha: float):
        self.offsets = np.ascontiguousarray(offsets.numpy(), dtype=np.int32)
        self.weights = np.ascontiguousarray(weights.numpy())
        self.neighbours = np.ascontiguousarray(neighbours.numpy(), dtype=np.int32)
        self.num_vertices = num_vertices
        self.alpha = alpha
        self._ones = np.ones(self.offsets.shape[0], self.weights.dtype)
        self.runs = splat_runs(self.offsets.shape[0], num_vertices)
        self._work: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self._lock = threading.Lock()  # the workspace is shared: one filtering at a time per lattice

    def workspace(self, channels: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(splat buffer (M + 1, C), blur buffer (M + 1, C), partial sums (runs, M + 1, C))`` for ``channels``
        (hold the lock to use them)."""
        work = self._work.get(channels)
        if work is None:
            shape = (self.num_vertices + 1, channels)
            work = (np.zeros(shape, self.weights.dtype), np.zeros(shape, self.weights.dtype),
                    np.zeros((self.runs,) + shape, self.weights.dtype))
            self._work[channels] = work
        return work

    def splat(self, values: np.ndarray, pre: np.ndarray, buf: np.ndarray, parts: np.ndarray) -> np.ndarray:
        """``buf (M + 1, C)`` = the splat of ``pre * values (P, C)``, ``parts`` as scratch (:func:`splat`)."""
        return splat(self, values, pre, buf, parts)

    def __call__(self, values: Tensor, reverse: bool) -> Tensor:
        vals = values.detach().numpy()
        channels = vals.shape[1]
        padded = padded_channels(channels, vals.dtype)
        if padded != channels:  # the copy costs less than the scalar tail it saves
            vals = np.concatenate([vals, np.zeros((vals.shape[0], padded - channels), vals.dtype)], 1)
        out = torch.empty((vals.shape[0], padded), dtype=values.dtype)
        with self._lock:
            buf, tmp, parts = self.workspace(padded)
            buf = _blur(self.splat(vals, self._ones, buf, parts), tmp, self.neighbours, reverse)
            _slice(buf, self.weights, self.offsets, vals.dtype.type(self.alpha), out.numpy())
        return out if padded == channels else out[:, :channels]


def splat_parts(ops: list, channels: int, dtype: np.dtype) -> tuple:
    """The fused loop's partial splat sums, ``(R, M_k + 1, C)`` per lattice in ``ops``, with one run count ``R`` for
    all (the smallest of their :func:`splat_runs`). Callers that run one iteration at a time share them between the
    :func:`prepare` of every step, so that an iteration can leave its splat for the next (``scatter_out``)."""
    runs = min(o.runs for o in ops)
    return tuple(np.empty((runs, o.num_vertices + 1, channels), dtype) for o in ops)


class Prepared(NamedTuple):
    """:func:`prepare`'s result: the compiled loop's per-kernel arguments, in the order it takes them (the
    fields are documented with :func:`_mean_field`'s arguments of the same names)."""

    alphas: np.ndarray
    offsets: tuple
    weights: tuple
    neighbours: tuple
    parts: tuple
    pre: np.ndarray
    post: np.ndarray
    selfw: np.ndarray
    has_self: np.ndarray
    is_full: np.ndarray
    on_vertices: np.ndarray
    diag: np.ndarray
    mat: np.ndarray
    bufs: tuple
    tmps: tuple
    vbufs: tuple


def prepare(kernels: list, num_labels: int, num_points: int, channels: int, dtype: np.dtype,
            work: Optional[list] = None, parts: Optional[tuple] = None) -> Prepared:
    """The compiled loop's per-kernel arguments (see :func:`mean_field` for ``kernels`` and ``work``): stacked
    factors, padded label transforms, the lattices' arrays and vertex buffers; ``parts``: :func:`splat_parts`
    (allocated if None).

    A matrix transform is applied to the blurred vertex values (``on_vertices``) when the lattice has fewer vertices
    than points and the kernel excludes no self-connection: at 500x375 the spatial lattice has 24540 vertices for
    187500 pixels, so its ``L x L`` products cost an eighth.
    """
    dt, c = dtype, channels
    nk = len(kernels)
    alphas = np.empty(nk, dt)
    pre = np.empty((nk, num_points), dt)
    post = np.empty((nk, num_points), dt)
    selfw = np.empty((nk, num_points), dt)
    has_self = np.zeros(nk, np.bool_)
    is_full = np.zeros(nk, np.bool_)
    on_vertices = np.zeros(nk, np.bool_)
    diag = np.zeros((nk, c), dt)
    mat = np.zeros((nk, c, c), dt)
    offsets, weights, neighbours, bufs, tmps, vbufs = [], [], [], [], [], []
    for k, (ops, pre_k, post_k, self_k, transform) in enumerate(kernels):
        alphas[k] = ops.alpha
        pre[k], post[k], selfw[k] = pre_k, post_k, self_k
        has_self[k] = bool(selfw[k].any())
        t = np.asarray(transform, dt)
        shape = (ops.num_vertices + 1, c)
        if t.ndim == 2:
            mat[k, :num_labels, :num_labels] = t.T
            if ops.num_vertices + 1 < num_points and not has_self[k]:
                on_vertices[k] = True
                diag[k] = 1.0
            else:
                is_full[k] = True
        else:
            diag[k, :num_labels] = t
        offsets.append(ops.offsets)
        weights.append(ops.weights)
        neighbours.append(ops.neighbours)
        if work is None:
            bufs.append(np.empty(shape, dt))
            tmps.append(np.empty(shape, dt))
        else:
            bufs.append(work[k][0])
            tmps.append(work[k][1])
        if not on_vertices[k]:
            vbufs.append(np.empty((1, c), dt))
        elif work is not None and len(work[k]) > 2:
            vbufs.append(work[k][2])
        else:
            vbufs.append(np.empty(shape, dt))
    if parts is None:
        parts = splat_parts([k[0] for k in kernels], c, dt)
    return Prepared(alphas, tuple(offsets), tuple(weights), tuple(neighbours), parts, pre, post, selfw, has_self,
                    is_full, on_vertices, diag, mat, tuple(bufs), tuple(tmps), tuple(vbufs))


def mean_field(
    unary: np.ndarray, num_labels: int, iterations: int, kernels: list, q0: Optional[np.ndarray] = None,
    return_logits: bool = False, out: Optional[np.ndarray] = None, transpose: bool = True,
    work: Optional[list] = None, q_out: Optional[np.ndarray] = None,
    prepared: Optional[tuple] = None, splatted: bool = False, scatter_out: bool = False,
) -> np.ndarray:
    """Fused no-grad mean field on the CPU with any number of kernels: marginals (or logits) ``(L, P)``.

    Args:
        unary: ``(P, C)`` logits, float32 or float64, with ``C = padded_channels(L)`` and the padding 0
            (as :func:`unary_from_scores` makes them).
        num_labels: ``L``.
        iterations: number of mean-field iterations (``0`` returns ``softmax(unary)`` or ``unary``).
        kernels: ``(operators, pre (P,), post (P,), self (P,), transform)`` per kernel, NumPy arrays in the
            unary's dtype: the message of kernel ``k`` is ``post * (K(pre * q) - self * pre * q)`` and it is
            added to the logits as ``transform * msg`` for a per-label vector ``(L,)``, or ``msg @ transform.T``
            for an ``(L, L)`` matrix.
        q0: ``softmax(unary)`` if already known (:func:`unary_from_scores` gives it for probabilities); it is
            overwritten.
        return_logits: return the last iteration's logits instead of the marginals.
        out: where to write the result (``(L, P)``, C-contiguous, the unary's dtype); allocated if None.
        transpose: False leaves the result in ``q_out`` (padded ``(P, C)``) only and returns it (one step of a
            longer schedule; no labels-first copy is made). True writes it to ``out`` only (the last iteration
            writes labels first; ``q_out`` is then scratch).
        q_out: where the padded result goes; by default ``q0`` itself (in place), or a new array.
        prepared: :func:`prepare`'s result for these ``kernels`` (callers that run one iteration at a time build it
            once per image and label transform, not per iteration).
        splatted: the partial sums in ``prepared`` already hold the splat of ``q0`` (a previous call's
            ``scatter_out``), so the first iteration does not splat it again.
        scatter_out: leave the splat of the result's marginals in ``prepared``'s partial sums for the next call
            (ignored with ``return_logits``).
        work: ``(buf, tmp[, vbuf])`` vertex buffers ``(M_k + 1, C)`` per kernel (``vbuf`` for a matrix transform
            applied on the vertices, see :func:`prepare`), for callers that run one iteration at a
            time (fresh multi-megabyte buffers cost page faults on every call); allocated if None.

    Returns:
        ``(L, P)``, labels first. Every buffer is allocated for this call, so concurrent calls from several
        threads (on the same lattices) never share memory they write.
    """
    dt = unary.dtype
    num_points, c = unary.shape
    q = np.empty_like(unary) if q0 is None else q0
    if q_out is None:
        q_out = q
    if iterations == 0 or not kernels:
        if return_logits:
            q_out[:] = unary
        elif q0 is None:
            _softmax_rows(unary, q_out, num_labels)
        elif q_out is not q:
            q_out[:] = q
    else:
        args = prepared if prepared is not None else prepare(kernels, num_labels, num_points, c, dt, work)
        if transpose and out is None:
            out = np.empty((num_labels, num_points), dt)
        out_t = out if transpose else np.empty((0, 0), dt)
        _mean_field(unary, q, q_out, q0 is not None, num_labels, iterations, return_logits,
                    splatted and q0 is not None, scatter_out and not return_logits, out_t, *args)
        return out if transpose else q_out
    if not transpose:
        return q_out
    if out is None:
        out = np.empty((num_labels, num_points), dt)
    _channels_first(q_out, num_labels, out)
    return out

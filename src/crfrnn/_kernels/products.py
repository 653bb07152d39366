"""Label products of the fused loop: ``L x L`` label transforms applied to rows of marginals or vertex values."""

from __future__ import annotations

from numba import njit, prange

from crfrnn._kernels.layout import BLOCK
from crfrnn._kernels.simd import FAST

__all__ = ["add_product", "vertex_matmul"]


@njit(cache=True, inline="always")
def add_product(src, s0, count, mat, cr, out, o0):  # pragma: no cover - compiled
    """``out[o0 + j] += src[s0 + j, :cr] @ mat[:cr]`` for ``j < count`` (at most 8): a full group of eight rows
    at once, so that each row of ``mat`` is loaded once for eight (twice as fast as row by row at L = 21).
    """
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


@njit(cache=True, parallel=True, nogil=True, fastmath=FAST)
def vertex_matmul(b, mat, cr, out):  # pragma: no cover - compiled
    """``out (M + 1, C) = b[:, :cr] @ mat[:cr]``: a label transform applied to blurred vertex values; returns ``out``.

    Eight rows at a time (:func:`add_product`), as the fused loop's point-by-point product.
    """
    rows, c = b.shape
    for blk in prange((rows + BLOCK - 1) // BLOCK):
        start = blk * BLOCK
        stop = min(rows, start + BLOCK)
        for v in range(start, stop):
            for ch in range(c):
                out[v, ch] = 0.0
        for i0 in range(start, stop, 8):
            add_product(b, i0, min(8, stop - i0), mat, cr, out, i0)
    return out

"""The compiled row softmax over padded channels: LLVM vector code (:func:`softmax_rows_v`)
for the usual padded channel counts (2, 4, 8, 16, 24, 32), each row's maximum and sum vector reductions, four rows
interleaved; loops over whole blocks for other counts.
"""

from __future__ import annotations

import functools

import numpy as np
from numba import njit, prange

from crfrnn._kernels.layout import BLOCK
from crfrnn._kernels.simd import FAST, exp_inplace, softmax_rows_v

__all__ = ["softmax_any", "softmax_copy_block", "softmax_rows", "softmax_rows_for", "softmax_rows_into"]


@njit(cache=True, inline="always")
def _softmax_block(flat, c, cr, start, stop, scratch):  # pragma: no cover - compiled
    """Softmax over the first ``cr`` channels of each row of ``flat.reshape(-1, c)[start:stop]``, in place.

    Channels ``cr..c-1`` are padding (see :func:`padded_channels`): they enter the maxima and the exp as a large
    negative number and leave as 0. The exp runs over the whole block at once (``scratch``: int32, ``(stop -
    start) * c`` long). Inlined with a constant ``c`` (see :func:`scatter_parts`), the per-row maxima and sums
    vectorise across the channels, which is faster than transposing each block to take them across rows.
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
    """Rows ``start..stop-1`` of ``flat.reshape(-1, c)`` through :func:`softmax_rows_v`, four at a time; ``c`` a
    constant at the call (inlining keeps it literal).
    """
    o = start * c
    end = stop * c
    while o + 4 * c <= end:
        softmax_rows_v(flat, o, cr, c, 4)
        o += 4 * c
    while o < end:
        softmax_rows_v(flat, o, cr, c, 1)
        o += c


@njit(cache=True, inline="always")
def softmax_any(flat, c, cr, start, stop, scratch):  # pragma: no cover - compiled
    """The softmax of rows ``start..stop-1`` of ``flat.reshape(-1, c)`` over their first ``cr`` channels (the rest
    set to 0): in vector code for the usual padded channel counts, else :func:`_softmax_block`. ``c`` must be a
    compile-time constant at the call (a closure's constant, inlined): the branch not taken is pruned before it
    compiles, and :func:`_softmax_v` is inlined once (not once per count: a second of the fused loop's compile time).
    """
    if c == 2 or c == 4 or c == 8 or c == 16 or c == 24 or c == 32:
        _softmax_v(flat, c, cr, start, stop)
    else:
        _softmax_block(flat, c, cr, start, stop, scratch)


@njit(cache=True, inline="always")
def softmax_copy_block(x, out, c, cr, start, stop, scratch):  # pragma: no cover - compiled
    """Rows ``start..stop-1``: ``out[:, :cr] = softmax(x[:, :cr], axis=1)``, ``out[:, cr:] = 0`` (C-contiguous
    ``(N, c)`` arrays; ``out`` may be ``x``); ``c`` a constant at the call.
    """
    src = x.reshape(-1)
    flat = out.reshape(-1)
    for o in range(start * c, stop * c):
        flat[o] = src[o]
    softmax_any(flat, c, cr, start, stop, scratch)


@functools.lru_cache(maxsize=None)
def softmax_rows_for(channels: int):
    """The parallel row softmax for ``channels`` padded channels, compiled for that count only (the count is a
    compile-time constant, so only its variant of :func:`softmax_any` compiles; cached on disk per count).
    """
    c = channels

    @njit(cache=True, parallel=True, nogil=True, fastmath=FAST)
    def softmax_rows_c(x, out, cr):  # pragma: no cover - compiled
        n = x.shape[0]
        num_blocks = (n + BLOCK - 1) // BLOCK
        for blk in prange(num_blocks):
            scratch = np.empty(BLOCK * c, np.int32)
            softmax_copy_block(x, out, c, cr, blk * BLOCK, min(n, (blk + 1) * BLOCK), scratch)

    return softmax_rows_c


def softmax_rows_into(x: np.ndarray, out: np.ndarray, num_labels: int) -> None:
    """``out[:, :L] = softmax(x[:, :L], axis=1)``, ``out[:, L:] = 0``; C-contiguous ``(N, C)`` arrays."""
    softmax_rows_for(x.shape[1])(x, out, num_labels)


def softmax_rows(x: np.ndarray, out: np.ndarray, num_labels: int) -> np.ndarray:
    """``out[:, :L] = softmax(x[:, :L])`` over each row of padded ``(P, C)`` arrays, padding set to 0."""
    softmax_rows_into(x, out, num_labels)
    return out

"""Compiled pieces of the mean field's backward pass: the softmax's vector-Jacobian product, the last step of a
message's adjoint (after the adjoint splat and blur of :mod:`crfrnn._kernels.filtering`), and long reductions
summed in an order that does not depend on the number of threads (:func:`gram`).
"""

from __future__ import annotations

from typing import Optional

import numpy as np
from numba import njit, prange

from crfrnn._kernels.filtering import NumbaOperators
from crfrnn._kernels.layout import BLOCK
from crfrnn._kernels.simd import FAST

__all__ = ["adjoint_slice", "gram", "softmax_backward"]

_GRAM_CHUNKS = 16  # fixed, so that the sums do not depend on the number of threads


@njit(cache=True, parallel=True, nogil=True, fastmath=FAST)
def _gram(a, b, w, cr, diagonal):  # pragma: no cover - compiled
    """``sum_v w_v a[v, :cr]^T b[v]`` (``(cr, C)``; ``w`` empty: 1), or its diagonal ``sum_v w_v a[v] b[v]``
    (``(1, C)``) with ``diagonal``: partial sums over fixed chunks of rows added in order, the same for any number
    of threads (BLAS splits such long reductions by its thread count, and the gradients moved with it in the last
    bit).
    """
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
        while not diagonal and v + 8 <= stop:  # eight rows per update of the sums: much faster than one
            for ci in range(cr):
                a0, a1, a2, a3 = a[v, ci], a[v + 1, ci], a[v + 2, ci], a[v + 3, ci]
                a4, a5, a6, a7 = a[v + 4, ci], a[v + 5, ci], a[v + 6, ci], a[v + 7, ci]
                if weighted:
                    a0, a1, a2, a3 = a0 * w[v], a1 * w[v + 1], a2 * w[v + 2], a3 * w[v + 3]
                    a4, a5, a6, a7 = a4 * w[v + 4], a5 * w[v + 5], a6 * w[v + 6], a7 * w[v + 7]
                for ch in range(c):
                    part[ci, ch] += (
                        a0 * b[v, ch]
                        + a1 * b[v + 1, ch]
                        + a2 * b[v + 2, ch]
                        + a3 * b[v + 3, ch]
                        + a4 * b[v + 4, ch]
                        + a5 * b[v + 5, ch]
                        + a6 * b[v + 6, ch]
                        + a7 * b[v + 7, ch]
                    )
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


@njit(cache=True, parallel=True, nogil=True, fastmath=FAST)
def _softmax_backward(q, grad, cr, dlogits, du):  # pragma: no cover - compiled
    """The softmax's vector-Jacobian product: ``dlogits = q * (grad - sum_l q_l grad_l)`` over the first ``cr``
    channels of each row (padding 0), and ``du += dlogits``; all ``(P, C)``.
    """
    n, c = q.shape
    blocks = (n + BLOCK - 1) // BLOCK
    for blk in prange(blocks):
        for p in range(blk * BLOCK, min(n, (blk + 1) * BLOCK)):
            dot = q[p, 0] * grad[p, 0]
            for ch in range(1, cr):
                dot += q[p, ch] * grad[p, ch]
            for ch in range(cr):
                v = q[p, ch] * (grad[p, ch] - dot)
                dlogits[p, ch] = v
                du[p, ch] += v
            for ch in range(cr, c):
                dlogits[p, ch] = 0.0


@njit(cache=True, parallel=True, nogil=True, fastmath=FAST)
def _message_backward(buf, weights, offsets, alpha, pre, post, selfw, scale, dmsg, out, accumulate):  # pragma: no cover
    """The adjoint of one kernel's message ``post * (K(pre * q) - selfw * pre * q)`` after the adjoint splat and
    blur: ``out (+)= scale * pre * (alpha * slice(buf) - selfw * post * dmsg)``.

    ``buf`` holds ``blur^T(splat(post * dmsg))`` (blur directions reversed) and ``scale (C,)`` is a per-label
    factor (a vector label transform, folded in here because the filter acts on each channel alone).
    """
    num_points, c = out.shape
    d1 = offsets.shape[1]
    blocks = (num_points + BLOCK - 1) // BLOCK
    for blk in prange(blocks):
        acc = np.empty(c, out.dtype)
        for p in range(blk * BLOCK, min(num_points, (blk + 1) * BLOCK)):
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


def softmax_backward(q: np.ndarray, grad: np.ndarray, num_labels: int, dlogits: np.ndarray, du: np.ndarray) -> None:
    """``dlogits = q * (grad - <q, grad>)`` row by row (the softmax's vector-Jacobian product), and ``du +=
    dlogits``; padded ``(P, C)`` arrays, padding channels 0.
    """
    _softmax_backward(q, grad, num_labels, dlogits, du)


def adjoint_slice(
    ops: "NumbaOperators",
    buf: np.ndarray,
    dmsg: np.ndarray,
    pre: np.ndarray,
    post: np.ndarray,
    selfw: np.ndarray,
    scale: np.ndarray,
    out: np.ndarray,
    accumulate: bool,
) -> None:
    """The last step of a message's adjoint: ``out (+)= scale * pre * (alpha * S buf - selfw * post * dmsg)`` with
    ``buf = blur^T(S^T(post * dmsg))`` already computed (``dmsg`` is read only where ``selfw`` is not 0).
    """
    _message_backward(
        buf, ops.weights, ops.offsets, buf.dtype.type(ops.alpha), pre, post, selfw, scale, dmsg, out, accumulate
    )


def gram(
    a: np.ndarray, b: np.ndarray, num_labels: int, weights: Optional[np.ndarray] = None, diagonal: bool = False
) -> np.ndarray:
    """``sum_v w_v a[v, :L]^T b[v, :L]`` ``(L, L)`` over the rows of two ``(R, C)`` arrays (``weights (R,)``,
    default 1), or only its diagonal ``(L,)``; summed in an order that does not depend on the number of threads.
    """
    w = np.empty(0, b.dtype) if weights is None else weights
    out = _gram(a, b, w, num_labels, diagonal)
    return out[0, :num_labels] if diagonal else out[:, :num_labels]

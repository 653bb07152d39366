"""The compiled kernels' data layout: points channels last in blocks of :data:`BLOCK`, channels padded to the SIMD
width (:func:`padded_channels`), and the conversions into it (:func:`unary_from_scores`, :func:`channels_last`)
and out of it (:func:`channels_first`); and the labelling of labels-first scores (:func:`argmax_labels`).
"""

from __future__ import annotations

import functools
from typing import Optional

import numpy as np
from numba import njit, prange
from numpy.typing import DTypeLike
from torch import Tensor

from crfrnn._kernels.simd import FAST, log_inplace

__all__ = ["BLOCK", "argmax_labels", "channels_first", "channels_last", "padded_channels", "unary_from_scores"]

BLOCK = 256  # points per block of every kernel that walks the points: the softmax's exp runs over BLOCK * C
# contiguous values at once, and the splat's runs are whole blocks


@functools.lru_cache(maxsize=None)
def _unary_from_scores_for(probabilities: bool):
    """:func:`_unary_from_scores` for probabilities or for logits: ``from_probs`` is a compile-time constant, so
    each variant compiles only its own path (a first call from probabilities compiles no logits code).
    """
    from_probs = probabilities

    @njit(cache=True, parallel=True, nogil=True, fastmath=FAST)
    def _unary_from_scores(src, clip, out, q0):  # pragma: no cover - compiled
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
        blocks = (n + BLOCK - 1) // BLOCK
        stats = np.zeros((b_count * blocks, 4))
        for job in prange(b_count * blocks):
            b = job // blocks
            start = (job % blocks) * BLOCK
            stop = min(n, start + BLOCK)
            m = stop - start
            scratch = np.empty(BLOCK * c, np.int32)
            tot = np.zeros(BLOCK)  # float64: the sums checked against 1
            kept = np.zeros(BLOCK, out.dtype)
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

    return _unary_from_scores


@njit(cache=True, parallel=True, nogil=True)
def _channels_first(q, cr, out):  # pragma: no cover - compiled
    """``out[l, n] = q[n, l]`` for the first ``cr`` channels of ``q (N, C)``; ``out (cr, N)``."""
    n = q.shape[0]
    blocks = (n + BLOCK - 1) // BLOCK
    for blk in prange(blocks):
        for ch in range(cr):
            for i in range(blk * BLOCK, min(n, (blk + 1) * BLOCK)):
                out[ch, i] = q[i, ch]


@njit(cache=True, parallel=True, nogil=True)
def _channels_last(src, out):  # pragma: no cover - compiled
    """``out[n, l] = src[l, n]`` for ``src (L, N)`` into padded ``out (N, C)``, padding set to 0."""
    cr, n = src.shape
    c = out.shape[1]
    blocks = (n + BLOCK - 1) // BLOCK
    for blk in prange(blocks):
        stop = min(n, (blk + 1) * BLOCK)
        for i in range(blk * BLOCK, stop):
            for ch in range(cr, c):
                out[i, ch] = 0.0
        for ch in range(cr):
            for i in range(blk * BLOCK, stop):
                out[i, ch] = src[ch, i]


@njit(cache=True, nogil=True)
def _argmax_rows(flat, out, best):  # pragma: no cover - compiled
    """``out[i]`` = the first ``k`` with the largest ``flat[k, i]``, ``best[i]`` that value; returns whether any
    score is NaN (then ``out`` is not NumPy's).
    """
    num_labels, n = flat.shape
    nan = False
    for i in range(n):
        best[i] = flat[0, i]
        out[i] = 0
    for k in range(1, num_labels):  # label by label: every pass reads one contiguous row
        for i in range(n):
            v = flat[k, i]
            if v > best[i]:
                best[i] = v
                out[i] = k
            nan |= v != v
    for i in range(n):
        nan |= best[i] != best[i]
    return nan


def argmax_labels(scores: np.ndarray) -> Optional[np.ndarray]:
    """``scores.argmax(0)`` as int64 for float ``(L, *S)`` scores, computed label by label over contiguous rows
    (NumPy's and PyTorch's argmax over the first axis are strided passes, which cost a tenth of a refined image's
    time); None if a score is NaN (the caller's own argmax then decides, by its own rule).
    """
    flat = np.ascontiguousarray(scores).reshape(scores.shape[0], -1)
    out = np.empty(flat.shape[1], np.int64)
    best = np.empty(flat.shape[1], flat.dtype)
    if _argmax_rows(flat, out, best):
        return None
    return out.reshape(scores.shape[1:])


def padded_channels(channels: int, dtype: DTypeLike) -> int:
    """Channel count the compiled kernels work with: a multiple of the SIMD width (8 float32 or 4 float64
    values) for 5 channels and more, of 4 for 3 or 4 channels, none for 1 or 2, so that every per-vertex loop
    vectorises without a scalar tail while padding never doubles the work. At 500x375 in 5-D, splat and slice
    of 21 float32 channels took nearly twice as long as of 24 (``benchmarks/README.md``).
    """
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


def unary_from_scores(
    scores: Tensor,
    clip: float,
    from_probs: bool,
    out: Optional[np.ndarray] = None,
    q0_out: Optional[np.ndarray] = None,
) -> tuple[np.ndarray, Optional[np.ndarray], dict]:
    """Padded channels-last unary ``(B * N, C)`` from ``(B, L, *S)`` CPU scores, and what a check found.

    ``out``: where to write the unary (``(B * N, C)`` in the scores' dtype), e.g. a buffer kept between training steps
    (a fresh one, 72 MB at 500x375 x 4 images, costs page faults on every step); allocated if None.
    ``q0_out``: the same for the first marginals (used with ``from_probs`` only).

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
    if not from_probs:
        q0 = np.empty((0, out.shape[1]), src.dtype)
    elif q0_out is None:
        q0 = np.empty_like(out)
    elif q0_out.shape != shape or q0_out.dtype != src.dtype:
        raise ValueError(f"q0_out must be a {shape} {src.dtype} array, got {q0_out.shape} {q0_out.dtype}.")
    else:
        q0 = q0_out
    st = _unary_from_scores_for(bool(from_probs))(src, src.dtype.type(clip), out, q0)
    stats = {
        "nonfinite": int(st[:, 0].sum()),
        "negative": int(st[:, 1].sum()),
        "min_sum": float(st[:, 2].min()),
        "max_sum": float(st[:, 3].max()),
    }
    return out, (q0 if from_probs else None), stats

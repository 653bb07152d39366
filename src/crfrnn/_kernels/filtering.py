"""Compiled splat, blur and slice of one lattice (:class:`NumbaOperators`), and the splat's partial sums.

The splat scatters each run of points in order into its own accumulation buffer (:func:`scatter_parts`), then
the buffers are summed in order (:func:`reduce_parts`), so that it is parallel without atomics or races and gives
the same sums for any number of threads (:func:`splat_runs` fixes the runs from the sizes alone); blur and slice
are gathers by construction.
"""

from __future__ import annotations

import threading
from typing import Optional

import numba
import numpy as np
import torch
from numba import njit, prange
from numpy.typing import DTypeLike
from torch import Tensor

from crfrnn._kernels.layout import BLOCK, padded_channels
from crfrnn._kernels.simd import FAST, axpy
from crfrnn._kernels.taking import take

__all__ = [
    "NumbaOperators",
    "blur",
    "blur_result",
    "blur_vertices",
    "reduce_parts",
    "run_length",
    "scatter_parts",
    "scatter_rows",
    "slice_vertices",
    "splat",
    "splat_parts",
    "splat_parts_shapes",
    "splat_runs",
]


@njit(cache=True, inline="always")
def scatter_rows(values, first, pre, offsets, weights, part, start, stop, c):  # pragma: no cover - compiled
    """``part[o] += w * pre[p] * values[p - first, :c]`` for points ``start <= p < stop`` and their simplex vertices
    ``o`` with barycentric weights ``w``, in the order of the points.
    """
    d1 = offsets.shape[1]
    for p in range(start, stop):
        s = pre[p]
        i = p - first
        for r in range(d1):
            axpy(part, offsets[p, r], values, i, weights[p, r] * s, c)


@njit(cache=True, parallel=True, nogil=True, fastmath=FAST)
def scatter_parts(values, pre, offsets, weights, parts):  # pragma: no cover - compiled
    """The splat's partial sums: ``parts[j] (M + 1, C)`` = ``S^T(pre * values)`` over the ``j``-th of ``K = len(parts)``
    runs of whole blocks of points (:func:`run_length`; row ``M``, the absent neighbour, stays 0); :func:`reduce_parts`
    adds them.

    A scatter point by point reads ``values`` once, in order, into a buffer that stays in cache (the gather
    vertex by vertex it replaced read ``values`` in random order, which was slower). Each run
    has its own buffer, so the runs go in parallel without atomics, and since ``K`` does not depend on the
    number of threads, neither does the result.
    """
    k, rows, c = parts.shape
    n = values.shape[0]
    per = run_length(n, k)
    for j in prange(k):
        part = parts[j]
        part[:] = 0.0
        start = min(n, j * per)
        stop = min(n, start + per)
        scatter_rows(values, 0, pre, offsets, weights, part, start, stop, c)
    return parts


@njit(cache=True, inline="always")
def run_length(n, k):  # pragma: no cover - compiled
    """Points per run of the splat's ``k`` partial sums: whole blocks of ``BLOCK`` points, so that the fused loop
    (which scatters block by block) and :func:`scatter_parts` add in the same order.
    """
    blocks = (n + BLOCK - 1) // BLOCK
    return ((blocks + k - 1) // k) * BLOCK


_PIECE = 1024  # vertex rows per piece of the work-taking loops below


@njit(cache=True, parallel=True, nogil=True)
def reduce_parts(parts, buf, threads):  # pragma: no cover - compiled
    """``buf = parts[0] + parts[1] + ...`` (in that order); returns ``buf`` ``(M + 1, C)``. ``threads``: the threads
    of the moment, which take pieces of rows as they go (:mod:`~crfrnn._kernels.taking`).
    """
    k, rows, c = parts.shape
    pieces = (rows + _PIECE - 1) // _PIECE
    counter = np.zeros(1, np.int64)
    for _t in prange(max(1, min(threads, pieces))):
        while True:
            i = take(counter, 0)
            if i >= pieces:
                break
            for v in range(i * _PIECE, min(rows, (i + 1) * _PIECE)):
                for ch in range(c):
                    buf[v, ch] = parts[0, v, ch]
                for j in range(1, k):
                    for ch in range(c):
                        buf[v, ch] += parts[j, v, ch]
    return buf


@njit(cache=True, parallel=True, nogil=True)
def blur_vertices(buf, tmp, neighbours, reverse, threads):  # pragma: no cover - compiled
    """``[1/2, 1, 1/2]`` along each lattice direction (reversed order for the adjoint); returns the result.
    ``threads``: the threads of the moment, which take pieces of vertices as they go (a vertex's result does not
    depend on which thread computes it).
    """
    d1, _, m = neighbours.shape
    c = buf.shape[1]
    tmp[m, :] = 0.0
    pieces = (m + _PIECE - 1) // _PIECE
    workers = max(1, min(threads, pieces))
    counter = np.zeros(1, np.int64)
    for step in range(d1):
        j = d1 - 1 - step if reverse else step
        counter[0] = 0
        for _t in prange(workers):
            while True:
                i = take(counter, 0)
                if i >= pieces:
                    break
                for v in range(i * _PIECE, min(m, (i + 1) * _PIECE)):
                    a = neighbours[j, 0, v]
                    b = neighbours[j, 1, v]
                    for ch in range(c):
                        tmp[v, ch] = buf[v, ch] + 0.5 * (buf[a, ch] + buf[b, ch])
        buf, tmp = tmp, buf
    return buf


@njit(cache=True, parallel=True, nogil=True)
def slice_vertices(buf, weights, offsets, alpha, out):  # pragma: no cover - compiled
    num_points, c = out.shape
    d1 = offsets.shape[1]
    for p in prange(num_points):
        for ch in range(c):
            out[p, ch] = 0.0
        for r in range(d1):
            axpy(out, p, buf, offsets[p, r], weights[p, r] * alpha, c)


def splat(
    ops: "NumbaOperators", values: np.ndarray, pre: np.ndarray, buf: np.ndarray, parts: Optional[np.ndarray] = None
) -> np.ndarray:
    """``buf (M + 1, C) = S^T (pre * values)``: the lattice's splat of ``values (P, C)`` weighted by ``pre (P,)``
    (row ``M``, the absent neighbour, is 0). ``parts``: scratch for the partial sums, ``(ops.runs, M + 1, C)``
    (allocated if None).
    """
    if parts is None:
        parts = np.empty((ops.runs,) + buf.shape, buf.dtype)
    return reduce_parts(scatter_parts(values, pre, ops.offsets, ops.weights, parts), buf, numba.get_num_threads())


_MAX_RUNS = 64  # the block pass runs its runs in parallel: this caps its threads


def splat_runs(num_points: int, num_vertices: int) -> int:
    """How many runs of points a splat of ``num_points`` onto ``num_vertices`` vertices adds up separately (in
    parallel, each into its own ``(M + 1, C)`` buffer): one per thread numba may start (its configured maximum,
    not the thread count of the moment, so that the sums do not depend on the machine's load), at most 64, and at
    most about ``4 N / M`` where the lattice has many vertices (the buffers' memory), but 2 where 2 threads can
    run. The same for every call with the same sizes in one process.
    """
    blocks = -(-num_points // BLOCK)
    runs = min(_MAX_RUNS, numba.config.NUMBA_NUM_THREADS, blocks)  # type: ignore[attr-defined]  # set at import
    return max(1, min(runs, max(2, (4 * num_points) // (num_vertices + 1))))


def blur(ops: "NumbaOperators", buf: np.ndarray, tmp: np.ndarray, reverse: bool) -> np.ndarray:
    """The lattice's blur of ``buf (M + 1, C)`` (directions reversed for the adjoint), ``tmp`` as scratch; returns
    whichever of the two holds the result (see :func:`blur_result`).
    """
    return blur_vertices(buf, tmp, ops.neighbours, reverse, numba.get_num_threads())


def blur_result(ops: "NumbaOperators", buf: np.ndarray, tmp: np.ndarray) -> np.ndarray:
    """Which of a blur's two buffers holds its result: it swaps them once per lattice direction (``D + 1``), so
    ``buf`` after an even number of directions, ``tmp`` after an odd one (also inside the fused loop).
    """
    return tmp if ops.neighbours.shape[0] % 2 else buf


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
        self._work: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
        self._lock = threading.Lock()  # the workspace is shared: one filtering at a time per lattice

    def workspace(self, channels: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(splat buffer (M + 1, C), blur buffer (M + 1, C), partial sums (runs, M + 1, C))`` for ``channels``
        (hold the lock to use them).
        """
        work = self._work.get(channels)
        if work is None:
            shape = (self.num_vertices + 1, channels)
            work = (
                np.zeros(shape, self.weights.dtype),
                np.zeros(shape, self.weights.dtype),
                np.zeros((self.runs,) + shape, self.weights.dtype),
            )
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
            buf = blur_vertices(
                self.splat(vals, self._ones, buf, parts), tmp, self.neighbours, reverse, numba.get_num_threads()
            )
            slice_vertices(buf, self.weights, self.offsets, vals.dtype.type(self.alpha), out.numpy())
        return out if padded == channels else out[:, :channels]


def splat_parts_shapes(ops: list, channels: int) -> list:
    """The shapes of :func:`splat_parts`' arrays, ``(R, M_k + 1, C)`` per lattice in ``ops``, with one run count
    ``R`` for all (the smallest of their :func:`splat_runs`).
    """
    runs = min(o.runs for o in ops)
    return [(runs, o.num_vertices + 1, channels) for o in ops]


def splat_parts(ops: list, channels: int, dtype: DTypeLike) -> tuple:
    """The fused loop's partial splat sums (shapes: :func:`splat_parts_shapes`). Callers that run one iteration at a
    time share them between the :func:`prepare` of every step, so that an iteration can leave its splat for the next
    (``scatter_out``).
    """
    return tuple(np.empty(shape, dtype) for shape in splat_parts_shapes(ops, channels))

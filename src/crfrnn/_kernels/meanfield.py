"""The fused compiled mean-field loop: every iteration adds up and blurs each kernel's splat, then one pass over
each block of points slices all kernels, applies the label transforms, adds the unary, takes the softmax and
splats the result for the next iteration (:func:`mean_field`, with :func:`prepare` for its per-kernel
arguments; one block is :func:`~crfrnn._kernels.block.fused_block`).

The block pass is split into runs of blocks, each splatting into its own partial sums in block order (so the sums
do not depend on the threads); a thread takes runs while there are any, then helps the run with the most blocks
left by computing blocks from its end (:mod:`~crfrnn._kernels.taking`), so a slower thread (a shared or efficiency
core, a moment taken by another program) no longer holds up the pass, and threads beyond the runs have work.
"""

from __future__ import annotations

import functools
import os
from typing import NamedTuple, Optional

import numba
import numpy as np
from numba import njit, prange
from numpy.typing import DTypeLike

from crfrnn._kernels.block import fused_block
from crfrnn._kernels.filtering import (
    blur_vertices,
    reduce_parts,
    run_length,
    scatter_parts,
    scatter_rows,
    splat_parts,
)
from crfrnn._kernels.layout import BLOCK, channels_first
from crfrnn._kernels.products import vertex_matmul
from crfrnn._kernels.simd import FAST
from crfrnn._kernels.softmax import softmax_rows_into
from crfrnn._kernels.taking import add, claim, publish, read, take

__all__ = ["Prepared", "mean_field", "prepare"]


@functools.lru_cache(maxsize=None)
def _mean_field_for(channels: int, matrices: bool):  # noqa: C901 - the compiled loop, built once per variant
    """:func:`_mean_field` for ``channels`` padded channels: the count is a compile-time constant of the loop, so
    only its own softmax and product variants compile (a fraction of the first call's compile time; each count
    is cached on disk on its own). ``matrices``: the variant with matrix label transforms (``is_full`` or
    ``on_vertices`` kernels); without them (a Potts model, per-label vectors) their product code is pruned before
    it compiles (about 2 s of a cold first call's compile time).
    """
    c = channels

    @njit(cache=True, parallel=True, nogil=True, fastmath=FAST)
    def _mean_field(
        unary,
        q,
        q_out,
        cr,
        iterations,
        return_logits,
        splatted,
        scatter_out,
        out_t,
        alphas,
        offsets,
        weights,
        neighbours,
        parts,
        pre,
        post,
        selfw,
        has_self,
        is_full,
        on_vertices,
        diag,
        mat,
        bufs,
        tmps,
        vbufs,
        claims,
        threads,
        take_work,
    ):  # pragma: no cover
        """Mean field with any number of Gaussian kernels, in place in ``q`` (no autograd).

        Args:
            unary: ``(P, C)`` logits with ``cr`` real labels and ``C - cr`` padding channels (0).
            q: ``(P, C)`` the first marginals: ``softmax(unary)`` (the caller computes it: compiled apart, by
                :func:`softmax_rows_into`, only for callers that need it).
            q_out: ``(P, C)`` output (``q`` itself to work in place; a separate array keeps ``q``): the marginals
                (padding 0), or the last iteration's logits if ``return_logits``. The first iteration reads ``q``,
                later ones work in place on ``q_out``.
            cr: number of real labels.
            iterations: number of mean-field iterations (``>= 1``).
            return_logits: write the last iteration's logits instead of the marginals.
            splatted: ``parts`` already hold the splat of ``q`` (a previous call's ``scatter_out``).
            scatter_out: leave the splat of the result's marginals in ``parts`` for a following call (not with
                ``return_logits``).
            out_t: ``(cr, P)``: where the last iteration writes its result, labels first, instead of ``q_out``
                (``q_out`` is then scratch: without self-exclusion no iteration writes it); ``(0, 0)`` to write
                ``q_out``.
            alphas: ``(K,)`` each lattice's slice constant.
            offsets: tuple of ``K`` arrays ``(P, D_k + 1)``: each point's simplex vertices in lattice ``k``.
            weights: tuple of ``K`` arrays ``(P, D_k + 1)``: each point's barycentric weights in lattice ``k``.
            neighbours: tuple of ``K`` arrays ``(D_k + 1, 2, M_k)``: vertex neighbours (``M_k`` if absent).
            parts: tuple of ``K`` arrays ``(R, M_k + 1, C)``: the splat's partial sums over ``R`` runs of points
                (:func:`scatter_parts`; ``R`` the same for every kernel). The block pass runs the same ``R`` runs, each
                adding its marginals to its own partial sums.
            pre: ``(K, P)``: kernel ``k``'s message is ``post * (K_k(pre * q) - selfw * pre * q)``.
            post: ``(K, P)``, as in ``pre``.
            selfw: ``(K, P)``, as in ``pre``.
            has_self: ``(K,)`` bool: ``selfw[k]`` is not all zero (the others skip the self term).
            is_full: ``(K,)`` bool: kernel ``k``'s message goes through the matrix ``mat[k]`` (``logits +=
                msg @ mat[k]``) point by point instead of the per-label vector ``diag[k]`` (``logits += diag[k] *
                msg``).
            on_vertices: ``(K,)`` bool: apply ``mat[k]`` to the blurred vertex buffer instead (``S (B mat) = (S B) mat``
                for the slice ``S``, and the normalisation and alpha are per point), then slice it as a vector kernel
                with ``diag[k] = 1``: ``M_k + 1`` rows of products instead of ``P``. Only for kernels without
                self-exclusion (whose ``selfw pre q`` term would need the product point by point again).
            diag: ``(K, C)`` (zero padding).
            mat: ``(K, C, C)`` (zero padding).
            bufs: tuple of ``K`` vertex buffers ``(M_k + 1, C)``; the blur leaves ``B_k`` in it or in ``tmps[k]``
                (:func:`blur_result`).
            tmps: tuple of ``K`` vertex buffers ``(M_k + 1, C)``, the blur's second buffer (it swaps the two).
            vbufs: tuple of ``K`` buffers ``(M_k + 1, C)`` for ``B_k mat[k]`` where ``on_vertices[k]`` (else any).
            claims: ``(ceil(P / BLOCK),)`` int64 scratch: who computed each block of the last iteration (1 its run's
                owner, 3 a helping thread; see the block pass).
            threads: the threads of the moment (``numba.get_num_threads()``): each takes runs until none is left,
                then helps the others' runs (the result does not depend on it).
            take_work: whether a thread without a run left helps the others (False: it waits, as a static split
                of the runs did; for side-by-side measurements, ``CRFRNN_TAKE_WORK=0``).

        Each iteration adds up and blurs every kernel's splat, then one pass over each block of points slices all
        kernels, applies the label transforms, adds the unary, takes the softmax and splats the result for the
        next iteration.
        """
        num_points = unary.shape[0]
        nk = alphas.shape[0]
        num_blocks = (num_points + BLOCK - 1) // BLOCK
        if not splatted:
            for k in range(nk):
                scatter_parts(q, pre[k], offsets[k], weights[k], parts[k])
        # an iteration's marginals are read back (beyond its own splat) only by the next one's self-exclusion, and
        # the caller reads q_out only when the last iteration writes there: other iterations skip the write (a
        # fifth of an iteration's memory traffic)
        any_self = False  # a loop: has_self.any() made a warm process import numba.np.arraymath to load this
        for k in range(nk):
            if has_self[k]:
                any_self = True
        runs = parts[0].shape[0]
        per = run_length(num_points, runs) // BLOCK
        threads = max(1, threads)  # beyond the runs, threads only help
        counter = np.zeros(1, np.int64)
        front = np.empty(runs, np.int64)
        back = np.empty(runs, np.int64)
        forward = nk < 0  # False, typed bool: a literal False would compile blur_vertices a second time
        for it in range(iterations):
            src = q if it == 0 else q_out
            blurred = []
            for k in range(nk):
                bk = blur_vertices(reduce_parts(parts[k], bufs[k], threads), tmps[k], neighbours[k], forward, threads)
                if matrices:
                    if on_vertices[k]:
                        bk = vertex_matmul(bk, mat[k], cr, vbufs[k])
                blurred.append(bk)
            last = it == iterations - 1
            logits = last and return_logits
            scatter = not logits and (not last or scatter_out)
            to_t = last and out_t.shape[0] > 0
            keep = any_self or (last and not to_t)
            # The block pass. Each run of blocks splats into its own partial sums, in block order, by the thread
            # that takes the run (its owner). A thread without a run left helps the run with the most blocks left:
            # it claims blocks from the run's end, computes them into q_out (and out_t) and marks them done; the
            # owner splats those from q_out when it reaches them, in the same order, so the sums are the same
            # whichever thread computed a block. A helped block is claimed in `claims` (0 free, 1 owner, 2 helper,
            # 3 helper done); `front` and `back` are the runs' next blocks from each end.
            helping = take_work and threads > 1 and not (to_t and scatter)
            counter[0] = 0
            for j in range(runs):
                front[j] = j * per
                back[j] = min(num_blocks, (j + 1) * per)
            claims[:] = 0
            for _t in prange(threads):
                scratch = np.empty(BLOCK * c, np.int32)
                msg = np.empty((8, c), unary.dtype)
                acc = np.empty((BLOCK, c), unary.dtype)
                j = take(counter, 0)  # this thread's run (none left: j >= runs) and its next block
                nxt = j * per
                if j < runs and scatter:
                    for k in range(nk):
                        parts[k][j][:] = 0.0
                while True:  # one block per turn: the next of its own run, else one of another run's last
                    if j < runs:
                        if nxt >= min(num_blocks, (j + 1) * per):  # its run is done: take another
                            publish(front, j, num_blocks)
                            j = take(counter, 0)
                            nxt = j * per
                            if j < runs and scatter:
                                for k in range(nk):
                                    parts[k][j][:] = 0.0
                            continue
                        blk = nxt
                        nxt += 1
                        publish(front, j, blk)
                        r = j
                        helper = False
                        if not claim(claims, blk, 1):  # a helper computes it: splat its rows once they are there
                            if scatter:
                                while read(claims, blk) != 3:
                                    pass
                                start = blk * BLOCK
                                stop = min(num_points, start + BLOCK)
                                for k in range(nk):
                                    scatter_rows(q_out, 0, pre[k], offsets[k], weights[k], parts[k][j], start, stop, c)
                            continue
                    else:  # help the run with the most blocks left
                        if not helping:
                            break
                        r = -1
                        most = 2  # a run with two blocks left or fewer is its owner's
                        for other in range(runs):
                            left = read(back, other) - read(front, other)
                            if left > most:
                                r, most = other, left
                        if r < 0:
                            break
                        blk = add(back, r, -1) - 1
                        if blk < r * per or not claim(claims, blk, 2):
                            continue  # the owner got there first: look again
                        helper = True
                    start = blk * BLOCK
                    stop = min(num_points, start + BLOCK)
                    fused_block(
                        unary,
                        src,
                        q_out,
                        start,
                        stop,
                        cr,
                        c,
                        alphas,
                        offsets,
                        weights,
                        pre,
                        post,
                        selfw,
                        has_self,
                        is_full,
                        diag,
                        mat,
                        matrices,
                        blurred,
                        parts,
                        r,
                        scatter and not helper,
                        logits,
                        out_t,
                        to_t,
                        keep or (helper and scatter),
                        scratch,
                        msg,
                        acc,
                    )
                    if helper:
                        publish(claims, blk, 3)

    return _mean_field


class Prepared(NamedTuple):
    """:func:`prepare`'s result: the compiled loop's per-kernel arguments, in the order it takes them (the
    fields are documented with :func:`_mean_field`'s arguments of the same names).
    """

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
    claims: np.ndarray


def prepare(
    kernels: list,
    num_labels: int,
    num_points: int,
    channels: int,
    dtype: DTypeLike,
    work: Optional[list] = None,
    parts: Optional[tuple] = None,
) -> Prepared:
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
    return Prepared(
        alphas,
        tuple(offsets),
        tuple(weights),
        tuple(neighbours),
        parts,
        pre,
        post,
        selfw,
        has_self,
        is_full,
        on_vertices,
        diag,
        mat,
        tuple(bufs),
        tuple(tmps),
        tuple(vbufs),
        np.empty((num_points + BLOCK - 1) // BLOCK, np.int64),
    )


def mean_field(
    unary: np.ndarray,
    num_labels: int,
    iterations: int,
    kernels: list,
    q0: Optional[np.ndarray] = None,
    return_logits: bool = False,
    out: Optional[np.ndarray] = None,
    transpose: bool = True,
    work: Optional[list] = None,
    q_out: Optional[np.ndarray] = None,
    prepared: Optional[tuple] = None,
    splatted: bool = False,
    scatter_out: bool = False,
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
            softmax_rows_into(unary, q_out, num_labels)
        elif q_out is not q:
            q_out[:] = q
    else:
        args = Prepared(*prepared) if prepared is not None else prepare(kernels, num_labels, num_points, c, dt, work)
        if transpose and out is None:
            out = np.empty((num_labels, num_points), dt)
        out_t = out if transpose else np.empty((0, 0), dt)
        if q0 is None:
            softmax_rows_into(unary, q, num_labels)
        _mean_field_for(c, bool(args.is_full.any() or args.on_vertices.any()))(
            unary,
            q,
            q_out,
            num_labels,
            iterations,
            return_logits,
            splatted and q0 is not None,
            scatter_out and not return_logits,
            out_t,
            *args,
            numba.get_num_threads(),
            os.environ.get("CRFRNN_TAKE_WORK", "1") != "0",
        )
        if not transpose:
            return q_out
        assert out is not None  # allocated above
        return out
    if not transpose:
        return q_out
    if out is None:
        out = np.empty((num_labels, num_points), dt)
    channels_first(q_out, num_labels, out)
    return out

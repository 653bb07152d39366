"""The fused path: every iteration of mean field in one compiled loop per image (no gradient, CPU).

Reached through :func:`crfrnn.crf.engine.infer`. Its scratch (the padded unary and first marginals, vertex buffers,
partial splat sums) comes from the kept buffers of :mod:`crfrnn.crf._buffers`, taken for the call alone and given
back at its end, so concurrent calls are safe and the next call of similar size faults in no fresh memory.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import numba
import numpy as np
import torch
from torch import Tensor

from crfrnn import _kernels
from crfrnn._utils import memory
from crfrnn.crf._buffers import WORKSPACE, flat_buffer, vertex_buffers, views
from crfrnn.crf._checks import check_scores
from crfrnn.crf.pairwise import KernelBuilder, build_concurrently

__all__ = ["infer_fused"]


def infer_fused(
    scores: Tensor,
    builder: KernelBuilder,
    schedule: list,
    iterations: int,
    from_probs: bool,
    clip: float,
    return_logits: bool,
    name: str,
    sum_tol: float,
) -> Tensor:
    """The compiled path: all iterations in one compiled call when they share their label transforms, else one
    compiled iteration at a time (untied iterations; iteration ``t`` takes ``schedule[min(t, len - 1)]``), the
    marginals kept in the compiled loop's padded layout between iterations.

    A batch is refined side by side, one image per thread on as many threads as the call may use (the results do
    not depend on the thread count); a single image uses them all.
    """
    b, num_labels, n = scores.shape
    dtype = scores.dtype
    np_dtype = np.float64 if dtype == torch.float64 else np.float32
    c = _kernels.padded_channels(num_labels, np.dtype(np_dtype))
    kept = [WORKSPACE.take((b * n, c), dtype) for _ in range(2 if from_probs else 1)]
    try:
        padded, q0, stats = _kernels.unary_from_scores(
            scores.detach(), clip, from_probs, out=kept[0].numpy(), q0_out=kept[-1].numpy() if from_probs else None
        )
        check_scores(stats, from_probs, name, sum_tol)
        steps = []
        for transforms in schedule:
            mats = [np.asarray(t.detach().cpu().numpy() if isinstance(t, Tensor) else t, np_dtype) for t in transforms]
            steps.append([m if m.ndim else np.full(num_labels, float(m), np_dtype) for m in mats])
        out = memory.empty((b, num_labels, n), dtype)
        _refine_images(b, builder, padded, q0, steps, iterations, return_logits, out)
        return out
    finally:
        WORKSPACE.give(*kept)


def _refine_images(
    b: int,
    builder: KernelBuilder,
    padded: np.ndarray,
    q0,
    steps: list,
    iterations: int,
    return_logits: bool,
    out: Tensor,
) -> None:
    """Mean field for each of the ``b`` images of ``padded`` (``(B N, C)``), written to ``out`` ``(B, L, N)``."""
    num_labels, n = out.shape[1:]
    dtype = out.dtype
    np_dtype = padded.dtype
    c = padded.shape[1]

    def one(i: int) -> None:
        ops = []
        for kern in build_concurrently(builder, len(builder.kernels), i, n):
            assert kern.lattice is not None  # the fused path builds lattice kernels only
            pre, post, selfw = (f[0].numpy() for f in kern.factors(dtype))
            ops.append((kern.lattice.operators(dtype), pre, post, selfw))
        rows = slice(i * n, (i + 1) * n)
        unary, q = padded[rows], None if q0 is None else q0[rows]
        bufs = vertex_buffers(ops, c, dtype, 3)
        shapes = _kernels.splat_parts_shapes([o for o, *_ in ops], c)
        parts_bufs, parts = zip(*(flat_buffer(shape, dtype) for shape in shapes))
        q_buf = None
        try:
            work = views(bufs, ops)
            if q is None:  # logits: the first marginals in a kept buffer too (mean_field would allocate them)
                q_buf, q = flat_buffer(unary.shape, dtype)
                _kernels.softmax_rows(unary, q, num_labels)
            if len(steps) == 1 or iterations <= 1:
                args: list = [op + (mat,) for op, mat in zip(ops, steps[0])]
                prepared = _kernels.prepare(args, num_labels, n, c, np_dtype, work, tuple(parts))
                _kernels.mean_field(
                    unary,
                    num_labels,
                    iterations,
                    args,
                    q0=q,
                    return_logits=return_logits,
                    out=out[i].numpy(),
                    prepared=prepared,
                )
                return
            # one set of compiled arguments per schedule step, not per iteration; the partial sums are shared: each
            # iteration splats for the next
            all_args = [[op + (mat,) for op, mat in zip(ops, step)] for step in steps]
            prepared_steps = [_kernels.prepare(a, num_labels, n, c, np_dtype, work, tuple(parts)) for a in all_args]
            for it in range(iterations):  # q holds each iteration's marginals, updated in place
                s = min(it, len(steps) - 1)
                last = it == iterations - 1
                _kernels.mean_field(
                    unary,
                    num_labels,
                    1,
                    all_args[s],
                    q0=q,
                    return_logits=last and return_logits,
                    out=out[i].numpy(),
                    transpose=last,
                    prepared=prepared_steps[s],
                    splatted=it > 0,
                    scatter_out=not last,
                )
        finally:
            WORKSPACE.give(*(x for trio in bufs for x in trio), *parts_bufs, *([] if q_buf is None else [q_buf]))

    workers = min(b, numba.get_num_threads())
    if workers < 2 or os.environ.get("CRFRNN_BATCH_SIDE_BY_SIDE", "1") == "0":
        for i in range(b):
            one(i)
        return

    for k, spec in enumerate(builder.kernels):  # a kernel shared by the batch: built once, before the threads
        if spec.features.shape[0] == 1:
            kern = builder.kernel(k, 0)
            assert kern.lattice is not None
            kern.lattice.operators(dtype)  # built once, cached on the lattice

    def alone(i: int) -> None:  # one thread per image: no parallel region waits for another thread
        numba.set_num_threads(1)
        one(i)

    with ThreadPoolExecutor(max_workers=workers) as pool:
        list(pool.map(alone, range(b)))

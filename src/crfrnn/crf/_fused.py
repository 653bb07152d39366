"""The fused path: every iteration of mean field in one compiled loop per image (no gradient, CPU).

Reached through :func:`crfrnn.crf.engine.infer`. The buffers belong to the call, so concurrent calls are safe.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import numba
import numpy as np
import torch
from torch import Tensor

from crfrnn import _kernels
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
    padded, q0, stats = _kernels.unary_from_scores(scores.detach(), clip, from_probs)
    check_scores(stats, from_probs, name, sum_tol)
    steps = []
    for transforms in schedule:
        mats = [np.asarray(t.detach().cpu().numpy() if isinstance(t, Tensor) else t, np_dtype) for t in transforms]
        steps.append([m if m.ndim else np.full(num_labels, float(m), np_dtype) for m in mats])
    out = torch.empty((b, num_labels, n), dtype=dtype)

    def one(i: int) -> None:
        ops = []
        for kern in build_concurrently(builder, len(builder.kernels), i, n):
            assert kern.lattice is not None  # the fused path builds lattice kernels only
            pre, post, selfw = (f[0].numpy() for f in kern.factors(dtype))
            ops.append((kern.lattice.operators(dtype), pre, post, selfw))
        rows = slice(i * n, (i + 1) * n)
        unary, q = padded[rows], None if q0 is None else q0[rows]
        if len(steps) == 1 or iterations <= 1:
            args: list = [op + (mat,) for op, mat in zip(ops, steps[0])]
            _kernels.mean_field(
                unary, num_labels, iterations, args, q0=q, return_logits=return_logits, out=out[i].numpy()
            )
            return
        if q is None:
            q = np.empty_like(unary)
            _kernels.softmax_rows(unary, q, num_labels)
        # one set of vertex buffers and one set of compiled arguments per schedule step, not per iteration
        c = unary.shape[1]
        work = [tuple(np.empty((o.num_vertices + 1, c), np_dtype) for _ in range(3)) for o, *_ in ops]
        args = [[op + (mat,) for op, mat in zip(ops, step)] for step in steps]
        parts = _kernels.splat_parts([o for o, *_ in ops], c, np_dtype)  # shared: each iteration splats for the next
        prepared = [_kernels.prepare(a, num_labels, n, c, np_dtype, work, parts) for a in args]
        for it in range(iterations):  # q holds each iteration's marginals, updated in place
            s = min(it, len(steps) - 1)
            last = it == iterations - 1
            _kernels.mean_field(
                unary,
                num_labels,
                1,
                args[s],
                q0=q,
                return_logits=last and return_logits,
                out=out[i].numpy(),
                transpose=last,
                prepared=prepared[s],
                splatted=it > 0,
                scatter_out=not last,
            )

    workers = min(b, numba.get_num_threads())
    if workers < 2 or os.environ.get("CRFRNN_BATCH_SIDE_BY_SIDE", "1") == "0":
        for i in range(b):
            one(i)
        return out

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
    return out

"""The compiled differentiable mean field on the CPU: the engine's fused loop forward, its exact adjoint backward.

Training needs the gradient of ``T`` unrolled mean-field iterations with respect to the unary and the label
transforms ``T_k = -mu_k W_k`` (hence the kernel weights and the compatibility). Written as PyTorch ops around the
lattice filter, every iteration is a dozen passes over ``(N, L)`` tensors and autograd replays them all. Here the
forward is the fused compiled iteration of :mod:`crfrnn._kernels` (one call per iteration, after which each kernel's
blurred vertex buffer ``B_k = blur(S^T(pre q))`` is kept), and the backward runs, per iteration in reverse order:

1. the softmax's vector-Jacobian product ``dz = q * (g - <q, g>)`` (compiled; ``du += dz``);
2. for each kernel, the splat ``s = S^T(post dz)`` of ``M_k + 1`` vertex rows, and from it
   - the transform's gradient ``dz^T msg = alpha s^T B_k - dz^T(post selfw pre q)`` (the second term only with
     self-exclusion): a product over the vertices instead of the ``N`` points (the spatial lattice of a 500x375
     photo has 24540 vertices for 187500 pixels);
   - the message's gradient: ``s T`` (a matrix transform commutes with the per-point factors and the lattice,
     which act on each label alike), the reversed blur and the slice with ``pre`` (compiled; a vector transform is
     folded into that last pass).

The lattices are those the forward built (one per image and kernel, shared kernels from the cache); the backward
keeps ``T`` marginals and ``T K`` vertex buffers per image, ``O(T B L (N + K M))`` with ``M <= N`` in practice
(``memory_efficient``: the marginals only, the vertex buffers recomputed in the backward pass: a splat and a blur
per kernel and iteration). It is reached through :func:`crfrnn.crf.engine.infer`, which picks it whenever a
gradient is needed on the CPU and no kernel's features need one (those take the torch path).
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from crfrnn import _kernels
from crfrnn._utils.threads import limit_threads
from crfrnn.crf._buffers import WORKSPACE, release_buffers, rounded, vertex_buffers, views
from crfrnn.crf.pairwise import build_concurrently

__all__ = ["compiled_mean_field", "release_buffers"]  # release_buffers: kept here for callers of this path


def compiled_mean_field(
    unary: Tensor,
    builder,
    schedule: Sequence[Sequence],
    iterations: int,
    return_logits: bool,
    check=None,
    memory_efficient: bool = False,
) -> Tensor:
    """``iterations`` mean-field iterations on the CPU, differentiable with respect to ``unary`` and every tensor
    label transform in ``schedule``.

    Args:
        unary: ``(B, L, N)`` float32/float64 logits, checked finite by the caller.
        builder: the engine's kernel builder (``crfrnn.crf.pairwise.KernelBuilder``), kernels built once per image.
        schedule: entry ``s`` holds one label transform per kernel (a number, or an ``()``, ``(L,)`` or ``(L, L)``
            tensor) for iteration ``s``; iterations past the end reuse the last entry.
        iterations: ``T >= 1``.
        return_logits: return the last iteration's logits instead of the marginals.
        check: called with the statistics of ``unary`` (``nonfinite``, ...) before anything is built; raises.
        memory_efficient: keep only the marginals for the backward pass and recompute the kernels' blurred vertex
            buffers there (a splat and a blur per kernel and iteration; ``N / (N + sum_k M_k)`` of the memory).

    Returns:
        ``(B, L, N)`` marginals or logits in the unary's dtype.
    """
    tensors: list[Tensor] = []
    layout = []  # per step and kernel: index into ``tensors`` or None (a number)
    for transforms in schedule:
        row: list[Optional[int]] = []
        for t in transforms:
            if isinstance(t, Tensor):
                row.append(len(tensors))
                tensors.append(t)
            else:
                row.append(None)
        layout.append(row)
    plan = _Plan(builder, schedule, layout, iterations, return_logits, check)
    plan.recompute = memory_efficient
    return _CompiledMeanField.apply(unary, plan, *tensors)


class _Plan:
    """What the forward needs besides tensors, and what it leaves for the backward (non-tensor state)."""

    def __init__(self, builder, schedule, layout, iterations: int, return_logits: bool, check=None) -> None:
        self.check = check
        self.builder = builder
        self.schedule = schedule
        self.layout = layout
        self.iterations = iterations
        self.return_logits = return_logits
        self.recompute = False  # blurred vertex buffers recomputed in the backward pass instead of kept
        self.ops: list = []  # per image: (operators, pre, post, selfw) per kernel
        self.kept: list = []  # per image: per kernel, whether the forward kept its blurred buffers
        self.steps: list = []  # per step: (forward transform, backward matrix or None, backward scale) per kernel


def _padded_steps(schedule, num_labels: int, channels: int, np_dtype) -> list:
    steps = []
    for transforms in schedule:
        row: list[tuple[np.ndarray, Optional[np.ndarray], np.ndarray]] = []
        for t in transforms:
            arr = np.asarray(t.detach().cpu().numpy() if isinstance(t, Tensor) else t, np_dtype)
            if arr.ndim == 2:
                mat = np.zeros((channels, channels), np_dtype)
                mat[:num_labels, :num_labels] = arr
                row.append((arr, mat, np.ones(channels, np_dtype)))
            else:
                vec = np.full(num_labels, float(arr), np_dtype) if arr.ndim == 0 else arr
                scale = np.zeros(channels, np_dtype)
                scale[:num_labels] = vec
                row.append((vec, None, scale))
        steps.append(row)
    return steps


class _CompiledMeanField(torch.autograd.Function):
    """``unary, *transforms -> T iterations of mean field``; forward and backward compiled (see the module)."""

    @staticmethod
    def forward(ctx, unary: Tensor, plan: _Plan, *transforms: Tensor) -> Tensor:
        b, num_labels, n = unary.shape
        dtype = unary.dtype
        np_dtype = np.float64 if dtype == torch.float64 else np.float32
        # the padded unary in a kept buffer: fresh, its page faults grew faster than the batch
        padded_buf = WORKSPACE.take((b * n, _kernels.padded_channels(num_labels, np.dtype(np_dtype))), dtype)
        padded, _, stats = _kernels.unary_from_scores(unary.detach(), 0.0, False, out=padded_buf.numpy())
        if plan.check is not None:
            plan.check(stats)
        c = padded.shape[1]
        iters = plan.iterations
        nk = len(plan.builder.kernels)
        plan.steps = _padded_steps(plan.schedule, num_labels, c, np_dtype)
        # The transforms' gradients need each kernel's blurred vertex buffer of every iteration (``M_k + 1`` rows,
        # fewer than the ``N`` of its message; see the module): kept, or recomputed by a memory-efficient backward.
        keep_blurred = any(t.requires_grad for t in transforms) and not plan.recompute
        hist = WORKSPACE.take((b, iters, n, c), dtype)  # q_t, the input of iteration t
        last = WORKSPACE.take((b, n, c), dtype)  # q_T (or the logits of iteration T)
        out = torch.empty((b, num_labels, n), dtype=dtype)

        def image(i: int) -> tuple[list, list]:
            """Image ``i``'s forward: its kernels (operators and factors) and its kept vertex buffers."""
            ops = []
            for kern in build_concurrently(plan.builder, nk, i, n):
                assert kern.lattice is not None  # the compiled path builds lattice kernels only
                pre, post, selfw = (f[0].numpy() for f in kern.factors(dtype))
                ops.append((kern.lattice.operators(dtype), pre, post, selfw))
            bufs = vertex_buffers(ops, c, dtype, 3)
            work = views(bufs, ops)
            # (iterations, rows, C) per kernel, the first M_k + 1 rows used. A lattice with more than 2 N vertices (a
            # tiny or very detailed image: 5 N at 16x16) keeps nothing and its buffer is recomputed, so that the memory
            # stays within (1 + 2 K) N C per iteration, O(T B L N); below that keeping is cheaper than recomputing (at
            # 96x96 with CrfRnn's widths the bilateral lattice has 1.7 N vertices)
            kept = (
                [
                    WORKSPACE.take((iters, rounded(o.num_vertices + 1), c), dtype) if o.num_vertices < 2 * n else None
                    for o, *_ in ops
                ]
                if keep_blurred
                else []
            )
            unary_i = padded[i * n : (i + 1) * n]
            h = hist[i].numpy()
            _kernels.softmax_rows(unary_i, h[0], num_labels)
            # the compiled loop's arguments, once per image and step of the schedule (not per iteration)
            args = [[op + (fwd,) for op, (fwd, _, _) in zip(ops, step)] for step in plan.steps]
            parts = _kernels.splat_parts([o for o, *_ in ops], c, np_dtype)  # each iteration splats for the next
            prepared = [_kernels.prepare(a, num_labels, n, c, np_dtype, work, parts) for a in args]
            for it in range(iters):
                q = h[it + 1] if it + 1 < iters else last[i].numpy()
                s = min(it, len(plan.steps) - 1)
                final = it + 1 == iters
                _kernels.mean_field(
                    unary_i,
                    num_labels,
                    1,
                    args[s],
                    q0=h[it],
                    q_out=q,
                    return_logits=final and plan.return_logits,
                    prepared=prepared[s],
                    transpose=False,
                    splatted=it > 0,
                    scatter_out=not final,
                )
                for k, (o, *_) in enumerate(ops if keep_blurred else ()):
                    if (kept_k := kept[k]) is not None:
                        np.copyto(kept_k[it, : o.num_vertices + 1].numpy(), _kernels.blur_result(o, *work[k][:2]))
            _kernels.channels_first(last[i].numpy(), num_labels, out[i].numpy())
            WORKSPACE.give(*(x for pair in bufs for x in pair))
            return ops, kept

        # one image after the other, each with all threads: one image already keeps the cores busy, and images side
        # by side on one thread each measured within a few percent of this, for twice the scratch memory
        done = [image(i) for i in range(b)]
        WORKSPACE.give(padded_buf)
        plan.ops = [ops for ops, _ in done]
        kept = [k for _, k in done]
        plan.kept = [[x is not None for x in row] for row in kept]  # which kernels' buffers are kept, per image
        ctx.plan = plan
        flat = [x for row in kept for x in row if x is not None]
        ctx.save_for_backward(hist, last, *flat)  # saved as tensors: autograd's hooks and memory accounting see them
        WORKSPACE.give_after([hist, last, *flat], ctx)
        ctx.shapes = [t.shape for t in transforms]
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor):
        with limit_threads():
            return _backward(ctx, grad)


def _backward(ctx, grad: Tensor) -> tuple:
    plan: _Plan = ctx.plan
    hist, last, *flat = ctx.saved_tensors
    b, iters, n, c = hist.shape
    stored = iter(flat)
    kept = [[next(stored) if here else None for here in row] for row in plan.kept]  # None: recomputed
    num_labels = grad.shape[1]
    dtype = hist.dtype
    grad = grad.to(dtype).contiguous()
    wanted = ctx.needs_input_grad[2:]
    du_out = torch.empty((b, num_labels, n), dtype=dtype) if ctx.needs_input_grad[0] else None
    need_blurred = any(wanted)

    grads = [torch.zeros(s, dtype=dtype) if w else None for s, w in zip(ctx.shapes, wanted)]

    def image(i: int) -> None:
        """Image ``i``'s backward: writes ``du_out[i]`` and adds its share of the transforms' gradients."""
        scratch = [WORKSPACE.take((n, c), dtype) for _ in range(5)]
        g, g_prev, dz, dm, du = scratch
        ops = plan.ops[i]
        recompute = need_blurred and (not kept[i] or any(x is None for x in kept[i]))
        # two vertex buffers per kernel for the adjoint, two more to recompute the forward's blurred buffer
        bufs = vertex_buffers(ops, c, dtype, 4 if recompute else 2)
        work = views(bufs, ops)
        parts = _kernels.splat_parts([o for o, *_ in ops], c, hist.numpy().dtype)  # the splats' scratch, per image
        # post selfw pre per kernel with self-exclusion (the transform gradient's second term), None without
        self_coef = [post * selfw * pre if selfw.any() else None for _, pre, post, selfw in ops]
        _kernels.channels_last(grad[i].numpy(), g.numpy())
        # NumPy's single-threaded copies, not torch's: a torch pass here starts its own thread pool while numba's
        # threads still spin after the last kernel, which made these passes several times slower
        if plan.return_logits:  # the last iteration's logits are the output: their gradient is the incoming one
            np.copyto(du.numpy(), g.numpy())
        else:
            du.numpy().fill(0.0)
        for it in reversed(range(iters)):
            if it + 1 == iters and plan.return_logits:
                np.copyto(dz.numpy(), g.numpy())
            else:
                q_next = last[i] if it + 1 == iters else hist[i, it + 1]
                _kernels.softmax_backward(q_next.numpy(), g.numpy(), num_labels, dz.numpy(), du.numpy())
            s = min(it, len(plan.steps) - 1)
            for k, ((o, pre, post, selfw), (_, mat, scale)) in enumerate(zip(ops, plan.steps[s])):
                buf, tmp = work[k][:2]
                rows = o.num_vertices + 1
                # S^T (post dz): the message's adjoint starts with it, and the transform's gradient is made from it
                sp = _kernels.splat(o, dz.numpy(), post, buf, parts[k])
                index = plan.layout[s][k]
                if index is not None and grads[index] is not None:
                    if kept[i] and (kept_k := kept[i][k]) is not None:
                        blurred = kept_k[it, :rows].numpy()
                    else:  # the forward's blurred buffer blur(S^T(pre q_t)), again
                        blurred = _kernels.blur(
                            o, _kernels.splat(o, hist[i, it].numpy(), pre, work[k][2], parts[k]), work[k][3], False
                        )
                    self_term = None if self_coef[k] is None else (self_coef[k], hist[i, it])
                    grads[index] += _transform_grad(sp, blurred, o.alpha, dz, self_term, grads[index].dim(), num_labels)
                if mat is not None:
                    # dm = dz T: its splat is S^T(post dz) T (per-point factors commute with the label product), an
                    # (M + 1) x C product instead of N x C; dm itself only for the self-exclusion term
                    torch.mm(torch.from_numpy(sp), torch.from_numpy(mat), out=torch.from_numpy(tmp))
                    res = _kernels.blur(o, tmp, buf, True)
                    if self_coef[k] is not None:
                        torch.mm(dz, torch.from_numpy(mat), out=dm)
                    src, factor = (dz if self_coef[k] is None else dm), _ones(c, dz.dtype)
                else:  # a vector transform scales each channel: folded into the last pass
                    res = _kernels.blur(o, sp, tmp, True)
                    src, factor = dz, scale
                _kernels.adjoint_slice(o, res, src.numpy(), pre, post, selfw, factor, g_prev.numpy(), k > 0)
            g, g_prev = g_prev, g
        if du_out is not None:  # the first marginals' softmax: only the unary's gradient goes through it
            _kernels.softmax_backward(hist[i, 0].numpy(), g.numpy(), num_labels, dz.numpy(), du.numpy())
            _kernels.channels_first(du.numpy(), num_labels, du_out[i].numpy())
        WORKSPACE.give(*(x for pair in bufs for x in pair), *scratch)

    for i in range(b):
        image(i)
    return (du_out, None, *grads)


def _ones(channels: int, dtype: torch.dtype) -> np.ndarray:
    return np.ones(channels, np.float64 if dtype == torch.float64 else np.float32)


def _transform_grad(
    sp: np.ndarray, blurred: np.ndarray, alpha: float, dz: Tensor, self_term, ndim: int, num_labels: int
) -> Tensor:
    """Gradient of ``logits += msg T^T`` (matrix), ``T * msg`` (vector) or ``T msg`` (number) with respect to ``T``.

    With ``msg = post (alpha S B - selfw pre q)`` (``B`` the blurred vertex buffer, ``S`` the slice), ``dz^T msg`` is
    ``alpha (S^T(post dz))^T B - dz^T (post selfw pre q)``: the first product over the ``M + 1`` vertices, not the
    ``N`` points; the second only with self-exclusion (``self_term = (post selfw pre, q)``). Both are summed in an
    order independent of the thread count (:func:`crfrnn._kernels.gram`), so that training is reproducible.
    """
    diagonal = ndim < 2
    out = _kernels.gram(sp, blurred, num_labels, diagonal=diagonal) * alpha
    if self_term is not None:
        coef, q = self_term
        out = out - _kernels.gram(dz.numpy(), q.numpy(), num_labels, coef, diagonal)
    grad = torch.from_numpy(np.ascontiguousarray(out))
    return grad if ndim > 0 else grad.sum()

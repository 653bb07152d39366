"""The one mean-field engine behind every entry point (``dense_crf``, ``mean_field``, ``CrfRnn``, ``compat``).

A dense CRF here is a unary ``U (B, L, N)`` and any number of Gaussian :class:`Pairwise` kernels, each with
its own features, weight ``W`` (a number, a per-label vector or an ``L x L`` matrix), label compatibility
``mu`` (Potts, a diagonal or a full, possibly asymmetric, matrix), normalisation and self-exclusion. One
iteration is

    logits = U - sum_k mu_k W_k message_k(Q),    Q = softmax(logits),

with ``message_k`` the normalised Gaussian filtering of ``Q`` (``docs/engine.md``, "The model"). Each kernel's
label transform ``T_k = -mu_k W_k`` is formed once; for the Potts model ``mu = 1 - I`` it is ``W_k`` itself, which
differs from ``-(1 - I) W_k`` only by a constant per pixel (so the marginals are identical; the logits differ by
that constant).

:func:`infer` picks the path:

- **fused** (compiled, :mod:`crfrnn._kernels`): whenever no gradient is needed and the data are on the CPU. One
  compiled loop per image does all iterations: splat and blur every kernel, then one pass that slices all of
  them, applies the label transforms (vectors cost ``L``, matrices ``L^2`` per point) and takes the softmax.
  Its buffers belong to the call, so concurrent calls are safe.
- **compiled differentiable** (:mod:`crfrnn.crf._compiled`): when a gradient is needed on the CPU: the same
  compiled iteration forward, and its exact adjoint, compiled too, backward.
- **differentiable** (PyTorch ops around the lattice's autograd filter): otherwise, on any device (and when a
  kernel's features need a gradient). The lattices of one call are built once and
  reused by every iteration and by the backward pass. On the Triton backend each iteration's messages are
  combined (self-exclusion, normalisation, label transforms, unary, softmax) by one operator,
  ``crfrnn::message_step`` (:mod:`crfrnn.crf._step`: one Triton launch forward, torch ops backward).

Both paths use the same lattices and give the same result to rounding (``tests/crf/test_engine.py``).
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from crfrnn._deprecated import renamed_arguments
from crfrnn._utils.threads import adaptive_threads
from crfrnn.crf._checks import assert_scores, check_scores, torch_stats
from crfrnn.crf._compiled import compiled_mean_field
from crfrnn.crf._fused import infer_fused
from crfrnn.crf._step import fused_iteration, mixing, step_factors
from crfrnn.crf.kernels import KernelCache, check_normalization
from crfrnn.crf.pairwise import KernelBuilder, Pairwise, label_transform, pairwise_logits
from crfrnn.lattice._backends import resolve_backend

__all__ = ["infer"]


@renamed_arguments(iterations="num_iterations")
@adaptive_threads
def infer(
    scores: Tensor,
    kernels: Sequence[Pairwise],
    *,
    num_iterations: int,
    from_probs: bool = False,
    clip: float = 1e-5,
    return_logits: bool = False,
    memory_efficient: bool = False,
    exact: bool = False,
    backend: str = "auto",
    cache: Optional[KernelCache] = None,
    name: str = "unary",
    sum_tol: float = 1e-3,
    iteration_weights: Optional[Sequence[Sequence[tuple]]] = None,
    compiled: bool = True,
) -> Tensor:
    """Mean-field inference in a dense CRF with any number of Gaussian kernels.

    Args:
        scores: ``(B, L, N)`` float32/float64 unary logits, or probabilities with ``from_probs`` (then the
            unary is ``log(max(p, clip))``), on any device.
        kernels: the pairwise terms; features ``(B, N, D)`` or ``(1, N, D)``.
        num_iterations: ``T >= 0``.
        from_probs: ``scores`` are probabilities (checked to sum to 1 over labels), not logits.
        clip: the smallest probability taken as is with ``from_probs``; smaller ones are raised to it before the
            logarithm.
        return_logits: return the last iteration's logits (``softmax`` of them is the marginals) instead of
            the marginals.
        memory_efficient: keep less for the backward pass and recompute the rest there (the compiled path keeps the
            marginals and recomputes the messages; the torch path recomputes each iteration).
        exact: O(N^2) exact Gaussians instead of lattices (small inputs, for tests).
        backend: lattice backend (``"auto"``, ``"torch"``, ``"numba"``, ``"triton"``).
        cache: where kernels with a ``cache_key`` are kept between calls; None keeps nothing.
        name: the caller's name for ``scores``, for error messages.
        sum_tol: how far from 1 probabilities may sum (the caller's dtype decides).
        iteration_weights: untied iterations: entry ``t`` holds one ``(weight, compatibility)`` pair per kernel for
            iteration ``t``, used instead of the kernels' own; iterations past the end reuse the last entry. On the
            fused path the iterations then run one at a time.
        compiled: use the compiled paths where they apply (the CPU with numba): the fused loop without a gradient,
            the compiled forward and backward (:mod:`crfrnn.crf._compiled`) with one (unless a kernel's features
            need a gradient). False runs the differentiable PyTorch ops (the reference).

    Returns:
        ``(B, L, N)`` marginals (or logits) in the scores' dtype, differentiable on the torch path.
    """
    b, num_labels, n = scores.shape
    dtype = scores.dtype
    iterations = num_iterations
    transforms = [
        label_transform(k.weight, k.compatibility, num_labels, scores, name=k.names[0], compat_name=k.names[1])
        for k in kernels
    ]
    schedule = [transforms]
    if iteration_weights is not None:
        schedule = [_iteration_transforms(pairs, kernels, num_labels, scores) for pairs in iteration_weights]
        if not schedule:
            raise ValueError("iteration_weights must hold at least one iteration's (weight, compatibility) pairs.")
        transforms = [t for ts in schedule for t in ts]
    for k in kernels:
        check_normalization(k.normalization)
        if k.features.dim() != 3 or k.features.shape[1] != n or k.features.shape[0] not in (1, b):
            raise ValueError(
                f"kernel features must be (B, N, D) = ({b}, {n}, D) or (1, {n}, D), got {tuple(k.features.shape)}."
            )
    compiling = torch.compiler.is_compiling()  # torch.compile traces the torch path (the lattice as custom ops)
    if exact:
        resolved = "exact"
    elif compiling and backend not in ("auto", "triton"):  # the compiled lattice serves every other name
        resolved = backend
    else:
        resolved = resolve_backend(backend, scores.device)
    compiled = compiled and not compiling and resolved == "numba"
    builder = KernelBuilder(kernels, dtype, exact, backend, None if compiling else cache)
    if compiled and not _needs_grad(scores, transforms, kernels):
        return infer_fused(scores, builder, schedule, iterations, from_probs, clip, return_logits, name, sum_tol)
    if compiled and iterations > 0 and not any(k.features.requires_grad for k in kernels):
        if from_probs:  # the probabilities are checked here; logits by the compiled pass that lays them out
            check_scores(torch_stats(scores), True, name, sum_tol)
        logits = scores.clamp(clip, 1.0).log() if from_probs else scores
        return compiled_mean_field(
            logits,
            builder,
            schedule,
            iterations,
            return_logits,
            check=lambda stats: check_scores(stats, False, name, sum_tol),
            memory_efficient=memory_efficient,
        )
    if torch.compiler.is_compiling():  # checked on the device: no value read back, no graph break
        assert_scores(scores, from_probs, name, sum_tol)
    else:
        check_scores(torch_stats(scores, from_probs), from_probs, name, sum_tol)
    u = scores.transpose(1, 2)  # (B, N, L)
    if from_probs:
        u = u.clamp(clip, 1.0).log()
    built = [builder.kernel(i, None) for i in range(len(kernels))]

    def step(q: Tensor, *ts) -> Tensor:
        return u + pairwise_logits(q, built, ts)

    if resolved == "triton" and built:  # the messages combined by one Triton launch per iteration
        return _fused_loop(u, built, schedule, iterations, return_logits, memory_efficient, guarded=backend == "auto")
    logits = u
    for it in range(iterations):
        q = torch.softmax(logits, -1)
        ts = schedule[min(it, len(schedule) - 1)]
        if memory_efficient and torch.is_grad_enabled():
            logits = checkpoint(step, q, *ts, use_reentrant=False)
        else:
            logits = step(q, *ts)
    out = logits if return_logits else torch.softmax(logits, -1)
    return out.transpose(1, 2)


def _fused_loop(
    u: Tensor,
    built: list,
    schedule: Sequence[Sequence],
    iterations: int,
    return_logits: bool,
    memory_efficient: bool,
    guarded: bool,
) -> Tensor:
    """The differentiable loop with each iteration's messages combined by ``crfrnn::message_step``
    (:mod:`crfrnn.crf._step`); ``u (B, N, L)``, returns ``(B, L, N)``.
    """
    u = u.contiguous()  # so that the marginals are too: each iteration's input is then saved once (a view)
    factors = step_factors(built, u.shape[0], u)
    mixes = [torch.stack([mixing(t, u.shape[-1], u) for t in ts]) for ts in schedule]
    logits, q = u, torch.softmax(u, -1)
    for it in range(iterations):
        mix = mixes[min(it, len(mixes) - 1)]
        if memory_efficient and torch.is_grad_enabled():
            logits, q = checkpoint(fused_iteration, q, u, built, factors, mix, guarded, use_reentrant=False)
        else:
            logits, q = fused_iteration(q, u, built, factors, mix, guarded)
    out = logits if return_logits else q
    return out.transpose(1, 2)


def _iteration_transforms(pairs: Sequence[tuple], kernels: Sequence[Pairwise], num_labels: int, like: Tensor) -> list:
    if len(pairs) != len(kernels):
        raise ValueError(
            f"each entry of iteration_weights needs one (weight, compatibility) pair per kernel ({len(kernels)}), "
            f"got {len(pairs)}."
        )
    return [
        label_transform(w, c, num_labels, like, name=k.names[0], compat_name=k.names[1])
        for (w, c), k in zip(pairs, kernels)
    ]


def _needs_grad(scores: Tensor, transforms: Sequence, kernels: Sequence[Pairwise] = ()) -> bool:
    if not torch.is_grad_enabled():
        return False
    return (
        scores.requires_grad
        or any(isinstance(t, Tensor) and t.requires_grad for t in transforms)
        or any(k.features.requires_grad for k in kernels)
    )

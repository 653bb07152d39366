"""The one mean-field engine behind every entry point (``dense_crf``, ``mean_field``, ``CrfRnn``, ``compat``).

A dense CRF here is a unary ``U (B, L, N)`` and any number of Gaussian :class:`Pairwise` kernels, each with
its own features, weight ``W`` (a number, a per-label vector or an ``L x L`` matrix), label compatibility
``mu`` (Potts, a diagonal or a full, possibly asymmetric, matrix), normalisation and self-exclusion. One
iteration is

    logits = U - sum_k mu_k W_k message_k(Q),    Q = softmax(logits),

with ``message_k`` the normalised Gaussian filtering of ``Q`` (SPEC section 3). Each kernel's label transform
``T_k = -mu_k W_k`` is formed once; for the Potts model ``mu = 1 - I`` it is ``W_k`` itself, which differs from
``-(1 - I) W_k`` only by a constant per pixel (so the marginals are identical; the logits differ by that
constant).

:func:`infer` picks the path:

- **fused** (compiled, :mod:`crfrnn._kernels`): whenever no gradient is needed and the data are on the CPU. One
  compiled loop per image does all iterations: splat and blur every kernel, then one pass that slices all of
  them, applies the label transforms (vectors cost ``L``, matrices ``L^2`` per point) and takes the softmax.
  Its buffers belong to the call, so concurrent calls are safe.
- **compiled differentiable** (:mod:`crfrnn.crf._compiled`): when a gradient is needed on the CPU: the same
  compiled iteration forward, and its exact adjoint, compiled too, backward.
- **differentiable** (PyTorch ops around the lattice's autograd filter): otherwise, on any device (and when a
  kernel's features need a gradient). The lattices of one call are built once and
  reused by every iteration and by the backward pass.

Both paths use the same lattices and give the same result to rounding (``tests/crf/test_engine.py``).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Hashable, Optional, Sequence, Union

import numpy as np
import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from crfrnn import _kernels
from crfrnn._utils.threads import adaptive_threads
from crfrnn.crf.kernels import GaussianKernel, KernelCache, check_normalization
from crfrnn.lattice import resolve_backend

__all__ = ["Pairwise", "build_kernels", "infer", "label_transform", "pairwise_logits"]

Weight = Union[float, Tensor, np.ndarray]


@dataclass
class Pairwise:
    """One Gaussian kernel of the pairwise energy: ``mu(l, l') w k(f_i, f_j)``.

    Args:
        features: ``(B, N, D)`` features already divided by the kernel widths, or ``(1, N, D)`` shared by every
            image of the batch (e.g. positions only).
        weight: a number, an ``(L,)`` vector (per-label weights) or an ``(L, L)`` matrix ``W`` (CRF-RNN's).
        compatibility: None for the Potts model, an ``(L,)`` vector (diagonal ``mu``) or an ``(L, L)`` matrix
            ``mu`` (asymmetric allowed).
        normalization: one of :data:`crfrnn.NORMALIZATIONS`.
        exclude_self: leave ``j == i`` out of the messages.
        cache_key: a hashable that determines ``features`` completely (e.g. the grid shape and widths); kernels
            with a key are shared by the batch and kept in the caller's :class:`KernelCache`.
        names: the caller's names for ``weight`` and ``compatibility``, for error messages.

    Example:
        >>> from crfrnn.crf.features import position_features
        >>> k = Pairwise(position_features((8, 8), 3.0), weight=3.0)
        >>> infer(torch.randn(2, 4, 64), [k], iterations=2).shape
        torch.Size([2, 4, 64])
    """

    features: Tensor
    weight: Weight = 1.0
    compatibility: Optional[Union[Tensor, np.ndarray]] = None
    normalization: str = "row"
    exclude_self: bool = False
    cache_key: Optional[Hashable] = None
    names: tuple[str, str] = ("weight", "compatibility")


def _as_tensor(value: Union[Tensor, np.ndarray], like: Tensor) -> Tensor:
    if isinstance(value, np.ndarray):
        value = torch.from_numpy(np.ascontiguousarray(value))
    return value.to(device=like.device, dtype=like.dtype)


def label_transform(weight: Weight, compatibility, num_labels: int, like: Tensor, *, name: str = "weight",
                    compat_name: str = "compatibility") -> Union[float, Tensor]:
    """``T = -mu W`` for one kernel (``W`` itself for Potts): a number, an ``(L,)`` vector or an ``(L, L)`` matrix.

    Raises:
        ValueError: a weight or compatibility of the wrong shape, or not finite.
    """
    from crfrnn._utils.validation import check_number

    shapes = {(): "number", (num_labels,): "vector", (num_labels, num_labels): "matrix"}

    def check(value, what):
        if isinstance(value, (Tensor, np.ndarray)):
            t = _as_tensor(value, like)
            if tuple(t.shape) not in shapes:
                raise ValueError(
                    f"{what} must be a number, an (L,) = ({num_labels},) vector or an (L, L) = ({num_labels}, "
                    f"{num_labels}) matrix, got shape {tuple(t.shape)}."
                )
            if torch.compiler.is_compiling():  # on the device, no value read back
                torch._assert_async(torch.isfinite(t.detach()).all(), f"crfrnn: {what} contains NaN or infinite values")
            elif not bool(torch.isfinite(t.detach()).all()):
                raise ValueError(f"{what} contains NaN or infinite values.")
            return t if t.dim() else t.reshape(())
        return check_number(what, value)

    w = check(weight, name)
    if compatibility is None:
        return w
    mu = check(compatibility, compat_name)
    if not isinstance(mu, Tensor) or mu.dim() == 0:
        raise ValueError(
            f"{compat_name} must be None (Potts), an (L,) vector or an (L, L) matrix, got a number; for a "
            f"Potts model of strength c pass {name}=c and {compat_name}=None."
        )
    if mu.dim() == 1:
        if isinstance(w, Tensor) and w.dim() == 2:
            return -mu[:, None] * w
        return -mu * w
    if isinstance(w, Tensor) and w.dim() == 1:
        return -mu * w[None, :]
    return -(mu @ w) if isinstance(w, Tensor) and w.dim() == 2 else -mu * w


def _check_scores(stats: dict, from_probs: bool, name: str, sum_tol: float) -> None:
    if stats["nonfinite"]:
        hint = (" If they come from log(probabilities), clamp the probabilities first (e.g. "
                "probs.clamp_min(1e-8).log()).") if not from_probs else ""  # fmt: skip
        raise ValueError(f"{name} contains NaN or infinite values.{hint}")
    if from_probs and stats["negative"]:
        raise ValueError(f"{name} contains negative values: they look like logits; pass them as logits instead.")
    if from_probs and not (abs(stats["min_sum"] - 1.0) <= sum_tol and abs(stats["max_sum"] - 1.0) <= sum_tol):
        raise ValueError(
            f"{name} do not sum to 1 over labels (dimension 1 of (B, L, ...), 0 of (L, ...); sums range "
            f"{stats['min_sum']:.4g} to {stats['max_sum']:.4g}); normalise them, or pass raw scores as logits."
        )


def _torch_stats(scores: Tensor, from_probs: bool = True) -> dict:
    """What :func:`_check_scores` needs to know about ``scores`` (for logits only whether they are finite: one pass)."""
    s = scores.detach()
    if not from_probs:
        return {"nonfinite": int(not bool(torch.isfinite(s).all())), "negative": 0, "min_sum": 1.0, "max_sum": 1.0}
    total = s.sum(1)
    return {"nonfinite": int((~torch.isfinite(s)).sum()), "negative": int((s < 0).sum()),
            "min_sum": float(total.min()), "max_sum": float(total.max())}  # fmt: skip


def _assert_scores(scores: Tensor, from_probs: bool, name: str, sum_tol: float) -> None:
    """:func:`_check_scores` as device-side assertions (under torch.compile: no host synchronisation)."""
    s = scores.detach()
    ok = torch.isfinite(s).all()
    if from_probs:
        total = s.sum(1)
        ok = ok & (s >= 0).all() & ((total - 1.0).abs() <= sum_tol).all()
    torch._assert_async(ok, f"crfrnn: {name} contains NaN or infinite values" + (
        ", negative values, or does not sum to 1 over labels" if from_probs else ""))  # fmt: skip


def _needs_grad(scores: Tensor, transforms: Sequence, kernels: Sequence[Pairwise] = ()) -> bool:
    if not torch.is_grad_enabled():
        return False
    return (scores.requires_grad or any(isinstance(t, Tensor) and t.requires_grad for t in transforms)
            or any(k.features.requires_grad for k in kernels))  # fmt: skip


class _Builder:
    """Builds each kernel once per call (once per image on the fused path); shared kernels with a
    ``cache_key`` come from the caller's cache."""

    def __init__(self, kernels: Sequence[Pairwise], dtype: torch.dtype, exact: bool, backend: str,
                 cache: Optional[KernelCache]) -> None:
        self.kernels = kernels
        self.dtype = dtype
        self.exact = exact
        self.backend = backend
        self.cache = cache
        self._shared: dict[int, GaussianKernel] = {}

    def _make(self, spec: Pairwise, features: Tensor) -> GaussianKernel:
        return GaussianKernel(features.to(self.dtype), normalization=spec.normalization,
                              exclude_self=spec.exclude_self, exact=self.exact, backend=self.backend)

    def kernel(self, index: int, image: Optional[int]) -> GaussianKernel:
        """Kernel ``index`` for one image (``image``) or for the whole batch (``None``)."""
        spec = self.kernels[index]
        if spec.features.shape[0] > 1:
            return self._make(spec, spec.features if image is None else spec.features[image : image + 1])
        if index not in self._shared:  # shared by the batch
            if spec.cache_key is not None and self.cache is not None:
                key = (spec.cache_key, spec.normalization, spec.exclude_self, self.exact, self.backend, self.dtype,
                       str(spec.features.device))  # fmt: skip
                self._shared[index] = self.cache.get(key, lambda: self._make(spec, spec.features))
            else:
                self._shared[index] = self._make(spec, spec.features)
        return self._shared[index]


def build_kernels(kernels: Sequence[Pairwise], dtype: torch.dtype, *, cache: Optional[KernelCache] = None,
                  exact: bool = False, backend: str = "auto") -> list[GaussianKernel]:
    """The built kernels of the differentiable path, one per :class:`Pairwise` (for the whole batch)."""
    builder = _Builder(kernels, dtype, exact, backend, cache)
    return [builder.kernel(i, None) for i in range(len(kernels))]


def pairwise_logits(q: Tensor, built: Sequence[GaussianKernel], transforms: Sequence) -> Tensor:
    """``sum_k T_k message_k(q)`` for marginals ``q (B, N, L)``: what one iteration adds to the unary."""
    dtype = q.dtype
    out = None
    full = [(k, t) for k, t in zip(built, transforms) if isinstance(t, Tensor) and t.dim() == 2]
    for k, t in zip(built, transforms):
        if isinstance(t, Tensor) and t.dim() == 2:
            continue
        term = k(q) * (t.to(dtype) if isinstance(t, Tensor) else t)
        out = term if out is None else out + term
    if full:  # every matrix kernel's message through one (B N, K L) x (K L, L) product
        mix = torch.cat([t.to(dtype).transpose(0, 1) for _, t in full], 0)
        term = torch.cat([k(q) for k, _ in full], -1) @ mix
        out = term if out is None else out + term
    return torch.zeros_like(q) if out is None else out


@adaptive_threads
def infer(
    scores: Tensor,
    kernels: Sequence[Pairwise],
    *,
    iterations: int,
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
        iterations: ``T >= 0``.
        return_logits: return the last iteration's logits (``softmax`` of them is the marginals) instead of
            the marginals.
        memory_efficient: keep less for the backward pass and recompute the rest there (the compiled path keeps the
            marginals and recomputes the messages; the torch path recomputes each iteration).
        exact: O(N^2) exact Gaussians instead of lattices (small inputs, for tests).
        backend: lattice backend (``"auto"``, ``"torch"``, ``"numba"``).
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
    transforms = [label_transform(k.weight, k.compatibility, num_labels, scores, name=k.names[0],
                                  compat_name=k.names[1]) for k in kernels]  # fmt: skip
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
    compiled = compiled and not compiling and not exact and resolve_backend(backend, scores.device) == "numba"
    builder = _Builder(kernels, dtype, exact, backend, None if compiling else cache)
    if compiled and not _needs_grad(scores, transforms, kernels):
        return _infer_fused(scores, builder, schedule, iterations, from_probs, clip, return_logits, name, sum_tol)
    if compiled and iterations > 0 and not any(k.features.requires_grad for k in kernels):
        from crfrnn.crf._compiled import compiled_mean_field

        if from_probs:  # the probabilities are checked here; logits by the compiled pass that lays them out
            _check_scores(_torch_stats(scores), True, name, sum_tol)
        logits = scores.clamp(clip, 1.0).log() if from_probs else scores
        return compiled_mean_field(logits, builder, schedule, iterations, return_logits,
                                   check=lambda stats: _check_scores(stats, False, name, sum_tol),
                                   memory_efficient=memory_efficient)  # fmt: skip
    if torch.compiler.is_compiling():  # checked on the device: no value read back, no graph break
        _assert_scores(scores, from_probs, name, sum_tol)
    else:
        _check_scores(_torch_stats(scores, from_probs), from_probs, name, sum_tol)
    u = scores.transpose(1, 2)  # (B, N, L)
    if from_probs:
        u = u.clamp(clip, 1.0).log()
    built = [builder.kernel(i, None) for i in range(len(kernels))]

    def step(q: Tensor, *ts) -> Tensor:
        return u + pairwise_logits(q, built, ts)

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


def _iteration_transforms(pairs: Sequence[tuple], kernels: Sequence[Pairwise], num_labels: int, like: Tensor) -> list:
    if len(pairs) != len(kernels):
        raise ValueError(
            f"each entry of iteration_weights needs one (weight, compatibility) pair per kernel ({len(kernels)}), "
            f"got {len(pairs)}."
        )
    return [label_transform(w, c, num_labels, like, name=k.names[0], compat_name=k.names[1])
            for (w, c), k in zip(pairs, kernels)]  # fmt: skip


def _build_concurrently(builder: _Builder, count: int, image: int, num_points: int) -> list[GaussianKernel]:
    """Kernels ``0..count-1`` of one image, built side by side in threads when CPUs are free.

    Part of a lattice's construction is sequential (the hash of its vertices), so lattices of similar cost built
    at once, each with one thread, finish sooner than one after the other with all threads each (the compiled
    kernels release the GIL; numba's thread count is per thread).
    """
    import numba

    workers = min(count, numba.get_num_threads())
    # One thread per kernel waits for the costliest kernel; all threads per kernel pay the sum of the costs divided
    # by their speed-up (1.4 to 1.6 on 2 cores). Costs differ more than the feature counts suggest: measured at
    # 64x128x128, the 3-D and 4-D lattices took 100 and 210 ms on one thread, 63 and 149 ms on two, so side by
    # side took 239 ms and one after the other 210 ms (at 500x375 the 2-D and 5-D ones took 11 and 25 ms). So
    # kernels build side by side only when they all have the same number of features (two bilateral kernels).
    dims = {builder.kernels[k].features.shape[-1] for k in range(count)}
    if workers < 2 or num_points < 20_000 or len(dims) > 1:
        return [builder.kernel(k, image) for k in range(count)]

    def build(k: int) -> GaussianKernel:
        numba.set_num_threads(1)
        return builder.kernel(k, image)

    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(build, range(count)))


def _infer_fused(scores: Tensor, builder: _Builder, schedule: list, iterations: int, from_probs: bool,
                 clip: float, return_logits: bool, name: str, sum_tol: float) -> Tensor:
    """The compiled path: all iterations in one compiled call when they share their label transforms, else one
    compiled iteration at a time (untied iterations; iteration ``t`` takes ``schedule[min(t, len - 1)]``), the
    marginals kept in the compiled loop's padded layout between iterations."""
    b, num_labels, n = scores.shape
    dtype = scores.dtype
    np_dtype = np.float64 if dtype == torch.float64 else np.float32
    padded, q0, stats = _kernels.unary_from_scores(scores.detach(), clip, from_probs)
    _check_scores(stats, from_probs, name, sum_tol)
    steps = []
    for transforms in schedule:
        mats = [np.asarray(t.detach().cpu().numpy() if isinstance(t, Tensor) else t, np_dtype) for t in transforms]
        steps.append([m if m.ndim else np.full(num_labels, float(m), np_dtype) for m in mats])
    out = torch.empty((b, num_labels, n), dtype=dtype)
    for i in range(b):
        ops = []
        for kern in _build_concurrently(builder, len(builder.kernels), i, n):
            pre, post, selfw = (f[0].numpy() for f in kern.factors(dtype))
            ops.append((kern.lattice._operators(dtype), pre, post, selfw))
        rows = slice(i * n, (i + 1) * n)
        unary, q = padded[rows], None if q0 is None else q0[rows]
        if len(steps) == 1 or iterations <= 1:
            args = [op + (mat,) for op, mat in zip(ops, steps[0])]
            _kernels.mean_field(unary, num_labels, iterations, args, q0=q, return_logits=return_logits,
                              out=out[i].numpy())  # fmt: skip
            continue
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
            _kernels.mean_field(unary, num_labels, 1, args[s], q0=q, return_logits=last and return_logits,
                              out=out[i].numpy(), transpose=last, prepared=prepared[s], splatted=it > 0,
                              scatter_out=not last)  # fmt: skip
    return out

"""The dense CRF's energy of a labelling and the mean-field free energy of marginals.

The model is the engine's (:mod:`crfrnn.crf.engine`): a unary ``U (B, L, N)`` (logits; the unary *energy* is
``-U``, what densecrf's ``setUnaryEnergy`` takes) and Gaussian :class:`~crfrnn.crf.engine.Pairwise` kernels,
kernel ``m`` with weight ``W_m``, compatibility ``mu_m`` (None: Potts ``1 - I``) and the normalised kernel
``k_m(i, j) = post_i K_m(i, j) pre_j`` its messages use (``pre``/``post`` from its normalisation). The energy of
a labelling ``x`` is

    E(x) = - sum_i U_i(x_i) + 1/2 sum_{i != j} sum_m A_m(x_i, x_j) k_m(i, j),      A_m = mu_m W_m,

which is ``- sum_i U_i(x_i) + sum_{i < j} sum_m A_m(x_i, x_j) k_m(i, j)`` when ``A_m`` and ``k_m`` are
symmetric (no normalisation or symmetric normalisation with the exact Gaussian); otherwise each pair's
potential is the symmetric part ``(A(x_i, x_j) k(i, j) + A(x_j, x_i) k(j, i)) / 2`` (the lattice and the
row/column normalisations are not exactly symmetric). Pairs ``i = i`` never count: a labelling's energy
has no self term, whatever the kernel's ``exclude_self`` (which only changes its normalisation).

:func:`kl_divergence` is the mean-field free energy of factorised marginals ``Q``:

    F(Q) = sum_il Q_il (log Q_il - U_il) + 1/2 sum_{i != j} sum_m Q_i^T A_m Q_j k_m(i, j)
         = KL(Q || P) - log Z,      P(x) = exp(-E(x)) / Z,

exactly (``tests/test_energy.py`` enumerates every labelling of small problems). With
``convention="densecrf"`` it is what pydensecrf's ``DenseCRF.klDivergence`` returns instead (measured in
``tests/test_energy.py``; see ``docs/losses.md``):

    sum_il Q_il log max(Q_il, 1e-20) - sum_il Q_il U_il - sum_m sum_i Q_i^T T_m (k_m Q)_i,

with ``T_m`` the engine's label transform (``W_m`` for Potts, ``-mu_m W_m`` otherwise), the message
``k_m Q`` *including* each point's own value (the lattice's self-weight, unless the kernel excludes it) and
*no* factor ``1/2``: twice the pairwise term of ``F``, plus self terms, with Potts written as ``-w [x_i =
x_j]`` (which differs from ``w [x_i != x_j]`` by a constant).
"""

from __future__ import annotations

from typing import Optional, Sequence, Union

import torch
from torch import Tensor

from crfrnn._utils.validation import check_guide, check_number, check_spacing, check_widths
from crfrnn.crf.features import bilateral_features, position_features
from crfrnn.crf.kernels import GaussianKernel, KernelCache, check_normalization
from crfrnn.crf.pairwise import Pairwise, build_kernels, label_transform, pairwise_logits

__all__ = ["crf_energy", "dense_crf_energy", "dense_crf_kernels", "kl_divergence"]

Width = Union[float, Sequence[float]]
_CONVENTIONS = ("exact", "densecrf")


def _flat(t: Tensor, name: str, what: str) -> Tensor:
    if not isinstance(t, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape {what}, got {type(t).__name__}.")
    if t.dim() < 3:
        raise ValueError(f"{name} must have shape {what}, got shape {tuple(t.shape)}.")
    return t.reshape(t.shape[0], t.shape[1], -1)


def _check_unary(unary: Tensor) -> Tensor:
    u = _flat(unary, "unary", "(B, L, N) or (B, L, *S)")
    if not u.is_floating_point():
        raise TypeError(f"unary must be floating point logits, got {u.dtype}.")
    if not bool(torch.isfinite(u.detach()).all()):
        raise ValueError("unary contains NaN or infinite values.")
    if u.shape[1] < 2:
        raise ValueError(f"unary must have L >= 2 labels in dimension 1, got shape {tuple(unary.shape)}.")
    return u


def _check_kernels(kernels: Sequence[Pairwise], b: int, n: int) -> None:
    for k in kernels:
        if not isinstance(k, Pairwise):
            raise TypeError(f"kernels must be crfrnn.Pairwise objects, got {type(k).__name__}.")
        check_normalization(k.normalization)
        if k.features.dim() != 3 or k.features.shape[1] != n or k.features.shape[0] not in (1, b):
            raise ValueError(
                f"kernel features must be (B, N, D) = ({b}, {n}, D) or (1, {n}, D), got {tuple(k.features.shape)}."
            )


def _off_diagonal(kern: GaussianKernel, q: Tensor) -> Tensor:
    """``sum_{j != i} k(i, j) q_j``: the kernel's message without the point's own value."""
    out = kern(q)
    if kern.self_weight is None:  # the message includes post_i K_ii pre_i q_i: take it out
        pre, post, _ = kern.factors(q.dtype)
        diag = torch.ones_like(pre) if kern.exact or kern.lattice is None else kern.lattice.self_weights().to(q.dtype)
        out = out - (post * diag * pre).unsqueeze(-1) * q
    return out


def _pairwise(
    q: Tensor, kernels: Sequence[Pairwise], like: Tensor, exact: bool, backend: str, cache: Optional[KernelCache] = None
) -> Tensor:
    """``1/2 sum_{i != j} sum_m q_i^T A_m q_j k_m(i, j)`` per image, ``q (B, N, L)``."""
    num_labels = q.shape[-1]
    built = build_kernels(kernels, q.dtype, exact=exact, backend=backend, cache=cache)
    total = q.new_zeros(q.shape[0])
    potts = 1.0 - torch.eye(num_labels, dtype=q.dtype, device=q.device)
    for spec, kern in zip(kernels, built):
        compat = potts if spec.compatibility is None else spec.compatibility
        a = -label_transform(spec.weight, compat, num_labels, like, name=spec.names[0], compat_name=spec.names[1])
        assert isinstance(a, Tensor)  # a tensor compatibility makes a tensor transform
        msg = _off_diagonal(kern, q)
        mixed = msg * a.to(q.dtype) if a.dim() == 1 else msg @ a.to(q.dtype).transpose(0, 1)  # (A m_i) per point
        total = total + 0.5 * (q * mixed).sum((1, 2))
    return total


def crf_energy(
    labels: Tensor, unary: Tensor, kernels: Sequence[Pairwise], *, exact: bool = False, backend: str = "auto"
) -> Tensor:
    """The dense CRF's energy ``E(x)`` of a labelling (see the module docstring).

    Args:
        labels: ``(B, N)`` or ``(B, *S)`` integer labels in ``0..L-1``.
        unary: ``(B, L, N)`` or ``(B, L, *S)`` logits ``U`` (the unary energy is ``-U``).
        kernels: the pairwise terms, features ``(B, N, D)`` or ``(1, N, D)``.
        exact: the exact O(N^2) Gaussian instead of the lattice.
        backend: lattice backend.

    Returns:
        ``(B,)`` energies in the unary's dtype, differentiable w.r.t. the unary and the kernels' weights.

    Example:
        >>> from crfrnn.crf.features import position_features
        >>> k = Pairwise(position_features((4, 4), 1.0, dtype=torch.float64), weight=2.0, normalization="none")
        >>> u = torch.zeros(1, 2, 4, 4, dtype=torch.float64)
        >>> float(crf_energy(torch.zeros(1, 4, 4, dtype=torch.long), u, [k], exact=True))
        0.0
    """
    u = _check_unary(unary)
    b, num_labels, n = u.shape
    if not isinstance(labels, Tensor) or labels.is_floating_point() or labels.dtype == torch.bool:
        raise TypeError(f"labels must be an integer torch.Tensor of shape (B, N) or (B, *S), got {labels!r:.80}.")
    x = labels.reshape(labels.shape[0], -1) if labels.dim() >= 2 else labels
    if x.dim() != 2 or tuple(x.shape) != (b, n):
        raise ValueError(
            f"labels of shape {tuple(labels.shape)} do not match unary of shape {tuple(unary.shape)}: "
            f"expected (B, *S) with B * prod(S) = {b} * {n}."
        )
    if x.numel() and (int(x.min()) < 0 or int(x.max()) >= num_labels):
        raise ValueError(f"labels must lie in 0..{num_labels - 1}, got {int(x.min())}..{int(x.max())}.")
    _check_kernels(kernels, b, n)
    x = x.to(u.device)
    onehot = torch.nn.functional.one_hot(x, num_labels).to(u.dtype)  # (B, N, L)
    unary_term = -u.gather(1, x[:, None]).squeeze(1).sum(1)
    return unary_term + _pairwise(onehot, kernels, u, exact, backend)


def kl_divergence(
    q: Tensor,
    unary: Tensor,
    kernels: Sequence[Pairwise],
    *,
    convention: str = "exact",
    exact: bool = False,
    backend: str = "auto",
    cache: Optional[KernelCache] = None,
) -> Tensor:
    """The mean-field free energy ``KL(Q || P) - log Z`` of marginals (see the module docstring).

    Args:
        q: ``(B, L, N)`` or ``(B, L, *S)`` marginals (non-negative, summing to 1 over labels).
        unary: logits ``U`` of the same shape.
        kernels: the pairwise terms.
        convention: ``"exact"`` (``KL(Q || P) - log Z`` of :func:`crf_energy`'s distribution) or ``"densecrf"``
            (pydensecrf's ``klDivergence``: no ``1/2``, self terms included, Potts as ``-w [x_i = x_j]``).
        exact: the exact O(N^2) Gaussian instead of the lattice.
        backend: lattice backend.
        cache: where kernels with a ``cache_key`` are kept between calls (as :func:`crfrnn.crf.engine.infer`).

    Returns:
        ``(B,)`` values, differentiable w.r.t. ``q`` and ``unary``.
    """
    if convention not in _CONVENTIONS:
        raise ValueError(f"convention must be one of {_CONVENTIONS}, got {convention!r}.")
    u = _check_unary(unary)
    b, num_labels, n = u.shape
    p = _flat(q, "q", "(B, L, N) or (B, L, *S)")
    if tuple(p.shape) != tuple(u.shape):
        raise ValueError(f"q of shape {tuple(q.shape)} does not match unary of shape {tuple(unary.shape)}.")
    if not p.is_floating_point():
        raise TypeError(f"q must be floating point marginals, got {p.dtype}.")
    d = p.detach()
    if not bool(torch.isfinite(d).all()):
        raise ValueError("q contains NaN or infinite values.")
    tol = max(1e-3, 4 * torch.finfo(p.dtype).eps)
    if bool((d < 0).any()) or float((d.sum(1) - 1).abs().max()) > tol:
        raise ValueError("q must be marginals: non-negative and summing to 1 over labels (dimension 1).")
    _check_kernels(kernels, b, n)
    qt = p.to(u.dtype).transpose(1, 2)  # (B, N, L)
    ut = u.transpose(1, 2)
    if convention == "densecrf":
        entropy = (qt * qt.clamp_min(1e-20).log()).sum((1, 2))
        built = build_kernels(kernels, u.dtype, exact=exact, backend=backend, cache=cache)
        transforms = [
            label_transform(k.weight, k.compatibility, num_labels, u, name=k.names[0], compat_name=k.names[1])
            for k in kernels
        ]
        return entropy - (qt * ut).sum((1, 2)) - (qt * pairwise_logits(qt, built, transforms)).sum((1, 2))
    entropy = torch.special.xlogy(qt, qt).sum((1, 2))
    return entropy - (qt * ut).sum((1, 2)) + _pairwise(qt, kernels, u, exact, backend, cache)


def dense_crf_kernels(
    image: Tensor,
    *,
    gaussian_sxy: Width = 3.0,
    gaussian_compat: float = 3.0,
    bilateral_sxy: Width = 80.0,
    bilateral_srgb: Width = 13.0,
    bilateral_compat: float = 10.0,
    normalization: str = "symmetric",
    spacing: Optional[Width] = None,
) -> list[Pairwise]:
    """The two Potts kernels of :func:`crfrnn.dense_crf` (same parameters and meaning) for ``image (B, C, *S)``.

    Example:
        >>> ks = dense_crf_kernels(torch.rand(1, 3, 8, 8) * 255)
        >>> [tuple(k.features.shape) for k in ks]
        [(1, 64, 2), (1, 64, 5)]
    """
    if not isinstance(image, Tensor) or image.dim() < 3:
        raise ValueError(f"image must be a (B, C, *S) tensor, got {getattr(image, 'shape', type(image).__name__)}.")
    check_guide(image, "image")
    shape = tuple(image.shape[2:])
    dtype = image.dtype if image.dtype in (torch.float32, torch.float64) else torch.float32
    steps = check_spacing(spacing, len(shape))
    sxy_g = check_widths("gaussian_sxy", gaussian_sxy, len(shape), "spatial axis")
    sxy_b = check_widths("bilateral_sxy", bilateral_sxy, len(shape), "spatial axis")
    normalization = check_normalization(normalization)
    pos = position_features(shape, sxy_g, spacing=steps, dtype=dtype, device=image.device, name="gaussian_sxy")
    bil = bilateral_features(
        image.to(dtype), sxy_b, bilateral_srgb, spacing=steps, names=("bilateral_sxy", "bilateral_srgb")
    )
    return [
        Pairwise(
            pos,
            weight=check_number("gaussian_compat", gaussian_compat),
            normalization=normalization,
            names=("gaussian_compat", "compatibility"),
        ),
        Pairwise(
            bil,
            weight=check_number("bilateral_compat", bilateral_compat),
            normalization=normalization,
            names=("bilateral_compat", "compatibility"),
        ),
    ]


def dense_crf_energy(
    labels: Tensor, image: Tensor, logits: Tensor, *, exact: bool = False, backend: str = "auto", **params
) -> Tensor:
    """:func:`crf_energy` of ``labels (B, *S)`` in :func:`crfrnn.dense_crf`'s model: ``logits (B, L, *S)`` (e.g.
    ``log(probs)``), ``image (B, C, *S)`` and the keyword parameters of :func:`dense_crf_kernels`.
    """
    return crf_energy(labels, logits, dense_crf_kernels(image, **params), exact=exact, backend=backend)

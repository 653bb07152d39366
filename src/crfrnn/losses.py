"""Regularised losses for weakly supervised segmentation: the relaxed dense-CRF loss (Tang et al., ECCV 2018).

For soft segmentations ``S_k`` (one per label ``k``, over the ``N`` points of an image) the loss is

    R(S) = sum_k S_k^T W (1 - S_k),      W(i, j) = w_b k_bilateral(i, j) + w_s k_spatial(i, j),   i != j,

with the *unnormalised* Gaussians of :func:`crfrnn.mean_field` (``k_bilateral = exp(-|p_i - p_j|^2 / 2
theta_alpha^2 - |I_i - I_j|^2 / 2 theta_beta^2)``, ``k_spatial = exp(-|p_i - p_j|^2 / 2 theta_gamma^2)``). It is the
expected number (weighted by affinity) of pairs cut by a labelling drawn from ``S``: small when the
segmentation's boundaries follow the image's edges. It is used next to a partial cross-entropy on scribbles,
points or boxes.

**The self term is excluded** by default (``exclude_self=True``): a pair ``(i, i)`` is no pair, and with the
permutohedral lattice the diagonal ``W(i, i)`` is not 1 but a position-dependent 0.45-1.0 (docs/lattice.md),
so keeping it would add ``sum_i W(i, i) sum_k S_ik (1 - S_ik)``, a Gini impurity term whose weight varies across
the image with where the points fall in the lattice. Tang et al.'s implementation keeps it; pass
``exclude_self=False`` for that.

**Gradients.** The loss is computed as ``sum_k S_k . (W (1 - S_k))`` and autograd runs the lattice's adjoint:
``dR/dS_k = W (1 - S_k) - W^T S_k``, the exact gradient of the value computed (the lattice's ``W`` is not
exactly symmetric; for a symmetric ``W`` this is ``W (1 - 2 S_k)``). ``tests/test_losses.py`` checks both.

**The lattice against the exact Gaussian.** The lattice's unnormalised Gaussian is 3-9% wider than nominal
and its peak is 0.5-0.9 of the exact one (docs/lattice.md), so the lattice loss is a smaller multiple of the
exact loss: 0.55-0.85 of it on the inputs of ``tests/test_losses.py`` (bilateral D = 3..5), with gradients
pointing the same way (cosine > 0.97). The loss weight absorbs the factor; keep one path (``exact`` or not)
for a whole training run.
"""

from __future__ import annotations

from typing import Optional, Sequence, Union

import torch
from torch import Tensor

from crfrnn._utils.validation import check_guide, check_number, check_spacing, check_widths
from crfrnn.crf.features import bilateral_features, position_features
from crfrnn.crf.kernels import GaussianKernel

__all__ = ["dense_crf_loss"]

Width = Union[float, Sequence[float]]
_REDUCTIONS = ("mean", "sum", "none")


def _check_probs(probs: Tensor) -> None:
    if not isinstance(probs, Tensor):
        raise TypeError(f"probs must be a torch.Tensor of shape (B, L, *S), got {type(probs).__name__}.")
    if probs.dim() not in (3, 4, 5):
        raise ValueError(
            f"probs must have shape (B, L, *S) with 1 to 3 spatial axes, got shape {tuple(probs.shape)}; for one "
            "image add the batch dimension with probs[None]."
        )
    if not probs.is_floating_point():
        raise TypeError(f"probs must be floating point probabilities, got {probs.dtype}.")
    if probs.numel() == 0:
        raise ValueError(f"probs is empty: shape {tuple(probs.shape)}.")
    d = probs.detach()
    if not bool(torch.isfinite(d).all()):
        raise ValueError("probs contains NaN or infinite values.")
    tol = max(1e-3, 4 * torch.finfo(d.dtype).eps)
    if float(d.min()) < -tol or float(d.max()) > 1 + tol:
        raise ValueError(
            f"probs must lie in [0, 1] (a softmax over dimension 1), got values in {float(d.min()):.4g}.."
            f"{float(d.max()):.4g}; pass torch.softmax(logits, 1)."
        )
    if d.shape[1] > 1:
        sums = d.sum(1)
        if float((sums - 1).abs().max()) > tol:
            raise ValueError(
                f"probs must sum to 1 over labels (dimension 1), got sums {float(sums.min()):.4g}.."
                f"{float(sums.max()):.4g}; pass torch.softmax(logits, 1) (or a single foreground map with L = 1)."
            )


def _check_image(image: Tensor, probs: Tensor) -> None:
    if not isinstance(image, Tensor):
        raise TypeError(f"image must be a torch.Tensor of shape (B, C, *S), got {type(image).__name__}.")
    b, s = probs.shape[0], tuple(probs.shape[2:])
    if image.dim() != probs.dim() or image.shape[0] != b or tuple(image.shape[2:]) != s:
        raise ValueError(
            f"image of shape {tuple(image.shape)} does not match probs of shape {tuple(probs.shape)}: expected "
            f"(B, C, *S) = ({b}, C, {', '.join(map(str, s))}); resize one to the other (channels-last images: "
            "image.movedim(-1, 1))."
        )
    if image.device != probs.device:
        raise ValueError(f"probs is on {probs.device} but image is on {image.device}; move one with .to().")
    check_guide(image, "image")


def _affinity(s: Tensor, features: Tensor, exclude_self: bool, exact: bool, backend: str) -> Tensor:
    """``sum_{j (!= i)} exp(-|f_i - f_j|^2 / 2) s_j`` for ``s (B, N, C)``."""
    kern = GaussianKernel(
        features.to(s.dtype), normalization="none", exclude_self=exclude_self, exact=exact, backend=backend
    )
    return kern(s)


def dense_crf_loss(
    probs: Tensor,
    image: Tensor,
    *,
    theta_alpha: Width = 80.0,
    theta_beta: Width = 15.0,
    theta_gamma: Optional[Width] = None,
    bilateral_weight: float = 1.0,
    spatial_weight: float = 0.0,
    spacing: Optional[Width] = None,
    normalize: bool = True,
    exclude_self: bool = True,
    reduction: str = "mean",
    exact: bool = False,
    backend: str = "auto",
) -> Tensor:
    """The relaxed dense-CRF loss ``R(S) = sum_k S_k^T W (1 - S_k)`` of soft segmentations (module docstring).

    Args:
        probs: ``(B, L, *S)`` soft segmentations (a softmax over dimension 1), ``S`` of 1 to 3 spatial axes;
            ``L = 1`` is a foreground probability (the two-label problem ``(1 - p, p)``).
        image: ``(B, C, *S)`` guide, colours on the 0..255 scale.
        theta_alpha: bilateral position width, one number or one per spatial axis (array-axis order), in pixels
            or the units of ``spacing`` (Tang et al.: 80 at their half-resolution input).
        theta_beta: bilateral colour width, one number or one per channel (Tang et al.: 15).
        theta_gamma: spatial kernel width; needed only when ``spatial_weight != 0``.
        bilateral_weight: ``w_b``.
        spatial_weight: ``w_s`` (0: no spatial kernel, as Tang et al.).
        spacing: physical size of a step along each spatial axis.
        normalize: divide each image's loss by its number of points ``N`` (so the scale does not grow with the
            image size at fixed widths).
        exclude_self: leave ``j = i`` out of ``W`` (see the module docstring for why this is the default).
        reduction: ``"mean"`` over the batch, ``"sum"``, or ``"none"`` for ``(B,)`` per-image values.
        exact: the O(N^2) exact Gaussian instead of the lattice (small inputs, tests).
        backend: lattice backend (``"auto"``, ``"torch"``, ``"numba"``, ``"triton"``).

    Returns:
        A scalar (``"mean"``/``"sum"``) or ``(B,)``, in the probabilities' dtype (float32 for half precision),
        differentiable w.r.t. ``probs``: ``dR/dS_k = W (1 - S_k) - W^T S_k``, ``W^T`` the lattice's adjoint.

    Example:
        >>> probs = torch.softmax(torch.randn(2, 3, 16, 16), 1)
        >>> image = torch.rand(2, 3, 16, 16) * 255
        >>> dense_crf_loss(probs, image).shape
        torch.Size([])
    """
    _check_probs(probs)
    _check_image(image, probs)
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}.")
    w_b = check_number("bilateral_weight", bilateral_weight)
    w_s = check_number("spatial_weight", spatial_weight)
    shape = tuple(probs.shape[2:])
    ndim = len(shape)
    steps = check_spacing(spacing, ndim)
    theta_a = check_widths("theta_alpha", theta_alpha, ndim, "spatial axis")
    if w_s != 0 and theta_gamma is None:
        raise ValueError("spatial_weight is not 0 but theta_gamma is None: give the spatial kernel's width.")
    dtype = probs.dtype if probs.dtype in (torch.float32, torch.float64) else torch.float32
    p = probs.to(dtype)
    if p.shape[1] == 1:
        p = torch.cat([1 - p, p], 1)
    b, num_labels = p.shape[:2]
    s = p.reshape(b, num_labels, -1).transpose(1, 2)  # (B, N, L)
    rest = 1 - s
    total = s.new_zeros(b)
    if w_b != 0:
        feats = bilateral_features(image.to(dtype), theta_a, theta_beta, spacing=steps)
        total = total + w_b * (s * _affinity(rest, feats, exclude_self, exact, backend)).sum((1, 2))
    if w_s != 0:
        assert theta_gamma is not None  # checked above
        theta_g = check_widths("theta_gamma", theta_gamma, ndim, "spatial axis")
        feats = position_features(shape, theta_g, spacing=steps, dtype=dtype, device=p.device, name="theta_gamma")
        total = total + w_s * (s * _affinity(rest, feats, exclude_self, exact, backend)).sum((1, 2))
    if normalize:
        total = total / s.shape[1]
    if reduction == "mean":
        return total.mean()
    return total.sum() if reduction == "sum" else total

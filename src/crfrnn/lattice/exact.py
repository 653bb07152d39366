"""The exact O(N^2) Gaussian filter: the reference the permutohedral lattice is measured against."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["exact_gaussian_filter"]

# Bytes of kernel matrix held at once by the exact filter (one chunk of rows of exp(-|f_i - f_j|^2 / 2)).
_CHUNK_BYTES = 64 * 2**20


def exact_gaussian_filter(values: Tensor, features: Tensor, *, exclude_self: bool = False) -> Tensor:
    """``out_i = sum_j exp(-|f_i - f_j|^2 / 2) v_j`` of each point set in a batch, by brute force.

    Computed in chunks of rows so that a few thousand points fit in memory; differentiable with respect to both
    ``values`` and ``features``.

    Args:
        values: ``(B, N, C)`` float32/float64.
        features: ``(B, N, D)`` same dtype and device, already divided by the kernel widths.
        exclude_self: leave out ``j == i`` from the sum.

    Returns:
        ``(B, N, C)`` filtered values.

    Raises:
        TypeError: the inputs are not float32/float64 tensors of one dtype.
        ValueError: their shapes do not match, or the features are not finite.
    """
    for name, t in (("values", values), ("features", features)):
        if not isinstance(t, Tensor) or t.dtype not in (torch.float32, torch.float64):
            got = t.dtype if isinstance(t, Tensor) else type(t).__name__
            raise TypeError(f"{name} must be a float32 or float64 tensor, got {got}; convert it with .double().")
    if values.dtype != features.dtype:
        raise TypeError(
            f"values ({values.dtype}) and features ({features.dtype}) must have one dtype; convert one of them."
        )
    if values.dim() != 3 or features.dim() != 3 or values.shape[:2] != features.shape[:2]:
        raise ValueError(
            f"values (B, N, C) and features (B, N, D) must agree in B and N, got {tuple(values.shape)} and "
            f"{tuple(features.shape)}."
        )
    if not bool(torch.isfinite(features).all()):
        raise ValueError("features contain NaN or infinite values; a Gaussian of them is undefined.")
    n = features.shape[1]
    rows = max(1, _CHUNK_BYTES // (values.element_size() * n * 3))
    sq = (features * features).sum(-1)  # (B, N)
    parts = []
    for start in range(0, n, rows):
        f = features[:, start : start + rows]
        # |f_i - f_j|^2 = |f_i|^2 - 2 f_i.f_j + |f_j|^2, clamped against rounding below zero
        d2 = (sq[:, start : start + rows, None] - 2.0 * f @ features.transpose(1, 2) + sq[:, None, :]).clamp_min(0)
        parts.append(torch.exp(-0.5 * d2) @ values)
    out = torch.cat(parts, 1)
    return out - values if exclude_self else out  # the self term is exp(0) * v_i

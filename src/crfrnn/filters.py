"""Gaussian filtering: the exact O(N^2) reference and the lattice approximation behind one function."""

from __future__ import annotations

import torch
from torch import Tensor

from crfrnn.lattice import PermutohedralLattice, _check_features

__all__ = ["gaussian_filter"]

# Bytes of kernel matrix held at once by the exact filter (one chunk of rows of exp(-|f_i - f_j|^2 / 2)).
_CHUNK_BYTES = 64 * 2**20


def _exact(values: Tensor, features: Tensor, exclude_self: bool) -> Tensor:
    n = features.shape[1]
    rows = max(1, _CHUNK_BYTES // (values.element_size() * n * 3))
    sq = (features * features).sum(-1)  # (B, N)
    out = []
    for start in range(0, n, rows):
        f = features[:, start : start + rows]
        # |f_i - f_j|^2 = |f_i|^2 - 2 f_i.f_j + |f_j|^2, clamped against rounding below zero
        d2 = (sq[:, start : start + rows, None] - 2.0 * f @ features.transpose(1, 2) + sq[:, None, :]).clamp_min(0)
        out.append(torch.exp(-0.5 * d2) @ values)
    out = torch.cat(out, 1)
    return out - values if exclude_self else out  # the self term is exp(0) * v_i


def gaussian_filter(
    values: Tensor,
    features: Tensor,
    exact: bool = True,
    *,
    exclude_self: bool = False,
    backend: str = "auto",
) -> Tensor:
    """Gaussian filtering ``out_i = sum_j exp(-|f_i - f_j|^2 / 2) v_j`` of each point set in a batch.

    With ``exact=True`` this is the brute-force O(N^2) sum, computed in chunks of rows so that a few
    thousand points fit in memory; it is the reference the lattice is tested against, and it is
    differentiable with respect to both ``values`` and ``features``. With ``exact=False`` it builds a
    :class:`~crfrnn.PermutohedralLattice` (approximate, O(N), differentiable with respect to values).

    Args:
        values: ``(B, N, C)`` float32/float64.
        features: ``(B, N, D)`` same dtype and device, already divided by the kernel widths.
        exact: brute force (True) or permutohedral lattice (False).
        exclude_self: leave out ``j == i`` from the sum (exact only; see
            :func:`crfrnn.mean_field` for the lattice equivalent).
        backend: lattice backend when ``exact=False``.

    Returns:
        ``(B, N, C)`` filtered values.

    Example:
        >>> f = torch.tensor([[[0.0], [1.0]]])
        >>> gaussian_filter(torch.ones(1, 2, 1), f).squeeze()
        tensor([1.6065, 1.6065])
    """
    _check_features(features)
    if not isinstance(values, Tensor) or values.dim() != 3 or values.shape[:2] != features.shape[:2]:
        shape = tuple(values.shape) if isinstance(values, Tensor) else type(values).__name__
        raise ValueError(
            f"values must have shape (B, N, C) with (B, N) = {tuple(features.shape[:2])} as in the "
            f"features, got {shape}."
        )
    if values.dtype != features.dtype or values.device != features.device:
        raise TypeError(
            f"values ({values.dtype}, {values.device}) and features ({features.dtype}, {features.device}) "
            "must share dtype and device; convert one with .to(other)."
        )
    if exact:
        return _exact(values, features, exclude_self)
    if exclude_self:
        raise ValueError("exclude_self is only available with exact=True here; use crfrnn.mean_field for the lattice.")
    return PermutohedralLattice(features, backend=backend).filter(values)

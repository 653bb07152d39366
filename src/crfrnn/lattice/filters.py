"""Gaussian filtering: the exact O(N^2) reference (:mod:`crfrnn.lattice.exact`) and the lattice approximation
behind one function.
"""

from __future__ import annotations

from torch import Tensor

from crfrnn.lattice._construction import check_features
from crfrnn.lattice._permutohedral import PermutohedralLattice
from crfrnn.lattice.exact import exact_gaussian_filter

__all__ = ["gaussian_filter"]


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
        >>> import torch
        >>> f = torch.tensor([[[0.0], [1.0]]])
        >>> gaussian_filter(torch.ones(1, 2, 1), f).squeeze()
        tensor([1.6065, 1.6065])
    """
    check_features(features)
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
        return exact_gaussian_filter(values, features, exclude_self=exclude_self)
    if exclude_self:
        raise ValueError("exclude_self is only available with exact=True here; use crfrnn.mean_field for the lattice.")
    return PermutohedralLattice(features, backend=backend).filter(values)

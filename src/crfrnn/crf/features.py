"""Kernel features: positions (any number of spatial axes, voxel spacing) and guides, divided by their widths.

Point ``i`` of a grid of shape ``S`` (row-major order) has position features ``pos_a * spacing_a / theta_a``
for every axis ``a``, listed from the last axis to the first (for an image ``(H, W)``: ``x`` then ``y``, as
densecrf orders them), then guide features ``g_c / theta_c`` for every guide channel ``c``. Widths are given
in array-axis order (``(theta_H, theta_W)`` for an image, ``(theta_D, theta_H, theta_W)`` for a volume) and in
physical units when a ``spacing`` is given.
"""

from __future__ import annotations

from typing import Optional, Sequence, Union

import torch
from torch import Tensor

from crfrnn.validation import check_bound, check_spacing, check_widths

__all__ = ["bilateral_features", "guide_features", "position_features", "spatial_features"]

Width = Union[float, Sequence[float]]


def position_features(
    shape: Sequence[int], theta: Width, *, spacing: Optional[Width] = None, dtype: torch.dtype = torch.float32,
    device: Optional[torch.device] = None, name: str = "theta",
) -> Tensor:
    """Position features of every point of a grid, divided by the widths.

    Args:
        shape: the spatial shape ``S`` (1 to 3 axes, any number works).
        theta: width, one number or one per axis (array-axis order), in the units of ``spacing``.
        spacing: physical size of a step along each axis (e.g. mm per voxel); None is 1 (pixels).
        name: the caller's name for ``theta``, for error messages.

    Returns:
        ``(1, N, len(S))``, ``N = prod(S)``, the last axis first.

    Example:
        >>> position_features((2, 3), 1.0)[0, :4].tolist()
        [[0.0, 0.0], [1.0, 0.0], [2.0, 0.0], [0.0, 1.0]]
    """
    ndim = len(shape)
    widths = check_widths(name, theta, ndim, "spatial axis")
    steps = check_spacing(spacing, ndim)
    for size, width, step in zip(shape, widths, steps):
        check_bound(name, (size - 1) * step, width)
    axes = [(torch.arange(n, dtype=torch.float64, device=device) * step) / width
            for n, step, width in zip(shape, steps, widths)]  # fmt: skip
    grids = torch.meshgrid(*axes, indexing="ij")
    pos = torch.stack(grids[::-1], -1).reshape(1, -1, ndim)
    return pos.to(dtype)


def guide_features(guide: Tensor, theta: Width, *, name: str = "theta") -> Tensor:
    """Guide channels divided by their widths.

    Args:
        guide: ``(B, C, *S)`` floating point.
        theta: one width for all channels or one per channel.

    Returns:
        ``(B, N, C)``.
    """
    b, c = guide.shape[:2]
    widths = check_widths(name, theta, c, "guide channel")
    flat = guide.reshape(b, c, -1)
    lo, hi = torch.aminmax(flat.detach())
    extent = max(-float(lo), float(hi))
    for width in widths:
        check_bound(name, extent, width)
    scale = torch.tensor(widths, dtype=guide.dtype, device=guide.device).view(1, c, 1)
    return (flat / scale).transpose(1, 2)


def bilateral_features(
    image: Tensor, theta_alpha: Width, theta_beta: Width, *, spacing: Optional[Width] = None,
    names: tuple[str, str] = ("theta_alpha", "theta_beta"),
) -> Tensor:
    """Position and guide features ``(x / theta_alpha, y / theta_alpha, .., c_1 / theta_beta, ..)``.

    Args:
        image: ``(B, C, *S)`` floating point, usually RGB on the 0..255 scale.
        theta_alpha: position width, one number or one per spatial axis (array-axis order).
        theta_beta: guide width, one number or one per channel.
        spacing: voxel spacing per axis (see :func:`position_features`).

    Returns:
        ``(B, N, len(S) + C)``.
    """
    b = image.shape[0]
    pos = position_features(image.shape[2:], theta_alpha, spacing=spacing, dtype=image.dtype, device=image.device,
                            name=names[0])  # fmt: skip
    return torch.cat([pos.expand(b, -1, -1), guide_features(image, theta_beta, name=names[1])], -1)


def spatial_features(
    batch: int, height: int, width: int, theta: Width, *, dtype: torch.dtype = torch.float32,
    device: Optional[torch.device] = None,
) -> Tensor:
    """Position features ``(x / theta_x, y / theta_y)`` of every pixel of an image (the 2-D case).

    Args:
        theta: the kernel width in pixels, or ``(theta_x, theta_y)`` (densecrf's ``sxy`` order).

    Returns:
        ``(B, H W, 2)``, pixels in row-major order, ``x`` the column and ``y`` the row index.
    """
    t = check_widths("theta", theta, 2, "axis")
    return position_features((height, width), (t[1], t[0]), dtype=dtype, device=device).expand(batch, -1, -1)

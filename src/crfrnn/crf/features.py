"""Kernel features: positions (any number of spatial axes, voxel spacing) and guides, divided by their widths.

Point ``i`` of a grid of shape ``S`` (row-major order) has position features ``pos_a * spacing_a / theta_a``
for every axis ``a``, listed from the last axis to the first (for an image ``(H, W)``: ``x`` then ``y``, as
densecrf orders them), then guide features ``g_c / theta_c`` for every guide channel ``c``. Widths are given
in array-axis order (``(theta_H, theta_W)`` for an image, ``(theta_D, theta_H, theta_W)`` for a volume) and in
physical units when a ``spacing`` is given.

Widths may be tensors that require a gradient (learned widths), and the guide may require one (a feature map
learned upstream). The features are then ``base / widths`` with the autograd graph kept, and they remember that
factorisation (:func:`width_factors`), so that a kernel whose guide needs no gradient can compute the widths'
gradient without a per-point feature gradient, at about half the cost (see ``docs/widths.md``).
"""

from __future__ import annotations

import math
import operator
from typing import Any, Optional, Sequence, Union

import torch
from torch import Tensor

from crfrnn._utils.validation import check_bound, check_spacing, check_widths, width_tensor, widths_need_grad

__all__ = ["bilateral_features", "guide_features", "position_features", "spatial_features"]

Width = Union[float, Sequence[float], Tensor]

# Attribute under which features that need a gradient keep their factors ``(base, widths)``.
_FACTORS = "_crfrnn_width_factors"


def _divided(base: Tensor, widths: Tensor) -> Tensor:
    """``base / widths`` (``widths (D,)`` over the last axis), remembering both factors."""
    out = base / widths
    setattr(out, _FACTORS, (base, widths))
    return out


def width_factors(features: Tensor) -> Optional[tuple[Tensor, Tensor]]:
    """``(base (B, N, D), widths (D,))`` with ``features = base / widths`` for features built here that need a
    gradient, or None (features built elsewhere, or derived from these by any operation).
    """
    factors = getattr(features, _FACTORS, None)
    if factors is None or factors[0].shape != features.shape or factors[1].shape != features.shape[-1:]:
        return None
    return factors


def _grid(
    shape: Sequence[int],
    steps: Sequence[float],
    widths: Optional[Sequence[float]],
    dtype: torch.dtype,
    device: Optional[torch.device],
    out: Optional[Tensor] = None,
) -> Tensor:
    """Positions ``pos_a * step_a / width_a`` (``widths`` None: undivided) of every point of a grid, ``(1, N, len(S))``
    the last axis first, or written to ``out`` ``(B, N, >= len(S))`` (its first ``len(S)`` features, every image).

    Each axis's values are computed in float64 and rounded to ``dtype`` once, then spread over the grid: the same
    values as a float64 grid rounded afterwards, without building it.
    """
    ndim = len(shape)
    if out is None:
        out = torch.empty((1, math.prod(shape), ndim), dtype=dtype, device=device)
    grid = out.view(out.shape[0], *shape, out.shape[-1])
    for axis, (n, step) in enumerate(zip(shape, steps)):
        values = torch.arange(n, dtype=torch.float64, device=device) * step
        if widths is not None:
            values = values / widths[axis]
        view = [1] * (ndim + 1)
        view[axis + 1] = n
        grid[..., ndim - 1 - axis] = values.to(dtype).view(view)
    return out


def _position_base(
    shape: Sequence[int], steps: Sequence[float], dtype: torch.dtype, device: Optional[torch.device]
) -> Tensor:
    """Undivided positions ``(1, N, len(S))`` in the units of ``steps``, the last axis first."""
    return _grid(shape, steps, None, dtype, device)


def _check_positions(
    shape: Sequence[int], theta: Width, spacing: Optional[Width], name: str
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Checked ``(widths, steps)`` of a grid's position features (floats, array-axis order)."""
    _check_sizes("shape", shape)
    widths = check_widths(name, theta, len(shape), "spatial axis")
    steps = check_spacing(spacing, len(shape))
    for size, width, step in zip(shape, widths, steps):
        check_bound(name, (size - 1) * step, width)
    return widths, steps


def _check_sizes(name: str, sizes: Sequence[int]) -> None:
    """Refuses a grid size that is not a positive integer (``torch.arange`` would fail without saying which)."""
    if torch.compiler.is_compiling():  # the sizes are a tensor's shape there
        return
    try:
        values = [operator.index(size) for size in sizes]
    except TypeError:
        raise TypeError(f"{name} must hold integers, got {tuple(sizes)!r}; pass e.g. (height, width).") from None
    if any(v < 1 for v in values):
        raise ValueError(f"{name} must hold sizes >= 1, got {tuple(values)}; every axis needs at least one pixel.")


def _check_guide(guide: Tensor, theta: Width, name: str) -> tuple[Tensor, tuple[float, ...]]:
    """``(guide (B, C, N), checked widths)``."""
    b, c = guide.shape[:2]
    widths = check_widths(name, theta, c, "guide channel")
    flat = guide.reshape(b, c, -1)
    lo, hi = torch.aminmax(flat.detach())
    if torch.compiler.is_compiling():  # the lattice checks its coordinates on the device (no value read back)
        return flat, widths
    extent = max(-float(lo), float(hi))
    if not math.isfinite(float(lo)) or not math.isfinite(float(hi)):
        raise ValueError(
            f"the guide scaled by {name} holds NaN or infinite values (from {float(lo)} to {float(hi)}); "
            "replace them first, e.g. torch.nan_to_num(guide)."
        )
    for width in widths:
        check_bound(name, extent, width)
    return flat, widths


def position_features(
    shape: Sequence[int],
    theta: Width,
    *,
    spacing: Optional[Width] = None,
    dtype: torch.dtype = torch.float32,
    device: Optional[torch.device] = None,
    name: str = "theta",
) -> Tensor:
    """Position features of every point of a grid, divided by the widths.

    Args:
        shape: the spatial shape ``S`` (1 to 3 axes, any number works).
        theta: width, one number or one per axis (array-axis order), in the units of ``spacing``; a tensor
            (or a sequence of tensors) that requires a gradient keeps its graph.
        spacing: physical size of a step along each axis (e.g. mm per voxel); None is 1 (pixels).
        dtype: the features' dtype.
        device: the features' device; None is PyTorch's default device.
        name: the caller's name for ``theta``, for error messages.

    Returns:
        ``(1, N, len(S))``, ``N = prod(S)``, the last axis first.

    Example:
        >>> position_features((2, 3), 1.0)[0, :4].tolist()
        [[0.0, 0.0], [1.0, 0.0], [2.0, 0.0], [0.0, 1.0]]
    """
    ndim = len(shape)
    widths, steps = _check_positions(shape, theta, spacing, name)
    if widths_need_grad(theta):
        w = width_tensor(name, theta, ndim, "spatial axis", dtype=dtype, device=device)
        return _divided(_position_base(shape, steps, dtype, device), w.flip(0))
    return _grid(shape, steps, widths, dtype, device)


def guide_features(guide: Tensor, theta: Width, *, name: str = "theta") -> Tensor:
    """Guide channels divided by their widths.

    Args:
        guide: ``(B, C, *S)`` floating point (it may require a gradient).
        theta: one width for all channels or one per channel (tensors that require a gradient keep their graph).
        name: the caller's name for ``theta``, for error messages.

    Returns:
        ``(B, N, C)``.
    """
    if not guide.is_floating_point():  # an integer scale would truncate a width below 1 to 0 (0 / 0: NaN)
        guide = guide.to(torch.get_default_dtype())
    c = guide.shape[1]
    flat, widths = _check_guide(guide, theta, name)
    if guide.requires_grad or widths_need_grad(theta):
        w = width_tensor(name, theta, c, "guide channel", dtype=guide.dtype, device=guide.device)
        return _divided(flat.transpose(1, 2), w)
    scale = torch.tensor(widths, dtype=guide.dtype, device=guide.device).view(1, c, 1)
    return (flat / scale).transpose(1, 2)


def bilateral_features(
    image: Tensor,
    theta_alpha: Width,
    theta_beta: Width,
    *,
    spacing: Optional[Width] = None,
    names: tuple[str, str] = ("theta_alpha", "theta_beta"),
) -> Tensor:
    """Position and guide features ``(x / theta_alpha, y / theta_alpha, .., c_1 / theta_beta, ..)``.

    Args:
        image: ``(B, C, *S)`` floating point, usually RGB on the 0..255 scale.
        theta_alpha: position width, one number or one per spatial axis (array-axis order).
        theta_beta: guide width, one number or one per channel.
        spacing: voxel spacing per axis (see :func:`position_features`).
        names: the caller's names for ``theta_alpha`` and ``theta_beta``, for error messages.

    Returns:
        ``(B, N, len(S) + C)``.
    """
    if not image.is_floating_point():  # integer images (uint8 photos) give float features, as documented
        image = image.to(torch.get_default_dtype())
    b = image.shape[0]
    if image.requires_grad or widths_need_grad(theta_alpha) or widths_need_grad(theta_beta):
        shape, c = image.shape[2:], image.shape[1]
        _, steps = _check_positions(shape, theta_alpha, spacing, names[0])
        flat, _ = _check_guide(image, theta_beta, names[1])
        like: dict[str, Any] = dict(dtype=image.dtype, device=image.device)
        w_pos = width_tensor(names[0], theta_alpha, len(shape), "spatial axis", **like)
        w_g = width_tensor(names[1], theta_beta, c, "guide channel", **like)
        base = torch.cat([_position_base(shape, steps, **like).expand(b, -1, -1), flat.transpose(1, 2)], -1)
        return _divided(base, torch.cat([w_pos.flip(0), w_g]))
    # written into one array: the positions (the same for every image), then the guide divided by its widths (the
    # same values as position_features and guide_features side by side, without their copies)
    shape = image.shape[2:]
    widths, steps = _check_positions(shape, theta_alpha, spacing, names[0])
    flat, guide_widths = _check_guide(image, theta_beta, names[1])
    d, c = len(shape), flat.shape[1]
    out = torch.empty((b, flat.shape[2], d + c), dtype=image.dtype, device=image.device)
    _grid(shape, steps, widths, image.dtype, image.device, out)
    scale = torch.tensor(guide_widths, dtype=image.dtype, device=image.device)
    if torch.compiler.is_compiling():  # dynamo refuses a strided out= (a graph break)
        out[..., d:] = flat.transpose(1, 2) / scale
    else:
        torch.div(flat.transpose(1, 2), scale, out=out[..., d:])
    return out


def spatial_features(
    batch: int,
    height: int,
    width: int,
    theta: Width,
    *,
    dtype: torch.dtype = torch.float32,
    device: Optional[torch.device] = None,
) -> Tensor:
    """Position features ``(x / theta_x, y / theta_y)`` of every pixel of an image (the 2-D case).

    Args:
        batch: ``B``, the images (the features are the same for all: an expanded view).
        height: ``H``.
        width: ``W``.
        theta: the kernel width in pixels, or ``(theta_x, theta_y)`` (densecrf's ``sxy`` order).
        dtype: the features' dtype.
        device: the features' device; None is PyTorch's default device.

    Returns:
        ``(B, H W, 2)``, pixels in row-major order, ``x`` the column and ``y`` the row index.
    """
    _check_sizes("(batch, height, width)", (batch, height, width))
    t = check_widths("theta", theta, 2, "axis")
    return position_features((height, width), (t[1], t[0]), dtype=dtype, device=device).expand(batch, -1, -1)

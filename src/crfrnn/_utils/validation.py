"""Input checks shared by every public entry point, so that they cannot disagree.

Each check names the caller's parameter (``theta_beta``, ``logits``), says what was given and what was
expected, and how to fix it. The command line adds its own flag hints on top of these messages.
"""

from __future__ import annotations

import math
import numbers
import warnings
from typing import Optional, Sequence, TypeGuard, Union, cast

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "MAX_FEATURE",
    "check_guide",
    "check_iterations",
    "check_number",
    "check_spacing",
    "check_widths",
    "width_tensor",
    "widths_need_grad",
]

#: Largest magnitude a lattice coordinate (a position or guide value divided by its kernel width) may have.
#: Beyond it the lattice's integer vertex keys would overflow (about 1e18) or lose precision (float64 holds
#: integers exactly up to 2**53), so it is refused before anything is built.
MAX_FEATURE = 2.0**40


def _is_number(value: object) -> TypeGuard[numbers.Real]:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def check_number(name: str, value: object, *, positive: bool = False, nonnegative: bool = False) -> float:
    """A finite real number (``positive``: ``> 0``; ``nonnegative``: ``>= 0``), as a float."""
    if (
        isinstance(value, (Tensor, np.ndarray, np.generic))
        and (value.numel() if isinstance(value, Tensor) else np.size(value)) == 1
    ):
        value = value.item()
    if not _is_number(value):
        raise TypeError(f"{name} must be a real number, got {value!r} ({type(value).__name__}).")
    v = float(value)
    if not math.isfinite(v):
        raise ValueError(f"{name} must be finite, got {v!r}.")
    if positive and not v > 0:
        raise ValueError(f"{name} must be positive, got {v!r}.")
    if nonnegative and not v >= 0:
        raise ValueError(f"{name} must be >= 0, got {v!r}.")
    return v


def check_iterations(name: str, value: object) -> int:
    """A whole number of iterations ``>= 0`` (NumPy integers accepted; floats, bools and negatives refused)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be a whole number >= 0, got {value!r} ({type(value).__name__}).")
    if int(value) < 0:
        raise ValueError(f"{name} must be >= 0, got {int(value)}.")
    return int(value)


def _scalar(value: object) -> object:
    """A one-element tensor or NumPy value as a Python number (detached); anything else unchanged."""
    if isinstance(value, Tensor) and value.numel() == 1:
        return value.detach().item()
    if isinstance(value, (np.ndarray, np.generic)) and np.size(value) == 1:
        return value.item()
    return value


def check_widths(name: str, value: Union[float, Sequence[float], Tensor], count: int, what: str) -> tuple[float, ...]:
    """Kernel widths: one positive finite number, or one per ``what`` (``count`` of them).

    Numbers, sequences of numbers, NumPy arrays and tensors (also tensors that require a gradient, and sequences
    of one-element tensors) are accepted; their values are checked here, detached.

    Returns:
        ``count`` floats.
    """
    if isinstance(value, Tensor) and torch.compiler.is_compiling():
        # under torch.compile 0-d tensors stand in for the floats (arithmetic and check_bound accept both)
        return cast("tuple[float, ...]", _traced_widths(name, value, count, what))
    if isinstance(value, Tensor):
        value = value.detach().reshape(-1).tolist()
    elif isinstance(value, np.ndarray):
        value = value.reshape(-1).tolist()
    values: list[object]
    if _is_number(value):
        values = [value] * count
    elif isinstance(value, (list, tuple)):
        values = [_scalar(v) for v in value]
        if len(values) == 1:
            values = values * count
        if len(values) != count:
            raise ValueError(
                f"{name} must be one number or {count} numbers (one per {what}), got {len(values)}: {tuple(values)}."
            )
    else:
        raise TypeError(f"{name} must be a number or a sequence of {count} numbers, got {type(value).__name__}.")
    out = []
    for v in values:
        if not _is_number(v) or not math.isfinite(float(v)) or not float(v) > 0:
            raise ValueError(
                f"{name} must be positive finite numbers ({what} units), got {tuple(values)}; a width learned by "
                "gradient descent stays positive when it is parameterised by its logarithm (width = log_width.exp())."
            )
        out.append(float(v))
    return tuple(out)


def _traced_widths(name: str, value: Tensor, count: int, what: str) -> tuple[Tensor, ...]:
    """:func:`check_widths` of a tensor under ``torch.compile``: the values are checked on the device (no value read
    back, no graph break) and returned as ``count`` 0-d tensors.
    """
    flat = value.detach().reshape(-1)
    if flat.numel() not in (1, count):
        raise ValueError(f"{name} must be one number or {count} numbers (one per {what}), got {flat.numel()}.")
    torch._assert_async(((flat > 0) & torch.isfinite(flat)).all(), f"crfrnn: {name} must be positive finite numbers")
    values = tuple(flat.unbind())
    return values * count if len(values) == 1 else values


def widths_need_grad(value: object) -> bool:
    """Whether kernel widths (a tensor, or a sequence holding tensors) need a gradient right now."""
    if not torch.is_grad_enabled():
        return False
    if isinstance(value, Tensor):
        return value.requires_grad
    return isinstance(value, (list, tuple)) and any(isinstance(v, Tensor) and v.requires_grad for v in value)


def width_tensor(
    name: str,
    value: Union[float, Sequence[float], Tensor],
    count: int,
    what: str,
    *,
    dtype: torch.dtype,
    device: Optional[torch.device],
) -> Tensor:
    """Kernel widths as a ``(count,)`` tensor that keeps their autograd graph (values checked by
    :func:`check_widths`); one width is expanded to ``count``.
    """
    check_widths(name, value, count, what)
    if isinstance(value, Tensor):
        t = value.reshape(-1).to(dtype=dtype, device=device)
    else:
        parts = value if isinstance(value, (list, tuple)) else [value]
        t = torch.stack(
            [
                v.reshape(()).to(dtype=dtype, device=device)
                if isinstance(v, Tensor)
                else torch.tensor(float(cast(float, _scalar(v))), dtype=dtype, device=device)  # checked above
                for v in parts
            ]
        )
    return t.expand(count) if t.numel() == 1 else t


def check_spacing(spacing: Optional[Union[float, Sequence[float], Tensor]], ndim: int) -> tuple[float, ...]:
    """Voxel spacing, one positive number per spatial axis (None: 1 everywhere)."""
    if spacing is None:
        return (1.0,) * ndim
    return check_widths("spacing", spacing, ndim, "spatial axis")


def check_bound(name: str, extent: float, width: float) -> None:
    """Refuse a width that would put lattice coordinates (``extent / width``) beyond :data:`MAX_FEATURE`."""
    if isinstance(width, Tensor) or isinstance(extent, Tensor):  # traced: the lattice checks its coordinates itself
        return
    if extent / width > MAX_FEATURE:
        raise ValueError(
            f"{name}={width:g} is too small for values spanning {extent:g}: the lattice coordinates would reach "
            f"{extent / width:.3g}, beyond the supported {MAX_FEATURE:.3g}. Use a width of at least "
            f"{extent / MAX_FEATURE:.3g} (a width far below one pixel or one colour unit leaves that kernel no "
            "neighbours at all; set its weight to 0 instead)."
        )


def check_guide(
    guide: Tensor, name: str, *, channel_widths: Optional[Sequence[float]] = None, scale_warning: bool = True
) -> Tensor:
    """A real-valued guide (image, feature map) as a float tensor; warns when it looks mis-scaled.

    The colour widths of densecrf and CRF-RNN (``bilateral_srgb``, ``theta_beta``) are in units of a 0..255
    image, so a float image within 0..1 or a 16-bit image (up to 65535) silently changes what the kernel
    does; both warn with the fix.
    """
    if not isinstance(guide, Tensor):
        raise TypeError(f"{name} must be a NumPy array or a torch tensor, got {type(guide).__name__}.")
    if guide.dtype == torch.bool or guide.is_complex():
        raise TypeError(f"{name} must be real-valued (uint8, integer or float on the 0..255 scale), got {guide.dtype}.")
    if guide.numel() == 0:
        raise ValueError(f"{name} is empty: shape {tuple(guide.shape)}.")
    lo_t, hi_t = torch.aminmax(guide.detach())  # one pass: NaN and inf show in the extremes
    if torch.compiler.is_compiling():  # on the device, no value read back (and so no scale warning)
        torch._assert_async(
            torch.isfinite(lo_t) & torch.isfinite(hi_t), f"crfrnn: {name} contains NaN or infinite values"
        )
        return guide
    lo, hi = float(lo_t), float(hi_t)
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise ValueError(f"{name} contains NaN or infinite values.")
    if scale_warning:
        if guide.is_floating_point() and hi <= 1.0 and lo >= -1.0 and hi - lo > 0:
            warnings.warn(
                f"{name} values lie within [{lo:.3g}, {hi:.3g}], but colour widths are in units of a 0..255 image; "
                f"multiply the {name} by 255 (or divide the colour width by 255), or the kernel ignores colour.",
                stacklevel=3,
            )
        elif hi > 255.0 and not guide.is_floating_point():
            warnings.warn(
                f"{name} is a {guide.dtype} image with values up to {hi:g}, but colour widths are in units of a "
                f"0..255 image; scale it to 0..255 (e.g. image / {hi / 255:.4g}) or multiply the colour width by "
                f"{hi / 255:.4g}.",
                stacklevel=3,
            )
    return guide

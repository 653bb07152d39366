"""How much memory refining an image needs, checked before anything large is allocated.

Parameters named in messages are written in backticks (`max_memory`), so that the command line can name its
flags instead.
"""

from __future__ import annotations

import math
import os
from typing import Any, List, Optional, Sequence, Tuple

import numpy as np

from crfrnn._deprecated import renamed_arguments
from crfrnn._utils.files import PathLike

__all__ = [
    "DEFAULT_MEMORY_FRACTION",
    "MEMORY_BYTES_PER_PIXEL",
    "MEMORY_BYTES_PER_PIXEL_LABEL",
    "MemoryLimitError",
    "check_memory",
    "default_memory_limit",
    "estimate_memory",
    "format_bytes",
    "kernel_spans",
    "lattice_vertices",
]

#: Peak memory of ``crfrnn refine`` on one image, in parts that follow what is allocated (measured with
#: ``benchmarks/bench_memory.py``: peak RSS of a fresh child process). Per pixel and label: the probabilities as
#: read, their float32 copy, the CRF's marginals and unaries in the compiled loop's layout (about 8 float32 buffers
#: of L x H x W).
MEMORY_BYTES_PER_PIXEL_LABEL = 32
#: Per pixel, besides labels and lattices: the image, its features, label maps and the overlay.
MEMORY_BYTES_PER_PIXEL = 64
#: Per point and lattice corner (``d + 1`` corners for ``d`` features), per lattice: the corner codes (int64), ids
#: (int32, twice while they are merged), barycentric weights (float32) and ranks (int8).
_BYTES_PER_CORNER = 21
#: Per lattice vertex: its neighbours along each of the ``d + 1`` directions (two int32 each, ``8 (d + 1)``), plus
#: its code, hash-table slot and id remap; and per vertex and label, the message buffers of the compiled loop
#: (3 float32 buffers of ``(vertices + 1) x L``).
_BYTES_PER_VERTEX = 32
_BYTES_PER_VERTEX_LABEL = 12
#: When the vertex codes need more than ``crfrnn.lattice``'s 62 bits (small widths or many features), the lattice
#: is built by ``torch.unique`` over key rows: ``(1 + 2 (d + 1))`` rows of ``d + 1`` int64 per vertex (every
#: vertex and its neighbour queries), about 8 such copies at the peak (measured: 6.5 and 8.3).
_GENERAL_COPIES = 8
_MAX_CODE_BITS = 62  # crfrnn.lattice._construction.MAX_CODE_BITS
#: lattice vertices per unit volume of the features (in kernel widths) when every cell is occupied: measured
#: 1.16 to 1.37 for 2 to 7 features with a margin of one width per axis (uniform noise), rounded up
_VERTEX_DENSITY = 1.4
#: imports, compiled kernels and the interpreter (8x8 image: 370 MB peak RSS)
_MEMORY_FIXED = 384 * 2**20
#: default limit of :func:`check_memory`: this fraction of the machine's physical memory
DEFAULT_MEMORY_FRACTION = 0.75


class MemoryLimitError(MemoryError):
    """Refining an image would need more memory than the limit allows (raised before allocating)."""


def format_bytes(n: float) -> str:
    """``1536 -> '1.5 KB'`` (powers of 1024)."""
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1024 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"  # pragma: no cover


Spans = Sequence[Sequence[float]]


def kernel_spans(
    shape: Sequence[int],
    guide_ranges: Sequence[float],
    gaussian_sxy: Any = None,
    bilateral_sxy: Any = None,
    bilateral_srgb: Any = None,
    spacing: Optional[Sequence[float]] = None,
) -> List[List[float]]:
    """How many kernel widths each feature of the dense CRF's two kernels spans (for :func:`estimate_memory`).

    Args:
        shape: the spatial shape ``S`` (``(H, W)`` or ``(D, H, W)``).
        guide_ranges: ``max - min`` of each guide channel (``(255, 255, 255)`` for an 8-bit RGB image).
        gaussian_sxy: the smoothness kernel's spatial width, one number or one per axis (default: densecrf's).
        bilateral_sxy: the appearance kernel's spatial width, likewise.
        bilateral_srgb: guide widths, one number or one per channel (default: densecrf's).
        spacing: voxel size per axis (the widths are in its units); None: 1.

    Returns:
        ``[gaussian spans (len(S)), bilateral spans (len(S) + channels)]``.
    """
    from crfrnn.params import DENSECRF_DEFAULTS

    def per(value: Any, default: float, count: int, name: str) -> List[float]:
        try:
            widths = [float(v) for v in np.atleast_1d(np.asarray(default if value is None else value, np.float64))]
        except (TypeError, ValueError):
            raise TypeError(f"{name} must be a number or a list of numbers, got {value!r}.") from None
        if not all(math.isfinite(w) and w > 0 for w in widths):
            raise ValueError(f"{name} must be finite widths > 0, got {value!r}; e.g. {name}={default}.")
        return widths * count if len(widths) == 1 else widths

    n = len(shape)
    if any(int(size) < 1 for size in shape):
        raise ValueError(f"shape must hold sizes >= 1, got {tuple(shape)}.")
    if not all(math.isfinite(float(r)) and float(r) >= 0 for r in guide_ranges):
        raise ValueError(f"guide_ranges must be finite numbers >= 0 (max - min per channel), got {guide_ranges!r}.")
    steps = [1.0] * n if spacing is None else [float(v) for v in spacing]
    if not all(math.isfinite(v) and v > 0 for v in steps):
        raise ValueError(f"spacing must be finite numbers > 0, got {spacing!r}.")
    extent = [(int(size) - 1) * step for size, step in zip(shape, steps)]
    g = per(gaussian_sxy, DENSECRF_DEFAULTS["gaussian_sxy"], n, "gaussian_sxy")
    b = per(bilateral_sxy, DENSECRF_DEFAULTS["bilateral_sxy"], n, "bilateral_sxy")
    c = per(bilateral_srgb, DENSECRF_DEFAULTS["bilateral_srgb"], len(guide_ranges), "bilateral_srgb")
    spans = [
        [e / w for e, w in zip(extent, g)],
        [e / w for e, w in zip(extent, b)] + [float(r) / w for r, w in zip(guide_ranges, c)],
    ]
    if not all(math.isfinite(v) for row in spans for v in row):
        raise ValueError(
            f"the kernel widths are too small for shape {tuple(shape)} and guide ranges {list(guide_ranges)}: "
            f"the features would span {spans} widths; use widths of at least 1e-6."
        )
    return spans


def lattice_vertices(num_points: int, spans: Sequence[float]) -> int:
    """Estimated vertices of the lattice of ``num_points`` points whose ``d`` features span ``spans`` widths.

    At most ``(d + 1) N`` (each point touches ``d + 1`` vertices) and at most the cells of the features' box
    (:data:`_VERTEX_DENSITY` per unit volume, one width of margin per axis); in between, the expected number of
    cells that ``(d + 1) N`` uniformly spread corners occupy, which uniform noise (the worst case) reaches.
    """
    d = len(spans)
    corners = float((d + 1) * int(num_points))
    log_cells = math.log(_VERTEX_DENSITY) + sum(math.log(max(0.0, float(x)) + 1.0) for x in spans)
    if log_cells > math.log(corners) + 30:  # the box is far larger than the corners: all of them distinct
        return int(corners)
    cells = math.exp(log_cells)
    return int(math.ceil(min(corners, cells * -math.expm1(-corners / cells))))


def _general(spans: Sequence[float]) -> bool:
    """Whether the lattice's vertex codes would overflow (its construction then sorts key rows instead)."""
    d = len(spans)
    scale = [math.sqrt(2.0 / 3.0) * (d + 1) / math.sqrt((i + 1.0) * (i + 2.0)) for i in range(d)]
    ext = [scale[i] * max(0.0, float(x)) for i, x in enumerate(spans)]
    bits = 0.0
    for j in range(d):  # elevated coordinate j: j * f_j minus the sum of the later features (Adams et al.)
        span = (j * ext[j - 1] if j else 0.0) + sum(ext[j:]) + 1 + 2 * (2 * (d + 1) + 2 * d)
        bits += math.log2(span)
    return bits >= _MAX_CODE_BITS


def _lattice_bytes(num_points: int, num_classes: int, spans: Sequence[float]) -> Tuple[int, int]:
    """``(bytes without labels, bytes per label)`` of one kernel's lattice and its message buffers."""
    d1 = len(spans) + 1
    vertices = lattice_vertices(num_points, spans)
    fixed = num_points * d1 * _BYTES_PER_CORNER + vertices * (_BYTES_PER_VERTEX + 8 * d1)
    if _general(spans):
        fixed += _GENERAL_COPIES * vertices * (1 + 2 * d1) * d1 * 8
    return fixed, vertices * _BYTES_PER_VERTEX_LABEL


def _parts(num_points: int, num_classes: int, kernels: Optional[Spans]) -> Tuple[int, int]:
    """``(bytes without labels, bytes per label)``: the estimate is ``a + b * num_classes``."""
    a = _MEMORY_FIXED + num_points * MEMORY_BYTES_PER_PIXEL
    b = num_points * MEMORY_BYTES_PER_PIXEL_LABEL
    for spans in kernels or ():
        fixed, per_label = _lattice_bytes(num_points, num_classes, spans)
        a, b = a + fixed, b + per_label
    return a, b


@renamed_arguments(num_labels="num_classes")
def estimate_memory(height: int, width: int, num_classes: int, *, kernels: Optional[Spans] = None) -> int:
    """Bytes that refining one ``height x width`` image with ``num_classes`` labels needs at its peak.

    The parts follow what is allocated (see :data:`MEMORY_BYTES_PER_PIXEL_LABEL`): per pixel and label, per pixel,
    and per lattice (each kernel's corners and :func:`lattice_vertices`, with their message buffers per label),
    plus a fixed ~384 MB (imports and compiled kernels). ``benchmarks/bench_memory.py`` compares it with the
    measured peak.

    Args:
        height: the image's height (a volume: 1).
        width: the image's width (a volume: its number of voxels).
        num_classes: number of labels ``L``.
        kernels: for each kernel, the spans of its features in widths (:func:`kernel_spans`); None: densecrf's
            default kernels on an 8-bit RGB image; ``()``: no lattice (a lower bound, before the widths are known).

    Example:
        >>> format_bytes(estimate_memory(375, 500, 21))
        '700.5 MB'
    """
    points = int(height) * int(width)
    if kernels is None:
        kernels = kernel_spans((int(height), int(width)), (255.0, 255.0, 255.0))
    a, b = _parts(points, int(num_classes), kernels)
    return a + b * int(num_classes)


def default_memory_limit() -> Optional[int]:
    """:data:`DEFAULT_MEMORY_FRACTION` of the machine's physical memory (``os.sysconf``), None if unknown."""
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):  # pragma: no cover - not POSIX
        return None
    return int(total * DEFAULT_MEMORY_FRACTION) if total > 0 else None


@renamed_arguments(num_labels="num_classes")
def check_memory(
    path: PathLike,
    size: Tuple[int, int],
    num_classes: int,
    limit: Optional[int],
    *,
    kernels: Optional[Spans] = None,
) -> int:
    """Raise :class:`MemoryLimitError` if refining ``path`` (``size = (H, W)``) would need more than ``limit``.

    Args:
        path: the file being refined (named in the message).
        size: ``(H, W)`` of the image (a volume: ``(1, voxels)``).
        num_classes: number of labels ``L``.
        limit: bytes allowed (the ``max_memory`` of :func:`crfrnn.io.read_scores`); None: no limit.
        kernels: the kernels' feature spans, as :func:`estimate_memory` takes them.

    Returns:
        The estimate, in bytes.
    """
    h, w = size
    need = estimate_memory(h, w, num_classes, kernels=kernels)
    if limit is not None and need > limit:
        points = int(h) * int(w)
        spans = kernel_spans((int(h), int(w)), (255.0,) * 3) if kernels is None else kernels
        a, b = _parts(points, num_classes, spans)
        shown = f"{w} voxels" if h == 1 else f"{w}x{h} pixels"
        what = f"refining '{os.fspath(path)}' ({shown}, {num_classes} labels) needs about {format_bytes(need)}"
        fits = int((limit - a) // b) if b > 0 and limit > a else 0
        if fits >= 2:
            advice = f"Use fewer labels (at most {fits} fit at this size), a smaller image"
        else:
            advice = (
                f"No label count fits at this size (even 2 labels need about {format_bytes(a + 2 * b)}); use a "
                "smaller image"
            )
        if limit > _MEMORY_FIXED:
            side = math.sqrt((limit - _MEMORY_FIXED) / max(1, need - _MEMORY_FIXED))
            fit = (
                f"{max(1, int(w * side * side))} voxels"
                if h == 1
                else f"{max(1, int(w * side))}x{max(1, int(h * side))}"
            )
            advice += f" (about {fit} fits)"
        else:
            advice += f" (none fits: the limit is below the fixed cost of {format_bytes(_MEMORY_FIXED)})"
        raise MemoryLimitError(
            f"{what}, more than the limit of {format_bytes(limit)}. {advice}, or raise the limit (`max_memory`) to "
            f"at least {format_bytes(need)} if the machine has the memory."
        )
    return need

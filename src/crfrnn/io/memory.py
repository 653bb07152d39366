"""How much memory refining an image needs, checked before anything large is allocated.

Parameters named in messages are written in backticks (`max_memory`), so that the command line can name its
flags instead.
"""

from __future__ import annotations

import math
import os
from typing import Optional, Tuple

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
]

#: Peak memory of ``crfrnn refine`` on one image, measured with ``resource.getrusage`` (peak RSS) in a fresh
#: process over ``crfrnn refine IMAGE PROBS.npy -o -- --overlay --save-probs`` with float32 probabilities, at
#: 500x375, 1000x750 and 2000x1500 pixels with 5 and 21 labels: about 30 bytes per pixel and label (the
#: probabilities as read, their float32 copy, the CRF's marginals, messages and work buffers: 7 to 8
#: float32 buffers of L x H x W) plus about 300 bytes per pixel (the permutohedral lattice of 5-d features,
#: the image, label maps and the overlay) plus a fixed ~150 MB (imports and compiled kernels). The estimate
#: rounds these up slightly.
MEMORY_BYTES_PER_PIXEL_LABEL = 32
MEMORY_BYTES_PER_PIXEL = 320
_MEMORY_FIXED = 256 * 2**20
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


@renamed_arguments(num_labels="num_classes")
def estimate_memory(height: int, width: int, num_classes: int) -> int:
    """Bytes that refining one ``height x width`` image with ``num_classes`` labels needs at its peak.

    From measurements (see :data:`MEMORY_BYTES_PER_PIXEL_LABEL`); the cost is linear in pixels and labels.

    Example:
        >>> format_bytes(estimate_memory(4000, 6000, 21))
        '22.4 GB'
    """
    pixels = int(height) * int(width)
    return pixels * (MEMORY_BYTES_PER_PIXEL_LABEL * int(num_classes) + MEMORY_BYTES_PER_PIXEL) + _MEMORY_FIXED


def default_memory_limit() -> Optional[int]:
    """:data:`DEFAULT_MEMORY_FRACTION` of the machine's physical memory (``os.sysconf``), None if unknown."""
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):  # pragma: no cover - not POSIX
        return None
    return int(total * DEFAULT_MEMORY_FRACTION) if total > 0 else None


@renamed_arguments(num_labels="num_classes")
def check_memory(path: PathLike, size: Tuple[int, int], num_classes: int, limit: Optional[int]) -> int:
    """Raise :class:`MemoryLimitError` if refining ``path`` (``size = (H, W)``) would need more than ``limit``.

    Args:
        path: the file being refined (named in the message).
        size: ``(H, W)`` of the image.
        num_classes: number of labels ``L``.
        limit: bytes allowed (the ``max_memory`` of :func:`crfrnn.io.read_scores`); None: no limit.

    Returns:
        The estimate, in bytes.
    """
    h, w = size
    need = estimate_memory(h, w, num_classes)
    if limit is not None and need > limit:
        fits = max(0, (limit - _MEMORY_FIXED) // (h * w) - MEMORY_BYTES_PER_PIXEL) // MEMORY_BYTES_PER_PIXEL_LABEL
        side = math.sqrt(
            max(0, limit - _MEMORY_FIXED)
            / (MEMORY_BYTES_PER_PIXEL_LABEL * num_classes + MEMORY_BYTES_PER_PIXEL)
            / (h * w)
        )
        raise MemoryLimitError(
            f"refining '{os.fspath(path)}' ({w}x{h} pixels, {num_classes} labels) needs about {format_bytes(need)}, "
            f"more than the limit of {format_bytes(limit)}. Use fewer labels (at most {fits} fit at this size), a "
            f"smaller image (about {max(1, int(w * side))}x{max(1, int(h * side))} fits), or raise the limit "
            "(`max_memory`) if the machine has the memory."
        )
    return need

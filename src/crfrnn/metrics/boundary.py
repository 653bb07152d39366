"""Accuracy near label boundaries (the "trimap" evaluation of Kohli et al. 2009 and Krähenbühl & Koltun 2011).

The metrics of :mod:`crfrnn.metrics.confusion`, counted only on the pixels within ``width`` pixels of a ground-truth
label boundary; see :func:`boundary_band` for the exact definition.
"""

from __future__ import annotations

from typing import Any, Iterable

import torch
from torch import Tensor

from crfrnn.metrics.confusion import (
    ConfusionMatrix,
    DeviceLike,
    check_label_map,
    check_num_classes,
    check_pair,
)

__all__ = ["BoundaryAccuracy", "DEFAULT_WIDTHS", "boundary_accuracy", "boundary_band", "boundary_mask"]

#: the band widths (pixels) that :class:`BoundaryAccuracy` measures by default
DEFAULT_WIDTHS: tuple[int, ...] = (1, 2, 3, 5, 8, 10, 15, 20)


# --------------------------------------------------------------------------------------------------------
# boundary bands ("trimaps")
# --------------------------------------------------------------------------------------------------------
def _check_target(target: Tensor) -> None:
    check_label_map(target, "target")


def _boundary_mask(target: Tensor, ignore_index: int, include_void_edges: bool) -> Tensor:
    """Unchecked worker of :func:`boundary_mask`."""
    valid = target != ignore_index
    out = torch.zeros_like(valid)
    for dim in (-1, -2):
        n = target.shape[dim]
        if n < 2:
            continue
        a, b = target.narrow(dim, 0, n - 1), target.narrow(dim, 1, n - 1)
        va, vb = valid.narrow(dim, 0, n - 1), valid.narrow(dim, 1, n - 1)
        edge = va & vb & (a != b)
        mark_a = edge | (va & ~vb) if include_void_edges else edge
        mark_b = edge | (vb & ~va) if include_void_edges else edge
        out.narrow(dim, 0, n - 1).logical_or_(mark_a)
        out.narrow(dim, 1, n - 1).logical_or_(mark_b)
    return out


def boundary_mask(target: Tensor, ignore_index: int = 255, *, include_void_edges: bool = False) -> Tensor:
    """Ground-truth boundary pixels of label maps.

    A pixel is a boundary pixel if its label is not ``ignore_index`` and one of its 4-neighbours has a
    different label that is not ``ignore_index`` either; both pixels of such a pair are boundary pixels.
    The image border is not a boundary. Void (``ignore_index``) pixels are never boundary pixels; by
    default a change from a label to void is not a boundary either, so regions separated only by a void
    band (as in PASCAL VOC, whose object outlines are void) have no boundary. With
    ``include_void_edges=True`` a labelled pixel next to a void pixel is a boundary pixel too, which
    gives the band around VOC's void outlines used by the DeepLab "trimap" evaluation.

    Args:
        target: ``(B, H, W)`` or ``(H, W)`` integer labels.
        ignore_index: label of void pixels.
        include_void_edges: also count label/void transitions as boundaries.

    Returns:
        bool tensor of the shape and device of ``target``.

    Example:
        >>> boundary_mask(torch.tensor([[0, 0, 1, 1]]))
        tensor([[False,  True,  True, False]])
    """
    _check_target(target)
    return _boundary_mask(target, ignore_index, include_void_edges)


def _sq_distance_to(mask: Tensor, max_distance: int) -> Tensor:
    """Squared Euclidean distance from each pixel to the nearest ``True`` pixel of ``mask`` (last two dims).

    Exact wherever that distance is at most ``max_distance``; elsewhere the result is larger than
    ``max_distance ** 2`` (not necessarily the true value). ``O((2 * max_distance + 1) * numel)``: two
    separable passes of a truncated squared-distance transform, each a loop over the shifts
    ``1 .. max_distance``.
    """
    r = max_distance
    big = 2 * (r + 1) ** 2 + 1
    h, w = mask.shape[-2:]
    big_t = torch.tensor(big, dtype=torch.int32, device=mask.device)
    # pass 1, along rows: squared horizontal distance to the nearest mask pixel of the same row
    g = torch.where(mask, torch.zeros((), dtype=torch.int32, device=mask.device), big_t)
    for d in range(1, min(r, w - 1) + 1):
        dd = torch.tensor(d * d, dtype=torch.int32, device=mask.device)
        g[..., :, :-d] = torch.minimum(g[..., :, :-d], torch.where(mask[..., :, d:], dd, big_t))
        g[..., :, d:] = torch.minimum(g[..., :, d:], torch.where(mask[..., :, :-d], dd, big_t))
    # pass 2, along columns: add the squared vertical offset
    out = g.clone()
    for d in range(1, min(r, h - 1) + 1):
        out[..., :-d, :] = torch.minimum(out[..., :-d, :], g[..., d:, :] + d * d)
        out[..., d:, :] = torch.minimum(out[..., d:, :], g[..., :-d, :] + d * d)
    return out


def _check_width(width: Any) -> None:
    if not isinstance(width, int) or isinstance(width, bool) or width < 0:
        raise ValueError(f"band widths must be non-negative ints (pixels), got {width!r}.")


def boundary_band(target: Tensor, width: int, ignore_index: int = 255, *, include_void_edges: bool = False) -> Tensor:
    """Pixels within ``width`` pixels of a ground-truth label boundary (the "trimap" band).

    A pixel is in the band if its Euclidean distance to the nearest boundary pixel (see
    :func:`boundary_mask`) is at most ``width``; ``width = 0`` gives the boundary pixels themselves. The
    distance is measured over the whole image grid, through void pixels; the band may contain void
    pixels, which every metric then leaves out. Computed exactly with a truncated separable distance
    transform, on the device of ``target``.

    Args:
        target: ``(B, H, W)`` or ``(H, W)`` integer labels.
        width: band half-width in pixels, ``>= 0``.
        ignore_index: label of void pixels.
        include_void_edges: also count label/void transitions as boundaries (see :func:`boundary_mask`).

    Returns:
        bool tensor of the shape and device of ``target``.

    Example:
        >>> boundary_band(torch.tensor([[0, 0, 0, 1, 1, 1]]), 1)
        tensor([[False,  True,  True,  True,  True, False]])
    """
    _check_target(target)
    _check_width(width)
    boundary = _boundary_mask(target, ignore_index, include_void_edges)
    return _sq_distance_to(boundary, width) <= width * width


class BoundaryAccuracy:
    """Accumulates pixel accuracy and mean IoU inside boundary bands of several widths.

    For every width ``w``, a :class:`ConfusionMatrix` counts only the pixels of :func:`boundary_band`
    ``(target, w)``. Plotting the accuracy against ``w`` gives the trimap curves of Kohli et al. and
    Krähenbühl & Koltun; a CRF should gain most at small widths.

    Args:
        num_classes: number of labels ``L``.
        widths: band widths in pixels.
        ignore_index: target value of void pixels (left out, and never boundary pixels).
        include_void_edges: also count label/void transitions as boundaries (see :func:`boundary_mask`);
            use it for data whose object outlines are void, like PASCAL VOC.
        device: device of the matrices (see :class:`ConfusionMatrix`).

    Example:
        >>> acc = BoundaryAccuracy(2, widths=(0, 1))
        >>> target = torch.tensor([[0, 0, 0, 1, 1, 1]])
        >>> acc.update(torch.tensor([[0, 0, 1, 1, 1, 1]]), target)
        >>> {w: r["pixel_accuracy"] for w, r in acc.compute().items()}
        {0: 0.5, 1: 0.75}
    """

    def __init__(
        self,
        num_classes: int,
        *,
        widths: Iterable[int] = DEFAULT_WIDTHS,
        ignore_index: int = 255,
        include_void_edges: bool = False,
        device: DeviceLike = None,
    ) -> None:
        check_num_classes(num_classes, ignore_index)
        widths = tuple(widths)
        if not widths:
            raise ValueError("widths must name at least one band width, got an empty sequence.")
        for w in widths:
            _check_width(w)
        self.widths = tuple(sorted(set(widths)))
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.include_void_edges = include_void_edges
        self.matrices = {w: ConfusionMatrix(num_classes, ignore_index=ignore_index, device=device) for w in self.widths}

    def reset(self) -> None:
        """Zero all counts."""
        for cm in self.matrices.values():
            cm.reset()

    def update(self, pred: Tensor, target: Tensor) -> None:
        """Add a batch.

        Args:
            pred: ``(B, H, W)`` or ``(H, W)`` predicted labels in ``[0, L)``, any integer dtype.
            target: ground-truth labels of the same shape, in ``[0, L)`` or ``ignore_index``.
        """
        check_pair(pred, target, self.num_classes, self.ignore_index)
        first = self.matrices[self.widths[0]]
        pred, target = first.to_matrix_device(pred, target)
        boundary = _boundary_mask(target, self.ignore_index, self.include_void_edges)
        sq_dist = _sq_distance_to(boundary, self.widths[-1])
        for w, cm in self.matrices.items():
            cm.to_matrix_device(pred, target)
            cm.add_checked(pred, target, sq_dist <= w * w)

    def all_reduce(self) -> "BoundaryAccuracy":
        """Sum the counts over all ``torch.distributed`` processes (see :meth:`ConfusionMatrix.all_reduce`)."""
        for cm in self.matrices.values():
            cm.all_reduce()
        return self

    def compute(self) -> dict[int, dict[str, Any]]:
        """Metrics per band width.

        Returns:
            ``{width: metrics}``, widths in increasing order, each ``metrics`` a dict of ``"pixel_accuracy"``,
            ``"mean_iou"``, ``"mean_class_accuracy"`` (floats, ``NaN`` for a band with no pixel) and ``"num_pixels"``
            (an int).
        """
        out = {}
        for w, cm in self.matrices.items():
            m = cm.compute()
            out[w] = {k: m[k] for k in ("pixel_accuracy", "mean_iou", "mean_class_accuracy", "num_pixels")}
        return out

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(num_classes={self.num_classes}, widths={self.widths}, "
            f"ignore_index={self.ignore_index}, include_void_edges={self.include_void_edges})"
        )


def boundary_accuracy(
    pred: Tensor,
    target: Tensor,
    num_classes: int,
    *,
    widths: Iterable[int] = DEFAULT_WIDTHS,
    ignore_index: int = 255,
    include_void_edges: bool = False,
) -> dict[int, dict[str, Any]]:
    """Pixel accuracy and mean IoU inside boundary bands of one batch; see :class:`BoundaryAccuracy`.

    Example:
        >>> r = boundary_accuracy(torch.tensor([[0, 0, 1, 1, 1, 1]]), torch.tensor([[0, 0, 0, 1, 1, 1]]), 2,
        ...                       widths=(1,))
        >>> r[1]["pixel_accuracy"]
        0.75
    """
    acc = BoundaryAccuracy(
        num_classes,
        widths=widths,
        ignore_index=ignore_index,
        include_void_edges=include_void_edges,
        device=target.device if isinstance(target, Tensor) else None,
    )
    acc.update(pred, target)
    return acc.compute()

"""Semantic segmentation metrics: confusion matrix, IoU, accuracies, and accuracy near label boundaries.

Everything works on label maps (integer tensors ``(B, H, W)`` or ``(H, W)``) on any device; the
accumulators fill an ``L x L`` confusion matrix with :func:`torch.bincount` and can be summed across
``torch.distributed`` processes.

Conventions:

- ``matrix[t, p]`` counts the pixels of ground-truth class ``t`` predicted as ``p`` (rows: target,
  columns: prediction), in ``int64``.
- Pixels whose target equals ``ignore_index`` (255, VOC's "void") are left out of every count.
- The IoU of a class that appears neither in the target nor in the prediction is ``NaN`` and is left out
  of the mean IoU; likewise the accuracy of a class absent from the target is ``NaN`` and is left out of
  the mean class accuracy. A class present in the prediction only has IoU 0.

Boundary accuracy (the "trimap" evaluation of Kohli et al. 2009 and Krähenbühl & Koltun 2011) measures
the metrics only on the pixels within ``width`` pixels of a ground-truth label boundary; see
:func:`boundary_band` for the exact definition.
"""

from __future__ import annotations

import math
from typing import Any, Iterable, Optional, Union

import torch
from torch import Tensor

from crfrnn._utils.distributed import all_reduce_sum_

__all__ = [
    "BoundaryAccuracy",
    "ConfusionMatrix",
    "boundary_accuracy",
    "boundary_band",
    "boundary_mask",
    "confusion_matrix",
    "metrics_from_confusion_matrix",
    "segmentation_metrics",
]

DeviceLike = Union[torch.device, str, None]

_INT_DTYPES = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)
DEFAULT_WIDTHS: tuple[int, ...] = (1, 2, 3, 5, 8, 10, 15, 20)


# --------------------------------------------------------------------------------------------------------
# input checks
# --------------------------------------------------------------------------------------------------------
def _check_num_classes(num_classes: int, ignore_index: int) -> None:
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}.")
    if not isinstance(ignore_index, int) or isinstance(ignore_index, bool):
        raise TypeError(f"ignore_index must be an int, got {ignore_index!r}.")
    if 0 <= ignore_index < num_classes:
        raise ValueError(
            f"ignore_index={ignore_index} is a valid class for num_classes={num_classes}; "
            "choose an ignore_index outside [0, num_classes), e.g. 255 or -1."
        )


def _check_label_map(x: Tensor, name: str) -> None:
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of integer labels, got {type(x).__name__}.")
    if x.dtype not in _INT_DTYPES:
        hint = " If these are scores (B, L, H, W), pass scores.argmax(1)." if x.is_floating_point() else ""
        raise TypeError(
            f"{name} must hold integer labels (uint8, int8, int16, int32 or int64), got dtype {x.dtype}.{hint}"
        )
    if x.ndim not in (2, 3):
        hint = " If these are scores (B, L, H, W), pass scores.argmax(1)." if x.ndim == 4 else ""
        raise ValueError(f"{name} must have shape (B, H, W) or (H, W), got shape {tuple(x.shape)}.{hint}")


def _check_pair(pred: Tensor, target: Tensor, num_classes: int, ignore_index: int) -> None:
    """Check types, shapes and label ranges of a prediction / target pair (reads min and max)."""
    _check_label_map(pred, "pred")
    _check_label_map(target, "target")
    if pred.shape != target.shape:
        raise ValueError(
            f"pred and target must have the same shape, got pred {tuple(pred.shape)} and target "
            f"{tuple(target.shape)}."
        )
    if pred.numel() == 0:
        return
    lo, hi = int(pred.min()), int(pred.max())
    if lo < 0 or hi >= num_classes:
        raise ValueError(
            f"pred labels must be in [0, {num_classes}) for num_classes={num_classes}, got values in "
            f"[{lo}, {hi}]."
        )
    valid = target != ignore_index
    if bool(valid.any()):
        t = target[valid]
        lo, hi = int(t.min()), int(t.max())
        if lo < 0 or hi >= num_classes:
            raise ValueError(
                f"target labels must be in [0, {num_classes}) or equal to ignore_index={ignore_index}, got "
                f"values in [{lo}, {hi}] (ignoring {ignore_index}). Check num_classes and ignore_index."
            )


# --------------------------------------------------------------------------------------------------------
# confusion matrix and the metrics derived from it
# --------------------------------------------------------------------------------------------------------
def _confusion_matrix(
    pred: Tensor, target: Tensor, num_classes: int, ignore_index: int, mask: Optional[Tensor] = None
) -> Tensor:
    """Unchecked worker: ``(L, L)`` int64 counts on ``target.device``."""
    valid = target != ignore_index
    if mask is not None:
        valid = valid & mask
    index = target[valid].long() * num_classes + pred[valid].long()
    return torch.bincount(index, minlength=num_classes * num_classes).view(num_classes, num_classes)


def confusion_matrix(pred: Tensor, target: Tensor, num_classes: int, *, ignore_index: int = 255) -> Tensor:
    """Confusion matrix of a batch of label maps.

    Args:
        pred: ``(B, H, W)`` or ``(H, W)`` predicted labels in ``[0, L)``, any integer dtype.
        target: ground-truth labels of the same shape, in ``[0, L)`` or ``ignore_index``.
        num_classes: number of labels ``L``.
        ignore_index: target value of the pixels to leave out.

    Returns:
        ``(L, L)`` int64 tensor on ``target.device``; ``matrix[t, p]`` counts target ``t`` predicted ``p``.

    Example:
        >>> confusion_matrix(torch.tensor([[0, 1], [1, 1]]), torch.tensor([[0, 1], [0, 255]]), 2)
        tensor([[1, 1],
                [0, 1]])
    """
    _check_num_classes(num_classes, ignore_index)
    _check_pair(pred, target, num_classes, ignore_index)
    return _confusion_matrix(pred.to(target.device), target, num_classes, ignore_index)


def metrics_from_confusion_matrix(matrix: Tensor) -> dict[str, Any]:
    """Segmentation metrics from a confusion matrix.

    Args:
        matrix: ``(L, L)`` counts, ``matrix[t, p]`` = pixels of target ``t`` predicted ``p``.

    Returns:
        A dict with

        - ``"mean_iou"``: mean over classes of ``TP / (TP + FP + FN)``, classes with ``NaN`` IoU left out;
        - ``"per_class_iou"``: list of ``L`` floats, ``NaN`` for classes absent from target and prediction;
        - ``"pixel_accuracy"``: ``sum(TP) / sum(matrix)``;
        - ``"mean_class_accuracy"``: mean over the classes present in the target of ``TP / (TP + FN)``;
        - ``"per_class_accuracy"``: list of ``L`` floats, ``NaN`` for classes absent from the target;
        - ``"frequency_weighted_iou"``: IoU averaged with the target frequency of each class;
        - ``"num_pixels"``: number of counted pixels;
        - ``"confusion_matrix"``: a copy of ``matrix``.

        The scalars are Python floats, ``NaN`` when nothing was counted.
    """
    if not isinstance(matrix, Tensor) or matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
        got = tuple(matrix.shape) if isinstance(matrix, Tensor) else type(matrix).__name__
        raise ValueError(f"matrix must be a square (L, L) tensor, got {got}.")
    m = matrix.double()
    tp = m.diagonal()
    per_target = m.sum(1)
    per_pred = m.sum(0)
    total = m.sum()
    union = per_target + per_pred - tp
    nan = torch.full_like(tp, math.nan)
    iou = torch.where(union > 0, tp / union.clamp_min(1), nan)
    acc = torch.where(per_target > 0, tp / per_target.clamp_min(1), nan)
    present = per_target > 0
    freq = per_target / total if total > 0 else nan
    fw_iou = (freq[present] * iou[present]).sum() if total > 0 else torch.tensor(math.nan)
    return {
        "mean_iou": float(torch.nanmean(iou)),
        "per_class_iou": iou.tolist(),
        "pixel_accuracy": float(tp.sum() / total) if total > 0 else math.nan,
        "mean_class_accuracy": float(torch.nanmean(acc)),
        "per_class_accuracy": acc.tolist(),
        "frequency_weighted_iou": float(fw_iou),
        "num_pixels": int(matrix.sum()),
        "confusion_matrix": matrix.clone(),
    }


class ConfusionMatrix:
    """Accumulates a confusion matrix over batches of label maps.

    Args:
        num_classes: number of labels ``L``.
        ignore_index: target value of the pixels to leave out (must not be in ``[0, L)``).
        device: device of the matrix. ``None``: the device of the first batch passed to :meth:`update`.
            Later batches are moved to the matrix's device. Pass it explicitly in distributed runs where a
            process may see no batch (NCCL needs the matrix on the GPU).

    Example:
        >>> cm = ConfusionMatrix(3)
        >>> cm.update(torch.tensor([[0, 1], [2, 2]]), torch.tensor([[0, 1], [1, 255]]))
        >>> cm.compute()["per_class_iou"]
        [1.0, 0.5, 0.0]
    """

    def __init__(self, num_classes: int, *, ignore_index: int = 255, device: DeviceLike = None) -> None:
        _check_num_classes(num_classes, ignore_index)
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self._device_fixed = device is not None
        self.matrix = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=device)
        self._empty = True

    def reset(self) -> None:
        """Zero the counts (the device is kept)."""
        self.matrix.zero_()

    def _prepare(self, pred: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
        if self._empty and not self._device_fixed and self.matrix.device != target.device:
            self.matrix = self.matrix.to(target.device)
        self._empty = False
        return pred.to(self.matrix.device), target.to(self.matrix.device)

    def _update(self, pred: Tensor, target: Tensor, mask: Optional[Tensor] = None) -> None:
        """Unchecked accumulation (inputs already validated and on the matrix's device)."""
        self.matrix += _confusion_matrix(pred, target, self.num_classes, self.ignore_index, mask)

    def update(self, pred: Tensor, target: Tensor, mask: Optional[Tensor] = None) -> None:
        """Add a batch.

        Args:
            pred: ``(B, H, W)`` or ``(H, W)`` predicted labels in ``[0, L)``, any integer dtype.
            target: ground-truth labels of the same shape, in ``[0, L)`` or ``ignore_index``.
            mask: optional boolean tensor of the same shape; only pixels where it is ``True`` are counted.
        """
        _check_pair(pred, target, self.num_classes, self.ignore_index)
        if mask is not None:
            if not isinstance(mask, Tensor) or mask.dtype != torch.bool or mask.shape != target.shape:
                got = f"{mask.dtype} {tuple(mask.shape)}" if isinstance(mask, Tensor) else type(mask).__name__
                raise ValueError(f"mask must be a bool tensor of shape {tuple(target.shape)}, got {got}.")
        pred, target = self._prepare(pred, target)
        self._update(pred, target, None if mask is None else mask.to(self.matrix.device))

    def all_reduce(self) -> "ConfusionMatrix":
        """Sum the counts over all ``torch.distributed`` processes, in place (no-op when not initialised).

        Call it once, after the last :meth:`update` and before :meth:`compute`, on every process.
        """
        all_reduce_sum_(self.matrix)
        return self

    def compute(self) -> dict[str, Any]:
        """The metrics of the counts so far; see :func:`metrics_from_confusion_matrix`."""
        return metrics_from_confusion_matrix(self.matrix)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(num_classes={self.num_classes}, ignore_index={self.ignore_index}, "
            f"device={self.matrix.device}, num_pixels={int(self.matrix.sum())})"
        )


def segmentation_metrics(pred: Tensor, target: Tensor, num_classes: int, ignore_index: int = 255) -> dict[str, Any]:
    """Mean IoU, pixel accuracy, mean class accuracy, ... of one batch of label maps.

    Args:
        pred: ``(B, H, W)`` or ``(H, W)`` predicted labels in ``[0, L)``, any integer dtype.
        target: ground-truth labels of the same shape, in ``[0, L)`` or ``ignore_index``.
        num_classes: number of labels ``L``.
        ignore_index: target value of the pixels to leave out.

    Returns:
        See :func:`metrics_from_confusion_matrix`.

    Example:
        >>> m = segmentation_metrics(torch.tensor([[0, 1], [1, 1]]), torch.tensor([[0, 1], [0, 1]]), 2)
        >>> round(m["mean_iou"], 4), m["pixel_accuracy"]
        (0.5833, 0.75)
    """
    return metrics_from_confusion_matrix(confusion_matrix(pred, target, num_classes, ignore_index=ignore_index))


# --------------------------------------------------------------------------------------------------------
# boundary bands ("trimaps")
# --------------------------------------------------------------------------------------------------------
def _check_target(target: Tensor) -> None:
    _check_label_map(target, "target")


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


def boundary_band(
    target: Tensor, width: int, ignore_index: int = 255, *, include_void_edges: bool = False
) -> Tensor:
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
        _check_num_classes(num_classes, ignore_index)
        widths = tuple(widths)
        if not widths:
            raise ValueError("widths must name at least one band width, got an empty sequence.")
        for w in widths:
            _check_width(w)
        self.widths = tuple(sorted(set(widths)))
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.include_void_edges = include_void_edges
        self.matrices = {
            w: ConfusionMatrix(num_classes, ignore_index=ignore_index, device=device) for w in self.widths
        }

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
        _check_pair(pred, target, self.num_classes, self.ignore_index)
        first = self.matrices[self.widths[0]]
        pred, target = first._prepare(pred, target)
        boundary = _boundary_mask(target, self.ignore_index, self.include_void_edges)
        sq_dist = _sq_distance_to(boundary, self.widths[-1])
        for w, cm in self.matrices.items():
            cm._prepare(pred, target)
            cm._update(pred, target, sq_dist <= w * w)

    def all_reduce(self) -> "BoundaryAccuracy":
        """Sum the counts over all ``torch.distributed`` processes (see :meth:`ConfusionMatrix.all_reduce`)."""
        for cm in self.matrices.values():
            cm.all_reduce()
        return self

    def compute(self) -> dict[int, dict[str, Any]]:
        """Metrics per band width.

        Returns:
            ``{width: {"pixel_accuracy": float, "mean_iou": float, "mean_class_accuracy": float,
            "num_pixels": int}}``, widths in increasing order; ``NaN`` for a band with no pixel.
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
        num_classes, widths=widths, ignore_index=ignore_index, include_void_edges=include_void_edges,
        device=target.device if isinstance(target, Tensor) else None,
    )
    acc.update(pred, target)
    return acc.compute()

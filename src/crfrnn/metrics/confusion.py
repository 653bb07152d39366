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
from typing import Any, Optional, Union

import torch
from torch import Tensor

from crfrnn._utils.distributed import all_reduce_sum_

__all__ = ["ConfusionMatrix", "confusion_matrix", "metrics_from_confusion_matrix", "segmentation_metrics"]

DeviceLike = Union[torch.device, str, None]

INT_DTYPES = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)


# --------------------------------------------------------------------------------------------------------
# input checks
# --------------------------------------------------------------------------------------------------------
def check_num_classes(num_classes: int, ignore_index: int) -> None:
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}.")
    if not isinstance(ignore_index, int) or isinstance(ignore_index, bool):
        raise TypeError(f"ignore_index must be an int, got {ignore_index!r}.")
    if 0 <= ignore_index < num_classes:
        raise ValueError(
            f"ignore_index={ignore_index} is a valid class for num_classes={num_classes}; "
            "choose an ignore_index outside [0, num_classes), e.g. 255 or -1."
        )


def check_label_map(x: Tensor, name: str) -> None:
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of integer labels, got {type(x).__name__}.")
    if x.dtype not in INT_DTYPES:
        hint = " If these are scores (B, L, H, W), pass scores.argmax(1)." if x.is_floating_point() else ""
        raise TypeError(
            f"{name} must hold integer labels (uint8, int8, int16, int32 or int64), got dtype {x.dtype}.{hint}"
        )
    if x.ndim not in (2, 3):
        hint = " If these are scores (B, L, H, W), pass scores.argmax(1)." if x.ndim == 4 else ""
        raise ValueError(f"{name} must have shape (B, H, W) or (H, W), got shape {tuple(x.shape)}.{hint}")


def check_pair(pred: Tensor, target: Tensor, num_classes: int, ignore_index: int) -> None:
    """Check types, shapes and label ranges of a prediction / target pair (reads min and max)."""
    check_label_map(pred, "pred")
    check_label_map(target, "target")
    if pred.shape != target.shape:
        raise ValueError(
            f"pred and target must have the same shape, got pred {tuple(pred.shape)} and target {tuple(target.shape)}."
        )
    if pred.numel() == 0:
        return
    lo, hi = int(pred.min()), int(pred.max())
    if lo < 0 or hi >= num_classes:
        raise ValueError(
            f"pred labels must be in [0, {num_classes}) for num_classes={num_classes}, got values in [{lo}, {hi}]."
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
def confusion_counts(
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
    check_num_classes(num_classes, ignore_index)
    check_pair(pred, target, num_classes, ignore_index)
    return confusion_counts(pred.to(target.device), target, num_classes, ignore_index)


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
    if not bool(torch.isfinite(m).all()) or bool((m < 0).any()):
        raise ValueError(
            "matrix must hold counts (finite, >= 0), got values from "
            f"{float(m.min()) if m.numel() else 0} to {float(m.max()) if m.numel() else 0}; "
            "build it with confusion_matrix(pred, target, num_classes)."
        )
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
        "num_pixels": int(total),
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
        check_num_classes(num_classes, ignore_index)
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self._device_fixed = device is not None
        self.matrix = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=device)
        self._empty = True

    def reset(self) -> None:
        """Zero the counts (the device is kept)."""
        self.matrix.zero_()

    def to_matrix_device(self, pred: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
        """``pred`` and ``target`` on the matrix's device (an empty matrix first follows the target's device)."""
        if self._empty and not self._device_fixed and self.matrix.device != target.device:
            self.matrix = self.matrix.to(target.device)
        self._empty = False
        return pred.to(self.matrix.device), target.to(self.matrix.device)

    def add_checked(self, pred: Tensor, target: Tensor, mask: Optional[Tensor] = None) -> None:
        """Unchecked accumulation (inputs already validated and on the matrix's device)."""
        self.matrix += confusion_counts(pred, target, self.num_classes, self.ignore_index, mask)

    def update(self, pred: Tensor, target: Tensor, mask: Optional[Tensor] = None) -> None:
        """Add a batch.

        Args:
            pred: ``(B, H, W)`` or ``(H, W)`` predicted labels in ``[0, L)``, any integer dtype.
            target: ground-truth labels of the same shape, in ``[0, L)`` or ``ignore_index``.
            mask: optional boolean tensor of the same shape; only pixels where it is ``True`` are counted.
        """
        check_pair(pred, target, self.num_classes, self.ignore_index)
        if mask is not None:
            if not isinstance(mask, Tensor) or mask.dtype != torch.bool or mask.shape != target.shape:
                got = f"{mask.dtype} {tuple(mask.shape)}" if isinstance(mask, Tensor) else type(mask).__name__
                raise ValueError(f"mask must be a bool tensor of shape {tuple(target.shape)}, got {got}.")
        pred, target = self.to_matrix_device(pred, target)
        self.add_checked(pred, target, None if mask is None else mask.to(self.matrix.device))

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

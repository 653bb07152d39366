"""Semantic segmentation metrics: confusion matrix, IoU, accuracies (:mod:`crfrnn.metrics.confusion`), and accuracy
near label boundaries (:mod:`crfrnn.metrics.boundary`).

Everything works on label maps (integer tensors ``(B, H, W)`` or ``(H, W)``) on any device; the accumulators fill an
``L x L`` confusion matrix with :func:`torch.bincount` and can be summed across ``torch.distributed`` processes.
"""

from crfrnn.metrics.boundary import DEFAULT_WIDTHS, BoundaryAccuracy, boundary_accuracy, boundary_band, boundary_mask
from crfrnn.metrics.confusion import (
    ConfusionMatrix,
    confusion_matrix,
    metrics_from_confusion_matrix,
    segmentation_metrics,
)

__all__ = [
    "BoundaryAccuracy",
    "ConfusionMatrix",
    "DEFAULT_WIDTHS",
    "boundary_accuracy",
    "boundary_band",
    "boundary_mask",
    "confusion_matrix",
    "metrics_from_confusion_matrix",
    "segmentation_metrics",
]

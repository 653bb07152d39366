"""The data side of :func:`crfrnn.fit_crf`: checked samples, the train/validation split, the evaluation of a
parameter set with :func:`crfrnn.dense_crf` itself, and :func:`degraded_probs`, a coarse network's stand-in.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping, Optional, Sequence, Union, cast

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from crfrnn._deprecated import renamed_arguments
from crfrnn.dense import dense_crf
from crfrnn.metrics import BoundaryAccuracy, ConfusionMatrix

__all__ = ["degraded_probs"]

ArrayLike = Union[np.ndarray, Tensor]


def check_count(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or int(value) < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}.")
    return int(value)


def check_real(name: str, value: Any, lo: float, hi: float, *, closed_lo: bool = False) -> float:
    ok = isinstance(value, (int, float, np.floating, np.integer)) and not isinstance(value, bool)
    v = float(value) if ok else math.nan
    if not (math.isfinite(v) and (lo <= v if closed_lo else lo < v) and v < hi):
        raise ValueError(f"{name} must be a number in {'[' if closed_lo else '('}{lo:g}, {hi:g}), got {value!r}.")
    return v


# --------------------------------------------------------------------------------------------------------
# inputs
# --------------------------------------------------------------------------------------------------------
@dataclass
class Sample:
    image: Tensor  # (1, C, H, W) float32, 0..255
    scores: Tensor  # (1, L, H, W) float32 probabilities or logits (L >= 2)
    unary: Tensor  # (1, L, H, W) float32 logits of mean_field
    labels: Tensor  # (1, H, W) int64, ignore_index allowed
    valid: int  # pixels not ignored


def as_tensor(x: Any, what: str, index: int) -> Tensor:
    if isinstance(x, Tensor):
        return x.detach().cpu()
    if isinstance(x, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(x))
    raise TypeError(f"{what}[{index}] must be a NumPy array or a torch tensor, got {type(x).__name__}.")


def prepare_samples(
    images: Sequence[ArrayLike],
    probs: Sequence[ArrayLike],
    labels: Sequence[ArrayLike],
    *,
    logits: bool,
    clip: float,
    ignore_index: int,
) -> tuple[list[Sample], int]:
    n = len(images)
    if not (len(probs) == len(labels) == n):
        raise ValueError(
            f"images, probs and labels must have the same length, got {n}, {len(probs)} and {len(labels)}."
        )
    samples: list[Sample] = []
    num_labels = None
    for i in range(n):
        p = as_tensor(probs[i], "probs", i)
        if p.dim() != 3 or not p.is_floating_point() or p.numel() == 0:
            raise ValueError(
                f"probs[{i}] must be a floating-point (L, H, W) array, got shape {tuple(p.shape)} of {p.dtype}."
            )
        p = p.to(torch.float32)
        if not bool(torch.isfinite(p).all()):
            raise ValueError(f"probs[{i}] contains NaN or infinite values.")
        h, w = p.shape[1:]
        img = as_tensor(images[i], "images", i)
        if tuple(img.shape) == (h, w):
            img = img[None]
        elif img.dim() == 3 and tuple(img.shape[:2]) == (h, w):
            img = img.movedim(-1, 0)  # (H, W, C), densecrf's layout
        elif not (img.dim() == 3 and tuple(img.shape[1:]) == (h, w) and isinstance(images[i], Tensor)):
            raise ValueError(
                f"images[{i}] of shape {tuple(img.shape)} does not match probs[{i}] of shape "
                f"{tuple(p.shape)}: expected ({h}, {w}) or ({h}, {w}, C)."
            )
        img = img.to(torch.float32)
        lab = as_tensor(labels[i], "labels", i)
        if tuple(lab.shape) != (h, w) or lab.is_floating_point() or lab.dtype == torch.bool:
            raise ValueError(
                f"labels[{i}] must be an integer ({h}, {w}) label map, got shape {tuple(lab.shape)} of {lab.dtype}."
            )
        lab = lab.to(torch.int64)
        if p.shape[0] == 1:  # a binary network's foreground map: the two-label problem it is
            p = torch.cat([torch.zeros_like(p), p] if logits else [1.0 - p, p], 0)
        if not logits:
            if bool((p < 0).any()) or float((p.sum(0) - 1).abs().max()) > 1e-3:
                raise ValueError(
                    f"probs[{i}] are not probabilities (non-negative, summing to 1 over labels); pass "
                    "logits=True for raw scores."
                )
        count = p.shape[0]
        if num_labels is None:
            num_labels = count
        elif count != num_labels:
            raise ValueError(
                f"probs[{i}] has {count} labels but probs[0] has {num_labels}; every image needs the same labels."
            )
        known = lab[lab != ignore_index]
        if known.numel() and (int(known.min()) < 0 or int(known.max()) >= count):
            raise ValueError(
                f"labels[{i}] holds labels outside 0..{count - 1} (besides {ignore_index}, ignored): "
                f"{int(known.min())}..{int(known.max())}."
            )
        unary = p if logits else p.clamp(clip, 1.0).log()
        samples.append(
            Sample(
                img[None].contiguous(), p[None].contiguous(), unary[None].contiguous(), lab[None], int(known.numel())
            )
        )
    assert num_labels is not None
    return samples, num_labels


def split_indices(n: int, val_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    if n < 2:
        raise ValueError(f"fitting needs at least 2 images (some to fit on, some to validate on), got {n}.")
    count = min(n - 1, max(1, round(val_fraction * n)))
    order = np.random.default_rng(seed).permutation(n)
    return sorted(int(i) for i in order[count:]), sorted(int(i) for i in order[:count])


# --------------------------------------------------------------------------------------------------------
# evaluation (dense_crf itself, the compiled path)
# --------------------------------------------------------------------------------------------------------
def evaluate_params(
    samples: Sequence[Sample],
    indices: Sequence[int],
    params: Optional[Mapping[str, Any]],
    num_labels: int,
    *,
    logits: bool,
    ignore_index: int,
    boundary_width: int,
    cache,
) -> dict[str, Any]:
    """Loss, mean IoU, pixel accuracy and boundary accuracy of ``params`` (None: the network alone) on images."""
    cm = ConfusionMatrix(num_labels, ignore_index=ignore_index)
    band = BoundaryAccuracy(num_labels, widths=(boundary_width,), ignore_index=ignore_index)
    total, pixels = 0.0, 0
    with torch.no_grad():
        for i in indices:
            s = samples[i]
            if params is None:
                q = s.scores.softmax(1) if logits else s.scores
            else:
                unary: dict[str, Any] = {"logits" if logits else "probs": s.scores}
                q = cast(Tensor, dense_crf(s.image, **unary, cache=cache, **params))  # tensors in: a tensor out
            pred, truth = q.argmax(1).cpu(), s.labels.cpu()  # the metrics count on the CPU
            cm.update(pred, truth)
            band.update(pred, truth)
            if s.valid:
                total += float(
                    F.nll_loss(q.clamp_min(1e-12).log(), s.labels, ignore_index=ignore_index, reduction="sum")
                )
                pixels += s.valid
    m = cm.compute()
    b = band.compute()[boundary_width]
    return {
        "loss": total / max(pixels, 1),
        "mean_iou": float(m["mean_iou"]),
        "pixel_accuracy": float(m["pixel_accuracy"]),
        "boundary_accuracy": float(b["pixel_accuracy"]),
        "boundary_mean_iou": float(b["mean_iou"]),
    }


# --------------------------------------------------------------------------------------------------------
# test data: a degraded ground truth that stands in for a coarse network
# --------------------------------------------------------------------------------------------------------
@renamed_arguments(num_labels="num_classes")
def degraded_probs(
    labels: ArrayLike,
    num_classes: int,
    *,
    factor: int = 8,
    noise: float = 1.0,
    confidence: float = 0.8,
    ignore_index: int = 255,
    seed: int = 0,
) -> np.ndarray:
    """Probabilities that a coarse network might give for a ground truth: down-sampled, blurred and noisy.

    The one-hot ground truth is averaged over ``factor x factor`` cells (a stride-``factor`` network's
    resolution), mixed with the uniform distribution (``confidence``), perturbed with Gaussian noise of
    standard deviation ``noise`` on the cells' log-probabilities, and up-sampled bilinearly to the full size:
    interiors are right, boundaries are blurred and misplaced, thin parts are lost.

    Args:
        labels: ``(H, W)`` integer ground truth (``ignore_index`` pixels count as uniform).
        num_classes: ``L``.
        factor: down-sampling factor (1: no down-sampling).
        noise: standard deviation of the noise on the cell log-probabilities.
        confidence: weight of the ground truth against the uniform distribution, in ``(0, 1]``.
        ignore_index: the label of pixels without ground truth.
        seed: seed of the noise.

    Returns:
        ``(L, H, W)`` float32 probabilities summing to 1 over labels.

    Example:
        >>> p = degraded_probs(np.zeros((16, 16), np.int64), 3)
        >>> p.shape, bool(np.allclose(p.sum(0), 1))
        ((3, 16, 16), True)
    """
    lab = torch.as_tensor(np.asarray(labels.detach().cpu() if isinstance(labels, Tensor) else labels)).long()
    if lab.dim() != 2:
        raise ValueError(f"labels must be an (H, W) label map, got shape {tuple(lab.shape)}.")
    num_classes = check_count("num_classes", num_classes, 2)
    factor = check_count("factor", factor, 1)
    noise = check_real("noise", noise, 0.0, 100.0, closed_lo=True)
    confidence = check_real("confidence", confidence, 0.0, 1.0 + 1e-12)
    h, w = lab.shape
    known = lab != ignore_index
    if bool(((lab < 0) | (lab >= num_classes))[known].any()):
        raise ValueError(f"labels hold values outside 0..{num_classes - 1} (besides {ignore_index}).")
    onehot = F.one_hot(torch.where(known, lab, 0), num_classes).permute(2, 0, 1).to(torch.float64)
    onehot = torch.where(known[None], onehot, torch.full_like(onehot, 1.0 / num_classes))[None]
    low = F.avg_pool2d(onehot, factor, ceil_mode=True) if factor > 1 else onehot
    low = confidence * low + (1 - confidence) / num_classes
    gen = torch.Generator().manual_seed(int(seed))
    low = low.log() + noise * torch.randn(low.shape, generator=gen, dtype=torch.float64)
    up = F.interpolate(low, size=(h, w), mode="bilinear", align_corners=False) if factor > 1 else low
    return up.softmax(1)[0].to(torch.float32).numpy()

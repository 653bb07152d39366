"""Checks of the scores and guides that reach the engine, with messages that name the caller's arguments."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["assert_scores", "binary_to_two", "check_image_tensor", "check_scores", "check_scores_tensor", "torch_stats"]

LOW_PRECISION = (torch.float16, torch.bfloat16)


def check_scores(stats: dict, from_probs: bool, name: str, sum_tol: float) -> None:
    if stats["nonfinite"]:
        hint = (
            (" If they come from log(probabilities), clamp the probabilities first (e.g. probs.clamp_min(1e-8).log()).")
            if not from_probs
            else ""
        )
        raise ValueError(f"{name} contains NaN or infinite values.{hint}")
    if from_probs and stats["negative"]:
        raise ValueError(f"{name} contains negative values: they look like logits; pass them as logits instead.")
    if from_probs and not (abs(stats["min_sum"] - 1.0) <= sum_tol and abs(stats["max_sum"] - 1.0) <= sum_tol):
        raise ValueError(
            f"{name} do not sum to 1 over labels (dimension 1 of (B, L, ...), 0 of (L, ...); sums range "
            f"{stats['min_sum']:.4g} to {stats['max_sum']:.4g}); normalise them, or pass raw scores as logits."
        )


def torch_stats(scores: Tensor, from_probs: bool = True) -> dict:
    """What :func:`check_scores` needs to know about ``scores`` (for logits only whether they are finite: one pass)."""
    s = scores.detach()
    if not from_probs:
        return {"nonfinite": int(not bool(torch.isfinite(s).all())), "negative": 0, "min_sum": 1.0, "max_sum": 1.0}
    total = s.sum(1)
    return {
        "nonfinite": int((~torch.isfinite(s)).sum()),
        "negative": int((s < 0).sum()),
        "min_sum": float(total.min()),
        "max_sum": float(total.max()),
    }


def assert_scores(scores: Tensor, from_probs: bool, name: str, sum_tol: float) -> None:
    """:func:`check_scores` as device-side assertions (under torch.compile: no host synchronisation)."""
    s = scores.detach()
    ok = torch.isfinite(s).all()
    if from_probs:
        total = s.sum(1)
        ok = ok & (s >= 0).all() & ((total - 1.0).abs() <= sum_tol).all()
    torch._assert_async(
        ok,
        f"crfrnn: {name} contains NaN or infinite values"
        + (", negative values, or does not sum to 1 over labels" if from_probs else ""),
    )


def check_scores_tensor(unary: Tensor, name: str = "unary") -> tuple[int, torch.dtype]:
    """``unary (B, L, *S)``: a real tensor with 1 to 3 spatial axes; returns ``(L, compute dtype)``."""
    if not isinstance(unary, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape (B, L, *S), got {type(unary).__name__}.")
    if unary.dim() not in (3, 4, 5):
        hint = (
            f"for a single image add the batch dimension with {name}[None]"
            if unary.dim() == 2
            else "signals, images and volumes have 1, 2 or 3 spatial axes"
        )
        raise ValueError(
            f"{name} must have shape (B, L, *S) with 1 to 3 spatial axes S, got a {unary.dim()}-D tensor of shape "
            f"{tuple(unary.shape)}; {hint}."
        )
    if unary.dtype not in (torch.float32, torch.float64) + LOW_PRECISION:
        raise TypeError(
            f"{name} must be floating point logits (float32 or float64; float16/bfloat16 are computed in float32), "
            f"got {unary.dtype}; convert with {name}.float() (for a label "
            "map, build logits first, e.g. with crfrnn.unary_from_labels)."
        )
    if unary.numel() == 0:
        raise ValueError(f"{name} is empty: shape {tuple(unary.shape)}; every dimension must be at least 1.")
    return unary.shape[1], (torch.float32 if unary.dtype in LOW_PRECISION else unary.dtype)


def check_image_tensor(image: Tensor, unary: Tensor, name: str = "image") -> None:
    """``image (B, C, *S)`` matching ``unary (B, L, *S)`` on the same device."""
    if not isinstance(image, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape (B, C, *S), got {type(image).__name__}.")
    b, s = unary.shape[0], tuple(unary.shape[2:])
    if image.dim() != unary.dim() or image.shape[0] != b or tuple(image.shape[2:]) != s:
        hint = ""
        if image.dim() == unary.dim() + 1 and tuple(image.shape[2:]) == tuple(unary.shape[1:]):
            hint = "; unary looks like a single image (L, *S): add the batch dimension with unary[None]"
        elif image.dim() == unary.dim() and tuple(image.shape[1:-1]) == s:
            hint = f"; the {name} looks channels-last (B, *S, C): pass {name}.movedim(-1, 1)"
        raise ValueError(
            f"{name} of shape {tuple(image.shape)} does not match unary of shape {tuple(unary.shape)}: expected "
            f"(B, C, *S) = ({b}, C, {', '.join(map(str, s))}){hint}. Resize the unary to the {name}'s size (e.g. "
            f"F.interpolate(unary, size={name}.shape[2:], mode='bilinear')) or the {name} to the unary's."
        )
    if image.device != unary.device:
        raise ValueError(
            f"unary is on {unary.device} but {name} is on {image.device}; move one with .to(other.device)."
        )


def binary_to_two(unary: Tensor) -> Tensor:
    """A single logit map ``(B, 1, *S)`` as the two-label problem ``(0, z)`` it is (softmax = sigmoid)."""
    return torch.cat([torch.zeros_like(unary), unary], 1)

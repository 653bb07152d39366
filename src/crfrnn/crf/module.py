"""The CRF-RNN layer (Zheng et al. 2015): ``T`` mean-field iterations as a recurrent, trainable ``nn.Module``."""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

from crfrnn.crf.functional import mean_field
from crfrnn.crf.kernels import NORMALIZATIONS, KernelCache
from crfrnn.validation import check_iterations, check_widths

__all__ = ["CrfRnn"]


class CrfRnn(nn.Module):
    """The CRF-RNN layer: ``T`` mean-field iterations of a dense CRF as a recurrent, trainable module.

    Learnable: ``spatial_weights`` and ``bilateral_weights`` (``L x L``, initialised to ``w I``) and
    ``compatibility`` (``L x L``, initialised to the Potts model ``1 - I``; learned freely, asymmetric
    allowed). The kernel widths are fixed buffers, as in the paper.

    In eval mode (or under ``torch.no_grad()``) on the CPU it runs the compiled fused mean field; in training
    the differentiable path. The spatial kernel of each input size is kept in :attr:`cache` (a
    :class:`crfrnn.KernelCache`; ``crf.cache.clear()`` frees it).

    Args:
        num_classes: number of labels ``L >= 2``, or ``1`` for a binary network's single logit map (the
            parameters are then the ``2 x 2`` ones of the two-label problem).
        theta_alpha: bilateral kernel width in pixels (160 in the released model).
        theta_beta: bilateral kernel width in colour units of a 0..255 image (3).
        theta_gamma: spatial kernel width in pixels (3).
        spatial_weight: initial spatial kernel weight (3).
        bilateral_weight: initial bilateral kernel weight (5).
        num_iterations: iterations in training mode (the paper trains with 5).
        num_eval_iterations: iterations in eval mode (the paper tests with 10); None uses
            ``num_iterations``.
        normalization: one of :data:`NORMALIZATIONS` (``"row"``: the released code's).
        exclude_self: exclude ``j == i`` from the messages.
        memory_efficient: recompute iterations in the backward pass to save activation memory.
        backend: lattice backend (``"auto"``, ``"torch"`` or ``"numba"``).

    Shape:
        - unary: ``(B, L, H, W)`` logits; image: ``(B, 3, H, W)`` on the 0..255 scale.
        - output: ``(B, L, H, W)`` refined logits.

    Example:
        >>> crf = CrfRnn(4, num_iterations=5, num_eval_iterations=10)
        >>> crf(torch.randn(1, 4, 20, 30), torch.rand(1, 3, 20, 30) * 255).shape
        torch.Size([1, 4, 20, 30])
    """

    def __init__(
        self,
        num_classes: int,
        *,
        theta_alpha: float = 160.0,
        theta_beta: float = 3.0,
        theta_gamma: float = 3.0,
        spatial_weight: float = 3.0,
        bilateral_weight: float = 5.0,
        num_iterations: int = 5,
        num_eval_iterations: Optional[int] = None,
        normalization: str = "row",
        exclude_self: bool = False,
        memory_efficient: bool = False,
        backend: str = "auto",
    ) -> None:
        super().__init__()
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"num_classes must be an integer >= 1, got {num_classes!r}.")
        for name, theta in (("theta_alpha", theta_alpha), ("theta_beta", theta_beta), ("theta_gamma", theta_gamma)):
            check_widths(name, theta, 1, "kernel")
        for name, t in (("num_iterations", num_iterations), ("num_eval_iterations", num_eval_iterations)):
            if t is not None:
                check_iterations(name, t)
        if normalization not in NORMALIZATIONS:
            raise ValueError(f"normalization must be one of {NORMALIZATIONS}, got {normalization!r}.")
        self.num_classes = num_classes
        self.num_iterations = num_iterations
        self.num_eval_iterations = num_iterations if num_eval_iterations is None else num_eval_iterations
        self.normalization = normalization
        self.exclude_self = exclude_self
        self.memory_efficient = memory_efficient
        self.backend = backend
        self.cache = KernelCache()
        eye = torch.eye(max(num_classes, 2))
        self.spatial_weights = nn.Parameter(spatial_weight * eye)
        self.bilateral_weights = nn.Parameter(bilateral_weight * eye)
        self.compatibility = nn.Parameter(1.0 - eye)
        self.register_buffer("theta_alpha", torch.tensor(float(theta_alpha)))
        self.register_buffer("theta_beta", torch.tensor(float(theta_beta)))
        self.register_buffer("theta_gamma", torch.tensor(float(theta_gamma)))

    def extra_repr(self) -> str:
        return (
            f"num_classes={self.num_classes}, theta_alpha={float(self.theta_alpha):g}, "
            f"theta_beta={float(self.theta_beta):g}, theta_gamma={float(self.theta_gamma):g}, "
            f"num_iterations={self.num_iterations}, num_eval_iterations={self.num_eval_iterations}, "
            f"normalization={self.normalization!r}"
        )

    def forward(self, unary: Tensor, image: Tensor) -> Tensor:
        """Refine ``unary (B, L, *S)`` logits with ``image (B, C, *S)``; returns ``(B, L, *S)`` logits."""
        if isinstance(unary, Tensor) and unary.dim() >= 3 and unary.shape[1] != self.num_classes:
            raise ValueError(
                f"unary has {unary.shape[1]} labels in dimension 1 (shape {tuple(unary.shape)}) but this "
                f"CrfRnn was built for num_classes={self.num_classes}."
            )
        return mean_field(
            unary,
            image,
            theta_alpha=float(self.theta_alpha),
            theta_beta=float(self.theta_beta),
            theta_gamma=float(self.theta_gamma),
            spatial_weight=self.spatial_weights,
            bilateral_weight=self.bilateral_weights,
            compatibility=self.compatibility,
            num_iterations=self.num_iterations if self.training else self.num_eval_iterations,
            normalization=self.normalization,
            exclude_self=self.exclude_self,
            memory_efficient=self.memory_efficient,
            backend=self.backend,
            cache=self.cache,
        )

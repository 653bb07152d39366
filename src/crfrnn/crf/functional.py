"""CRF-RNN's mean field as a function: a spatial and a bilateral kernel over any number of spatial axes.

A thin door onto :func:`crfrnn.crf.engine.infer`: it checks the inputs, builds the two kernels' features
(positions, and positions plus the guide) and their label transforms ``-mu W``, and calls the engine.
"""

from __future__ import annotations

from typing import Optional, Sequence, Union, cast

import torch
from torch import Tensor

from crfrnn._utils.threads import adaptive_threads
from crfrnn._utils.validation import check_guide, check_iterations, check_spacing, check_widths
from crfrnn.crf._checks import binary_to_two, check_image_tensor, check_scores_tensor
from crfrnn.crf.engine import infer
from crfrnn.crf.kernels import KernelCache, check_normalization
from crfrnn.crf.pairwise import Weight, Width, image_kernels

__all__ = ["mean_field"]


@adaptive_threads
def mean_field(
    unary: Tensor,
    image: Tensor,
    *,
    theta_alpha: Width = 160.0,
    theta_beta: Width = 3.0,
    theta_gamma: Width = 3.0,
    spatial_weight: Union[Weight, Sequence[Weight]] = 3.0,
    bilateral_weight: Union[Weight, Sequence[Weight]] = 5.0,
    compatibility: Union[Tensor, Sequence[Tensor], None] = None,
    num_iterations: int = 5,
    normalization: str = "row",
    exclude_self: bool = False,
    spacing: Optional[Width] = None,
    memory_efficient: bool = False,
    exact: bool = False,
    backend: str = "auto",
    cache: Optional[KernelCache] = None,
) -> Tensor:
    """Mean-field inference in a dense CRF with a spatial and a bilateral Gaussian kernel (CRF-RNN).

    ``num_iterations`` mean-field iterations (``docs/engine.md``) starting from ``softmax(unary)``, for images,
    signals or volumes. Without a gradient on the CPU this runs the compiled fused loop; otherwise the
    differentiable path (any device), lattices built once per call and reused by the backward pass.

    Args:
        unary: ``(B, L, *S)`` logits ``U`` (a network's scores), ``S`` of 1 to 3 spatial axes. ``L = 1`` is a
            binary network's single logit map, refined as the two-label problem ``(0, z)``. float16/bfloat16
            are computed in float32 and returned in their dtype (a ValueError if the logits leave its range).
        image: ``(B, C, *S)`` guide: colours on the 0..255 scale (uint8 or float), or any ``C >= 1`` channels.
        theta_alpha: bilateral kernel's position width, one number or one per spatial axis (array-axis order).
        theta_beta: bilateral kernel's guide width, one number or one per guide channel.
        theta_gamma: spatial kernel's width, one number or one per spatial axis.

            Any width may be a tensor (0-d, or one entry per axis or channel; or a sequence of 0-d tensors) that
            requires a gradient: the output is then differentiable with respect to it (the exact Gaussian's
            derivative through the lattice, ``docs/widths.md``). So is an ``image`` that requires a gradient.
        spatial_weight: a number, an ``(L,)`` vector or an ``(L, L)`` matrix ``W_spatial``.
        bilateral_weight: the same for ``W_bilateral``.
        compatibility: label compatibility ``mu``: an ``(L, L)`` matrix (asymmetric allowed) or an ``(L,)``
            diagonal; None is the Potts model (``1 - I``).

            Untied iterations: a list (or tuple) of any of these three gives one value per iteration (the
            others are shared); lists must have the same length ``T_u >= 1``, and iterations ``t >= T_u`` reuse
            the last entry.
        num_iterations: ``T >= 0`` (``T = 0`` returns the unary).
        normalization: one of :data:`crfrnn.NORMALIZATIONS`; ``"row"`` is the released CRF-RNN code's.
        exclude_self: exclude ``j == i`` from the messages, as the paper writes them.
        spacing: physical size of a step along each spatial axis (e.g. mm per voxel); the position widths are
            then in those units.
        memory_efficient: keep less for the backward pass and recompute the rest there: on the CPU's compiled
            path the marginals only (the kernels' blurred vertex buffers are recomputed: 0.56x of the activation
            memory at 500x375 with CrfRnn's widths); on the torch path each iteration is recomputed.
        exact: use the O(N^2) exact Gaussian instead of the lattice (tiny inputs; for tests).
        backend: lattice backend (``"auto"``, ``"torch"``, ``"numba"`` or ``"triton"``).
        cache: a :class:`crfrnn.KernelCache` that keeps the spatial kernel for later calls of the same size.

    Returns:
        ``(B, L, *S)`` refined logits of the last iteration (softmax gives the marginals), in the unary's
        dtype. With the Potts model (``compatibility=None``) they equal ``U - (1 - I) W message`` up to a
        constant per pixel.

    Example:
        >>> unary = torch.randn(2, 4, 16, 16)
        >>> image = torch.rand(2, 3, 16, 16) * 255
        >>> mean_field(unary, image, num_iterations=3).shape
        torch.Size([2, 4, 16, 16])
        >>> theta_alpha = torch.tensor(20.0, requires_grad=True)
        >>> mean_field(unary, image, theta_alpha=theta_alpha).logsumexp(1).mean().backward()
        >>> theta_alpha.grad.shape
        torch.Size([])
    """
    num_labels, dtype = check_scores_tensor(unary)
    check_image_tensor(image, unary)
    check_guide(image, "image")
    iterations = check_iterations("num_iterations", num_iterations)
    normalization = check_normalization(normalization)
    shape = tuple(unary.shape[2:])
    ndim = len(shape)
    theta_a = check_widths("theta_alpha", theta_alpha, ndim, "spatial axis")
    theta_g = check_widths("theta_gamma", theta_gamma, ndim, "spatial axis")
    steps = check_spacing(spacing, ndim)
    binary = num_labels == 1
    u = unary.to(dtype)
    if binary:
        u = binary_to_two(u)
    b, num_labels = u.shape[:2]
    img = image.to(dtype)
    lists = [v for v in (spatial_weight, bilateral_weight, compatibility) if isinstance(v, (list, tuple))]
    iteration_weights = None
    if lists:
        count = len(lists[0])
        if count == 0 or any(len(v) != count for v in lists):
            raise ValueError(
                "per-iteration spatial_weight, bilateral_weight and compatibility must be lists of the same length "
                f">= 1, got lengths {[len(v) for v in lists]}."
            )

        def at(value, t):
            return value[t] if isinstance(value, (list, tuple)) else value

        iteration_weights = [
            ((at(spatial_weight, t), at(compatibility, t)), (at(bilateral_weight, t), at(compatibility, t)))
            for t in range(count)
        ]
        spatial_weight, bilateral_weight, compatibility = (
            iteration_weights[0][0][0],
            iteration_weights[0][1][0],
            iteration_weights[0][0][1],
        )
    kernels = image_kernels(
        shape,
        img,
        spatial_width=theta_gamma,
        bilateral_position_width=theta_alpha,
        bilateral_guide_width=theta_beta,
        checked_widths=(theta_g, theta_a),
        spacing=steps,
        weights=cast("tuple[Weight, Weight]", (spatial_weight, bilateral_weight)),  # lists: taken apart above
        names=("theta_gamma", "theta_alpha", "theta_beta", "spatial_weight", "bilateral_weight", "compatibility"),
        normalization=normalization,
        exclude_self=exclude_self,
        compatibility=compatibility,
    )
    with torch.autocast(u.device.type, enabled=False):
        out = infer(
            u.reshape(b, num_labels, -1),
            kernels,
            num_iterations=iterations,
            return_logits=True,
            memory_efficient=memory_efficient,
            exact=exact,
            backend=backend,
            cache=cache,
            iteration_weights=iteration_weights,
        )
    out = out.reshape(u.shape)
    if binary:
        out = out[:, 1:] - out[:, :1]
    return _narrow(out, unary.dtype)


def _narrow(out: Tensor, dtype: torch.dtype) -> Tensor:
    """``out`` (computed in float32 or wider) in the unary's ``dtype``; refuses logits beyond a narrow float's
    range rather than returning them as infinities (float16 holds at most 65504).
    """
    if dtype.is_floating_point and out.dtype != dtype and out.numel():
        limit = torch.finfo(dtype).max
        peak = float(out.detach().abs().amax())
        if peak > limit:
            raise ValueError(
                f"the refined logits reach {peak:.4g}, beyond {dtype}'s range (+-{limit:.6g}), so they would come "
                f"back as infinities; pass the unary as float32 (unary.float()) or lower the pairwise weights "
                f"(bilateral_weight, spatial_weight) or the compatibility."
            )
    return out.to(dtype)

"""Helpers shared by the segmentation networks (private)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["bilinear_kernel", "check_image", "init_bilinear_"]


def bilinear_kernel(kernel_size: int, *, dtype: torch.dtype = torch.float32, device=None) -> Tensor:
    """2-D bilinear interpolation kernel, as ``surgery.upsample_filt`` of the FCN reference code.

    A stride-``s`` transposed convolution with this ``2s x 2s`` kernel (``2s - s % 2`` in general)
    interpolates bilinearly between the input samples.

    Args:
        kernel_size: side ``K`` of the square kernel.
        dtype: dtype of the result.
        device: device of the result.

    Returns:
        The kernel, shape ``(K, K)``; its values in each stride phase sum to one.
    """
    factor = (kernel_size + 1) // 2
    center = factor - 1 if kernel_size % 2 == 1 else factor - 0.5
    og = torch.arange(kernel_size, dtype=torch.float64, device=device)
    filt = 1.0 - (og - center).abs() / factor
    return (filt[:, None] * filt[None, :]).to(dtype)


@torch.no_grad()
def init_bilinear_(layer: nn.ConvTranspose2d) -> nn.ConvTranspose2d:
    """Initialise a transposed convolution to per-channel bilinear up-sampling, in place.

    Channel ``c`` of the output interpolates channel ``c`` of the input; the cross-channel weights are
    zero (the initialisation of the FCN reference code). The layer must have as many input as output
    channels and ``groups=1``.
    """
    c_in, c_out, kh, kw = layer.weight.shape
    if c_in != c_out or kh != kw or layer.groups != 1:
        raise ValueError(
            "init_bilinear_ expects a square ConvTranspose2d with in_channels == out_channels and groups=1, "
            f"got weight shape {tuple(layer.weight.shape)} with groups={layer.groups}."
        )
    layer.weight.zero_()
    kernel = bilinear_kernel(kh, dtype=layer.weight.dtype, device=layer.weight.device)
    idx = torch.arange(c_in, device=layer.weight.device)
    layer.weight[idx, idx] = kernel
    if layer.bias is not None:
        layer.bias.zero_()
    return layer


def check_image(image: Tensor, name: str = "image") -> None:
    """Check that ``image`` is a floating-point ``(B, 3, H, W)`` batch (values are not inspected)."""
    if not isinstance(image, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape (B, 3, H, W), got {type(image).__name__}.")
    if image.ndim != 4 or image.shape[1] != 3:
        hint = " Add a batch dimension with image.unsqueeze(0)." if image.ndim == 3 else ""
        raise ValueError(
            f"{name} must have shape (B, 3, H, W) (a batch of RGB images), got shape {tuple(image.shape)}.{hint}"
        )
    if not image.is_floating_point():
        raise TypeError(
            f"{name} must be a floating-point tensor on the 0..255 scale, got dtype {image.dtype}. "
            "Convert it with image.float()."
        )

"""A small fully convolutional segmentation network (output stride 8) that trains on a CPU in minutes.

It plays the role of FCN-8s in experiments that must run on a laptop: its score maps are coarse and
blobby (computed at 1/8 of the input resolution and up-sampled bilinearly), which is exactly the kind of
unary a CRF-RNN head is meant to sharpen.

Layout, for ``width = w``:

- three stride-2 stages (``stage1``, ``stage2``, ``stage3``) of ``depth`` 3x3 convolutions with
  normalisation and ReLU, the first of each stage strided, with ``w/2``, ``w`` and ``2w`` channels;
- a context block (``context``) of residual 3x3 convolutions with dilations ``(2, 4)`` at ``2w`` channels,
  which enlarges the receptive field without further down-sampling;
- dropout and a 1x1 classifier (``classifier``) to ``L`` logits at 1/8 resolution;
- bilinear up-sampling (``align_corners=False``) to the input size.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from crfrnn.models._utils import check_image

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "SmallFCN"]

#: Per-channel mean and standard deviation (RGB, 0..255 scale) used to normalise the input image.
IMAGENET_MEAN: tuple[float, float, float] = (123.675, 116.28, 103.53)
IMAGENET_STD: tuple[float, float, float] = (58.395, 57.12, 57.375)

_NORMS = ("batch", "group", "none")


def _norm(kind: str, channels: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "group":
        return nn.GroupNorm(min(8, channels), channels)
    return nn.Identity()


class _ConvNormAct(nn.Sequential):
    def __init__(self, c_in: int, c_out: int, *, stride: int = 1, dilation: int = 1, norm: str = "batch") -> None:
        super().__init__(
            nn.Conv2d(c_in, c_out, 3, stride=stride, padding=dilation, dilation=dilation, bias=norm == "none"),
            _norm(norm, c_out),
            nn.ReLU(inplace=True),
        )


class _DilatedResidual(nn.Module):
    """``x + conv_norm(relu(conv_norm_relu(x)))`` with dilated 3x3 convolutions, then ReLU."""

    def __init__(self, channels: int, dilation: int, norm: str) -> None:
        super().__init__()
        self.conv1 = _ConvNormAct(channels, channels, dilation=dilation, norm=norm)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=dilation, dilation=dilation, bias=norm == "none")
        self.norm2 = _norm(norm, channels)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.act(x + self.norm2(self.conv2(self.conv1(x))))


class SmallFCN(nn.Module):
    """Small fully convolutional network with output stride 8, for CPU-scale experiments.

    The input is a batch of RGB images on the 0..255 scale; the network normalises it itself with the
    fixed constants :data:`IMAGENET_MEAN` and :data:`IMAGENET_STD`.

    Args:
        num_classes: number of labels ``L``.
        width: channels of the middle stage; the stages have ``width // 2``, ``width`` and ``2 * width``
            channels (16-32-64 for the default 32).
        depth: 3x3 convolutions per stage (the first one has stride 2).
        dilations: dilation of each residual block of the context module (empty for none).
        norm: ``"batch"`` (BatchNorm), ``"group"`` (GroupNorm with up to 8 groups, independent of the batch
            size) or ``"none"``.
        dropout: dropout probability before the classifier.

    Shape:
        - image: ``(B, 3, H, W)``, RGB, 0..255, any ``H, W >= 1``.
        - output: ``(B, L, H, W)`` logits (computed at ``(ceil(H/8), ceil(W/8))`` and up-sampled).

    Example:
        >>> model = SmallFCN(5).eval()
        >>> model(torch.rand(2, 3, 96, 80) * 255).shape
        torch.Size([2, 5, 96, 80])
    """

    output_stride: int = 8

    def __init__(
        self,
        num_classes: int,
        *,
        width: int = 32,
        depth: int = 2,
        dilations: Sequence[int] = (2, 4),
        norm: str = "batch",
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 1:
            raise ValueError(f"num_classes must be a positive int, got {num_classes!r}.")
        if not isinstance(width, int) or width < 2 or width % 2:
            raise ValueError(f"width must be an even int >= 2, got {width!r}.")
        if not isinstance(depth, int) or depth < 1:
            raise ValueError(f"depth must be an int >= 1, got {depth!r}.")
        if norm not in _NORMS:
            raise ValueError(f"norm must be one of {_NORMS}, got {norm!r}.")
        if any(not isinstance(d, int) or d < 1 for d in dilations):
            raise ValueError(f"dilations must be positive ints, got {tuple(dilations)!r}.")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout!r}.")
        self.num_classes = num_classes

        channels = (width // 2, width, 2 * width)
        stages = []
        c_in = 3
        for c_out in channels:
            layers = [_ConvNormAct(c_in, c_out, stride=2, norm=norm)]
            layers += [_ConvNormAct(c_out, c_out, norm=norm) for _ in range(depth - 1)]
            stages.append(nn.Sequential(*layers))
            c_in = c_out
        self.stage1, self.stage2, self.stage3 = stages
        self.context = nn.Sequential(*[_DilatedResidual(c_in, d, norm) for d in dilations])
        self.dropout = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(c_in, num_classes, 1)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Kaiming-normal convolutions, unit/zero normalisation affine parameters, a small classifier."""
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, (nn.BatchNorm2d, nn.GroupNorm)):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        nn.init.normal_(self.classifier.weight, std=0.01)
        assert self.classifier.bias is not None  # built with a bias
        nn.init.zeros_(self.classifier.bias)

    def normalize(self, image: Tensor) -> Tensor:
        """``(image - IMAGENET_MEAN) / IMAGENET_STD`` per channel, on the device and dtype of ``image``."""
        mean = torch.tensor(IMAGENET_MEAN, device=image.device, dtype=image.dtype).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD, device=image.device, dtype=image.dtype).view(1, 3, 1, 1)
        return (image - mean) / std

    def forward_coarse(self, image: Tensor) -> Tensor:
        """Logits at 1/8 resolution.

        Args:
            image: ``(B, 3, H, W)`` RGB on the 0..255 scale.

        Returns:
            ``(B, L, ceil(H / 8), ceil(W / 8))`` logits.
        """
        check_image(image)
        x = self.normalize(image)
        x = self.stage3(self.stage2(self.stage1(x)))
        x = self.context(x)
        return self.classifier(self.dropout(x))

    def forward(self, image: Tensor) -> Tensor:
        """Score every pixel.

        Args:
            image: ``(B, 3, H, W)`` RGB on the 0..255 scale.

        Returns:
            ``(B, L, H, W)`` logits.
        """
        coarse = self.forward_coarse(image)
        return F.interpolate(coarse, size=image.shape[-2:], mode="bilinear", align_corners=False)

    def extra_repr(self) -> str:
        """The number of classes, for ``repr(module)``."""
        return f"num_classes={self.num_classes}"

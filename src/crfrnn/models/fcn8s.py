"""FCN-8s on VGG-16, layer for layer the Caffe ``voc-fcn8s`` net of Long, Shelhamer & Darrell (CVPR 2015).

The network is the one CRF-RNN (Zheng et al., ICCV 2015) puts its CRF on. Every submodule carries the name
of the Caffe layer it reproduces (``conv1_1`` ... ``conv5_3``, ``fc6``, ``fc7``, ``score_fr``, ``upscore2``,
``score_pool4``, ``upscore_pool4``, ``score_pool3``, ``upscore8``), so the ``state_dict`` keys are
``"<caffe layer>.weight"`` / ``"<caffe layer>.bias"`` and published Caffe weights map onto it one to one
(Caffe's Deconvolution blob ``(C_in, C_out, K, K)`` has the layout of :class:`torch.nn.ConvTranspose2d`).

Geometry (all as in Caffe):

- ``conv1_1`` pads by 100 pixels, so that any input of at least 1x1 pixel survives the five poolings
  and the 7x7 ``fc6``; every other 3x3 convolution pads by 1;
- max-pooling 2x2, stride 2, rounding the output size up (Caffe's pooling, ``ceil_mode=True``);
- ``fc6`` is a 7x7 convolution without padding, ``fc7`` a 1x1 convolution, each followed by ReLU and
  dropout (p = 0.5);
- ``upscore2`` and ``upscore_pool4`` are 4x4 stride-2 transposed convolutions and ``upscore8`` a 16x16
  stride-8 one, without bias and without padding, initialised to bilinear interpolation and, as in the
  reference (``lr_mult: 0``), fixed unless ``learnable_upsampling=True``. The released CRF-RNN network
  learned its first up-sampling with a bias (Caffe layer ``score2``); ``upscore2_bias=True`` adds that
  bias (key ``upscore2.bias``), see ``docs/pretrained.md``;
- the skip scores are cropped before the sums with the offsets Caffe's ``coord_map`` derives for this
  net: 5 for ``score_pool4`` (-> ``score_pool4c``), 9 for ``score_pool3`` (-> ``score_pool3c``), and the
  final ``upscore8`` map is cropped by 31 to the input size. With these offsets output pixel ``(y, x)``
  is centred on input pixel ``(y, x)``.

The offsets are constants of the net, and PyTorch's ``ceil_mode`` rounds as Caffe's pooling does for
unpadded 2x2/2 windows, so at every input size this computes what the Caffe net and the CRF-RNN PyTorch
port compute (``tests/models/test_fcn8s_sizes.py``; ``docs/pretrained.md``, "Input sizes other than
500 x 500").
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
from torch import Tensor, nn

from crfrnn.models._utils import check_image, init_bilinear_

__all__ = ["CAFFE_BGR_MEAN", "CaffeInput", "FCN8s", "FC_WIDTH", "VGG16_WIDTHS"]

#: Per-channel mean of the Caffe VGG-16 / FCN models, in B, G, R order, on the 0..255 scale.
CAFFE_BGR_MEAN: tuple[float, float, float] = (104.00698793, 116.66876762, 122.67891434)

# (stage, number of 3x3 convolutions, output channels) of VGG-16 "D".
_VGG16_STAGES: tuple[tuple[int, int, int], ...] = ((1, 2, 64), (2, 2, 128), (3, 3, 256), (4, 3, 512), (5, 3, 512))

#: Output channels of the five VGG-16 stages and of ``fc6``/``fc7``: the full-size network.
VGG16_WIDTHS: tuple[int, int, int, int, int] = tuple(c for _, _, c in _VGG16_STAGES)  # type: ignore[assignment]
FC_WIDTH: int = 4096


def _check_mean(mean: Sequence[float]) -> tuple[float, float, float]:
    values = tuple(float(v) for v in mean)
    if len(values) != 3 or not all(math.isfinite(v) for v in values):
        raise ValueError(f"mean must be three finite numbers (B, G, R on the 0..255 scale), got {tuple(mean)!r}.")
    return values


class CaffeInput(nn.Module):
    """RGB 0..255 -> BGR minus a per-channel mean: the input convention of the Caffe VGG/FCN models.

    Args:
        mean: the mean to subtract, in B, G, R order (default :data:`CAFFE_BGR_MEAN`).

    Shape:
        - image: ``(B, 3, H, W)`` RGB on the 0..255 scale.
        - output: ``(B, 3, H, W)`` BGR minus ``mean``, same device and dtype.

    Example:
        >>> CaffeInput((1.0, 2.0, 3.0))(torch.tensor([10.0, 20.0, 30.0]).view(1, 3, 1, 1)).flatten().tolist()
        [29.0, 18.0, 7.0]
    """

    def __init__(self, mean: Sequence[float] = CAFFE_BGR_MEAN) -> None:
        super().__init__()
        self.mean = _check_mean(mean)

    def forward(self, image: Tensor) -> Tensor:
        """Caffe's input: RGB to BGR, minus the mean.

        Args:
            image: ``(B, 3, H, W)`` RGB on the 0..255 scale.

        Returns:
            ``(B, 3, H, W)`` BGR minus ``mean``.
        """
        mean = torch.tensor(self.mean, device=image.device, dtype=image.dtype).view(1, 3, 1, 1)
        return image.flip(1) - mean

    def extra_repr(self) -> str:
        """The mean, for ``repr(module)``."""
        return "mean_bgr=(" + ", ".join(f"{v:g}" for v in self.mean) + ")"


def _crop(x: Tensor, offset: int, height: int, width: int) -> Tensor:
    """Caffe ``Crop`` layer on the last two axes: ``x[..., offset:offset + height, offset:offset + width]``."""
    if x.shape[-2] < offset + height or x.shape[-1] < offset + width:
        raise RuntimeError(
            f"cannot crop a {tuple(x.shape[-2:])} map at offset {offset} to {(height, width)}; "
            "this is a bug in FCN8s, please report it with the input size."
        )
    return x[..., offset : offset + height, offset : offset + width]


class FCN8s(nn.Module):
    """FCN-8s semantic segmentation network on VGG-16 (the Caffe ``voc-fcn8s`` net).

    The input is a batch of RGB images on the 0..255 scale, as loaded from an image file. The network
    converts it to the Caffe convention itself: RGB -> BGR, then subtracts :data:`CAFFE_BGR_MEAN`
    (104.008, 116.669, 122.679). Do not normalise the image beforehand.

    The weights are not trained here: the VGG-16 convolutions get Kaiming-normal weights and zero biases,
    the score layers (``score_fr``, ``score_pool4``, ``score_pool3``) are zero-initialised as in the FCN
    reference code, and the up-sampling layers are bilinear. Load VGG-16 or FCN-8s weights with
    :meth:`torch.nn.Module.load_state_dict`, the keys being the Caffe layer names.

    Args:
        num_classes: number of labels ``L`` (21 for PASCAL VOC).
        dropout: dropout probability after ``fc6`` and ``fc7`` (0.5 in the reference).
        learnable_upsampling: if ``False`` (the reference), the transposed convolutions keep their
            bilinear weights (``requires_grad=False``).
        upscore2_bias: give the first 2x up-sampling ``upscore2`` a bias, as the released CRF-RNN
            network has (Caffe ``score2``); the bias starts at zero and is learnable.
        widths: output channels of the five VGG-16 stages (default :data:`VGG16_WIDTHS`); smaller values
            build a narrow network of the same geometry (tests, experiments).
        fc_width: output channels of ``fc6`` and ``fc7`` (default 4096).
        mean: the mean that :meth:`preprocess` subtracts, in B, G, R order (default
            :data:`CAFFE_BGR_MEAN`; the PyTorch and Keras ports of CRF-RNN used another one, see
            ``docs/pretrained.md``).

    Shape:
        - image: ``(B, 3, H, W)``, RGB, 0..255, any ``H, W >= 1``.
        - output: ``(B, L, H, W)`` logits, pixel-aligned with the input.

    Example:
        >>> model = FCN8s(num_classes=21).eval()
        >>> with torch.no_grad():
        ...     logits = model(torch.rand(1, 3, 40, 50) * 255)
        >>> logits.shape
        torch.Size([1, 21, 40, 50])
    """

    #: Crop offsets of the Caffe net: ``score_pool4c``, ``score_pool3c`` and the final ``score``.
    crop_pool4: int = 5
    crop_pool3: int = 9
    crop_final: int = 31

    def __init__(
        self,
        num_classes: int = 21,
        *,
        dropout: float = 0.5,
        learnable_upsampling: bool = False,
        upscore2_bias: bool = False,
        widths: Optional[Sequence[int]] = None,
        fc_width: int = FC_WIDTH,
        mean: Sequence[float] = CAFFE_BGR_MEAN,
    ) -> None:
        super().__init__()
        if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 1:
            raise ValueError(f"num_classes must be a positive int, got {num_classes!r}.")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout!r}.")
        widths = VGG16_WIDTHS if widths is None else tuple(widths)
        if len(widths) != 5 or not all(isinstance(c, int) and not isinstance(c, bool) and c >= 1 for c in widths):
            raise ValueError(f"widths must be five positive ints (one per VGG-16 stage), got {widths!r}.")
        if not isinstance(fc_width, int) or isinstance(fc_width, bool) or fc_width < 1:
            raise ValueError(f"fc_width must be a positive int, got {fc_width!r}.")
        self.num_classes = num_classes
        self.widths = tuple(widths)
        self.fc_width = fc_width
        self.input = CaffeInput(mean)

        in_ch = 3
        for (stage, n_conv, _), out_ch in zip(_VGG16_STAGES, self.widths):
            for i in range(1, n_conv + 1):
                pad = 100 if (stage, i) == (1, 1) else 1
                self.add_module(f"conv{stage}_{i}", nn.Conv2d(in_ch, out_ch, 3, padding=pad))
                self.add_module(f"relu{stage}_{i}", nn.ReLU(inplace=True))
                in_ch = out_ch
            self.add_module(f"pool{stage}", nn.MaxPool2d(2, stride=2, ceil_mode=True))

        self.fc6 = nn.Conv2d(self.widths[4], fc_width, 7)
        self.relu6 = nn.ReLU(inplace=True)
        self.drop6 = nn.Dropout(dropout)
        self.fc7 = nn.Conv2d(fc_width, fc_width, 1)
        self.relu7 = nn.ReLU(inplace=True)
        self.drop7 = nn.Dropout(dropout)

        self.score_fr = nn.Conv2d(fc_width, num_classes, 1)
        self.upscore2 = nn.ConvTranspose2d(num_classes, num_classes, 4, stride=2, bias=upscore2_bias)
        self.score_pool4 = nn.Conv2d(self.widths[3], num_classes, 1)
        self.upscore_pool4 = nn.ConvTranspose2d(num_classes, num_classes, 4, stride=2, bias=False)
        self.score_pool3 = nn.Conv2d(self.widths[2], num_classes, 1)
        self.upscore8 = nn.ConvTranspose2d(num_classes, num_classes, 16, stride=8, bias=False)

        self.reset_parameters()
        if not learnable_upsampling:
            for layer in self.upsampling_layers():
                layer.weight.requires_grad_(False)

    def upsampling_layers(self) -> Sequence[nn.ConvTranspose2d]:
        """The transposed convolutions ``upscore2``, ``upscore_pool4``, ``upscore8``."""
        return (self.upscore2, self.upscore_pool4, self.upscore8)

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Re-initialise all weights (see the class docstring)."""
        for name, module in self.named_children():
            if isinstance(module, nn.ConvTranspose2d):
                init_bilinear_(module)
            elif isinstance(module, nn.Conv2d):
                if name.startswith("score"):
                    nn.init.zeros_(module.weight)
                else:
                    nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
                assert module.bias is not None  # built with a bias
                nn.init.zeros_(module.bias)

    def preprocess(self, image: Tensor) -> Tensor:
        """RGB 0..255 -> mean-subtracted BGR, the input convention of the Caffe model.

        Args:
            image: ``(B, 3, H, W)`` RGB on the 0..255 scale.

        Returns:
            ``(B, 3, H, W)`` BGR minus the network's ``mean`` (:data:`CAFFE_BGR_MEAN` by default), same
            device and dtype.
        """
        return self.input(image)

    def forward(self, image: Tensor) -> Tensor:
        """Score every pixel.

        Args:
            image: ``(B, 3, H, W)`` RGB on the 0..255 scale.

        Returns:
            ``(B, L, H, W)`` logits.
        """
        check_image(image)
        height, width = image.shape[-2:]
        x = self.preprocess(image)

        pools = {}
        for stage, n_conv, _ in _VGG16_STAGES:
            for i in range(1, n_conv + 1):
                x = getattr(self, f"relu{stage}_{i}")(getattr(self, f"conv{stage}_{i}")(x))
            x = getattr(self, f"pool{stage}")(x)
            pools[stage] = x

        x = self.drop6(self.relu6(self.fc6(x)))
        x = self.drop7(self.relu7(self.fc7(x)))
        upscore2 = self.upscore2(self.score_fr(x))

        score_pool4c = _crop(self.score_pool4(pools[4]), self.crop_pool4, *upscore2.shape[-2:])
        upscore_pool4 = self.upscore_pool4(upscore2 + score_pool4c)

        score_pool3c = _crop(self.score_pool3(pools[3]), self.crop_pool3, *upscore_pool4.shape[-2:])
        upscore8 = self.upscore8(upscore_pool4 + score_pool3c)

        return _crop(upscore8, self.crop_final, height, width)

    def extra_repr(self) -> str:
        """The number of classes (and the widths where they are not VGG-16's), for ``repr(module)``."""
        extra = (
            ""
            if self.widths == VGG16_WIDTHS and self.fc_width == FC_WIDTH
            else (f", widths={self.widths}, fc_width={self.fc_width}")
        )
        return f"num_classes={self.num_classes}{extra}"

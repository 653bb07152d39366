"""A segmentation CNN with a CRF-RNN head on top, trainable end to end (Zheng et al., ICCV 2015).

:class:`CrfRnnSegmenter` composes any backbone that maps a raw image to logits with a CRF-RNN head
(:class:`crfrnn.CrfRnn`) that refines those logits using the image. The backbone is not subclassed or
modified, so a model from another library can be used as is, provided it takes the image on the 0..255
scale. Models that expect a normalised input, or return a dict, need a small adapter. For example,
torchvision's ``deeplabv3_resnet50`` expects ImageNet-normalised input and returns ``{"out": logits}``::

    import torch
    from torch import nn
    from torchvision.models.segmentation import deeplabv3_resnet50

    from crfrnn import CrfRnn
    from crfrnn.models import CrfRnnSegmenter

    class ImageNetInput(nn.Module):
        # Feeds a 0..255 RGB image to a model that expects ImageNet-normalised input.
        def __init__(self, model: nn.Module) -> None:
            super().__init__()
            self.model = model
            self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1) * 255)
            self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1) * 255)

        def forward(self, image):
            return self.model((image - self.mean) / self.std)

    backbone = ImageNetInput(deeplabv3_resnet50(num_classes=21))
    model = CrfRnnSegmenter(backbone, CrfRnn(21), output_key="out")
    logits = model(image)  # image: (B, 3, H, W) RGB, 0..255

The CRF always sees the raw 0..255 image, whose colour scale its bilateral kernel width
(``theta_beta = 3``) refers to.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from crfrnn.models._utils import check_image

if TYPE_CHECKING:  # pragma: no cover
    from crfrnn import CrfRnn

__all__ = ["CrfRnnSegmenter"]


class CrfRnnSegmenter(nn.Module):
    """A backbone producing unary logits, followed by a CRF-RNN head that refines them.

    ``forward(image)`` runs ``unary = backbone(image)`` (taking ``unary[output_key]`` if the backbone
    returns a mapping), up-samples the unary bilinearly (``align_corners=False``) to the image size if the
    backbone's output is smaller or larger, and returns ``crf(unary, image)``.

    Args:
        backbone: module mapping a raw image ``(B, 3, H, W)`` (RGB, 0..255) to logits ``(B, L, h, w)``, or to
            a mapping holding them under ``output_key``.
        crf: CRF-RNN head, ``crf(unary: (B, L, H, W), image: (B, 3, H, W)) -> (B, L, H, W)``, with an
            attribute ``num_classes`` (e.g. :class:`crfrnn.CrfRnn`).
        output_key: key of the logits when the backbone returns a mapping (``"out"`` for torchvision's
            segmentation models); ``None`` if it returns a tensor.
        return_unary: if ``True``, ``forward`` returns ``(refined, unary)`` instead of ``refined``, e.g. to
            put a loss on the backbone's own output too.
        check_image_range: if ``True``, ``forward`` checks that the image looks like a 0..255 image
            (this reads the image's minimum and maximum, a device synchronisation on GPU).

    Shape:
        - image: ``(B, 3, H, W)`` RGB on the 0..255 scale.
        - output: ``(B, L, H, W)`` logits, or a pair of them when ``return_unary`` is set.

    Example:
        >>> from crfrnn import CrfRnn
        >>> from crfrnn.models import SmallFCN
        >>> model = CrfRnnSegmenter(SmallFCN(4), CrfRnn(4)).eval()
        >>> image = torch.rand(1, 3, 32, 40) * 255
        >>> model(image).shape
        torch.Size([1, 4, 32, 40])
        >>> model(image, use_crf=False).shape  # the backbone's (up-sampled) logits only
        torch.Size([1, 4, 32, 40])
    """

    def __init__(
        self,
        backbone: nn.Module,
        crf: "CrfRnn",
        *,
        output_key: Optional[str] = None,
        return_unary: bool = False,
        check_image_range: bool = True,
    ) -> None:
        super().__init__()
        if not isinstance(backbone, nn.Module):
            raise TypeError(f"backbone must be a torch.nn.Module, got {type(backbone).__name__}.")
        if not isinstance(crf, nn.Module):
            raise TypeError(f"crf must be a torch.nn.Module (e.g. crfrnn.CrfRnn), got {type(crf).__name__}.")
        num_classes = getattr(crf, "num_classes", None)
        if not isinstance(num_classes, int):
            raise TypeError(
                f"crf must have an int attribute num_classes (as crfrnn.CrfRnn has), "
                f"got {type(crf).__name__} with num_classes={num_classes!r}."
            )
        self.backbone = backbone
        self.crf = crf
        self.output_key = output_key
        self.return_unary = return_unary
        self.check_image_range = check_image_range

    @property
    def num_classes(self) -> int:
        """Number of labels ``L``, that of the CRF head."""
        return self.crf.num_classes

    def _check_image(self, image: Tensor) -> None:
        check_image(image)
        if not self.check_image_range or image.numel() == 0:
            return
        lo, hi = torch.aminmax(image.detach())
        lo, hi = float(lo), float(hi)
        if lo < -1e-3 or hi > 255.0 + 1e-3:
            raise ValueError(
                f"image must be RGB on the 0..255 scale, got values in [{lo:.4g}, {hi:.4g}]. Pass the raw image: "
                "a backbone that expects normalised input should normalise it itself (see the "
                "crfrnn.models.segmenter module docstring), or pass check_image_range=False to skip this check."
            )
        if 0.0 < hi <= 1.0:
            raise ValueError(
                f"image looks like it is on the 0..1 scale (maximum {hi:.4g}), but the CRF's colour kernel "
                "expects 0..255. Multiply it by 255, or pass check_image_range=False if it really is a very "
                "dark 0..255 image."
            )

    def unary(self, image: Tensor) -> Tensor:
        """The backbone's logits, checked and up-sampled to the image size.

        Args:
            image: ``(B, 3, H, W)`` RGB on the 0..255 scale.

        Returns:
            ``(B, L, H, W)`` logits.
        """
        self._check_image(image)
        out = self.backbone(image)
        if self.output_key is not None:
            if not isinstance(out, Mapping):
                raise TypeError(
                    f"output_key={self.output_key!r} was given but the backbone returned a "
                    f"{type(out).__name__}, not a mapping. Pass output_key=None for backbones returning a tensor."
                )
            if self.output_key not in out:
                raise KeyError(
                    f"the backbone's output has no key {self.output_key!r}; its keys are {sorted(map(str, out))}. "
                    "Set output_key to one of them."
                )
            out = out[self.output_key]
        elif isinstance(out, Mapping):
            raise TypeError(
                f"the backbone returned a mapping with keys {sorted(map(str, out))}; pass output_key to say which "
                "entry holds the logits (e.g. output_key='out' for torchvision segmentation models)."
            )
        if not isinstance(out, Tensor) or out.ndim != 4:
            got = f"shape {tuple(out.shape)}" if isinstance(out, Tensor) else f"a {type(out).__name__}"
            raise ValueError(f"the backbone must return logits of shape (B, L, h, w), got {got}.")
        if out.shape[0] != image.shape[0]:
            raise ValueError(
                f"the backbone returned {out.shape[0]} score maps for a batch of {image.shape[0]} images."
            )
        if out.shape[1] != self.num_classes:
            raise ValueError(
                f"the backbone returned {out.shape[1]} classes but the CRF head has num_classes={self.num_classes}. "
                "Build both with the same number of classes."
            )
        if out.shape[-2:] != image.shape[-2:]:
            out = F.interpolate(out, size=image.shape[-2:], mode="bilinear", align_corners=False)
        return out

    def forward(self, image: Tensor, *, use_crf: bool = True) -> Union[Tensor, tuple[Tensor, Tensor]]:
        """Segment a batch of images.

        Args:
            image: ``(B, 3, H, W)`` RGB on the 0..255 scale.
            use_crf: if ``False``, skip the CRF head and return the backbone's logits (as both elements of
                the pair when ``return_unary`` is set).

        Returns:
            ``(B, L, H, W)`` refined logits, or ``(refined, unary)`` if ``return_unary`` is set.
        """
        unary = self.unary(image)
        refined = self.crf(unary, image) if use_crf else unary
        return (refined, unary) if self.return_unary else refined

    def extra_repr(self) -> str:
        return f"output_key={self.output_key!r}, return_unary={self.return_unary}"

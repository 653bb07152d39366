"""A segmentation CNN with a CRF-RNN head on top, trainable end to end (Zheng et al., ICCV 2015).

:class:`CrfRnnSegmenter` composes any backbone that maps a raw image to logits with a CRF-RNN head
(:class:`crfrnn.CrfRnn`) that refines those logits using the image. The backbone is not subclassed or
modified, so a model from another library can be used as is, provided it takes the image on the 0..255
scale. Models that expect a normalised input, or return a dict, need a small adapter. For example,
torchvision's ``deeplabv3_resnet50`` expects ImageNet-normalised input and returns ``{"out": logits}``::

    import torch
    from torch import nn
    from torchvision.models.segmentation import deeplabv3_resnet50

    from crfrnn.crf import CrfRnn
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

import warnings
from collections.abc import Mapping
from typing import TYPE_CHECKING, Optional, Sequence, Union, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from crfrnn.models._utils import check_image

if TYPE_CHECKING:  # pragma: no cover
    from crfrnn.crf import CrfRnn

__all__ = ["CrfRnnSegmenter"]

#: The first training forward warns when the backbone's mean top probability is below
#: ``1/L + _UNTRAINED_MARGIN * (1 - 1/L)``: near-uniform logits, the mark of a freshly initialised backbone.
_UNTRAINED_MARGIN = 0.25


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
        crf_input: module mapping the raw image to the image the CRF's bilateral kernel sees; ``None``
            (the default) gives it the raw 0..255 RGB image. The released CRF-RNN network gave it the
            mean-subtracted BGR network input (:class:`crfrnn.models.fcn8s.CaffeInput`).
        pad_to: ``(H, W)``: pad every image at the bottom and right to this size before the backbone and
            the CRF, and crop the outputs back (the released network ran on 500 x 500). An image larger
            than ``pad_to`` is an error. ``None`` runs at the image's own size.
        pad_value: per-channel RGB value of the padding (default 0). The released network padded its
            mean-subtracted input with zeros, i.e. the raw image with the mean colour.

        safe_start: if ``True``, gate the CRF's contribution with a learnable scalar ``crf_gate`` initialised to
            0: ``forward`` returns ``unary + crf_gate * (crf(unary, image) - unary)``, exactly the backbone's
            logits at initialisation; the CRF's share grows as training finds it useful. For training the CNN
            and the CRF together from scratch (see "Training" below). ``False`` (the default) is the paper's
            network, ``crf(unary, image)``. A state dict without ``crf_gate`` (from a model built without
            ``safe_start``) loads into a gated model as ``crf_gate = 1``, which gives the same output.

    ``crf`` may be ``None`` for the backbone alone (then the backbone must have an int ``num_classes``).

    Training:
        Train the CNN first, then the whole network end to end from it, as the paper did (stage 1
        ``crfrnn train --stage cnn``, stage 2 ``crfrnn train --stage crfrnn --init-from runs/cnn/best.pt``, with
        the CRF's own learning-rate multipliers ``--crf-kernel-lr-mult`` / ``--crf-compat-lr-mult``). A CRF head
        on an untrained backbone is a trap: its pairwise term (kernel weights 3 and 5) is large against the
        near-zero logits of a fresh backbone, so the mean field turns them into confident labels copied from
        neighbouring pixels, and the training loss rises instead of falling (docs/training.md, "Training the
        CRF head from scratch": measured curves). The first training forward through the CRF warns when the
        backbone's logits are near-uniform (mean top probability below ``1/L + (1 - 1/L) / 4``), the mark of
        an untrained backbone. If the two must be trained together from scratch, pass ``safe_start=True``.

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
        crf: Optional["CrfRnn"],
        *,
        output_key: Optional[str] = None,
        return_unary: bool = False,
        check_image_range: bool = True,
        crf_input: Optional[nn.Module] = None,
        pad_to: Optional[tuple[int, int]] = None,
        pad_value: Optional[Sequence[float]] = None,
        safe_start: bool = False,
    ) -> None:
        super().__init__()
        if not isinstance(backbone, nn.Module):
            raise TypeError(f"backbone must be a torch.nn.Module, got {type(backbone).__name__}.")
        if crf is not None and not isinstance(crf, nn.Module):
            raise TypeError(f"crf must be a torch.nn.Module (e.g. crfrnn.CrfRnn), got {type(crf).__name__}.")
        owner = backbone if crf is None else crf
        num_classes = getattr(owner, "num_classes", None)
        if not isinstance(num_classes, int):
            what = "the backbone (crf=None)" if crf is None else "crf"
            raise TypeError(
                f"{what} must have an int attribute num_classes (as crfrnn.CrfRnn has), "
                f"got {type(owner).__name__} with num_classes={num_classes!r}."
            )
        if crf_input is not None and not isinstance(crf_input, nn.Module):
            raise TypeError(f"crf_input must be a torch.nn.Module or None, got {type(crf_input).__name__}.")
        if pad_to is not None:
            pad_to = tuple(pad_to)  # type: ignore[assignment]
            if len(pad_to) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in pad_to):
                raise ValueError(f"pad_to must be None or (H, W) with positive ints, got {pad_to!r}.")
        if pad_value is not None:
            pad_value = tuple(float(v) for v in pad_value)
            if len(pad_value) != 3:
                raise ValueError(f"pad_value must be three numbers (R, G, B), got {pad_value!r}.")
        self.backbone = backbone
        self.crf = crf
        self.output_key = output_key
        self.return_unary = return_unary
        self.check_image_range = check_image_range
        self.crf_input = crf_input
        self.pad_to = pad_to
        self.pad_value = pad_value
        if safe_start and crf is None:
            raise ValueError("safe_start gates the CRF head's contribution, but crf is None; pass a CRF head.")
        self.safe_start = bool(safe_start)
        self.crf_gate: Optional[nn.Parameter]
        if self.safe_start:
            self.crf_gate = nn.Parameter(torch.zeros(()))
        else:
            self.register_parameter("crf_gate", None)  # the paper's network: no gate, nothing in the state dict
        self._backbone_checked = False

    def _check_backbone_trained(self, unary: Tensor) -> None:
        """Warn once, at the first training forward through the CRF, if the backbone's logits are near-uniform."""
        self._backbone_checked = True
        num = unary.shape[1]
        if num < 2 or unary.numel() == 0:
            return
        top = float(unary.detach().float().softmax(1).amax(1).mean())
        limit = 1.0 / num + _UNTRAINED_MARGIN * (1.0 - 1.0 / num)
        if top < limit:
            warnings.warn(
                f"CRF-RNN head on an untrained backbone: its logits are near-uniform (mean top probability "
                f"{top:.3f}; {1.0 / num:.3f} is uniform over {num} labels). Trained from scratch this way, the CRF's "
                "pairwise term dominates the backbone's logits and the loss rises instead of falling. Train the CNN "
                "first (crfrnn train --stage cnn, then --stage crfrnn --init-from its best.pt), or build the model "
                "with safe_start=True (docs/training.md, 'Training the CRF head from scratch').",
                UserWarning,
                stacklevel=2,
            )

    def _load_from_state_dict(
        self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
    ):
        # A state dict of an ungated model (e.g. a stage-2 checkpoint) loads into a gated one as gate 1: same output.
        key = prefix + "crf_gate"
        has_crf = any(k.startswith(prefix + "crf.") for k in state_dict)
        if self.crf_gate is not None and key not in state_dict and has_crf:
            state_dict[key] = torch.ones((), dtype=self.crf_gate.dtype, device=self.crf_gate.device)
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )

    @property
    def num_classes(self) -> int:
        """Number of labels ``L``, that of the CRF head (of the backbone when there is no CRF)."""
        return cast(int, (self.backbone if self.crf is None else self.crf).num_classes)

    def _check_image(self, image: Tensor) -> None:
        check_image(image)
        if not self.check_image_range or image.numel() == 0:
            return
        lo_t, hi_t = torch.aminmax(image.detach())
        lo, hi = float(lo_t), float(hi_t)
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

    def pad(self, image: Tensor) -> Tensor:
        """The image padded at the bottom and right to ``pad_to`` with ``pad_value`` (unchanged without ``pad_to``).

        Raises:
            ValueError: if the image is larger than ``pad_to``; the message says how to fix it.
        """
        if self.pad_to is None:
            return image
        (h, w), (ph, pw) = image.shape[-2:], self.pad_to
        if h > ph or w > pw:
            raise ValueError(
                f"image of {h} x {w} pixels (H x W) does not fit the network's {ph} x {pw} input: the released "
                f"CRF-RNN network ran on images padded to {ph} x {pw}. Resize the image so that it fits (e.g. "
                f"crfrnn segment --resize shrink, or scale it by {min(ph / h, pw / w):.4g}), or build the model "
                "with pad_to=None to run it at the image's own size (not how it was trained)."
            )
        if (h, w) == (ph, pw):
            return image
        out = image.new_empty(*image.shape[:-2], ph, pw)
        fill = (0.0, 0.0, 0.0) if self.pad_value is None else self.pad_value
        out[:] = torch.tensor(fill, dtype=image.dtype, device=image.device).view(1, 3, 1, 1)
        out[..., :h, :w] = image
        return out

    def unary(self, image: Tensor) -> Tensor:
        """The backbone's logits, checked and up-sampled to the image size.

        With ``pad_to``, the backbone runs on the padded image and the logits are cropped back.

        Args:
            image: ``(B, 3, H, W)`` RGB on the 0..255 scale.

        Returns:
            ``(B, L, H, W)`` logits.
        """
        self._check_image(image)
        h, w = image.shape[-2:]
        return self._unary(self.pad(image))[..., :h, :w]

    def _unary(self, image: Tensor) -> Tensor:
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
            raise ValueError(f"the backbone returned {out.shape[0]} score maps for a batch of {image.shape[0]} images.")
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
            use_crf: if ``False`` (or if there is no CRF head), skip the CRF head and return the backbone's
                logits (as both elements of the pair when ``return_unary`` is set).

        Returns:
            ``(B, L, H, W)`` refined logits, or ``(refined, unary)`` if ``return_unary`` is set.
        """
        self._check_image(image)
        h, w = image.shape[-2:]
        padded = self.pad(image)
        unary = self._unary(padded)
        if use_crf and self.crf is not None:
            if self.training and not self.safe_start and not self._backbone_checked and torch.is_grad_enabled():
                self._check_backbone_trained(unary)
            guide = padded if self.crf_input is None else self.crf_input(padded)
            refined = self.crf(unary, guide)[..., :h, :w]
            unary = unary[..., :h, :w]
            if self.crf_gate is not None:
                refined = unary + self.crf_gate * (refined - unary)
        else:
            refined = unary = unary[..., :h, :w]
        return (refined, unary) if self.return_unary else refined

    def extra_repr(self) -> str:
        """The output key, whether the unary is returned, and the options set, for ``repr(module)``."""
        extra = f", pad_to={self.pad_to}" if self.pad_to is not None else ""
        extra += ", safe_start=True" if self.safe_start else ""
        return f"output_key={self.output_key!r}, return_unary={self.return_unary}{extra}"

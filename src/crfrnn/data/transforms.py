"""Paired transforms for ``(image, mask)`` samples.

Every transform is a callable ``t(image, mask) -> (image, mask)`` with ``image`` a float ``(C, H, W)``
tensor (RGB on 0..255 in this package) and ``mask`` an integer ``(H, W)`` tensor (255 = ignore). Geometric
transforms move image and mask together, so they stay pixel-aligned.

Randomness comes from the ``generator`` given to a transform or, when it is ``None`` (the default), from the
global torch RNG. Leave it ``None`` when loading with ``DataLoader(num_workers > 0)``: the loader seeds the
global RNG of every worker differently (from its own base seed, which ``torch.manual_seed`` or the loader's
``generator`` fixes), whereas a generator stored in the transform is copied into every worker and would make
all workers draw the same numbers.

Batching: fixed-size crops (``RandomCrop((h, w))`` for training; ``CenterCrop`` or ``PadTo`` for evaluation)
make every sample the same size, so the default collate works.
"""

from __future__ import annotations

from typing import Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F

from crfrnn.data._io import Sample, Transform

__all__ = ["CenterCrop", "Compose", "PadTo", "RandomCrop", "RandomHorizontalFlip", "RandomScale"]

SizeLike = Union[int, Sequence[int]]
PadValue = Optional[Union[float, Sequence[float]]]


def _check_pair(image: torch.Tensor, mask: torch.Tensor, name: str) -> None:
    if not isinstance(image, torch.Tensor) or image.ndim != 3:
        got = f"a tensor of shape {tuple(image.shape)}" if isinstance(image, torch.Tensor) else type(image).__name__
        raise ValueError(f"{name}: expected image as a (C, H, W) tensor, got {got}.")
    if not image.is_floating_point():
        raise TypeError(
            f"{name}: expected a floating point image, got dtype {image.dtype}. Convert it with image.float()."
        )
    if not isinstance(mask, torch.Tensor) or mask.ndim != 2:
        got = f"a tensor of shape {tuple(mask.shape)}" if isinstance(mask, torch.Tensor) else type(mask).__name__
        raise ValueError(f"{name}: expected mask as an (H, W) tensor, got {got}.")
    if tuple(image.shape[-2:]) != tuple(mask.shape):
        raise ValueError(
            f"{name}: image (C, H, W) = {tuple(image.shape)} and mask (H, W) = {tuple(mask.shape)} differ in "
            "size; the data set must return a mask of exactly the image size."
        )


def _pair_size(size: SizeLike, name: str) -> Tuple[int, int]:
    if isinstance(size, int) and not isinstance(size, bool):
        size = (size, size)
    try:
        h, w = (int(s) for s in size)  # type: ignore[union-attr]
        ok = all(float(s) == int(s) for s in size) and h > 0 and w > 0  # type: ignore[union-attr]
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ValueError(f"{name}: size must be a positive int or a pair (height, width) of them, got {size!r}.")
    return h, w


def fill_value(image: torch.Tensor, pad_value: PadValue, name: str) -> torch.Tensor:
    """Per-channel fill value ``(C,)``: the image's mean colour when ``pad_value`` is None."""
    c = image.shape[0]
    if pad_value is None:
        return image.mean(dim=(1, 2)) if image.numel() else image.new_zeros(c)
    fill = torch.as_tensor(pad_value, dtype=image.dtype, device=image.device).reshape(-1)
    if fill.numel() == 1:
        return fill.expand(c)
    if fill.numel() != c:
        raise ValueError(
            f"{name}: pad_value must be a scalar or have one value per image channel ({c}), got {pad_value!r}."
        )
    return fill


def crop_pad(
    image: torch.Tensor,
    mask: torch.Tensor,
    top: int,
    left: int,
    height: int,
    width: int,
    fill: torch.Tensor,
    ignore_index: int,
) -> Sample:
    """The window ``[top, top + height) x [left, left + width)`` of the image; outside pixels are padded.

    ``top``/``left`` may be negative and the window may extend past the image: the parts outside the image
    get ``fill`` (image) and ``ignore_index`` (mask).
    """
    h, w = mask.shape
    if top == 0 and left == 0 and height == h and width == w:
        return image, mask
    out_img = fill.to(image.dtype).view(-1, 1, 1).expand(image.shape[0], height, width).clone()
    out_mask = torch.full((height, width), ignore_index, dtype=mask.dtype, device=mask.device)
    y0, y1 = max(top, 0), min(top + height, h)
    x0, x1 = max(left, 0), min(left + width, w)
    if y0 < y1 and x0 < x1:
        out_img[:, y0 - top : y1 - top, x0 - left : x1 - left] = image[:, y0:y1, x0:x1]
        out_mask[y0 - top : y1 - top, x0 - left : x1 - left] = mask[y0:y1, x0:x1]
    return out_img, out_mask


def _randint(low: int, high: int, generator: Optional[torch.Generator]) -> int:
    """Uniform integer in ``[low, high]`` (inclusive)."""
    if high <= low:
        return low
    return int(torch.randint(low, high + 1, (), generator=generator))


class Compose:
    """Apply paired transforms in sequence.

    Args:
        transforms: callables ``(image, mask) -> (image, mask)``.

    Example:
        >>> t = Compose([RandomHorizontalFlip(p=1.0), RandomCrop(4)])
        >>> img, msk = t(torch.zeros(3, 8, 8), torch.zeros(8, 8, dtype=torch.long))
        >>> tuple(img.shape), tuple(msk.shape)
        ((3, 4, 4), (4, 4))
    """

    def __init__(self, transforms: Sequence[Transform]) -> None:
        self.transforms = list(transforms)
        for t in self.transforms:
            if not callable(t):
                raise TypeError(f"Compose: every transform must be callable, got {t!r}.")

    def __call__(self, image: torch.Tensor, mask: torch.Tensor) -> Sample:
        """Apply each transform in turn.

        Args:
            image: ``(C, H, W)`` float image.
            mask: ``(H, W)`` integer label mask.

        Returns:
            The transformed ``(image, mask)``, still pixel-aligned.
        """
        for t in self.transforms:
            image, mask = t(image, mask)
        return image, mask

    def __repr__(self) -> str:
        inner = "".join(f"\n    {t!r}," for t in self.transforms)
        return f"Compose([{inner}\n])"


class RandomScale:
    """Resize by a factor drawn uniformly from ``[min_scale, max_scale]``.

    The image is resampled bilinearly (anti-aliased when shrinking), the mask with nearest neighbour
    (``"nearest-exact"``, which samples the same pixel-centre positions as the bilinear image resampling).
    The output size is ``round(H * s) x round(W * s)`` (at least 1).

    Args:
        min_scale: smallest factor, > 0.
        max_scale: largest factor, >= min_scale.
        generator: optional ``torch.Generator``; the global torch RNG when None.
    """

    def __init__(self, min_scale: float, max_scale: float, *, generator: Optional[torch.Generator] = None) -> None:
        if not (0 < min_scale <= max_scale):
            raise ValueError(
                f"RandomScale: expected 0 < min_scale <= max_scale, got min_scale={min_scale}, max_scale={max_scale}."
            )
        self.min_scale = float(min_scale)
        self.max_scale = float(max_scale)
        self.generator = generator

    def __call__(self, image: torch.Tensor, mask: torch.Tensor) -> Sample:
        """Resize the pair by a random factor in ``[min_scale, max_scale]``.

        Args:
            image: ``(C, H, W)`` float image.
            mask: ``(H, W)`` integer label mask.

        Returns:
            The transformed ``(image, mask)``, resized alike.
        """
        _check_pair(image, mask, "RandomScale")
        u = float(torch.rand((), generator=self.generator))
        s = self.min_scale + (self.max_scale - self.min_scale) * u
        h, w = mask.shape
        size = (max(1, round(h * s)), max(1, round(w * s)))
        if size == (h, w):
            return image, mask
        shrink = size[0] < h or size[1] < w
        img = F.interpolate(image[None], size=size, mode="bilinear", align_corners=False, antialias=shrink)[0]
        msk = F.interpolate(mask[None, None].to(torch.float32), size=size, mode="nearest-exact")[0, 0]
        return img, msk.round().to(mask.dtype)

    def __repr__(self) -> str:
        return f"RandomScale(min_scale={self.min_scale}, max_scale={self.max_scale})"


class RandomCrop:
    """Crop a random ``size`` window; pad first where the image is smaller than ``size``.

    Along an axis where the image is larger than the crop, the window starts at a uniformly drawn offset;
    where it is smaller, the whole image is placed at a uniformly drawn offset inside the crop and the rest
    is padded: the image with ``pad_value`` (its own mean colour when None, which biases neither the network
    nor the CRF's colour kernel), the mask with ``ignore_index`` so padding never counts in the loss.

    Args:
        size: crop size, an int or ``(height, width)``.
        pad_value: image fill, a scalar or one value per channel; the per-image mean colour when None.
        ignore_index: mask fill.
        generator: optional ``torch.Generator``; the global torch RNG when None.
    """

    def __init__(
        self,
        size: SizeLike,
        *,
        pad_value: PadValue = None,
        ignore_index: int = 255,
        generator: Optional[torch.Generator] = None,
    ) -> None:
        self.size = _pair_size(size, "RandomCrop")
        self.pad_value = pad_value
        self.ignore_index = int(ignore_index)
        self.generator = generator

    def __call__(self, image: torch.Tensor, mask: torch.Tensor) -> Sample:
        """Crop ``size`` out of the pair at a random position (padded where the pair is smaller).

        Args:
            image: ``(C, H, W)`` float image.
            mask: ``(H, W)`` integer label mask.

        Returns:
            The ``(image, mask)`` crops, ``(C, *size)`` and ``size``.
        """
        _check_pair(image, mask, "RandomCrop")
        (ch, cw), (h, w) = self.size, mask.shape
        top = _randint(min(0, h - ch), max(0, h - ch), self.generator)
        left = _randint(min(0, w - cw), max(0, w - cw), self.generator)
        fill = fill_value(image, self.pad_value, "RandomCrop")
        return crop_pad(image, mask, top, left, ch, cw, fill, self.ignore_index)

    def __repr__(self) -> str:
        return f"RandomCrop(size={self.size}, pad_value={self.pad_value}, ignore_index={self.ignore_index})"


class CenterCrop:
    """Crop the central ``size`` window, padding evenly on both sides where the image is smaller.

    Args:
        size: crop size, an int or ``(height, width)``.
        pad_value: image fill, a scalar or one value per channel; the per-image mean colour when None.
        ignore_index: mask fill.
    """

    def __init__(self, size: SizeLike, *, pad_value: PadValue = None, ignore_index: int = 255) -> None:
        self.size = _pair_size(size, "CenterCrop")
        self.pad_value = pad_value
        self.ignore_index = int(ignore_index)

    def __call__(self, image: torch.Tensor, mask: torch.Tensor) -> Sample:
        """Crop ``size`` out of the middle of the pair (padded where the pair is smaller).

        Args:
            image: ``(C, H, W)`` float image.
            mask: ``(H, W)`` integer label mask.

        Returns:
            The ``(image, mask)`` crops, ``(C, *size)`` and ``size``.
        """
        _check_pair(image, mask, "CenterCrop")
        (ch, cw), (h, w) = self.size, mask.shape
        fill = fill_value(image, self.pad_value, "CenterCrop")
        return crop_pad(image, mask, (h - ch) // 2, (w - cw) // 2, ch, cw, fill, self.ignore_index)

    def __repr__(self) -> str:
        return f"CenterCrop(size={self.size}, pad_value={self.pad_value}, ignore_index={self.ignore_index})"


class PadTo:
    """Pad at the bottom and right to at least ``size`` (never crops), like the paper's 500x500 input.

    Because the original image stays at the top-left corner, predictions are cropped back with
    ``pred[..., :H, :W]``.

    Args:
        size: minimum output size, an int or ``(height, width)``.
        pad_value: image fill, a scalar or one value per channel; the per-image mean colour when None.
        ignore_index: mask fill.
    """

    def __init__(self, size: SizeLike, *, pad_value: PadValue = None, ignore_index: int = 255) -> None:
        self.size = _pair_size(size, "PadTo")
        self.pad_value = pad_value
        self.ignore_index = int(ignore_index)

    def __call__(self, image: torch.Tensor, mask: torch.Tensor) -> Sample:
        """Pad the pair at the bottom and right to at least ``size``.

        Args:
            image: ``(C, H, W)`` float image.
            mask: ``(H, W)`` integer label mask.

        Returns:
            The padded ``(image, mask)``, ``(C, max(H, h), max(W, w))`` and ``(max(H, h), max(W, w))``.
        """
        _check_pair(image, mask, "PadTo")
        (th, tw), (h, w) = self.size, mask.shape
        fill = fill_value(image, self.pad_value, "PadTo")
        return crop_pad(image, mask, 0, 0, max(h, th), max(w, tw), fill, self.ignore_index)

    def __repr__(self) -> str:
        return f"PadTo(size={self.size}, pad_value={self.pad_value}, ignore_index={self.ignore_index})"


class RandomHorizontalFlip:
    """Mirror image and mask left-right with probability ``p``.

    Args:
        p: flip probability in [0, 1].
        generator: optional ``torch.Generator``; the global torch RNG when None.
    """

    def __init__(self, p: float = 0.5, *, generator: Optional[torch.Generator] = None) -> None:
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"RandomHorizontalFlip: p must be a probability in [0, 1], got {p}.")
        self.p = float(p)
        self.generator = generator

    def __call__(self, image: torch.Tensor, mask: torch.Tensor) -> Sample:
        """Flip the pair left to right with probability ``p``.

        Args:
            image: ``(C, H, W)`` float image.
            mask: ``(H, W)`` integer label mask.

        Returns:
            The transformed ``(image, mask)``, still pixel-aligned.
        """
        _check_pair(image, mask, "RandomHorizontalFlip")
        if float(torch.rand((), generator=self.generator)) < self.p:
            return image.flip(-1), mask.flip(-1)
        return image, mask

    def __repr__(self) -> str:
        return f"RandomHorizontalFlip(p={self.p})"

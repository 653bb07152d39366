"""Batching variable-size ``(image, mask)`` samples."""

from __future__ import annotations

from typing import Sequence, Tuple

import torch

from crfrnn.data._io import Sample
from crfrnn.data.transforms import PadValue, crop_pad, fill_value

__all__ = ["pad_collate"]


def pad_collate(
    batch: Sequence[Sample],
    *,
    pad_value: PadValue = None,
    ignore_index: int = 255,
    size_divisor: int = 1,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Stack samples of different sizes by padding each at the bottom/right to the largest size.

    Use as ``DataLoader(ds, batch_size=4, collate_fn=pad_collate)`` (or ``functools.partial`` for the
    options). Padded mask pixels are ``ignore_index``, so they never count in the loss or the metrics, and
    the original image of sample ``b`` is ``images[b, :, :H_b, :W_b]``.

    Args:
        batch: sequence of ``(image (C, H_b, W_b), mask (H_b, W_b))``.
        pad_value: image fill, a scalar or one value per channel; each image's mean colour when None.
        ignore_index: mask fill.
        size_divisor: round the padded size up to a multiple of this (e.g. the network's output stride).

    Returns:
        ``images (B, C, H, W)`` and ``masks (B, H, W)``.

    Example:
        >>> batch = [(torch.zeros(3, 5, 7), torch.zeros(5, 7, dtype=torch.long)),
        ...          (torch.zeros(3, 6, 4), torch.zeros(6, 4, dtype=torch.long))]
        >>> images, masks = pad_collate(batch, size_divisor=8)
        >>> tuple(images.shape), tuple(masks.shape), int(masks[1, 0, 5])
        ((2, 3, 8, 8), (2, 8, 8), 255)
    """
    if len(batch) == 0:
        raise ValueError("pad_collate: got an empty batch.")
    if size_divisor < 1:
        raise ValueError(f"pad_collate: size_divisor must be >= 1, got {size_divisor}.")
    for k, sample in enumerate(batch):
        if not (isinstance(sample, (tuple, list)) and len(sample) == 2):
            raise TypeError(f"pad_collate: sample {k} is not an (image, mask) pair: {type(sample).__name__}.")
        image, mask = sample
        if image.ndim != 3 or mask.ndim != 2 or tuple(image.shape[-2:]) != tuple(mask.shape):
            raise ValueError(
                f"pad_collate: sample {k} has image {tuple(image.shape)} and mask {tuple(mask.shape)}; expected "
                "(C, H, W) and (H, W) of the same size."
            )
    h = max(int(m.shape[0]) for _, m in batch)
    w = max(int(m.shape[1]) for _, m in batch)
    h = -(-h // size_divisor) * size_divisor
    w = -(-w // size_divisor) * size_divisor
    padded = [
        crop_pad(img, msk, 0, 0, h, w, fill_value(img, pad_value, "pad_collate"), int(ignore_index))
        for img, msk in batch
    ]
    return torch.stack([p[0] for p in padded]), torch.stack([p[1] for p in padded])

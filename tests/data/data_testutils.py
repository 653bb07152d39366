"""Constants and builders for the tiny VOC / SBD trees used by the crfrnn.data tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

# id -> (height, width). "2008_000006" has a VOC mask but is in neither VOC list (like an extra annotation).
VOC_IDS = {
    "2007_000032": (20, 28),
    "2007_000039": (24, 24),
    "2007_000063": (18, 30),
    "2007_000068": (22, 26),
    "2007_000121": (16, 20),
    "2008_000006": (20, 20),
}
VOC_SPLITS = {
    "train": ["2007_000032", "2007_000039", "2007_000063"],
    "val": ["2007_000068", "2007_000121"],
}
# SBD: "2007_000039" overlaps VOC train, "2007_000068"/"2007_000121" are in VOC val, "2008_000006" has a VOC
# mask; "2009_000001", "2009_000002", "2009_000003" exist only in SBD.
SBD_IDS = {
    "2007_000039": (24, 24),
    "2007_000068": (22, 26),
    "2007_000121": (16, 20),
    "2008_000006": (20, 20),
    "2009_000001": (14, 18),
    "2009_000002": (20, 16),
    "2009_000003": (12, 12),
}
SBD_SPLITS = {
    "train": ["2007_000039", "2007_000068", "2009_000001", "2008_000006"],
    "val": ["2007_000121", "2009_000002", "2009_000003"],
}


def make_image(h: int, w: int, seed: int) -> np.ndarray:
    """A smooth colour image (JPEG keeps it close to the original)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = rng.uniform(40, 200, 3)
    img = base + 3.0 * (yy[..., None] - h / 2) * rng.uniform(-1, 1, 3) + 2.0 * (xx[..., None] - w / 2)
    return np.clip(img, 0, 255).astype(np.uint8)


def make_mask(h: int, w: int, seed: int, with_void: bool = True) -> np.ndarray:
    rng = np.random.default_rng(seed + 1000)
    mask = np.zeros((h, w), dtype=np.uint8)
    cls = int(rng.integers(1, 21))
    mask[h // 4 : 3 * h // 4, w // 4 : 3 * w // 4] = cls
    if with_void:
        mask[h // 4 - 1, w // 4 : 3 * w // 4] = 255
        mask[:, 0] = 255
    return mask


def write_jpeg(path: Path, arr: np.ndarray) -> None:
    Image.fromarray(arr).save(path, format="JPEG", quality=98)

"""Label maps as palette PNGs, and the PASCAL VOC colour palette.

Segmentation masks are stored the way PASCAL VOC stores them: 8-bit palette ("P" mode) PNGs whose pixel
values *are* the class indices, so ``np.array(PIL.Image.open(path))`` gives the labels and any image viewer
shows them in colour. Index 255 is the "void"/ignore label.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
from PIL import Image

from crfrnn._utils.files import PathLike, atomic_save_image
from crfrnn._utils.images import open_image

__all__ = ["color_palette", "colorize", "load_label_png", "save_label_png"]

# Modes whose pixel values are class indices. Anything else (RGB, RGBA, LA, ...) is a colour image.
_INDEX_MODES = ("P", "L", "1", "I", "I;16", "I;16B", "I;16L")


def color_palette(num_colors: int = 256) -> np.ndarray:
    """The standard PASCAL VOC colour palette.

    The colour of index ``i`` is built by interleaving the bits of ``i`` into the most significant bits
    of R, G and B (bit 0 -> R, bit 1 -> G, bit 2 -> B, then the next three bits one position lower, ...).
    Index 0 is black, 1 is (128, 0, 0), 15 (person) is (192, 128, 128) and 255 (void) is (224, 224, 192).

    Args:
        num_colors: number of palette entries, between 1 and 256.

    Returns:
        ``(num_colors, 3)`` uint8 array.

    Example:
        >>> color_palette()[[0, 1, 15, 255]].tolist()
        [[0, 0, 0], [128, 0, 0], [192, 128, 128], [224, 224, 192]]
    """
    if isinstance(num_colors, bool) or not isinstance(num_colors, (int, np.integer)) or not 1 <= num_colors <= 256:
        raise ValueError(
            f"color_palette: num_colors must be an int between 1 and 256, got {num_colors!r}. "
            "An 8-bit palette PNG cannot hold more than 256 colours."
        )
    idx = np.arange(num_colors, dtype=np.int64)
    palette = np.zeros((num_colors, 3), dtype=np.int64)
    c = idx.copy()
    for j in range(8):
        for ch in range(3):
            palette[:, ch] |= ((c >> ch) & 1) << (7 - j)
        c >>= 3
    return palette.astype(np.uint8)


def _as_label_array(labels: Any, fn: str) -> np.ndarray:
    if hasattr(labels, "detach"):  # torch.Tensor without importing torch here
        labels = labels.detach().cpu().numpy()
    arr = np.asarray(labels)
    if arr.ndim != 2:
        raise ValueError(
            f"{fn}: expected a label map of shape (H, W), got an array of shape {tuple(arr.shape)}. "
            "Pass one label map at a time (index the batch and squeeze the channel dimension)."
        )
    if arr.dtype == np.bool_:
        arr = arr.astype(np.uint8)
    if not np.issubdtype(arr.dtype, np.integer):
        if np.issubdtype(arr.dtype, np.floating) and np.all(np.isfinite(arr)) and np.all(arr == np.round(arr)):
            arr = arr.astype(np.int64)
        else:
            raise TypeError(
                f"{fn}: expected an integer label map, got dtype {arr.dtype} with non-integer values. "
                "Take the argmax over classes first."
            )
    if arr.size and (arr.min() < 0 or arr.max() > 255):
        raise ValueError(
            f"{fn}: label values must lie in [0, 255] (255 = void), got values in "
            f"[{int(arr.min())}, {int(arr.max())}]. An 8-bit label PNG cannot store them."
        )
    return arr


def colorize(labels: Any) -> np.ndarray:
    """Colour a label map with the VOC palette.

    Args:
        labels: integer label map ``(H, W)`` (numpy array or CPU/GPU tensor) with values in [0, 255].

    Returns:
        ``(H, W, 3)`` uint8 RGB image.

    Example:
        >>> colorize(np.array([[0, 1], [15, 255]])).reshape(-1, 3).tolist()
        [[0, 0, 0], [128, 0, 0], [192, 128, 128], [224, 224, 192]]
    """
    arr = _as_label_array(labels, "colorize")
    return color_palette(256)[arr.astype(np.intp)]


def save_label_png(path: PathLike, labels: Any) -> None:
    """Write a label map as an 8-bit palette PNG (mode "P", VOC palette).

    Args:
        path: destination file; its parent directory must exist.
        labels: integer label map ``(H, W)`` with values in [0, 255] (255 = void).
    """
    arr = _as_label_array(labels, "save_label_png").astype(np.uint8)
    img = Image.fromarray(np.ascontiguousarray(arr))  # mode "L"; putpalette turns it into "P" unchanged
    img.putpalette(color_palette(256).reshape(-1).tolist())
    parent = os.path.dirname(os.fspath(path))
    if parent and not os.path.isdir(parent):
        raise FileNotFoundError(
            f"save_label_png: directory '{parent}' does not exist (writing '{os.fspath(path)}'). Create it first."
        )
    atomic_save_image(img, path, format="PNG")  # never a truncated PNG, even if interrupted


def load_label_png(path: PathLike) -> np.ndarray:
    """Read a label map from a palette or single-channel index PNG.

    The pixel values are returned as they are stored (for a palette PNG: palette indices, not colours).

    Args:
        path: a mode "P" (palette) or single-channel ("L", "I", "I;16", "1") image file.

    Returns:
        ``(H, W)`` int64 array.

    Raises:
        FileNotFoundError: the file does not exist.
        OSError: the file cannot be decoded (corrupt or truncated); the message names the path.
        ValueError: the file is a colour (RGB/RGBA/...) image instead of an index image, or larger than
            Pillow's decoding limit (``PIL.Image.MAX_IMAGE_PIXELS``, a guard against decompression bombs).
    """
    path = os.fspath(path)
    with open_image(path, what="label file", hint="; re-create or re-download it.") as img:
        mode = img.mode
        if mode in _INDEX_MODES:
            img.load()
            arr = np.array(img)
    if mode not in _INDEX_MODES:
        raise ValueError(
            f"label file '{path}' is a colour image (PIL mode '{mode}'), but label maps must be palette "
            "('P') or single-channel index PNGs whose pixel values are the class indices. Convert colour-coded "
            "masks to index maps first (map each colour to its class index, e.g. by matching against "
            "crfrnn.data.color_palette()) and write them with crfrnn.data.save_label_png."
        )
    return arr.astype(np.int64)

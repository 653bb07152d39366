"""Decoding image files with Pillow: the one reader of every part of crfrnn, guarded against decompression bombs.

:func:`open_image` opens a file with Pillow's decompression-bomb guard made an error (an image above
``PIL.Image.MAX_IMAGE_PIXELS`` pixels is refused before it is decoded, not only warned about) and turns
Pillow's many kinds of decoding errors into one :class:`OSError` that names the file; :func:`read_rgb`
decodes through it to ``(H, W, 3)`` uint8 RGB (16-bit grey scaled by 255/65535, floating-point grey in [0, 1]
by 255; images it cannot map to 0..255 are refused, not clipped). The data sets, the label-map reader and
:mod:`crfrnn.io` all read images through these two.

Parameters named in messages are written in backticks (`PIL.Image.MAX_IMAGE_PIXELS`), so that the command
line can name its own flags instead.
"""

from __future__ import annotations

import os
import warnings
from contextlib import contextmanager
from typing import Iterator

import numpy as np
from PIL import Image

from crfrnn._utils.files import PathLike

__all__ = ["bomb_message", "open_image", "read_rgb"]


def bomb_message(path: str, err: BaseException, what: str = "image") -> str:
    """The message for an image above Pillow's decoding limit (``PIL.Image.MAX_IMAGE_PIXELS``)."""
    return (
        f"{what} '{path}' is larger than the decoding limit of {Image.MAX_IMAGE_PIXELS} pixels (Pillow's guard "
        f"against decompression bombs: {err}). If you trust the file, raise the limit "
        "(`PIL.Image.MAX_IMAGE_PIXELS`); check the memory it needs first."
    )


@contextmanager
def open_image(path: PathLike, *, what: str = "image", hint: str = "") -> Iterator[Image.Image]:
    """Open an image file with Pillow, guarded against decompression bombs, for decoding inside the block.

    Args:
        path: the file.
        what: what the file is, for messages (``"image"``, ``"image file"``, ``"label file"``).
        hint: what to do about a file that cannot be decoded, appended to that message (e.g.
            ``"; re-download it"``).

    Raises:
        FileNotFoundError: no such file.
        ValueError: the image has more pixels than ``PIL.Image.MAX_IMAGE_PIXELS`` (a decompression bomb).
        OSError: the file cannot be opened or decoded (in the block too); the message names it.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{what} not found: '{path}'")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                yield img
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ValueError(bomb_message(path, e, what)) from e
    except Exception as e:  # Pillow raises OSError, SyntaxError, ValueError, EOFError, ... on bad data
        raise OSError(
            f"could not read {what} '{path}': {type(e).__name__}: {e}. "
            f"The file is corrupt, truncated or not an image{hint or '.'}"
        ) from e


def _to_8_bit(data: np.ndarray, mode: str, sixteen_bit: bool, path: str, what: str) -> np.ndarray:
    """The 0..255 grey levels of a one-channel image that Pillow holds in more than 8 bits (see :func:`read_rgb`)."""
    if sixteen_bit:
        wide = data.astype(np.uint32)
        return ((wide * 255 + 32767) // 65535).astype(np.uint8)  # v * 255 / 65535, rounded
    if mode == "F":
        if not np.isfinite(data).all():
            raise ValueError(f"{what} '{path}' holds NaN or infinite pixels; it cannot be read as intensities.")
        lo, hi = float(data.min()), float(data.max())
        if lo < 0.0 or hi > 1.0:
            raise ValueError(
                f"{what} '{path}' holds floating-point pixels spanning {lo:g}..{hi:g}; floating-point images are "
                "read as intensities in [0, 1] (scaled by 255). Rescale it to [0, 1], or save it as 8-bit."
            )
        return np.round(data.astype(np.float64) * 255.0).astype(np.uint8)
    raise ValueError(
        f"{what} '{path}' holds 32-bit integer pixels (Pillow mode '{mode}'), which have no fixed range to map to "
        "0..255; save it as an 8-bit or 16-bit image (16-bit is scaled by 255/65535)."
    )


def read_rgb(path: PathLike, *, what: str = "image", hint: str = "") -> np.ndarray:
    """Read any image Pillow decodes as ``(H, W, 3)`` uint8 RGB (grey is replicated, alpha dropped).

    Images of more than 8 bits per channel are mapped to 0..255, never clipped: 16-bit grey (PNG, TIFF: Pillow's
    ``I;16`` modes) is scaled by ``255 / 65535`` and rounded, floating-point grey (``F``, e.g. a float TIFF) is read
    as intensities in ``[0, 1]`` and scaled by 255. Floating-point images outside ``[0, 1]`` (or with NaN) and
    32-bit integer images (``I``, which have no fixed range) are refused. 16-bit colour is reduced to 8 bits by
    Pillow itself.

    Args:
        path: the file.
        what: what the file is, for messages.
        hint: what to do about a file that cannot be decoded, appended to that message.

    Raises:
        FileNotFoundError: no such file.
        ValueError: the image is empty, larger than Pillow's decoding limit, or of a mode with no mapping to
            0..255 (see above).
        OSError: the file is not a readable image; the message names it.
    """
    with open_image(path, what=what, hint=hint) as img:
        mode = img.mode
        wide = mode in ("I", "F") or mode.startswith("I;16")
        # a 16-bit grey PNG: mode "I;16" in Pillow >= 10, "I" before (PNG has no 32-bit integer pixels)
        sixteen_bit = mode.startswith("I;16") or (mode == "I" and img.format == "PNG")
        data = np.array(img) if wide else np.array(img.convert("RGB"), dtype=np.uint8)
    if data.size == 0:
        raise ValueError(f"{what} '{os.fspath(path)}' is empty ({data.shape[1]}x{data.shape[0]} pixels).")
    if wide:
        grey = _to_8_bit(data, mode, sixteen_bit, os.fspath(path), what)
        data = np.repeat(grey[..., None], 3, axis=2)
    return data

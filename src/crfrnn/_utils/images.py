"""Decoding image files with Pillow: the one reader of every part of crfrnn, guarded against decompression bombs.

:func:`open_image` opens a file with Pillow's decompression-bomb guard made an error (an image above
``PIL.Image.MAX_IMAGE_PIXELS`` pixels is refused before it is decoded, not only warned about) and turns
Pillow's many kinds of decoding errors into one :class:`OSError` that names the file; :func:`read_rgb`
decodes through it to ``(H, W, 3)`` uint8 RGB. The data sets, the label-map reader and :mod:`crfrnn.io`
all read images through these two.

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


def read_rgb(path: PathLike, *, what: str = "image", hint: str = "") -> np.ndarray:
    """Read any image Pillow decodes as ``(H, W, 3)`` uint8 RGB (grey is replicated, alpha dropped).

    Args:
        path: the file.
        what: what the file is, for messages.
        hint: what to do about a file that cannot be decoded, appended to that message.

    Raises:
        FileNotFoundError: no such file.
        ValueError: the image is empty, or larger than Pillow's decoding limit.
        OSError: the file is not a readable image; the message names it.
    """
    with open_image(path, what=what, hint=hint) as img:
        rgb = np.array(img.convert("RGB"), dtype=np.uint8)
    if rgb.size == 0:
        raise ValueError(f"{what} '{os.fspath(path)}' is empty ({rgb.shape[1]}x{rgb.shape[0]} pixels).")
    return rgb

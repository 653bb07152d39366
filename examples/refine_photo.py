"""Make the README picture of ``crfrnn refine``: a blobby, CNN-like segmentation snapped to a photo's edges.

The photo (``skimage.data.astronaut()``) ships inside scikit-image, so nothing is downloaded; scikit-image is not
a dependency of crfrnn (the ``test`` and ``parity`` extras install it): ``pip install scikit-image`` first.
A deliberately coarse unary stands in for a network's output: a few hand-placed regions (background, person, helmet),
averaged over 16 x 16 cells, perturbed with noise per cell and upsampled bilinearly, the way a stride-16
network's scores look. The script saves the photo and the probabilities to a working directory, runs the
real command line on them and prints the command it ran::

    python examples/refine_photo.py                      # writes docs/images/refine_example.png
    python examples/refine_photo.py --workdir out/ --overlay out/compare.png
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import tempfile
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image, ImageDraw

from crfrnn.cli import main as crfrnn_main

ROOT = Path(__file__).resolve().parent.parent


def load_photo(name: str, width: int) -> np.ndarray:
    """A scikit-image sample photo resized to ``width`` pixels: ``(H, W, 3)`` uint8."""
    try:
        from skimage import data
    except ImportError:
        raise SystemExit(
            "examples/refine_photo.py takes its photo from scikit-image, which crfrnn does not install: "
            "pip install scikit-image"
        ) from None

    photo = Image.fromarray(getattr(data, name)()).convert("RGB")
    height = round(photo.height * width / photo.width)
    return np.array(photo.resize((width, height), Image.Resampling.LANCZOS))


#: hand-placed regions on the astronaut photo: (label, PIL.ImageDraw shape, coordinates as fractions of W, H)
REGIONS: Tuple[Tuple[int, str, Tuple[float, ...]], ...] = (
    (1, "ellipse", (0.30, 0.03, 0.59, 0.32)),  # person: head
    (1, "polygon", (0.40, 0.25, 0.48, 0.25, 0.50, 0.33, 0.38, 0.33)),  # neck
    (1, "ellipse", (0.22, 0.28, 0.60, 0.56)),  # collar ring
    (1, "polygon", (0.03, 1.0, 0.05, 0.55, 0.22, 0.42, 0.60, 0.42, 0.70, 0.62, 0.62, 1.0)),  # suit
    (2, "ellipse", (0.55, 0.67, 0.99, 1.10)),  # helmet
)


def rough_labels(height: int, width: int) -> np.ndarray:
    """``(H, W)`` labels drawn from :data:`REGIONS`: 0 background, 1 person, 2 helmet."""
    canvas = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(canvas)
    for label, shape, coords in REGIONS:
        xy = [c * (width if i % 2 == 0 else height) for i, c in enumerate(coords)]
        getattr(draw, shape)(xy, fill=label)
    return np.array(canvas, dtype=np.int64)


def _resize(channels: np.ndarray, size: Tuple[int, int], resample: Image.Resampling) -> np.ndarray:
    """Resize each ``(H, W)`` float channel of ``(L, H, W)`` to ``size = (W', H')``."""
    return np.stack([np.array(Image.fromarray(c.astype(np.float32)).resize(size, resample)) for c in channels])


def coarse_probs(labels: np.ndarray, *, factor: int, noise: float, seed: int = 0) -> np.ndarray:
    """A blobby ``(L, H, W)`` float32 probability map, like the output of a network with stride ``factor``.

    The one-hot labels are averaged over ``factor x factor`` cells, turned into logits, perturbed with
    Gaussian noise of standard deviation ``noise`` per cell and upsampled bilinearly.
    """
    h, w = labels.shape
    num_labels = int(labels.max()) + 1
    onehot = np.eye(num_labels, dtype=np.float32)[labels].transpose(2, 0, 1)
    cells = _resize(onehot, (max(1, w // factor), max(1, h // factor)), Image.Resampling.BOX)
    rng = np.random.default_rng(seed)
    logits = np.log(0.9 * cells + 0.1 / num_labels) + noise * rng.standard_normal(cells.shape)
    logits = _resize(logits, (w, h), Image.Resampling.BILINEAR)
    probs = np.exp(logits - logits.max(0, keepdims=True))
    return (probs / probs.sum(0, keepdims=True)).astype(np.float32)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--width", type=int, default=320, help="panel width in pixels (default 320)")
    parser.add_argument("--factor", type=int, default=16, help="downsampling of the coarse unary (default 16)")
    parser.add_argument("--noise", type=float, default=0.5, help="noise on the coarse logits (default 0.5)")
    parser.add_argument(
        "--overlay", default=str(ROOT / "docs" / "images" / "refine_example.png"), help="the picture to write"
    )
    parser.add_argument("--workdir", help="where to keep the photo, probabilities and labels (default: a temp dir)")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.workdir or tmp)
        work.mkdir(parents=True, exist_ok=True)
        image = load_photo("astronaut", args.width)
        probs = coarse_probs(rough_labels(*image.shape[:2]), factor=args.factor, noise=args.noise)
        Image.fromarray(image).save(work / "astronaut.png")
        np.save(work / "astronaut_probs.npy", probs)
        command: List[str] = [
            "refine",
            str(work / "astronaut.png"),
            str(work / "astronaut_probs.npy"),
            "-o",
            str(work / "astronaut_labels.png"),
            "--overlay",
            str(args.overlay),
        ]
        shown = [os.path.relpath(a) if os.path.isabs(a) and Path(a).is_relative_to(Path.cwd()) else a for a in command]
        print("$ crfrnn " + shlex.join(shown))
        return crfrnn_main(command)


if __name__ == "__main__":
    sys.exit(main())

"""Image files: the suffixes taken as images, reading them, and pairing them with a network's outputs by stem.

:func:`read_rgb` is :func:`crfrnn._utils.images.read_rgb`, the one image reader of crfrnn (guarded against
decompression bombs), which the data sets and the command line use too.
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Tuple

from crfrnn._utils.files import PathLike
from crfrnn._utils.images import read_rgb
from crfrnn.io.scores import SCORE_SUFFIXES

__all__ = ["IMAGE_SUFFIXES", "pair_by_stem", "read_rgb"]

#: file suffixes taken as images when pairing directories
IMAGE_SUFFIXES: Tuple[str, ...] = (".bmp", ".gif", ".jpeg", ".jpg", ".pgm", ".png", ".ppm", ".tif", ".tiff", ".webp")


def pair_by_stem(
    images_dir: PathLike, scores_dir: PathLike
) -> Tuple[List[Tuple[str, Path, Path]], List[Tuple[str, str]]]:
    """Pair images with score files of the same stem (``a.jpg`` with ``a.npy``, ``a.npz`` or ``a.png``).

    Hidden files and files with other suffixes are ignored.

    Args:
        images_dir: directory of images (suffixes :data:`IMAGE_SUFFIXES`).
        scores_dir: directory of scores (suffixes :data:`SCORE_SUFFIXES`).

    Returns:
        ``(pairs, problems)``: ``(stem, image, scores)`` sorted by stem, and ``(name, reason)`` for every
        image without scores, score file without image, or stem held by several files on one side.

    Raises:
        NotADirectoryError: a directory does not exist.
    """
    found: List[Dict[str, List[Path]]] = []
    for directory, suffixes in ((images_dir, IMAGE_SUFFIXES), (scores_dir, SCORE_SUFFIXES)):
        directory = Path(directory)
        if not directory.is_dir():
            raise NotADirectoryError(f"directory not found: '{directory}'")
        by_stem: Dict[str, List[Path]] = {}
        for p in sorted(directory.iterdir()):
            if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in suffixes:
                by_stem.setdefault(p.stem, []).append(p)
        found.append(by_stem)
    images, scores = found
    pairs: List[Tuple[str, Path, Path]] = []
    problems: List[Tuple[str, str]] = []
    for stem in sorted(set(images) | set(scores)):
        imgs, outs = images.get(stem, []), scores.get(stem, [])
        if len(imgs) > 1 or len(outs) > 1:
            many = imgs if len(imgs) > 1 else outs
            problems.append((str(many[0]), f"several files share the stem '{stem}': {', '.join(p.name for p in many)}"))
        elif not outs:
            problems.append((str(imgs[0]), f"no scores file {stem}.npy/.npz/.png in '{scores_dir}'"))
        elif not imgs:
            problems.append((str(outs[0]), f"no image named {stem}.* in '{images_dir}'"))
        else:
            pairs.append((stem, imgs[0], outs[0]))
    return pairs, problems

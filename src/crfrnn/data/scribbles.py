"""Scribble annotations generated from ground-truth masks, for weakly supervised training.

A scribble annotation (ScribbleSup, Lin et al., CVPR 2016; used by Tang et al., ECCV 2018) labels a few thin
strokes drawn inside each object and on the background and leaves every other pixel unlabelled.
:func:`scribbles_from_mask` draws such strokes from a full mask, so that the built-in data set can be used
for scribble supervision:

1. Each connected region of each label (8-connectivity; the ignore label is never a region) of at least
   ``min_area`` pixels gets strokes; smaller fragments (slivers of occluded objects) stay unlabelled, as an
   annotator would miss them.
2. The strokes follow the region's skeleton (:func:`skimage.morphology.skeletonize`, a one-pixel medial line),
   restricted to the points more than ``margin`` pixels from the region's outline where such points exist (so
   that the strokes stay inside, away from the boundary, as a person draws them; thin regions fall back to their
   whole medial axis).
3. A stroke is a random walk along the skeleton: it starts at a random axis point, steps to a random
   unvisited 8-neighbour on the axis, and stops at a dead end or when the region's budget is spent. A region
   gets up to ``max_strokes`` strokes; its budget is ``fraction`` of its area (at least one point), counted in
   points of the axis times ``width``.
4. The walked points are widened to ``width`` pixels (a ``width x width`` square) *within the region*, so a
   stroke never carries a label onto another region.

Everything outside the strokes is ``ignore_index`` (255). The result is deterministic given ``rng`` (an int
seed or a :class:`numpy.random.Generator`). The labelled fraction of an image is close to ``fraction``: a
little more where small regions get their minimum of one point, less where a region's axis is shorter
than its budget.

>>> import numpy as np
>>> mask = np.zeros((40, 40), dtype=np.int64)
>>> mask[10:30, 8:32] = 3
>>> s = scribbles_from_mask(mask, fraction=0.05, rng=0)
>>> sorted(int(v) for v in np.unique(s))
[0, 3, 255]
>>> bool(np.all(s[s != 255] == mask[s != 255]))
True
"""

from __future__ import annotations

from typing import Any, Tuple, Union

import numpy as np
import torch
from torch.utils.data import Dataset

__all__ = ["ScribbleDataset", "scribbles_from_mask"]

_NEIGHBOURS = np.array([(-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1)])


def _check_int(name: str, value: Any, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise ValueError(f"scribbles_from_mask: {name} must be an int >= {low}, got {value!r}.")
    return int(value)


def _as_mask(mask: Any) -> Tuple[np.ndarray, bool]:
    """``(H, W)`` int64 numpy array and whether the input was a torch tensor."""
    is_tensor = isinstance(mask, torch.Tensor)
    arr = mask.detach().cpu().numpy() if is_tensor else np.asarray(mask)
    if arr.ndim != 2:
        raise ValueError(
            f"scribbles_from_mask: mask must be one (H, W) label map, got shape {tuple(arr.shape)}; for a batch, "
            "call it once per mask."
        )
    if arr.size == 0:
        raise ValueError(f"scribbles_from_mask: mask is empty (shape {tuple(arr.shape)}).")
    if arr.dtype == np.bool_ or not np.issubdtype(arr.dtype, np.integer):
        raise TypeError(f"scribbles_from_mask: mask must hold integer class indices, got dtype {arr.dtype}.")
    if int(arr.min()) < 0:
        raise ValueError(f"scribbles_from_mask: mask has negative labels ({int(arr.min())}); labels must be >= 0.")
    return arr.astype(np.int64, copy=False), is_tensor


def _walk(axis: np.ndarray, visited: np.ndarray, start: Tuple[int, int], budget: int, rng: np.random.Generator) -> list:
    """Points of one random walk on the boolean ``axis`` from ``start``, avoiding ``visited`` (updated)."""
    h, w = axis.shape
    y, x = start
    path = [(y, x)]
    visited[y, x] = True
    while len(path) < budget:
        nxt = []
        for dy, dx in _NEIGHBOURS:
            yy, xx = y + dy, x + dx
            if 0 <= yy < h and 0 <= xx < w and axis[yy, xx] and not visited[yy, xx]:
                nxt.append((yy, xx))
        if not nxt:
            break
        y, x = nxt[int(rng.integers(len(nxt)))]
        visited[y, x] = True
        path.append((y, x))
    return path


def scribbles_from_mask(
    mask: Any,
    *,
    fraction: float = 0.03,
    width: int = 1,
    margin: int = 2,
    max_strokes: int = 3,
    min_area: int = 10,
    ignore_index: int = 255,
    rng: Union[int, np.random.Generator] = 0,
) -> Any:
    """Scribbles drawn from a ground-truth mask: a few thin strokes inside every region (module docstring).

    Args:
        mask: ``(H, W)`` integer label map (numpy array or torch tensor), ``ignore_index`` for void pixels.
        fraction: labelled share of each region's area, in ``(0, 1]`` (ScribbleSup-like annotations label a
            few percent of the pixels).
        width: stroke width in pixels (1: one-pixel lines).
        margin: preferred distance of a stroke's axis from the region's outline, in pixels (0: none).
        max_strokes: at most this many strokes per region.
        min_area: regions of fewer pixels get no stroke.
        ignore_index: the label of unlabelled (and void) pixels.
        rng: int seed or :class:`numpy.random.Generator`; the same seed gives the same strokes.

    Returns:
        A label map of the input's kind (int64 tensor for a tensor, int64 array otherwise) and shape: the
        mask's labels on the strokes, ``ignore_index`` everywhere else.

    Raises:
        TypeError: a non-integer mask or a bad ``rng``.
        ValueError: a mask that is not ``(H, W)``, empty or negative; a parameter out of range.
    """
    from scipy import ndimage
    from skimage.morphology import skeletonize

    arr, is_tensor = _as_mask(mask)
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float, np.floating)) or not 0 < fraction <= 1:
        raise ValueError(f"scribbles_from_mask: fraction must be a number in (0, 1], got {fraction!r}.")
    width = _check_int("width", width, 1)
    margin = _check_int("margin", margin, 0)
    max_strokes = _check_int("max_strokes", max_strokes, 1)
    min_area = _check_int("min_area", min_area, 1)
    ignore_index = _check_int("ignore_index", ignore_index, 0)
    if isinstance(rng, (int, np.integer)) and not isinstance(rng, bool):
        if rng < 0:
            raise ValueError(f"scribbles_from_mask: rng seed must be >= 0, got {rng}.")
        rng = np.random.default_rng(int(rng))
    elif not isinstance(rng, np.random.Generator):
        raise TypeError(f"scribbles_from_mask: rng must be an int seed or a numpy Generator, got {type(rng).__name__}.")

    out = np.full(arr.shape, ignore_index, dtype=np.int64)
    square = np.ones((3, 3), dtype=bool)
    for label in np.unique(arr):
        if label == ignore_index:
            continue
        regions, count = ndimage.label(arr == label, structure=square)
        for r, box in enumerate(ndimage.find_objects(regions), start=1):
            # the region's bounding box plus a one-pixel frame (so the skeleton sees its outline)
            box = tuple(slice(max(b.start - 1, 0), b.stop + 1) for b in box)
            region = regions[box] == r
            area = int(region.sum())
            if area < min_area:
                continue
            axis = skeletonize(region)
            dist = ndimage.distance_transform_edt(region)
            inner = axis & (dist > margin)
            if inner.any():
                axis = inner
            if not axis.any():  # cannot happen for a non-empty region, but keep the deepest point
                axis = dist == dist.max()
            budget = max(1, int(round(fraction * area / width)))
            visited = np.zeros_like(axis)
            stroke = np.zeros_like(axis)
            for _ in range(max_strokes):
                left = budget - int(stroke.sum())
                free = np.argwhere(axis & ~visited)
                if left <= 0 or free.size == 0:
                    break
                y, x = free[int(rng.integers(len(free)))]
                for py, px in _walk(axis, visited, (int(y), int(x)), left, rng):
                    stroke[py, px] = True
            if width > 1:
                stroke = ndimage.binary_dilation(stroke, structure=np.ones((width, width), dtype=bool))
            out[box][stroke & region] = label
    return torch.from_numpy(out) if is_tensor else out


class ScribbleDataset(Dataset):
    """A segmentation data set whose masks are replaced by scribbles (:func:`scribbles_from_mask`).

    Sample ``i`` is ``(image, scribbles)`` with the strokes drawn from the base mask by a generator seeded
    with ``(seed, i)``: deterministic, and independent of the order in which samples are read.

    Args:
        base: a data set returning ``(image, mask)`` (``mask`` an ``(H, W)`` integer tensor).
        seed: non-negative int.
        **options: further :func:`scribbles_from_mask` arguments (``fraction``, ``width``, ...).

    Example:
        >>> from crfrnn.data import SyntheticShapes
        >>> ds = ScribbleDataset(SyntheticShapes(2, size=48), fraction=0.03)
        >>> image, scribbles = ds[0]
        >>> bool((scribbles != 255).float().mean() < 0.1)
        True
    """

    def __init__(self, base: Dataset, *, seed: int = 0, **options: Any) -> None:
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ValueError(f"ScribbleDataset: seed must be a non-negative int, got {seed!r}.")
        if "rng" in options:
            raise TypeError("ScribbleDataset: rng is derived from (seed, index); pass seed instead.")
        self.base = base
        self.seed = int(seed)
        self.options = options
        self.ignore_index = int(options.setdefault("ignore_index", getattr(base, "ignore_index", 255)))

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> Tuple[torch.Tensor, torch.Tensor]:
        image, mask = self.base[index]
        rng = np.random.default_rng((self.seed, int(index)))
        return image, torch.as_tensor(scribbles_from_mask(mask, rng=rng, **self.options))

    def __getattr__(self, name: str) -> Any:  # num_classes, class_names, ... of the base data set
        if name in ("base", "seed", "options", "ignore_index"):
            raise AttributeError(name)
        return getattr(self.base, name)

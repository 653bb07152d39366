"""SyntheticShapes: a procedural segmentation data set on which CRF-RNN's claims can be tested on a CPU.

Why it exists
-------------
The CRF-RNN paper's claims are (a) a dense CRF applied after a CNN improves on the CNN alone, (b) training
CNN + CRF-RNN end to end improves more, and (c) the gain is largest near object boundaries. PASCAL VOC and
FCN-8s are far too big to check this on two CPU cores. This data set is built so that the *mechanism*
behind those claims is present at a tiny scale; it is generated from principles, not tuned to make a result
appear.

Design principles
-----------------
1. **Class is carried by shape, not by colour.** Background (class 0) plus six object shapes (``SHAPES``), each
   with a body that a stride-8 network can find and thin or concave parts that it cannot resolve:

   ========== ============================================================ ================
   class      shape                                                        texture (pref.)
   ========== ============================================================ ================
   pan        disc with a thin straight handle (1.5-3.5 px wide)           dots
   box        rotated rectangle (aspect 0.6-1.6)                           checks
   triangle   triangle with irregular angles (acute corners)               stripes
   star       hub disc with 3-6 thin spokes (1.5-4 px)                     none
   ring       annulus 3.5-8 px thick: the hole shows what is behind it     none
   table      tilted bar (4.5-8 px) on 2-4 thin legs (1.5-3.5 px)          none
   ========== ============================================================ ================

   Every colour (background, clutter, each object) is drawn from the same class-independent process, so the
   colour distributions of all classes, background included, overlap completely: a single pixel's colour
   says nothing about its class. A mild texture (amplitude 5-14 on 0..255, periods 3-8 px) is a secondary,
   unreliable cue: each class uses its preferred texture with probability 0.7, otherwise a random one.
2. **A coarse network gets interiors right and boundaries wrong.** Objects are 30-60 % of the shorter image
   side (29-58 px at 96 px), so their bodies span several cells of a stride-8 score map and are easy to find.
   But thin parts (handles, spokes, legs: 1.5-4 px; ring bands), concave outlines (between legs and spokes,
   the ring's hole, the handle junctions), acute corners, occlusions (3-6 objects per image, painted in
   order, later ones in front) and objects cut by the image border (centres drawn from -5 % to 105 % of the
   image) put many label boundaries at sub-cell scale, where a stride-8 prediction blurs them. About 20 %
   of all pixels are objects (PASCAL VOC: about 25-30 %), and roughly a sixth of the object pixels lie in
   parts narrower than 5 px.
3. **Label boundaries are visible in colour, but not only they.** Each object is a mostly uniform region
   (plus the mild texture and a gentle linear shading) with a sharp, anti-aliased edge. Its colour is the
   mean colour of what lies behind it plus a random RGB direction times a contrast that is weak (10-30) with
   probability 0.3 and 30-110 otherwise, so the edge at the true boundary has a contrast of varying,
   sometimes weak, strength. The background is a colour gradient with optional faint stripes, 1-4 clutter
   blobs (unions of ellipses with edges from sharp to blurred) and 0-2 straight bands crossing the image,
   all labelled background: colour edges that are *not* label boundaries, which the CRF must not snap to.
   Gaussian pixel noise (sigma 2-7) is added last.
4. **Optional void band.** ``void_band=1`` marks the 1-px rim of each front object along every instance
   outline as 255 (ignore); ``void_band=2`` marks both sides (a 2-px band), like VOC's boundary band.
   Parts at most 2 px wide then become entirely void, as in VOC. Default: off.

Rendering: shapes are unions of discs, annuli and convex polygons, rasterised with vectorised coordinate
tests on the object's bounding box. The image is painted at 2x resolution and area-averaged to the output
size (anti-aliased but sharp edges); the mask is evaluated from the same geometry at the output pixel
centres (nearest), so both come from one scene description. Everything is numpy; sample ``i`` is generated
on the fly by a ``np.random.Generator`` seeded with ``(seed, first_index + i)``, so it is deterministic,
needs no files and is independent of worker order. A 96x96 sample takes a few milliseconds; for many epochs
without random transforms, generate once and keep the tensors (``[ds[i] for i in range(len(ds))]``).
"""

from __future__ import annotations

import math
from typing import Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch.utils.data import Dataset

from crfrnn.data._io import Sample, Transform, apply_transform
from crfrnn.data._shapes import (
    BUILDERS,
    PREFERRED_TEXTURE,
    SHAPES,
    SUPERSAMPLE,
    TEXTURE_KEEP_PROB,
    TEXTURES,
    background,
    bbox,
    contrasting_colour,
    inside,
    texture_pattern,
)

__all__ = ["SyntheticShapes", "synthetic_splits"]


def _pair(value: Union[float, Sequence[float]], name: str, cast: type = float) -> Tuple:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = (value, value)
    try:
        lo, hi = (cast(v) for v in value)  # type: ignore[union-attr]
    except (TypeError, ValueError):
        raise ValueError(f"SyntheticShapes: {name} must be a number or a pair (low, high), got {value!r}.") from None
    if lo > hi:
        raise ValueError(f"SyntheticShapes: {name} must satisfy low <= high, got {value!r}.")
    return lo, hi


class SyntheticShapes(Dataset):
    """Procedural scenes of overlapping shapes for semantic segmentation; see the module docstring.

    Sample ``i`` is generated on the fly from ``(seed, first_index + i)``: the same arguments always give
    identical tensors, and no files are involved.

    Args:
        num_samples: number of samples (the data set's length).
        size: image size ``(height, width)`` or an int; at least 16.
        seed: non-negative integer seed.
        transform: optional paired transform ``(image, mask) -> (image, mask)``.
        shapes: the object classes to use, a subset of ``SyntheticShapes.SHAPES`` (all six by default); class
            ``k`` (1-based) is ``shapes[k - 1]``.
        num_objects: ``(min, max)`` objects per image, inclusive.
        object_scale: ``(min, max)`` object size as a fraction of the shorter image side.
        noise: ``(min, max)`` standard deviation of the Gaussian pixel noise (0..255 scale).
        void_band: 0 (off), 1 (1-px rim of each front object) or 2 (both sides) of void (255) pixels along
            instance outlines.
        first_index: offset of the generator index (disjoint splits use disjoint index ranges).

    Attributes:
        num_classes: ``1 + len(shapes)``.
        class_names: ``("background", *shapes)``.
        ignore_index: 255.

    Sample:
        ``image`` float32 ``(3, H, W)`` with integer values in 0..255, ``mask`` int64 ``(H, W)`` in
        ``[0, num_classes)`` (and 255 when ``void_band`` is on).

    Example:
        >>> ds = SyntheticShapes(4, size=(64, 64), seed=0)
        >>> image, mask = ds[0]
        >>> tuple(image.shape), image.dtype, tuple(mask.shape), mask.dtype, ds.num_classes
        ((3, 64, 64), torch.float32, (64, 64), torch.int64, 7)
    """

    SHAPES: Tuple[str, ...] = SHAPES
    ignore_index: int = 255

    def __init__(
        self,
        num_samples: int,
        *,
        size: Union[int, Tuple[int, int]] = (96, 96),
        seed: int = 0,
        transform: Optional[Transform] = None,
        shapes: Optional[Sequence[str]] = None,
        num_objects: Tuple[int, int] = (3, 6),
        object_scale: Tuple[float, float] = (0.3, 0.6),
        noise: Tuple[float, float] = (2.0, 7.0),
        void_band: int = 0,
        first_index: int = 0,
    ) -> None:
        if isinstance(num_samples, bool) or not isinstance(num_samples, (int, np.integer)) or num_samples < 0:
            raise ValueError(f"SyntheticShapes: num_samples must be a non-negative int, got {num_samples!r}.")
        if isinstance(size, (int, np.integer)):
            size = (int(size), int(size))
        if len(tuple(size)) != 2 or min(size) < 16:
            raise ValueError(f"SyntheticShapes: size must be (height, width) with both >= 16, got {size!r}.")
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ValueError(f"SyntheticShapes: seed must be a non-negative int, got {seed!r}.")
        if isinstance(first_index, bool) or not isinstance(first_index, (int, np.integer)) or first_index < 0:
            raise ValueError(f"SyntheticShapes: first_index must be a non-negative int, got {first_index!r}.")
        shapes = tuple(SHAPES if shapes is None else shapes)
        unknown = [s for s in shapes if s not in SHAPES]
        if unknown or not shapes or len(set(shapes)) != len(shapes):
            raise ValueError(
                f"SyntheticShapes: shapes must be distinct names from {SHAPES}, got {shapes!r}"
                + (f" (unknown: {unknown})." if unknown else ".")
            )
        lo, hi = _pair(num_objects, "num_objects", int)
        if lo < 0:
            raise ValueError(f"SyntheticShapes: num_objects must be >= 0, got {num_objects!r}.")
        self.num_objects = (lo, hi)
        self.object_scale = _pair(object_scale, "object_scale")
        if not 0 < self.object_scale[0]:
            raise ValueError(f"SyntheticShapes: object_scale must be > 0, got {object_scale!r}.")
        self.noise = _pair(noise, "noise")
        if self.noise[0] < 0:
            raise ValueError(f"SyntheticShapes: noise must be >= 0, got {noise!r}.")
        if void_band not in (0, 1, 2):
            raise ValueError(f"SyntheticShapes: void_band must be 0 (off), 1 or 2 pixels, got {void_band!r}.")
        self.num_samples = int(num_samples)
        self.size = (int(size[0]), int(size[1]))
        self.seed = int(seed)
        self.first_index = int(first_index)
        self.shapes = shapes
        self.void_band = int(void_band)
        self.transform = transform
        self.num_classes = 1 + len(shapes)
        self.class_names: Tuple[str, ...] = ("background",) + shapes

    def __len__(self) -> int:
        return self.num_samples

    def __getitem__(self, index: int) -> Sample:
        image, labels, _ = self.render(index)
        img = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))).to(torch.float32)
        return apply_transform(self.transform, img, torch.from_numpy(labels))

    def render(self, index: int) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Generate sample ``index`` as numpy arrays, before any transform.

        Returns:
            ``image (H, W, 3)`` float64 with integer values in 0..255, ``labels (H, W)`` int64 (with 255 on
            the void band when enabled) and ``instances (H, W)`` int64: 0 for background, ``k`` for the
            k-th painted object (higher ids are in front).
        """
        if isinstance(index, bool) or not isinstance(index, (int, np.integer)):
            raise TypeError(f"SyntheticShapes: index must be an int, got {type(index).__name__}.")
        n = self.num_samples
        if not -n <= index < n:
            raise IndexError(f"SyntheticShapes: index {index} out of range for a data set of {n} samples.")
        index = int(index) % n
        rng = np.random.default_rng([self.seed, self.first_index + index])
        h, w = self.size
        ss = SUPERSAMPLE
        xs2, ys2 = (np.arange(ss * w) + 0.5) / ss, (np.arange(ss * h) + 0.5) / ss
        xs1, ys1 = np.arange(w) + 0.5, np.arange(h) + 0.5
        canvas = background(rng, xs2, ys2, h, w)
        labels = np.zeros((h, w), dtype=np.int64)
        instances = np.zeros((h, w), dtype=np.int64)
        side = min(h, w)
        for k in range(1, int(rng.integers(self.num_objects[0], self.num_objects[1] + 1)) + 1):
            cls = int(rng.integers(1, self.num_classes))
            name = self.shapes[cls - 1]
            scale = side * rng.uniform(*self.object_scale)
            cx, cy = rng.uniform(-0.05, 1.05) * w, rng.uniform(-0.05, 1.05) * h
            prims = BUILDERS[name](rng, cx, cy, scale)
            texture = PREFERRED_TEXTURE[name]
            if rng.random() >= TEXTURE_KEEP_PROB:
                texture = TEXTURES[int(rng.integers(len(TEXTURES)))]
            tex_amp = rng.uniform(5.0, 14.0) * (1 if rng.random() < 0.5 else -1)
            shade_amp, shade_dir = rng.uniform(0.0, 12.0), rng.uniform(0, 2 * math.pi)
            contrast_rng = np.random.default_rng(rng.integers(2**63))  # colour draws don't shift later draws

            x0, y0, x1, y1 = bbox(prims)
            c0, c1 = max(int(math.floor(x0)), 0), min(int(math.ceil(x1)) + 1, w)
            r0, r1 = max(int(math.floor(y0)), 0), min(int(math.ceil(y1)) + 1, h)
            if c0 >= c1 or r0 >= r1:
                continue
            sx, sy = xs2[ss * c0 : ss * c1], ys2[ss * r0 : ss * r1]
            inside2 = inside(prims, sx, sy)
            inside1 = inside(prims, xs1[c0:c1], ys1[r0:r1])
            if not inside2.any():
                continue
            region = canvas[ss * r0 : ss * r1, ss * c0 : ss * c1]  # a view: painting writes into canvas
            colour = contrasting_colour(contrast_rng, region[inside2].mean(axis=0))
            pattern = tex_amp * texture_pattern(contrast_rng, texture, sx, sy, cx, cy)
            shade = (
                shade_amp
                * ((sx[None, :] - cx) * math.cos(shade_dir) + (sy[:, None] - cy) * math.sin(shade_dir))
                / scale
            )
            region[inside2] = colour + (pattern + shade)[inside2][:, None]
            labels[r0:r1, c0:c1][inside1] = cls
            instances[r0:r1, c0:c1][inside1] = k

        if self.void_band:
            labels[_void_band(instances, self.void_band)] = self.ignore_index
        image = canvas.reshape(h, ss, w, ss, 3).mean(axis=(1, 3))
        image = image + rng.normal(0.0, rng.uniform(*self.noise), image.shape)
        image = np.round(np.clip(image, 0.0, 255.0))
        return image, labels, instances

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(num_samples={self.num_samples}, size={self.size}, seed={self.seed}, "
            f"num_classes={self.num_classes}, first_index={self.first_index})"
        )


def _void_band(instances: np.ndarray, width: int) -> np.ndarray:
    """Pixels along instance outlines: the front side (width 1) or both sides (width 2)."""
    void = np.zeros(instances.shape, dtype=bool)
    for a, b, va, vb in (
        (instances[:, :-1], instances[:, 1:], void[:, :-1], void[:, 1:]),
        (instances[:-1, :], instances[1:, :], void[:-1, :], void[1:, :]),
    ):
        differ = a != b
        if width == 1:
            va |= differ & (a > b)
            vb |= differ & (b > a)
        else:
            va |= differ
            vb |= differ
    return void


_SPLIT_STRIDE = 2**40  # index ranges of the train / val / test splits start at 0, 2**40 and 2**41


def synthetic_splits(
    seed: int = 0,
    *,
    num_train: int,
    num_val: int,
    num_test: int,
    size: Union[int, Tuple[int, int]] = (96, 96),
    **kwargs,
) -> Tuple[SyntheticShapes, SyntheticShapes, SyntheticShapes]:
    """Three disjoint :class:`SyntheticShapes` sets: train, validation and test.

    The splits use disjoint generator index ranges starting at 0, 2**40 and 2**41 with the same seed, so a
    split's content does not depend on the sizes of the others (growing ``num_train`` keeps val/test fixed).

    Args:
        seed: non-negative integer seed shared by the three splits.
        num_train: number of training samples.
        num_val: number of validation samples.
        num_test: number of test samples.
        size: image size ``(height, width)`` or an int.
        **kwargs: further :class:`SyntheticShapes` options (``shapes``, ``num_objects``, ``void_band``, ...;
            ``transform`` applies to the training split only; set others' ``transform`` attribute if needed).

    Returns:
        ``(train, val, test)``.
    """
    for name, n in (("num_train", num_train), ("num_val", num_val), ("num_test", num_test)):
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or not 0 <= n < _SPLIT_STRIDE:
            raise ValueError(f"synthetic_splits: {name} must be an int in [0, 2**40), got {n!r}.")
    if "first_index" in kwargs:
        raise TypeError("synthetic_splits: first_index is set per split and cannot be passed.")
    transform = kwargs.pop("transform", None)
    train = SyntheticShapes(num_train, size=size, seed=seed, transform=transform, first_index=0, **kwargs)
    val = SyntheticShapes(num_val, size=size, seed=seed, first_index=_SPLIT_STRIDE, **kwargs)
    test = SyntheticShapes(num_test, size=size, seed=seed, first_index=2 * _SPLIT_STRIDE, **kwargs)
    return train, val, test

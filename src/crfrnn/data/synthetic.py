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
from typing import List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch.utils.data import Dataset

from ._io import Sample, Transform, apply_transform

__all__ = ["SyntheticShapes", "synthetic_splits"]

_SHAPES: Tuple[str, ...] = ("pan", "box", "triangle", "star", "ring", "table")
_TEXTURES: Tuple[str, ...] = ("none", "stripes", "checks", "dots")
_PREFERRED_TEXTURE = {"pan": "dots", "box": "checks", "triangle": "stripes", "star": "none", "ring": "none",
                      "table": "none"}  # fmt: skip
_TEXTURE_KEEP_PROB = 0.7
_WEAK_CONTRAST_PROB = 0.3
_SUPERSAMPLE = 2

# A primitive is ("disc", cx, cy, r), ("ring", cx, cy, r_out, r_in) or ("poly", vertices (K, 2) convex).
_Prim = tuple


# ----------------------------------------------------------------------------------------------- geometry
def _rotate(points: np.ndarray, angle: float, cx: float, cy: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    x, y = points[:, 0], points[:, 1]
    return np.stack([cx + c * x - s * y, cy + s * x + c * y], axis=1)


def _segment(x0: float, y0: float, x1: float, y1: float, width: float) -> _Prim:
    """A straight bar of the given width from (x0, y0) to (x1, y1) with flat ends, as a polygon."""
    dx, dy = x1 - x0, y1 - y0
    length = math.hypot(dx, dy) or 1e-9
    nx, ny = -dy / length * width / 2, dx / length * width / 2
    return ("poly", np.array([[x0 + nx, y0 + ny], [x1 + nx, y1 + ny], [x1 - nx, y1 - ny], [x0 - nx, y0 - ny]]))


def _rect(hx: float, hy: float, ox: float, oy: float, angle: float, cx: float, cy: float) -> _Prim:
    """Rectangle with half sizes (hx, hy) centred at local (ox, oy), rotated by angle about (cx, cy)."""
    pts = np.array([[ox - hx, oy - hy], [ox + hx, oy - hy], [ox + hx, oy + hy], [ox - hx, oy + hy]])
    return ("poly", _rotate(pts, angle, cx, cy))


def _bbox(prims: Sequence[_Prim]) -> Tuple[float, float, float, float]:
    x0 = y0 = math.inf
    x1 = y1 = -math.inf
    for p in prims:
        if p[0] == "poly":
            v = p[1]
            x0, x1 = min(x0, v[:, 0].min()), max(x1, v[:, 0].max())
            y0, y1 = min(y0, v[:, 1].min()), max(y1, v[:, 1].max())
        else:
            r = p[3]
            x0, x1 = min(x0, p[1] - r), max(x1, p[1] + r)
            y0, y1 = min(y0, p[2] - r), max(y1, p[2] + r)
    return x0, y0, x1, y1


def _inside(prims: Sequence[_Prim], xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """Boolean ``(len(ys), len(xs))`` map of the points (xs[j], ys[i]) inside the union of ``prims``."""
    X, Y = xs[None, :], ys[:, None]
    out = np.zeros((ys.size, xs.size), dtype=bool)
    for p in prims:
        if p[0] == "disc":
            out |= (X - p[1]) ** 2 + (Y - p[2]) ** 2 <= p[3] ** 2
        elif p[0] == "ring":
            d2 = (X - p[1]) ** 2 + (Y - p[2]) ** 2
            out |= (d2 <= p[3] ** 2) & (d2 >= p[4] ** 2)
        else:
            v = p[1]
            area2 = np.sum(v[:, 0] * np.roll(v[:, 1], -1) - np.roll(v[:, 0], -1) * v[:, 1])
            sign = 1.0 if area2 >= 0 else -1.0
            ok = np.ones_like(out)
            for k in range(len(v)):
                (ax, ay), (bx, by) = v[k], v[(k + 1) % len(v)]
                ok &= sign * ((bx - ax) * (Y - ay) - (by - ay) * (X - ax)) >= 0
            out |= ok
    return out


# ------------------------------------------------------------------------------------------------- shapes
def _pan(rng: np.random.Generator, cx: float, cy: float, s: float) -> List[_Prim]:
    r = s * rng.uniform(0.26, 0.34)
    a = rng.uniform(0, 2 * math.pi)
    length = r + s * rng.uniform(0.35, 0.6)
    w = rng.uniform(1.5, 3.5)
    return [("disc", cx, cy, r), _segment(cx, cy, cx + length * math.cos(a), cy + length * math.sin(a), w)]


def _box(rng: np.random.Generator, cx: float, cy: float, s: float) -> List[_Prim]:
    aspect = math.sqrt(rng.uniform(0.6, 1.6))
    return [_rect(0.375 * s * aspect, 0.375 * s / aspect, 0.0, 0.0, rng.uniform(0, math.pi), cx, cy)]


def _triangle(rng: np.random.Generator, cx: float, cy: float, s: float) -> List[_Prim]:
    r = s * rng.uniform(0.45, 0.6)
    base = rng.uniform(0, 2 * math.pi)
    ang = base + np.array([0.0, 2 * math.pi / 3, 4 * math.pi / 3]) + rng.normal(0, math.radians(12), 3)
    return [("poly", np.stack([cx + r * np.cos(ang), cy + r * np.sin(ang)], axis=1))]


def _star(rng: np.random.Generator, cx: float, cy: float, s: float) -> List[_Prim]:
    n = int(rng.integers(3, 7))
    w = rng.uniform(1.5, 4.0)
    base = rng.uniform(0, 2 * math.pi)
    prims: List[_Prim] = [("disc", cx, cy, max(w, s * rng.uniform(0.1, 0.16)))]
    for k in range(n):
        a = base + 2 * math.pi * k / n + rng.normal(0, 0.15)
        length = s * rng.uniform(0.4, 0.55)
        prims.append(_segment(cx, cy, cx + length * math.cos(a), cy + length * math.sin(a), w))
    return prims


def _ring(rng: np.random.Generator, cx: float, cy: float, s: float) -> List[_Prim]:
    r_out = s * rng.uniform(0.3, 0.45)
    r_in = max(r_out - rng.uniform(3.5, 8.0), 1.0)
    return [("ring", cx, cy, r_out, r_in)]


def _table(rng: np.random.Generator, cx: float, cy: float, s: float) -> List[_Prim]:
    bar_len = s * rng.uniform(0.8, 1.1)
    bar_w = rng.uniform(4.5, 8.0)
    leg_len = s * rng.uniform(0.35, 0.6)
    leg_w = rng.uniform(1.5, 3.5)
    n_legs = int(rng.integers(2, 5))
    tilt = rng.uniform(-0.45, 0.45)
    top = -leg_len / 2  # bar centre (local), legs hang below it: the whole shape is centred on (cx, cy)
    prims: List[_Prim] = [_rect(bar_len / 2, bar_w / 2, 0.0, top, tilt, cx, cy)]
    margin = leg_w / 2 + rng.uniform(0.0, 0.12) * bar_len
    for x in np.linspace(-bar_len / 2 + margin, bar_len / 2 - margin, n_legs):
        ends = _rotate(np.array([[x, top], [x, top + bar_w / 2 + leg_len]]), tilt, cx, cy)
        prims.append(_segment(ends[0, 0], ends[0, 1], ends[1, 0], ends[1, 1], leg_w))
    return prims


_BUILDERS = {"pan": _pan, "box": _box, "triangle": _triangle, "star": _star, "ring": _ring, "table": _table}


# --------------------------------------------------------------------------------------------- appearance
def _contrasting_colour(rng: np.random.Generator, behind: np.ndarray) -> np.ndarray:
    """``behind`` plus a random RGB direction times a contrast that is sometimes weak."""
    if rng.random() < _WEAK_CONTRAST_PROB:
        d = rng.uniform(10.0, 30.0)
    else:
        d = rng.uniform(30.0, 110.0)
    c = behind
    for _ in range(16):
        v = rng.normal(size=3)
        v /= np.linalg.norm(v) + 1e-12
        c = behind + d * v
        if np.all(c >= 10.0) and np.all(c <= 245.0):
            return c
    return np.clip(c, 10.0, 245.0)


def _texture(rng: np.random.Generator, kind: str, xs: np.ndarray, ys: np.ndarray, cx: float, cy: float) -> np.ndarray:
    """Zero-mean-ish pattern in [-1, 1] on the grid (ys, xs), in a randomly rotated frame."""
    a = rng.uniform(0, math.pi)
    u = (xs[None, :] - cx) * math.cos(a) + (ys[:, None] - cy) * math.sin(a)
    v = -(xs[None, :] - cx) * math.sin(a) + (ys[:, None] - cy) * math.cos(a)
    if kind == "stripes":
        p = rng.uniform(3.0, 5.0)
        return np.sign(np.sin(2 * math.pi * u / p + 0.1))
    if kind == "checks":
        p = rng.uniform(5.0, 8.0)
        return np.sign(np.sin(2 * math.pi * u / p + 0.1) * np.sin(2 * math.pi * v / p + 0.1))
    if kind == "dots":
        p = rng.uniform(4.0, 6.0)
        return (np.cos(2 * math.pi * u / p) * np.cos(2 * math.pi * v / p) > 0.5).astype(np.float64) * 1.5 - 0.3
    return np.zeros((ys.size, xs.size))


def _soft_alpha(dist: np.ndarray, softness: float) -> np.ndarray:
    """Coverage from a signed distance (negative inside): a step blurred over ``softness`` pixels."""
    return 0.5 * (1.0 - np.tanh(dist / (2.0 * softness)))


def _span(coords: np.ndarray, lo: float, hi: float) -> slice:
    """Slice of the sorted ``coords`` that lie in ``[lo, hi]`` (possibly empty)."""
    return slice(int(np.searchsorted(coords, lo, "left")), int(np.searchsorted(coords, hi, "right")))


def _paint_soft(rng: np.random.Generator, region: np.ndarray, alpha: np.ndarray) -> None:
    """Blend a contrasting colour into ``region`` (a view of the canvas) with coverage ``alpha``, in place."""
    if region.size == 0:  # the blob lies outside the image: nothing to paint, but draw as before (without
        _contrasting_colour(rng, np.full(3, np.nan))  # a mean-of-empty warning) so later samples are unchanged
        return
    covered = alpha > 0.5
    behind = region[covered].mean(axis=0) if covered.any() else region.reshape(-1, 3).mean(axis=0)
    colour = _contrasting_colour(rng, behind)
    touched = alpha > 1e-3
    a = alpha[touched][:, None]
    region[touched] = region[touched] * (1.0 - a) + colour * a


def _background(rng: np.random.Generator, xs: np.ndarray, ys: np.ndarray, h: int, w: int) -> np.ndarray:
    """Background-class canvas ``(len(ys), len(xs), 3)``: gradient, faint stripes, clutter blobs, bands."""
    X, Y = xs[None, :], ys[:, None]
    c0 = rng.uniform(30.0, 225.0, 3)
    c1 = np.clip(c0 + rng.normal(0.0, 40.0, 3), 0.0, 255.0)
    a = rng.uniform(0, 2 * math.pi)
    t = (X - w / 2) * math.cos(a) + (Y - h / 2) * math.sin(a)
    t = (t - t.min()) / max(float(t.max() - t.min()), 1e-9)
    canvas = c0 + (c1 - c0) * t[..., None]
    if rng.random() < 0.3:  # faint background stripes
        p, b = rng.uniform(6.0, 16.0), rng.uniform(0, math.pi)
        amp = rng.uniform(3.0, 10.0)
        canvas += (amp * np.sign(np.sin(2 * math.pi * (X * math.cos(b) + Y * math.sin(b)) / p)))[..., None]
    side = min(h, w)
    for _ in range(int(rng.integers(1, 5))):  # clutter blobs: unions of 1-3 ellipses, sharp to blurred
        bx, by = rng.uniform(0, w), rng.uniform(0, h)
        radius = side * rng.uniform(0.06, 0.18)
        softness = rng.uniform(0.3, 3.0)
        ellipses = []
        for _ in range(int(rng.integers(1, 4))):
            ex, ey = bx + rng.normal(0, 0.5 * radius), by + rng.normal(0, 0.5 * radius)
            ra, rb = radius * rng.uniform(0.6, 1.3), radius * rng.uniform(0.4, 1.0)
            ellipses.append((ex, ey, ra, rb, rng.uniform(0, math.pi)))
        # Only the bounding box plus the blurred margin is evaluated: alpha is ~0 outside it.
        reach = max(max(e[2], e[3]) for e in ellipses) + 6.0 * softness
        cols = _span(xs, min(e[0] for e in ellipses) - reach, max(e[0] for e in ellipses) + reach)
        rows = _span(ys, min(e[1] for e in ellipses) - reach, max(e[1] for e in ellipses) + reach)
        Xs, Ys = xs[None, cols], ys[rows, None]
        alpha = np.zeros((Ys.size, Xs.size))
        for ex, ey, ra, rb, th in ellipses:
            u = (Xs - ex) * math.cos(th) + (Ys - ey) * math.sin(th)
            v = -(Xs - ex) * math.sin(th) + (Ys - ey) * math.cos(th)
            dist = (np.sqrt((u / ra) ** 2 + (v / rb) ** 2) - 1.0) * min(ra, rb)
            alpha = np.maximum(alpha, _soft_alpha(dist, softness))
        _paint_soft(rng, canvas[rows, cols], alpha)
    for _ in range(int(rng.integers(0, 3))):  # straight bands across the image
        px, py, th = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(0, math.pi)
        width, softness = rng.uniform(1.5, 8.0), rng.uniform(0.2, 1.5)
        dist = np.abs(-(X - px) * math.sin(th) + (Y - py) * math.cos(th)) - width / 2
        _paint_soft(rng, canvas, _soft_alpha(dist, softness))
    return canvas


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

    SHAPES: Tuple[str, ...] = _SHAPES
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
        shapes = tuple(_SHAPES if shapes is None else shapes)
        unknown = [s for s in shapes if s not in _SHAPES]
        if unknown or not shapes or len(set(shapes)) != len(shapes):
            raise ValueError(
                f"SyntheticShapes: shapes must be distinct names from {_SHAPES}, got {shapes!r}"
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
        ss = _SUPERSAMPLE
        xs2, ys2 = (np.arange(ss * w) + 0.5) / ss, (np.arange(ss * h) + 0.5) / ss
        xs1, ys1 = np.arange(w) + 0.5, np.arange(h) + 0.5
        canvas = _background(rng, xs2, ys2, h, w)
        labels = np.zeros((h, w), dtype=np.int64)
        instances = np.zeros((h, w), dtype=np.int64)
        side = min(h, w)
        for k in range(1, int(rng.integers(self.num_objects[0], self.num_objects[1] + 1)) + 1):
            cls = int(rng.integers(1, self.num_classes))
            name = self.shapes[cls - 1]
            scale = side * rng.uniform(*self.object_scale)
            cx, cy = rng.uniform(-0.05, 1.05) * w, rng.uniform(-0.05, 1.05) * h
            prims = _BUILDERS[name](rng, cx, cy, scale)
            texture = _PREFERRED_TEXTURE[name]
            if rng.random() >= _TEXTURE_KEEP_PROB:
                texture = _TEXTURES[int(rng.integers(len(_TEXTURES)))]
            tex_amp = rng.uniform(5.0, 14.0) * (1 if rng.random() < 0.5 else -1)
            shade_amp, shade_dir = rng.uniform(0.0, 12.0), rng.uniform(0, 2 * math.pi)
            contrast_rng = np.random.default_rng(rng.integers(2**63))  # colour draws don't shift later draws

            x0, y0, x1, y1 = _bbox(prims)
            c0, c1 = max(int(math.floor(x0)), 0), min(int(math.ceil(x1)) + 1, w)
            r0, r1 = max(int(math.floor(y0)), 0), min(int(math.ceil(y1)) + 1, h)
            if c0 >= c1 or r0 >= r1:
                continue
            sx, sy = xs2[ss * c0 : ss * c1], ys2[ss * r0 : ss * r1]
            inside2 = _inside(prims, sx, sy)
            inside1 = _inside(prims, xs1[c0:c1], ys1[r0:r1])
            if not inside2.any():
                continue
            region = canvas[ss * r0 : ss * r1, ss * c0 : ss * c1]  # a view: painting writes into canvas
            colour = _contrasting_colour(contrast_rng, region[inside2].mean(axis=0))
            pattern = tex_amp * _texture(contrast_rng, texture, sx, sy, cx, cy)
            shade = shade_amp * (
                (sx[None, :] - cx) * math.cos(shade_dir) + (sy[:, None] - cy) * math.sin(shade_dir)
            ) / scale
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

"""The drawing of :class:`crfrnn.data.SyntheticShapes`' scenes: the shapes as geometric primitives, their
textures and colours, and the cluttered background (see :mod:`crfrnn.data.synthetic`).
"""

from __future__ import annotations

import math
from typing import List, Sequence, Tuple

import numpy as np

__all__ = [
    "BUILDERS",
    "PREFERRED_TEXTURE",
    "Prim",
    "SHAPES",
    "SUPERSAMPLE",
    "TEXTURES",
    "TEXTURE_KEEP_PROB",
    "WEAK_CONTRAST_PROB",
    "background",
    "bbox",
    "box",
    "contrasting_colour",
    "inside",
    "paint_soft",
    "pan",
    "rect",
    "ring",
    "rotate",
    "segment",
    "soft_alpha",
    "span",
    "star",
    "table",
    "texture_pattern",
    "triangle",
]

SHAPES: Tuple[str, ...] = ("pan", "box", "triangle", "star", "ring", "table")
TEXTURES: Tuple[str, ...] = ("none", "stripes", "checks", "dots")
PREFERRED_TEXTURE = {
    "pan": "dots",
    "box": "checks",
    "triangle": "stripes",
    "star": "none",
    "ring": "none",
    "table": "none",
}
TEXTURE_KEEP_PROB = 0.7
WEAK_CONTRAST_PROB = 0.3
SUPERSAMPLE = 2

# A primitive is ("disc", cx, cy, r), ("ring", cx, cy, r_out, r_in) or ("poly", vertices (K, 2) convex).
Prim = tuple


# ----------------------------------------------------------------------------------------------- geometry
def rotate(points: np.ndarray, angle: float, cx: float, cy: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    x, y = points[:, 0], points[:, 1]
    return np.stack([cx + c * x - s * y, cy + s * x + c * y], axis=1)


def segment(x0: float, y0: float, x1: float, y1: float, width: float) -> Prim:
    """A straight bar of the given width from (x0, y0) to (x1, y1) with flat ends, as a polygon."""
    dx, dy = x1 - x0, y1 - y0
    length = math.hypot(dx, dy) or 1e-9
    nx, ny = -dy / length * width / 2, dx / length * width / 2
    return ("poly", np.array([[x0 + nx, y0 + ny], [x1 + nx, y1 + ny], [x1 - nx, y1 - ny], [x0 - nx, y0 - ny]]))


def rect(hx: float, hy: float, ox: float, oy: float, angle: float, cx: float, cy: float) -> Prim:
    """Rectangle with half sizes (hx, hy) centred at local (ox, oy), rotated by angle about (cx, cy)."""
    pts = np.array([[ox - hx, oy - hy], [ox + hx, oy - hy], [ox + hx, oy + hy], [ox - hx, oy + hy]])
    return ("poly", rotate(pts, angle, cx, cy))


def bbox(prims: Sequence[Prim]) -> Tuple[float, float, float, float]:
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


def inside(prims: Sequence[Prim], xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
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
def pan(rng: np.random.Generator, cx: float, cy: float, s: float) -> List[Prim]:
    r = s * rng.uniform(0.26, 0.34)
    a = rng.uniform(0, 2 * math.pi)
    length = r + s * rng.uniform(0.35, 0.6)
    w = rng.uniform(1.5, 3.5)
    return [("disc", cx, cy, r), segment(cx, cy, cx + length * math.cos(a), cy + length * math.sin(a), w)]


def box(rng: np.random.Generator, cx: float, cy: float, s: float) -> List[Prim]:
    aspect = math.sqrt(rng.uniform(0.6, 1.6))
    return [rect(0.375 * s * aspect, 0.375 * s / aspect, 0.0, 0.0, rng.uniform(0, math.pi), cx, cy)]


def triangle(rng: np.random.Generator, cx: float, cy: float, s: float) -> List[Prim]:
    r = s * rng.uniform(0.45, 0.6)
    base = rng.uniform(0, 2 * math.pi)
    ang = base + np.array([0.0, 2 * math.pi / 3, 4 * math.pi / 3]) + rng.normal(0, math.radians(12), 3)
    return [("poly", np.stack([cx + r * np.cos(ang), cy + r * np.sin(ang)], axis=1))]


def star(rng: np.random.Generator, cx: float, cy: float, s: float) -> List[Prim]:
    n = int(rng.integers(3, 7))
    w = rng.uniform(1.5, 4.0)
    base = rng.uniform(0, 2 * math.pi)
    prims: List[Prim] = [("disc", cx, cy, max(w, s * rng.uniform(0.1, 0.16)))]
    for k in range(n):
        a = base + 2 * math.pi * k / n + rng.normal(0, 0.15)
        length = s * rng.uniform(0.4, 0.55)
        prims.append(segment(cx, cy, cx + length * math.cos(a), cy + length * math.sin(a), w))
    return prims


def ring(rng: np.random.Generator, cx: float, cy: float, s: float) -> List[Prim]:
    r_out = s * rng.uniform(0.3, 0.45)
    r_in = max(r_out - rng.uniform(3.5, 8.0), 1.0)
    return [("ring", cx, cy, r_out, r_in)]


def table(rng: np.random.Generator, cx: float, cy: float, s: float) -> List[Prim]:
    bar_len = s * rng.uniform(0.8, 1.1)
    bar_w = rng.uniform(4.5, 8.0)
    leg_len = s * rng.uniform(0.35, 0.6)
    leg_w = rng.uniform(1.5, 3.5)
    n_legs = int(rng.integers(2, 5))
    tilt = rng.uniform(-0.45, 0.45)
    top = -leg_len / 2  # bar centre (local), legs hang below it: the whole shape is centred on (cx, cy)
    prims: List[Prim] = [rect(bar_len / 2, bar_w / 2, 0.0, top, tilt, cx, cy)]
    margin = leg_w / 2 + rng.uniform(0.0, 0.12) * bar_len
    for x in np.linspace(-bar_len / 2 + margin, bar_len / 2 - margin, n_legs):
        ends = rotate(np.array([[x, top], [x, top + bar_w / 2 + leg_len]]), tilt, cx, cy)
        prims.append(segment(ends[0, 0], ends[0, 1], ends[1, 0], ends[1, 1], leg_w))
    return prims


BUILDERS = {"pan": pan, "box": box, "triangle": triangle, "star": star, "ring": ring, "table": table}


# --------------------------------------------------------------------------------------------- appearance
def contrasting_colour(rng: np.random.Generator, behind: np.ndarray) -> np.ndarray:
    """``behind`` plus a random RGB direction times a contrast that is sometimes weak."""
    if rng.random() < WEAK_CONTRAST_PROB:
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


def texture_pattern(
    rng: np.random.Generator, kind: str, xs: np.ndarray, ys: np.ndarray, cx: float, cy: float
) -> np.ndarray:
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


def soft_alpha(dist: np.ndarray, softness: float) -> np.ndarray:
    """Coverage from a signed distance (negative inside): a step blurred over ``softness`` pixels."""
    return 0.5 * (1.0 - np.tanh(dist / (2.0 * softness)))


def span(coords: np.ndarray, lo: float, hi: float) -> slice:
    """Slice of the sorted ``coords`` that lie in ``[lo, hi]`` (possibly empty)."""
    return slice(int(np.searchsorted(coords, lo, "left")), int(np.searchsorted(coords, hi, "right")))


def paint_soft(rng: np.random.Generator, region: np.ndarray, alpha: np.ndarray) -> None:
    """Blend a contrasting colour into ``region`` (a view of the canvas) with coverage ``alpha``, in place."""
    if region.size == 0:  # the blob lies outside the image: nothing to paint, but draw as before (without
        contrasting_colour(rng, np.full(3, np.nan))  # a mean-of-empty warning) so later samples are unchanged
        return
    covered = alpha > 0.5
    behind = region[covered].mean(axis=0) if covered.any() else region.reshape(-1, 3).mean(axis=0)
    colour = contrasting_colour(rng, behind)
    touched = alpha > 1e-3
    a = alpha[touched][:, None]
    region[touched] = region[touched] * (1.0 - a) + colour * a


def background(rng: np.random.Generator, xs: np.ndarray, ys: np.ndarray, h: int, w: int) -> np.ndarray:
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
        cols = span(xs, min(e[0] for e in ellipses) - reach, max(e[0] for e in ellipses) + reach)
        rows = span(ys, min(e[1] for e in ellipses) - reach, max(e[1] for e in ellipses) + reach)
        Xs, Ys = xs[None, cols], ys[rows, None]
        alpha = np.zeros((Ys.size, Xs.size))
        for ex, ey, ra, rb, th in ellipses:
            u = (Xs - ex) * math.cos(th) + (Ys - ey) * math.sin(th)
            v = -(Xs - ex) * math.sin(th) + (Ys - ey) * math.cos(th)
            dist = (np.sqrt((u / ra) ** 2 + (v / rb) ** 2) - 1.0) * min(ra, rb)
            alpha = np.maximum(alpha, soft_alpha(dist, softness))
        paint_soft(rng, canvas[rows, cols], alpha)
    for _ in range(int(rng.integers(0, 3))):  # straight bands across the image
        px, py, th = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(0, math.pi)
        width, softness = rng.uniform(1.5, 8.0), rng.uniform(0.2, 1.5)
        dist = np.abs(-(X - px) * math.sin(th) + (Y - py) * math.cos(th)) - width / 2
        paint_soft(rng, canvas, soft_alpha(dist, softness))
    return canvas

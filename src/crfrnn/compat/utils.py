"""pydensecrf.utils, importable in its place: ``from crfrnn.compat.utils import unary_from_softmax, ...``.

Each function returns what pydensecrf's does (same shapes, dtypes and scaling rules, including the partial
``sdims``/``schan`` tuples that scale only the axes and channels they list).
"""

from __future__ import annotations

import warnings
from numbers import Number
from typing import Any, Optional, cast

import numpy as np

__all__ = [
    "compute_unary",
    "create_pairwise_bilateral",
    "create_pairwise_gaussian",
    "softmax_to_unary",
    "unary_from_labels",
    "unary_from_softmax",
]


def unary_from_softmax(sm: np.ndarray, scale: Optional[float] = None, clip: Optional[float] = 1e-5) -> np.ndarray:
    """Energies ``(L, N)`` float32 ``-log(p)`` from ``(L, ...)`` probabilities.

    Args:
        sm: probabilities, labels first.
        scale: if given, in ``(0, 1]``: blend with the uniform distribution, ``scale * p + (1 - scale) / L``.
        clip: smallest probability kept (None: no clipping, so ``p = 0`` gives ``inf``).
    """
    sm = np.asarray(sm)
    p = sm.reshape(sm.shape[0], -1)
    if p.dtype.kind != "f":
        p = p.astype(np.float32)
    if scale is not None:
        if not 0 < scale <= 1:
            raise ValueError("`scale` needs to be in (0,1]")
        p = scale * p + (1.0 - scale) / p.shape[0]
    if clip is not None:
        p = np.clip(p, clip, 1.0)
    with np.errstate(divide="ignore"):  # in the input's precision, as pydensecrf computes it
        out = np.log(p)
    return np.negative(out, out=out).astype(np.float32, copy=False)


def unary_from_labels(labels: np.ndarray, n_labels: int, gt_prob: float, zero_unsure: bool = True) -> np.ndarray:
    """Energies ``(n_labels, N)`` from a label map trusted with probability ``gt_prob``.

    With ``zero_unsure`` (the default), label 0 means "unsure" (uniform) and labels ``1..n`` map to
    ``0..n-1``. The same as ``-crfrnn.unary_from_labels(labels - 1, n_labels, gt_prob=gt_prob, unknown=-1)``.
    """
    from crfrnn.dense import unary_from_labels as logits_from_labels

    if not 0 < gt_prob < 1:
        raise ValueError("`gt_prob must be in (0,1).")
    if isinstance(n_labels, bool) or not isinstance(n_labels, (int, np.integer)) or n_labels < 1:
        raise ValueError(f"n_labels must be an integer >= 1 (the number of classes), got {n_labels!r}.")
    lab = np.asarray(labels).reshape(-1).astype(np.int64)
    logits = logits_from_labels(
        lab[None] - 1 if zero_unsure else lab[None], n_labels, gt_prob=gt_prob, unknown=-1 if zero_unsure else None
    )
    return np.ascontiguousarray(-logits.reshape(n_labels, -1), dtype=np.float32)


def _widths(name: str, widths: Any) -> list:
    """``widths`` as a list, each a finite number > 0 (a width of 0 divides by zero: inf and NaN features)."""
    values = [widths] if isinstance(widths, Number) else list(widths)
    for w in values:
        if not isinstance(w, Number) or isinstance(w, bool) or not np.isfinite(float(w)) or float(w) <= 0:  # type: ignore[arg-type]
            raise ValueError(f"{name} must be finite numbers > 0 (feature widths), got {widths!r}.")
    return values


def _mesh(sdims: Any, shape: Any) -> np.ndarray:
    """Pydensecrf's grid: ``ij`` coordinates of ``shape``, the first ``len(sdims)`` divided by ``sdims``."""
    sdims = _widths("sdims", sdims)
    shape = tuple(shape)
    if len(shape) < len(sdims) or not all(isinstance(n, (int, np.integer)) and n >= 1 for n in shape):
        raise ValueError(
            f"shape must hold {len(sdims)} or more sizes >= 1 (one per entry of sdims), got {shape!r}; "
            "pass e.g. image.shape[:2]."
        )
    mesh = np.array(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), dtype=np.float32)
    for i, s in enumerate(sdims):
        mesh[i] /= np.float32(s)
    return mesh


def create_pairwise_gaussian(sdims: Any, shape: Any) -> np.ndarray:
    """``(len(sdims), N)`` grid coordinates (``ij`` order) divided by ``sdims`` (works for any dimension)."""
    sdims = [sdims] if isinstance(sdims, Number) else list(sdims)
    return _mesh(sdims, shape).reshape([len(sdims), -1])


def create_pairwise_bilateral(sdims: Any, schan: Any, img: np.ndarray, chdim: int = -1) -> np.ndarray:
    """Grid coordinates divided by ``sdims``, then the image channels divided by ``schan``: ``(D, N)``.

    Args:
        sdims: position widths per axis (``ij`` order); a shorter tuple scales only the first axes.
        schan: one width for every channel, or one per channel; a shorter tuple scales only the first
            channels (as pydensecrf does).
        img: the image, any number of axes.
        chdim: the channel axis of ``img``, or ``-1`` for an image without one (a single channel).
    """
    img = np.asarray(img)
    if chdim == -1:
        feats = img[np.newaxis].astype(np.float32)
    else:
        feats = np.moveaxis(img, chdim, 0).astype(np.float32)
    widths = _widths("schan", schan)
    if isinstance(schan, Number):
        feats /= np.float32(cast(float, schan))  # a numbers.Number
    else:
        schan = widths
        if len(schan) > feats.shape[0]:
            raise ValueError(f"schan has {len(schan)} entries but the image has {feats.shape[0]} channels.")
        for i, s in enumerate(schan):
            feats[i] /= np.float32(s)
    mesh = _mesh(sdims, feats.shape[1:])
    out = np.concatenate([mesh, feats])
    return out.reshape([out.shape[0], -1])


def compute_unary(labels: np.ndarray, M: int, GT_PROB: float = 0.5) -> np.ndarray:  # noqa: N803 (pydensecrf names)
    """Deprecated in pydensecrf: :func:`unary_from_labels`."""
    warnings.warn("compute_unary is deprecated, use unary_from_labels instead.", DeprecationWarning, stacklevel=2)
    return unary_from_labels(labels, M, GT_PROB)


def softmax_to_unary(sm: np.ndarray, GT_PROB: float = 1) -> np.ndarray:  # noqa: N803
    """Deprecated in pydensecrf: :func:`unary_from_softmax` without clipping."""
    warnings.warn("softmax_to_unary is deprecated, use unary_from_softmax instead.", DeprecationWarning, stacklevel=2)
    return unary_from_softmax(sm, None if GT_PROB == 1 else GT_PROB, clip=None)

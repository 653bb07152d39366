"""Reading a network's output for an image: probabilities, logits or a label map, checked against the image.

:func:`read_scores` reads ``.npy``/``.npz`` score arrays (labels first or last, at the image's resolution or,
with ``resize=True``, at a network's own) and ``.png`` label maps, and returns a :class:`ScoreMap` ready for
:func:`crfrnn.dense_crf`:

>>> import tempfile
>>> from crfrnn import dense_crf
>>> from crfrnn.io import read_rgb
>>> from PIL import Image
>>> folder = tempfile.mkdtemp()
>>> Image.new("RGB", (6, 4)).save(f"{folder}/a.png")
>>> np.save(f"{folder}/a.npy", np.full((2, 4, 6), 0.5, np.float32))
>>> image = read_rgb(f"{folder}/a.png")
>>> scores = read_scores(f"{folder}/a.npy", image.shape[:2])
>>> dense_crf(image, scores.values, num_iterations=1).argmax(0).shape
(4, 6)

Messages of the errors raised here name the file and, where there is one, the parameter that fixes the
problem, in backticks (`layout='hwl'`), so that the command line can name its flags instead.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from crfrnn import _kernels
from crfrnn._deprecated import renamed_arguments
from crfrnn._utils.files import PathLike
from crfrnn.data.palette import load_label_png
from crfrnn.dense import unary_from_labels
from crfrnn.io._numpy import load_array
from crfrnn.io.memory import check_memory

__all__ = ["LAYOUTS", "SCORE_SUFFIXES", "ScoreMap", "labels_of", "read_scores"]

#: file suffixes taken as network outputs: probabilities/logits (.npy, .npz) or label maps (.png)
SCORE_SUFFIXES: Tuple[str, ...] = (".npy", ".npz", ".png")
#: layouts of a 3-d score array: labels first ``(L, H, W)`` or last ``(H, W, L)``
LAYOUTS: Tuple[str, ...] = ("lhw", "hwl")

_MAX_LABELS = 256  # an 8-bit palette PNG holds at most 256 labels
_MAX_RESIZE = 16  # with `resize`, scores may have up to this many times the image's pixels
_VOID = 255  # PASCAL VOC's void label
_VOID_IF_BELOW = 128  # 255 is read as void when every other label is below this (VOC: 0..20)


@dataclass
class ScoreMap:
    """A network's output for one image, ready for :func:`crfrnn.dense_crf`.

    Attributes:
        values: ``(L, H, W)`` float32 probabilities (``is_logits=False``) or unary logits.
        is_logits: pass ``values`` as ``logits=`` rather than ``probs=``.
        labels: ``(H, W)`` int64 labels before refinement: the argmax of the scores, or the label map as
            read (``unknown`` pixels kept as they are).
        notes: remarks worth showing the user (e.g. how an ambiguous layout was resolved).
    """

    values: np.ndarray
    is_logits: bool
    labels: np.ndarray
    notes: List[str] = field(default_factory=list)


def labels_of(scores: np.ndarray, is_logits: bool = False) -> np.ndarray:
    """The labelling of ``(L, *S)`` scores: their argmax over labels, or for one map (``L = 1``, a binary
    network's foreground probability or logit) foreground where ``p > 0.5`` (``z > 0``), as the argmax of the
    two-label problem ``(1 - p, p)`` gives it (ties go to the background).
    """
    if scores.shape[0] == 1:
        return (scores[0] > (0.0 if is_logits else 0.5)).astype(np.int64)
    fast = _kernels.argmax_labels(scores) if scores.dtype in (np.float32, np.float64) else None
    return scores.argmax(0).astype(np.int64) if fast is None else fast


def _shape_for(layout: str, arr: np.ndarray) -> Tuple[int, int, int]:
    """``(L, h, w)`` of a 3-d array read with ``layout``."""
    return (arr.shape[0], *arr.shape[1:]) if layout == "lhw" else (arr.shape[2], *arr.shape[:2])


def _looks_resizable(arr: np.ndarray, size: Tuple[int, int], layout: Optional[str], strict: bool) -> Optional[str]:
    """The layout under which ``arr`` is a score map of the image's aspect ratio at another resolution, if any.

    ``strict``: only a map at least 1.5 times smaller in both directions (a network's output stride), with
    the aspect ratio within 10%; otherwise any size, the aspect ratio within 25%.
    """
    h, w = size
    worst = math.log(1.1 if strict else 1.25)
    best, best_err = None, math.inf
    for candidate in (layout,) if layout is not None else LAYOUTS:
        labels, sh, sw = _shape_for(candidate, arr)
        if not 1 <= labels <= _MAX_LABELS or sh < 1 or sw < 1 or (strict and (1.5 * sh > h or 1.5 * sw > w)):
            continue
        err = abs(math.log((sh / sw) / (h / w)))
        if err < best_err:
            best, best_err = candidate, err
    return best if best_err < worst else None


def _layout(
    arr: np.ndarray,
    path: str,
    size: Tuple[int, int],
    layout: Optional[str],
    resize: bool,
    notes: List[str],
    shown: Optional[Tuple[int, ...]] = None,
) -> Tuple[str, bool]:
    """``(layout, needs_resize)`` of a 3-d score array for an image of ``size`` (``shown``: the file's shape, for
    messages, when ``arr`` has an axis added).
    """
    h, w = size
    shape = tuple(arr.shape) if shown is None else tuple(shown)
    fits = {"lhw": arr.shape[1:] == (h, w), "hwl": arr.shape[:2] == (h, w)}
    if layout is not None and layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {', '.join(LAYOUTS)}, got {layout!r}.")
    if layout is not None and fits[layout]:
        return layout, False
    if layout is None and fits["lhw"] and fits["hwl"]:
        notes.append(
            f"scores of shape {shape} in '{path}' fit both L x H x W and H x W x L; assuming L x H x W "
            "(pass `layout='hwl'` if the labels are last)."
        )
        return "lhw", False
    if layout is None and (fits["lhw"] or fits["hwl"]):
        return ("lhw" if fits["lhw"] else "hwl"), False
    small = _looks_resizable(arr, size, layout, strict=not resize)
    if resize:
        if small is None:
            raise ValueError(
                f"scores in '{path}' have shape {shape}, which `resize=True` cannot map onto the {w}x{h} (WxH) "
                "image: neither L x h x w nor h x w x L has the image's aspect ratio. Check that the file belongs "
                "to this image (or `layout`)."
            )
        labels, sh, sw = _shape_for(small, arr)
        notes.append(f"scores in '{path}' are {sw}x{sh} (WxH); resized bilinearly to {w}x{h} (`resize=True`).")
        return small, True
    hint = ""
    if small is not None:
        labels, sh, sw = _shape_for(small, arr)
        count = f"{labels} label" + ("s" if labels != 1 else "")
        hint = (
            f" They look like the network's output at its own resolution ({count} at {sw}x{sh}); pass "
            "`resize=True` to resize them bilinearly to the image (on logits; on log-probabilities for probabilities)."
        )
    if layout is not None:
        want = f"(L, {h}, {w})" if layout == "lhw" else f"({h}, {w}, L)"
        raise ValueError(
            f"scores in '{path}' have shape {shape}, which is not {want} as `layout={layout!r}` says "
            f"for a {w}x{h} (WxH) image.{hint}"
        )
    raise ValueError(
        f"scores in '{path}' have shape {shape}, which does not match the {w}x{h} (WxH) image: "
        f"expected (L, {h}, {w}) or ({h}, {w}, L).{hint or ' Check that the file belongs to this image.'}"
    )


def _resize(values: np.ndarray, size: Tuple[int, int], is_logits: bool) -> np.ndarray:
    """Bilinear resize of ``(L, h, w)`` scores to ``size``: logits directly, probabilities as log-probabilities (one
    foreground map as log-odds).
    """
    t = torch.from_numpy(values)
    single = t.shape[0] == 1  # a foreground probability: resized as log-odds
    if not is_logits:
        t = torch.logit(t, eps=1e-6) if single else t.clamp_min(1e-12).log()
    t = F.interpolate(t[None], size=size, mode="bilinear", align_corners=False)[0]
    if not is_logits:
        t = t.sigmoid() if single else t.softmax(0)
    return np.ascontiguousarray(t.numpy(), dtype=np.float32)


def _precision_eps(values: np.ndarray, dtype: np.dtype) -> float:
    """Machine epsilon of the precision the scores were computed in: their dtype, or bfloat16/float16 when
    every float32 value is exactly a bfloat16/float16 one (a half-precision softmax saved as float32).
    """
    if dtype.name == "bfloat16":  # ml_dtypes' bfloat16: 8 significant bits
        return 2.0**-7
    if not np.issubdtype(dtype, np.floating):
        return 0.0
    eps = float(np.finfo(dtype).eps)
    if eps < 2.0**-10:
        if not (values.view(np.uint32) & 0xFFFF).any():
            return 2.0**-7
        if np.array_equal(values.astype(np.float16).astype(np.float32), values):
            return 2.0**-10
    return eps


def _check_probs(values: np.ndarray, path: str, dtype: np.dtype) -> np.ndarray:
    """``values`` if they sum to 1 within the rounding of their precision (normalised again when that
    rounding is above the 1e-3 that :func:`crfrnn.dense_crf` allows); else a ValueError.
    """
    if values.min() < 0:
        raise ValueError(
            f"'{path}' holds negative values (min {float(values.min()):.4g}), so these are not probabilities; "
            "if they are raw network scores, pass `logits=True`."
        )
    if values.shape[0] == 1:  # a binary network's foreground probability
        if float(values.max()) > 1.0:
            raise ValueError(
                f"'{path}' holds one map with values up to {float(values.max()):.4g}, so it is not a foreground "
                "probability in [0, 1]; if these are a sigmoid's raw scores, pass `logits=True` (a label map must be "
                "saved as integers)."
            )
        return values
    total = values.sum(0, dtype=np.float64)
    error = float(np.abs(total - 1.0).max())
    if error <= 1e-3:
        return values
    # each of the L values is rounded by up to eps / 2 of itself, and a softmax computed in that precision
    # accumulates up to about L roundings more: allow L * eps
    eps = _precision_eps(values, dtype)
    tol = max(1e-3, values.shape[0] * eps)
    if error > tol:
        precision = {2.0**-7: "bfloat16", 2.0**-10: "float16"}.get(eps, str(dtype))
        raise ValueError(
            f"probabilities in '{path}' do not sum to 1 over labels (sums range {float(total.min()):.4g} to "
            f"{float(total.max()):.4g}; {precision} rounding allows {tol:.2g}); normalise them (softmax), pass raw "
            "scores with `logits=True`, or check `layout`."
        )
    values /= total.astype(np.float32)  # only the rounding of a half-precision softmax is corrected here
    return values


def _from_labels(
    labels: np.ndarray,
    path: str,
    size: Tuple[int, int],
    gt_prob: float,
    num_classes: Optional[int],
    unknown: Optional[int],
    max_memory: Optional[int],
) -> ScoreMap:
    h, w = size
    if labels.shape != (h, w):
        lh, lw = labels.shape
        raise ValueError(f"label map '{path}' is {lw}x{lh} (WxH) but the image is {w}x{h}; they must be the same size.")
    if not np.issubdtype(labels.dtype, np.integer):
        raise TypeError(f"label map '{path}' has dtype {labels.dtype}; expected integer class indices.")
    labels = labels.astype(np.int64)
    notes: List[str] = []
    if unknown is None and (num_classes is None or num_classes <= _VOID):
        void = labels == _VOID
        if void.any():
            others = labels[~void]
            top = int(others.max()) if others.size else 0
            if top >= _VOID_IF_BELOW:
                raise ValueError(
                    f"label map '{path}' holds the value {_VOID} and labels up to {top}, so it is not clear whether "
                    f"{_VOID} is a label or PASCAL VOC's void: pass `unknown={_VOID}` if it marks unknown pixels, or "
                    f"`num_classes=256` if it is a label."
                )
            unknown = _VOID
            notes.append(
                f"label map '{path}' uses {_VOID} for {int(void.sum())} pixels and labels 0..{top} otherwise: "
                f"reading {_VOID} as PASCAL VOC's void (unknown, left to the CRF); pass `unknown=V` or "
                "`num_classes=256` to read it otherwise."
            )
    known = labels if unknown is None else labels[labels != unknown]
    if known.size and known.min() < 0:
        raise ValueError(
            f"label map '{path}' contains negative labels ({int(known.min())}); pass `unknown=V` if V marks "
            "unknown pixels."
        )
    if num_classes is None:
        num_classes = max(2, int(known.max()) + 1 if known.size else 2)
    elif known.size and known.max() >= num_classes:
        raise ValueError(
            f"label map '{path}' contains label {int(known.max())}, but `num_classes` is {num_classes} (labels 0.."
            f"{num_classes - 1}); raise `num_classes`, or pass `unknown={int(known.max())}` if it marks unknown pixels."
        )
    if num_classes > _MAX_LABELS:
        raise ValueError(
            f"label map '{path}' needs {num_classes} labels, but the output palette PNG holds at most {_MAX_LABELS}; "
            "pass `unknown=V` if a large value (e.g. 255) marks unknown pixels."
        )
    check_memory(path, size, num_classes, max_memory, kernels=())  # no lattice yet: a lower bound
    logits = unary_from_labels(labels, num_classes, gt_prob=gt_prob, unknown=unknown)
    assert isinstance(logits, np.ndarray)  # NumPy labels in, NumPy logits out
    return ScoreMap(values=logits, is_logits=True, labels=labels, notes=notes)


@renamed_arguments(num_labels="num_classes")
def read_scores(
    path: PathLike,
    size: Tuple[int, int],
    *,
    key: Optional[str] = None,
    layout: Optional[str] = None,
    logits: bool = False,
    gt_prob: Optional[float] = None,
    num_classes: Optional[int] = None,
    unknown: Optional[int] = None,
    resize: bool = False,
    max_memory: Optional[int] = None,
) -> ScoreMap:
    """Read a network's output for an image of ``size = (H, W)`` and check it.

    ``.npy``/``.npz`` files hold ``(L, H, W)`` or ``(H, W, L)`` scores (a leading batch dimension of 1 is
    dropped) in float16, bfloat16, float32 or float64; the layout is found by matching ``H, W`` and, if both
    fit (``L == H == W``), taken as ``(L, H, W)`` unless ``layout`` says otherwise. Probabilities must sum to
    1 within the rounding of their dtype. With ``resize``, scores at another resolution (a network's output
    stride) are resized bilinearly to the image, logits as they are and probabilities as log-probabilities
    (then normalised again). A ``.png`` label map (palette or index PNG) or a 2-d integer array is a hard
    labelling, turned into unary logits trusted with probability ``gt_prob``; the value 255 in it is read as
    PASCAL VOC's void (unknown) when every other label is below 128 (a note says so), unless ``unknown`` or
    ``num_classes`` says otherwise. Neither pickles nor object arrays are ever loaded.

    Args:
        path: ``.npy``, ``.npz`` or ``.png`` file.
        size: ``(H, W)`` of the image.
        key: array name inside a ``.npz`` archive (default: its first array).
        layout: ``"lhw"`` or ``"hwl"`` to force the layout.
        logits: the scores are unary logits (raw network scores), not probabilities.
        gt_prob: confidence in a label map, in ``(0, 1)``; default 0.5. Only for label maps.
        num_classes: number of labels of a label map; default its largest label + 1.
        unknown: a label value meaning "unknown" in a label map (e.g. 0 or 255).
        resize: resize scores of another resolution to ``size`` (bilinear).
        max_memory: bytes that refining this image may need (:func:`check_memory`, checked before the
            scores are converted); None: no limit.

    Returns:
        A :class:`ScoreMap` with ``(L, H, W)`` float32 values and the labels before refinement.

    Raises:
        FileNotFoundError: no such file.
        OSError: the file cannot be decoded, or is a pickle.
        ValueError: wrong suffix, shape, key, values or an option that does not apply to this kind of file.
        TypeError: a label map that is not integer, or scores of a dtype that is not floating point.
        MemoryLimitError: refining would need more than ``max_memory``.
    """
    path = os.fspath(path)
    suffix = Path(path).suffix.lower()
    if suffix not in SCORE_SUFFIXES:
        raise ValueError(
            f"cannot read scores from '{path}': expected a .npy or .npz array (probabilities, or logits with "
            f"`logits=True`) or a .png label map, got suffix '{suffix}'."
        )
    if not os.path.isfile(path):
        raise FileNotFoundError(f"scores not found: '{path}'")
    notes: List[str] = []
    if suffix == ".png":
        if key is not None or layout is not None or logits or resize:
            opt = next(
                o
                for o, on in (
                    ("key", key is not None),
                    ("layout", layout is not None),
                    ("logits", logits),
                    ("resize", resize),
                )
                if on
            )
            raise ValueError(f"`{opt}` does not apply to the label map '{path}'; use `gt_prob` for label maps.")
        labels = load_label_png(path)
        return _from_labels(labels, path, size, 0.5 if gt_prob is None else gt_prob, num_classes, unknown, max_memory)
    h, w = size
    arr = load_array(  # the header is checked first: a small .npz can inflate to gigabytes
        path,
        key,
        max_values=_MAX_LABELS * h * w * (_MAX_RESIZE if resize else 1),
        max_bytes=max_memory,
        expected=f"for the {w}x{h} (WxH) image with at most {_MAX_LABELS} labels",
    )
    if arr.size == 0:
        raise ValueError(f"'{path}' holds an empty array (shape {tuple(arr.shape)}); expected scores for the image.")
    if arr.ndim == 4 and arr.shape[0] == 1:  # a batch of one, as networks return it
        arr = arr[0]
    if arr.ndim == 2 and np.issubdtype(arr.dtype, np.integer):
        if logits or layout is not None or resize:
            raise ValueError(
                f"'{path}' holds a 2-d integer label map; `logits`, `layout` and `resize` apply to score arrays."
            )
        return _from_labels(
            np.asarray(arr), path, size, 0.5 if gt_prob is None else gt_prob, num_classes, unknown, max_memory
        )
    if gt_prob is not None or num_classes is not None or unknown is not None:
        raise ValueError(
            f"`gt_prob`, `num_classes` and `unknown` apply to label maps, but '{path}' holds scores of shape "
            f"{tuple(arr.shape)}; drop them (or pass `logits=True` for raw scores)."
        )
    if arr.dtype.kind == "V" and arr.dtype.itemsize == 2 and arr.dtype.names is None:
        raise TypeError(
            f"'{path}' holds 2-byte raw values (dtype {arr.dtype}), probably bfloat16 saved without ml_dtypes; "
            "save float32 instead (e.g. tensor.float().numpy())."
        )
    floating = np.issubdtype(arr.dtype, np.floating) or arr.dtype.name == "bfloat16"
    if not (floating or np.issubdtype(arr.dtype, np.integer)) or arr.dtype == np.bool_:
        raise TypeError(f"'{path}' holds an array of dtype {arr.dtype}; expected floating-point scores.")
    shown = tuple(arr.shape)
    if arr.ndim == 2:  # one float map: a binary network's output
        if layout is not None:
            raise ValueError(
                f"'{path}' holds one 2-d map (shape {tuple(arr.shape)}); `layout` applies to L x H x W "
                "or H x W x L scores."
            )
        arr = arr[None]
    if arr.ndim != 3:
        raise ValueError(
            f"'{path}' holds a {arr.ndim}-d array (shape {tuple(arr.shape)}); expected L x H x W or H x W x L scores "
            f"for the {w}x{h} (WxH) image, one H x W map (a binary network's foreground), or a 2-d integer label map."
        )
    order, needs_resize = _layout(arr, path, size, layout, resize, notes, shown)
    count = _shape_for(order, arr)[0]
    if count == 1:
        notes.append(
            f"'{path}' holds one map: read as a binary network's foreground {'logit' if logits else 'probability'}, "
            "refined as the two-label problem (labels 0 background, 1 foreground; the refined marginals "
            "are the foreground probability)."
        )
    if count > _MAX_LABELS:
        raise ValueError(
            f"'{path}' holds scores for {count} labels, but the output palette PNG holds at most "
            f"{_MAX_LABELS}; check `layout`."
        )
    check_memory(path, size, count, max_memory, kernels=())  # no lattice yet: a lower bound
    values = np.array(arr if order == "lhw" else np.moveaxis(arr, -1, 0), dtype=np.float32, order="C")  # a copy
    if not np.isfinite(values).all():
        raise ValueError(f"'{path}' contains NaN or infinite values.")
    if not logits:
        values = _check_probs(values, path, arr.dtype)
    if needs_resize:
        values = _resize(values, size, logits)
    return ScoreMap(values=values, is_logits=logits, labels=labels_of(values, logits), notes=notes)

"""File-level helpers behind ``crfrnn refine``: read an image and a network's output, refine, write results.

The command line (:mod:`crfrnn.cli.refine`) only parses arguments and calls these functions, so the same
steps are available from Python:

>>> import tempfile
>>> from crfrnn import dense_crf
>>> folder = tempfile.mkdtemp()
>>> Image.new("RGB", (6, 4)).save(f"{folder}/a.png")
>>> np.save(f"{folder}/a.npy", np.full((2, 4, 6), 0.5, np.float32))
>>> image = read_rgb(f"{folder}/a.png")
>>> scores = read_scores(f"{folder}/a.npy", image.shape[:2])
>>> refined = dense_crf(image, scores.values, iterations=1).argmax(0)
>>> make_overlay(image, scores.labels, refined, titles=None).shape
(4, 26, 3)

Messages of the errors raised here name the file and, where there is one, the ``crfrnn refine`` option
that fixes the problem.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from crfrnn.data.palette import colorize, load_label_png

__all__ = [
    "IMAGE_SUFFIXES",
    "LAYOUTS",
    "SCORE_SUFFIXES",
    "ScoreMap",
    "make_overlay",
    "pair_by_stem",
    "read_rgb",
    "read_scores",
]

PathLike = Union[str, "os.PathLike[str]"]

#: file suffixes taken as images when pairing directories
IMAGE_SUFFIXES: Tuple[str, ...] = (".bmp", ".gif", ".jpeg", ".jpg", ".pgm", ".png", ".ppm", ".tif", ".tiff", ".webp")
#: file suffixes taken as network outputs: probabilities/logits (.npy, .npz) or label maps (.png)
SCORE_SUFFIXES: Tuple[str, ...] = (".npy", ".npz", ".png")
#: layouts of a 3-d score array: labels first ``(L, H, W)`` or last ``(H, W, L)``
LAYOUTS: Tuple[str, ...] = ("lhw", "hwl")

_MAX_LABELS = 256  # an 8-bit palette PNG holds at most 256 labels


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


def read_rgb(path: PathLike) -> np.ndarray:
    """Read any image Pillow decodes as ``(H, W, 3)`` uint8 RGB (grey is replicated, alpha dropped).

    Raises:
        FileNotFoundError: no such file.
        OSError: the file is not a readable image; the message names it.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"image not found: '{path}'")
    try:
        with Image.open(path) as img:
            return np.array(img.convert("RGB"), dtype=np.uint8)
    except Exception as e:  # Pillow raises OSError, SyntaxError, ValueError, EOFError, ... on bad data
        raise OSError(
            f"could not read image '{path}' ({type(e).__name__}: {e}); is it a corrupt or non-image file?"
        ) from e


def _load_array(path: str, key: Optional[str]) -> np.ndarray:
    suffix = Path(path).suffix.lower()
    if key is not None and suffix != ".npz":
        raise ValueError(f"--key {key!r} only applies to .npz archives, but '{path}' is a {suffix} file.")
    try:
        data = np.load(path, allow_pickle=False)
    except Exception as e:  # ValueError, EOFError, OSError, BadZipFile, ... on corrupt or non-NumPy files
        # NumPy takes anything without the .npy/.npz magic for a pickle, which is never loaded (unsafe)
        why = "not a NumPy .npy/.npz file" if "pickle" in str(e) else f"{type(e).__name__}: {e}"
        raise OSError(f"could not read '{path}' as a NumPy file ({why}); is it corrupt or truncated?") from e
    if isinstance(data, np.ndarray):
        return data
    with data:
        names = list(data.files)
        if not names:
            raise ValueError(f"'{path}' is an empty .npz archive; expected at least one array.")
        if key is not None and key not in names:
            raise ValueError(
                f"no array named {key!r} in '{path}'; it holds {', '.join(names)}. Pass one of them as --key."
            )
        name = names[0] if key is None else key
        try:
            return data[name]
        except Exception as e:
            raise OSError(
                f"could not read array {name!r} from '{path}' ({type(e).__name__}: {e}); is it corrupt?"
            ) from e


def _to_lhw(arr: np.ndarray, path: str, size: Tuple[int, int], layout: Optional[str], notes: List[str]) -> np.ndarray:
    h, w = size
    if arr.ndim == 4 and arr.shape[0] == 1:  # a batch of one, as networks return it
        arr = arr[0]
    if arr.ndim != 3:
        raise ValueError(
            f"'{path}' holds an array of shape {tuple(arr.shape)}; expected L x H x W or H x W x L scores for a "
            f"{w}x{h} (WxH) image (or a 2-d label map with --gt-prob)."
        )
    fits = {"lhw": arr.shape[1:] == (h, w), "hwl": arr.shape[:2] == (h, w)}
    if layout is not None:
        if layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {', '.join(LAYOUTS)}, got {layout!r}.")
        if not fits[layout]:
            want = f"(L, {h}, {w})" if layout == "lhw" else f"({h}, {w}, L)"
            raise ValueError(
                f"scores in '{path}' have shape {tuple(arr.shape)}, which is not {want} as --layout {layout} says "
                f"for a {w}x{h} (WxH) image."
            )
    elif fits["lhw"] and fits["hwl"]:
        layout = "lhw"
        notes.append(
            f"scores of shape {tuple(arr.shape)} in '{path}' fit both L x H x W and H x W x L; assuming L x H x W "
            "(pass --layout hwl if the labels are last)."
        )
    elif fits["lhw"] or fits["hwl"]:
        layout = "lhw" if fits["lhw"] else "hwl"
    else:
        raise ValueError(
            f"scores in '{path}' have shape {tuple(arr.shape)}, which does not match the {w}x{h} (WxH) image: "
            f"expected (L, {h}, {w}) or ({h}, {w}, L). Check that the file belongs to this image."
        )
    return np.ascontiguousarray(arr if layout == "lhw" else np.moveaxis(arr, -1, 0))


def _check_probs(values: np.ndarray, path: str) -> None:
    if values.min() < 0:
        raise ValueError(
            f"'{path}' holds negative values (min {float(values.min()):.4g}), so these are not probabilities; "
            "if they are raw network scores, pass --logits."
        )
    total = values.sum(0)
    if not np.allclose(total, 1.0, atol=1e-3):
        raise ValueError(
            f"probabilities in '{path}' do not sum to 1 over labels (sums range {float(total.min()):.4g} to "
            f"{float(total.max()):.4g}); normalise them (softmax), pass raw scores with --logits, or check --layout."
        )


def _from_labels(
    labels: np.ndarray,
    path: str,
    size: Tuple[int, int],
    gt_prob: float,
    num_labels: Optional[int],
    unknown: Optional[int],
) -> ScoreMap:
    from crfrnn.dense import unary_from_labels

    h, w = size
    if labels.shape != (h, w):
        lh, lw = labels.shape
        raise ValueError(f"label map '{path}' is {lw}x{lh} (WxH) but the image is {w}x{h}; they must be the same size.")
    if not np.issubdtype(labels.dtype, np.integer):
        raise TypeError(f"label map '{path}' has dtype {labels.dtype}; expected integer class indices.")
    labels = labels.astype(np.int64)
    known = labels if unknown is None else labels[labels != unknown]
    if known.size and known.min() < 0:
        raise ValueError(
            f"label map '{path}' contains negative labels ({int(known.min())}); pass --unknown V if V marks "
            "unknown pixels."
        )
    if num_labels is None:
        num_labels = max(2, int(known.max()) + 1 if known.size else 2)
    elif known.size and known.max() >= num_labels:
        raise ValueError(
            f"label map '{path}' contains label {int(known.max())}, but --num-labels is {num_labels} (labels 0.."
            f"{num_labels - 1}); raise --num-labels, or pass --unknown {int(known.max())} if it marks unknown pixels."
        )
    if num_labels > _MAX_LABELS:
        raise ValueError(
            f"label map '{path}' needs {num_labels} labels, but the output palette PNG holds at most {_MAX_LABELS}; "
            "pass --unknown V if a large value (e.g. 255) marks unknown pixels."
        )
    logits = unary_from_labels(labels, num_labels, gt_prob=gt_prob, unknown=unknown)
    return ScoreMap(values=logits, is_logits=True, labels=labels)


def read_scores(
    path: PathLike,
    size: Tuple[int, int],
    *,
    key: Optional[str] = None,
    layout: Optional[str] = None,
    logits: bool = False,
    gt_prob: Optional[float] = None,
    num_labels: Optional[int] = None,
    unknown: Optional[int] = None,
) -> ScoreMap:
    """Read a network's output for an image of ``size = (H, W)`` and check it.

    ``.npy``/``.npz`` files hold ``(L, H, W)`` or ``(H, W, L)`` scores (a leading batch dimension of 1 is
    dropped); the layout is found by matching ``H, W`` and, if both fit (``L == H == W``), taken as
    ``(L, H, W)`` unless ``layout`` says otherwise. A ``.png`` label map (palette or index PNG) or a 2-d
    integer array is a hard labelling, turned into unary logits trusted with probability ``gt_prob``.

    Args:
        path: ``.npy``, ``.npz`` or ``.png`` file.
        size: ``(H, W)`` of the image.
        key: array name inside a ``.npz`` archive (default: its first array).
        layout: ``"lhw"`` or ``"hwl"`` to force the layout.
        logits: the scores are unary logits (raw network scores), not probabilities.
        gt_prob: confidence in a label map, in ``(0, 1)``; default 0.5. Only for label maps.
        num_labels: number of labels of a label map; default its largest label + 1.
        unknown: a label value meaning "unknown" in a label map (e.g. 0 or 255).

    Returns:
        A :class:`ScoreMap` with ``(L, H, W)`` float32 values and the labels before refinement.

    Raises:
        FileNotFoundError: no such file.
        OSError: the file cannot be decoded.
        ValueError: wrong suffix, shape, key, values or an option that does not apply to this kind of file.
        TypeError: a label map that is not integer.
    """
    path = os.fspath(path)
    suffix = Path(path).suffix.lower()
    if suffix not in SCORE_SUFFIXES:
        raise ValueError(
            f"cannot read scores from '{path}': expected a .npy or .npz array (probabilities or --logits) or a "
            f".png label map, got suffix '{suffix}'."
        )
    if not os.path.isfile(path):
        raise FileNotFoundError(f"scores not found: '{path}'")
    notes: List[str] = []
    if suffix == ".png":
        if key is not None or layout is not None or logits:
            opt = "--key" if key is not None else "--layout" if layout is not None else "--logits"
            raise ValueError(f"{opt} does not apply to the label map '{path}'; use --gt-prob for label maps.")
        labels = load_label_png(path)
        return _from_labels(labels, path, size, 0.5 if gt_prob is None else gt_prob, num_labels, unknown)
    arr = _load_array(path, key)
    if arr.ndim == 2 and np.issubdtype(arr.dtype, np.integer):
        if logits or layout is not None:
            raise ValueError(f"'{path}' holds a 2-d integer label map; --logits and --layout apply to score arrays.")
        return _from_labels(arr, path, size, 0.5 if gt_prob is None else gt_prob, num_labels, unknown)
    if gt_prob is not None or num_labels is not None or unknown is not None:
        raise ValueError(
            f"--gt-prob, --num-labels and --unknown apply to label maps, but '{path}' holds scores of shape "
            f"{tuple(arr.shape)}; drop them (or pass --logits for raw scores)."
        )
    if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)) or arr.dtype == np.bool_:
        raise TypeError(f"'{path}' holds an array of dtype {arr.dtype}; expected floating-point scores.")
    values = _to_lhw(arr, path, size, layout, notes).astype(np.float32)
    if values.shape[0] < 2:
        raise ValueError(f"'{path}' holds scores for {values.shape[0]} label; a CRF needs at least 2.")
    if values.shape[0] > _MAX_LABELS:
        raise ValueError(
            f"'{path}' holds scores for {values.shape[0]} labels, but the output palette PNG holds at most "
            f"{_MAX_LABELS}; check --layout."
        )
    if not np.isfinite(values).all():
        raise ValueError(f"'{path}' contains NaN or infinite values.")
    if not logits:
        _check_probs(values, path)
    return ScoreMap(values=values, is_logits=logits, labels=values.argmax(0).astype(np.int64), notes=notes)


def _boundaries(labels: np.ndarray) -> np.ndarray:
    edge = np.zeros(labels.shape, dtype=bool)
    edge[:, 1:] |= labels[:, 1:] != labels[:, :-1]
    edge[1:, :] |= labels[1:, :] != labels[:-1, :]
    return edge


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)  # scalable with FreeType (Pillow >= 10.1)
    except (TypeError, OSError):  # pragma: no cover - old Pillow or no FreeType
        return ImageFont.load_default()


def make_overlay(
    image: np.ndarray,
    before: np.ndarray,
    after: np.ndarray,
    *,
    alpha: float = 0.55,
    titles: Optional[Sequence[str]] = ("image", "input (argmax)", "refined (dense CRF)"),
    gap: int = 4,
) -> np.ndarray:
    """Side-by-side picture: image | labels before | labels after, labels coloured with the VOC palette.

    Label colours are blended over the image with weight ``alpha`` (1 shows the palette alone) and label
    boundaries are drawn in white, so that edges that snap to the image are easy to see.

    Args:
        image: ``(H, W, 3)`` uint8 RGB.
        before: ``(H, W)`` integer labels in 0..255 (255 = unknown/void).
        after: ``(H, W)`` integer labels in 0..255.
        alpha: weight of the label colours, in ``[0, 1]``.
        titles: three panel titles drawn above the panels, or None for none.
        gap: white pixels between panels.

    Returns:
        ``(H', 3 W + 2 gap, 3)`` uint8 RGB, ``H' = H`` without titles.
    """
    if not 0 <= alpha <= 1:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}.")
    if titles is not None and len(titles) != 3:
        raise ValueError(f"titles must be three strings (image, before, after) or None, got {len(titles)}.")
    image = np.asarray(image, dtype=np.uint8)
    h, w = image.shape[:2]
    panels = [image]
    for labels in (before, after):
        labels = np.asarray(labels)
        if labels.shape != (h, w):
            raise ValueError(f"labels of shape {labels.shape} do not match the image of shape {image.shape[:2]}.")
        shown = np.where((labels >= 0) & (labels <= 255), labels, 255)
        blend = (1 - alpha) * image.astype(np.float32) + alpha * colorize(shown).astype(np.float32)
        panel = np.clip(np.rint(blend), 0, 255).astype(np.uint8)
        panel[_boundaries(labels)] = 255
        panels.append(panel)
    sep = np.full((h, gap, 3), 255, np.uint8)
    row = np.concatenate([panels[0], sep, panels[1], sep, panels[2]], axis=1)
    if titles is None:
        return row
    font_size = max(10, min(16, w // 14))
    strip_h = font_size + 8
    canvas = Image.new("RGB", (row.shape[1], h + strip_h), (255, 255, 255))
    canvas.paste(Image.fromarray(row), (0, strip_h))
    draw = ImageDraw.Draw(canvas)
    font = _font(font_size)
    for i, title in enumerate(titles):
        x0 = i * (w + gap)
        tw = draw.textlength(title, font=font)
        draw.text((x0 + max(0.0, (w - tw) / 2), 3), title, fill=(0, 0, 0), font=font)
    return np.array(canvas)


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

"""Volumes (and any N-d guide) for the dense CRF: NumPy arrays and NIfTI files in, labels out.

A guide is ``S`` (one channel) or ``S + (C,)`` (channels last: several MRI modalities); scores are ``(L, *S)`` or
``S + (L,)`` (NIfTI probability maps are usually stored labels last). :func:`read_volume` also takes a NumPy guide
stored channels first, ``(C, *S)`` with ``C <= MAX_GUIDE_CHANNELS``, when the scores' shape shows it. ``S`` has 1 to
3 axes. NIfTI files (``.nii``, ``.nii.gz``) are read with nibabel (``pip install 'crfrnn[nifti]'``): the voxel
spacing comes from the header (``pixdim``, in mm) so that the CRF's position widths are in mm, and labels are
written back as NIfTI with the guide's affine and spacing. NumPy files are read with ``allow_pickle=False``; every
size is checked before any array is loaded, and every file is written to a temporary name and renamed into place.

>>> import tempfile, os
>>> d = tempfile.mkdtemp()
>>> np.save(os.path.join(d, "v.npy"), np.zeros((4, 5, 6), np.uint8))
>>> read_guide(os.path.join(d, "v.npy")).data.shape
(4, 5, 6)
"""

from __future__ import annotations

import gzip
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, List, Optional, Tuple

import numpy as np

from crfrnn._utils.files import PathLike, atomic_np_save, atomic_write_bytes
from crfrnn.io._numpy import load_array

__all__ = [
    "ARRAY_SUFFIXES",
    "Guide",
    "MAX_GUIDE_CHANNELS",
    "is_array_path",
    "read_guide",
    "read_volume",
    "read_volume_scores",
    "write_labels",
]

#: suffixes read as N-d arrays (guides, scores) rather than as images
ARRAY_SUFFIXES: Tuple[str, ...] = (".npy", ".npz", ".nii", ".nii.gz")
_MAX_LABELS = 65536  # labels a volume's scores may hold (the largest label type written is uint32)
_MAX_ELEMENTS = 2**33  # refuse headers that claim more values than any machine holds
#: the most channels (modalities) a guide stored channels first, ``(C, *S)``, may have
MAX_GUIDE_CHANNELS = 8


def _suffix(path: PathLike) -> str:
    name = os.fspath(path).lower()
    return ".nii.gz" if name.endswith(".nii.gz") else Path(name).suffix


def is_array_path(path: PathLike) -> bool:
    """Whether ``path`` names an N-d array file (``.npy``, ``.npz``, ``.nii``, ``.nii.gz``)."""
    return _suffix(path) in ARRAY_SUFFIXES


def _nibabel():
    try:
        import nibabel
    except ImportError as e:
        raise ImportError(
            "reading NIfTI files needs nibabel: pip install 'crfrnn[nifti]' (or pip install nibabel)."
        ) from e
    return nibabel


@dataclass
class Guide:
    """An N-d guide as read from a file.

    Attributes:
        data: ``S`` or ``S + (C,)`` array, as stored (integer or float).
        spacing: voxel size per spatial axis from a NIfTI header (mm), or None.
        affine: the NIfTI affine (4 x 4), or None for NumPy files.
        header: the NIfTI header (for writing labels back), or None.
        path: the file.
    """

    data: np.ndarray
    spacing: Optional[Tuple[float, ...]]
    affine: Optional[np.ndarray]
    header: Any
    path: str
    notes: List[str] = field(default_factory=list)


def _read_nifti(path: str, max_bytes: Optional[int]) -> Tuple[np.ndarray, Any]:
    nib = _nibabel()
    try:
        img = nib.load(path)
    except Exception as e:  # nibabel raises many kinds on bad files
        raise OSError(f"could not read '{path}' as NIfTI ({type(e).__name__}: {e}); is it corrupt or truncated?") from e
    shape = tuple(int(s) for s in img.shape)
    count = int(np.prod(shape, dtype=np.float64)) if shape else 0
    itemsize = np.dtype(img.get_data_dtype()).itemsize
    if count == 0:
        raise ValueError(f"'{path}' holds an empty volume (shape {shape}).")
    if count > _MAX_ELEMENTS or (max_bytes is not None and count * max(itemsize, 4) > max_bytes):
        raise MemoryError(f"'{path}' claims shape {shape} ({count * itemsize / 2**30:.1f} GB), more than allowed.")
    try:
        data = np.asanyarray(img.dataobj)
    except Exception as e:
        raise OSError(f"could not read the data of '{path}' ({type(e).__name__}: {e}); is it truncated?") from e
    return np.asarray(data), img


def _read_numpy(
    path: str, key: Optional[str], max_bytes: Optional[int], max_values: int = _MAX_ELEMENTS, expected: str = ""
) -> np.ndarray:
    # the one safe NumPy reader (no pickles, clear errors, sizes checked from the header before reading)
    return np.asarray(load_array(path, key, max_values=max_values, max_bytes=max_bytes, expected=expected))


def read_guide(path: PathLike, *, key: Optional[str] = None, max_bytes: Optional[int] = None) -> Guide:
    """Read an N-d guide (``S`` or ``S + (C,)``) from ``.npy``/``.npz``/``.nii``/``.nii.gz``.

    Raises:
        FileNotFoundError, OSError (unreadable), ValueError (empty, non-numeric), ImportError (NIfTI without
        nibabel).
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"guide not found: '{path}'")
    suffix = _suffix(path)
    if suffix in (".nii", ".nii.gz"):
        data, img = _read_nifti(path, max_bytes)
        zooms = tuple(float(z) for z in img.header.get_zooms())
        guide = Guide(data, zooms, np.asarray(img.affine), img.header, path)
    elif suffix in (".npy", ".npz"):
        guide = Guide(_read_numpy(path, key, max_bytes), None, None, None, path)
    else:
        raise ValueError(f"'{path}' is not an array file; expected one of {', '.join(ARRAY_SUFFIXES)}.")
    if guide.data.size == 0:
        raise ValueError(f"'{path}' holds an empty array (shape {guide.data.shape}).")
    if guide.data.dtype.kind not in "uif":
        raise TypeError(f"'{path}' holds {guide.data.dtype} values; a guide must be numeric (integer or float).")
    return guide


def read_volume_scores(
    path: PathLike,
    guide_shape: Tuple[int, ...],
    *,
    key: Optional[str] = None,
    labels_last: Optional[bool] = None,
    max_bytes: Optional[int] = None,
) -> Tuple[np.ndarray, Tuple[int, ...], List[str]]:
    """Scores ``(L, *S)`` float32 for a guide of shape ``S`` or ``S + (C,)``.

    The labels axis is found by matching the guide: first if ``probs.shape[1:]`` is ``S``, last if
    ``probs.shape[:-1]`` is; when both fit, first for NumPy files and last for NIfTI, unless ``labels_last``. An
    array of the guide's own shape is one map (``L = 1``, a binary network's foreground).

    Returns:
        ``(scores (L, *S) float32, S, notes)``.
    """
    path = os.fspath(path)
    arr, nifti = _load_scores(path, guide_shape, key, max_bytes)
    return _fit_scores(arr, path, tuple(guide_shape), labels_last, nifti)


def read_volume(
    guide_path: PathLike,
    scores_path: PathLike,
    *,
    key: Optional[str] = None,
    labels_last: Optional[bool] = None,
    max_bytes: Optional[int] = None,
) -> Tuple[Guide, np.ndarray, Tuple[int, ...], List[str]]:
    """A guide and its scores (:func:`read_guide`, :func:`read_volume_scores`), the guide's channels put last.

    A NumPy guide may be stored channels first, ``(C, *S)`` with ``C <= MAX_GUIDE_CHANNELS`` and 2 or 3 axes in
    ``S`` (four MRI modalities as ``(4, D, H, W)``): the scores' shape tells the layouts apart. When the scores
    fit the guide both as stored and channels first, the guide is refused, with how to store it unambiguously
    (channels last). A stored reading with more than ``MAX_GUIDE_CHANNELS`` channels last loses to channels first.

    Args:
        guide_path: the guide, ``S``, ``S + (C,)`` or (NumPy) ``(C, *S)``.
        scores_path: the scores, ``(L, *S)`` or ``S + (L,)``.
        key: the scores' array in an ``.npz`` file.
        labels_last: where the scores' labels axis is (``None``: found from the shapes).
        max_bytes: the most memory an array may take.

    Returns:
        ``(guide, scores, S, notes)``: the guide's data ``S`` or ``S + (C,)``; scores ``(L, *S)`` float32.

    Raises:
        ValueError: the scores fit no reading of the guide, or fit two (ambiguous); also the errors of
            :func:`read_guide` and :func:`read_volume_scores`.
    """
    guide = read_guide(guide_path, max_bytes=max_bytes)
    g = tuple(guide.data.shape)
    path = os.fspath(scores_path)
    arr, nifti = _load_scores(path, g, key, max_bytes)
    channels = g[0]
    moved = g[1:] + (channels,)
    if guide.affine is not None or not 3 <= len(g) <= 4 or channels > MAX_GUIDE_CHANNELS:
        return (guide, *_fit_scores(arr, path, g, labels_last, nifti))  # no channels-first reading
    try:
        stored: Any = _fit_scores(arr, path, g, labels_last, nifti)
    except ValueError as err:
        stored = err
    try:
        first: Any = _fit_scores(arr, path, moved, labels_last, nifti)
        if first[1] != g[1:]:  # the moved guide read as one channel: not a channels-first reading
            first = None
    except ValueError:
        first = None
    if first is None:
        if isinstance(stored, ValueError):
            raise stored
        return (guide, *stored)
    if not isinstance(stored, ValueError):
        stored_channels = g[-1] if len(stored[1]) < len(g) else 1
        if stored_channels <= MAX_GUIDE_CHANNELS:
            raise ValueError(_ambiguous(guide.path, g, path, arr.shape, stored[1], stored[0].shape[0]))
    scores, s, notes = first
    guide.data = np.moveaxis(guide.data, 0, -1)
    notes.append(f"'{guide.path}' read channels first: {channels} channels of shape {s} (stored shape {g}).")
    return guide, scores, s, notes


def _ambiguous(
    guide_path: str, g: Tuple[int, ...], path: str, shape: Tuple[int, ...], s: Tuple[int, ...], labels: int
) -> str:
    """The message for scores that fit a guide both as stored and channels first."""
    stored = f"{g[-1]} channels last of shape {s}" if len(s) < len(g) else f"one channel of shape {s}"
    hint = (
        f"if it is one volume, give the scores a labels axis: shape ({labels}, *{s})"
        if len(s) == len(g)
        else "if its last axis holds the channels, save its first axis elsewhere"
    )
    return (
        f"the guide '{guide_path}' of shape {g} is ambiguous with the scores '{path}' of shape {tuple(shape)}: "
        f"it reads as {g[0]} channels first of shape {g[1:]} and as {stored}. If its first axis holds the "
        f"channels, save it channels last (numpy.moveaxis(guide, 0, -1), shape {g[1:] + (g[0],)}); {hint}."
    )


def _load_scores(
    path: str, guide_shape: Tuple[int, ...], key: Optional[str], max_bytes: Optional[int]
) -> Tuple[np.ndarray, bool]:
    """The scores array as stored (sizes checked against the guide's before reading) and whether it is NIfTI."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"scores not found: '{path}'")
    nifti = _suffix(path) in (".nii", ".nii.gz")
    if nifti:
        arr = _read_nifti(path, max_bytes)[0]
    else:
        voxels = int(np.prod(guide_shape, dtype=np.float64))
        bound = f"for a guide of shape {tuple(guide_shape)} with at most {_MAX_LABELS} labels"
        arr = _read_numpy(path, key, max_bytes, min(_MAX_ELEMENTS, voxels * _MAX_LABELS), bound)
    if arr.dtype.kind != "f":
        raise TypeError(f"'{path}' holds {arr.dtype} values; scores must be floating point (probabilities or logits).")
    return arr, nifti


def _fit_scores(
    arr: np.ndarray, path: str, g: Tuple[int, ...], labels_last: Optional[bool], nifti: bool
) -> Tuple[np.ndarray, Tuple[int, ...], List[str]]:
    """Scores ``(L, *S)``, ``S`` and notes for a guide of shape ``g`` (``S`` or ``S + (C,)``); ValueError: none fits."""
    notes: List[str] = []
    shapes = []
    if 1 <= len(g) <= 3 and tuple(arr.shape) == g and labels_last is None:  # one map: a binary network's output
        notes.append(
            f"'{path}' holds one map of the guide's shape {g}: read as a binary network's foreground "
            "(L = 1), refined as the two-label problem (labels 0 background, 1 foreground)."
        )
        return np.ascontiguousarray(arr[None], dtype=np.float32), g, notes
    for s in {g, g[:-1]}:  # the guide without, and with, a channel axis
        if len(s) < 1 or len(s) > 3:
            continue
        if arr.ndim == len(s) + 1 and tuple(arr.shape[1:]) == s:
            shapes.append((s, False))
        if arr.ndim == len(s) + 1 and tuple(arr.shape[:-1]) == s:
            shapes.append((s, True))
    if labels_last is not None:
        shapes = [c for c in shapes if c[1] == labels_last]
    if not shapes:
        raise ValueError(
            f"scores in '{path}' have shape {tuple(arr.shape)}, which does not fit the guide of shape {g}: expected "
            f"(L, *S) or S + (L,) with S = {g} (or S = {g[:-1]} if the guide's last axis holds channels)."
        )
    # prefer the guide without a channel axis, then the file's usual label position
    shapes.sort(key=lambda c: (len(c[0]) != len(g), c[1] != nifti))
    s, last = shapes[0]
    if len(shapes) > 1:
        notes.append(f"'{path}': read the labels {'last' if last else 'first'} (shape {tuple(arr.shape)}).")
    scores = np.moveaxis(arr, -1, 0) if last else arr
    return np.ascontiguousarray(scores, dtype=np.float32), s, notes


#: the label types written, smallest first (all of them NIfTI types)
_LABEL_DTYPES: Tuple[np.dtype, ...] = (np.dtype(np.uint8), np.dtype(np.uint16), np.dtype(np.uint32))


def _label_dtype(labels: np.ndarray) -> np.dtype:
    """The smallest of ``_LABEL_DTYPES`` that holds every label, so that none is wrapped around.

    Raises:
        TypeError: the labels are not integers (or booleans).
        ValueError: a label is negative, or above what the largest type holds.
    """
    labels = np.asarray(labels)
    if labels.dtype.kind not in "biu":
        raise TypeError(f"labels must be integers, got {labels.dtype}.")
    if labels.size == 0:
        return _LABEL_DTYPES[0]
    low, high = int(labels.min()), int(labels.max())
    if low < 0:
        raise ValueError(f"labels must be >= 0 to be written, got {low}; map negative labels to a label value first.")
    for dtype in _LABEL_DTYPES:
        if high <= np.iinfo(dtype).max:
            return dtype
    raise ValueError(
        f"label {high} is too large to be written: labels go up to {np.iinfo(_LABEL_DTYPES[-1]).max} "
        f"({_LABEL_DTYPES[-1]})."
    )


def write_labels(
    path: PathLike, labels: np.ndarray, guide: Optional[Guide] = None, spacing: Optional[Tuple[float, ...]] = None
) -> Path:
    """Write a label volume atomically: ``.nii``/``.nii.gz`` (the guide's affine and header when it was NIfTI, else
    a diagonal affine from ``spacing``) or ``.npy``.

    The labels are stored in the smallest of ``uint8``, ``uint16`` and ``uint32`` that holds them.

    Returns:
        The path written.

    Raises:
        TypeError: the labels are not integers.
        ValueError: negative labels, or labels above 2**32 - 1, or an unknown suffix.
    """
    path = Path(path)
    suffix = _suffix(path)
    dtype = _label_dtype(labels)
    labels = np.ascontiguousarray(labels.astype(dtype))
    if suffix == ".npy":
        return atomic_np_save(path, labels)
    if suffix not in (".nii", ".nii.gz"):
        raise ValueError(f"volume labels are written as .nii, .nii.gz or .npy, got '{path}'.")
    nib = _nibabel()
    if guide is not None and guide.affine is not None:
        header = guide.header.copy()
        header.set_data_dtype(dtype)
        img = nib.Nifti1Image(labels, guide.affine, header)
    else:
        steps = list(spacing or (1.0,) * labels.ndim) + [1.0] * (3 - labels.ndim)
        img = nib.Nifti1Image(labels, np.diag(steps[:3] + [1.0]))
    data = img.to_bytes()
    if suffix == ".nii.gz":
        data = gzip.compress(data, compresslevel=6)
    return atomic_write_bytes(path, data)

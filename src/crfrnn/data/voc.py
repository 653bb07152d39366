"""PASCAL VOC 2012 and SBD segmentation data sets, and the "train_aug" union used by CRF-RNN.

Every sample is ``(image, mask)``: ``image`` a float32 ``(3, H, W)`` RGB tensor on the 0..255 scale (not
mean-subtracted: the CRF needs the raw colours; models normalise internally) and ``mask`` an int64
``(H, W)`` tensor of class indices in 0..20 with 255 = void (VOC's boundary band and "difficult" regions).

VOC images have different sizes (at most 500x500), so the default ``DataLoader`` collate cannot stack
them. Either give every sample one size with a transform (``RandomCrop((h, w))`` for training,
``PadTo((500, 500))`` as in the paper for evaluation, then crop predictions back to ``mask != 255`` /
the original size), or batch with :func:`crfrnn.data.pad_collate`, or use ``batch_size=1``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch.utils.data import ConcatDataset, Dataset

from crfrnn.data._io import (
    VOC_CLASSES,
    PathLike,
    Sample,
    Transform,
    apply_transform,
    check_files_exist,
    check_labels,
    check_same_size,
    read_id_list,
    read_image,
    read_mask_png,
    require_dir,
    resolve_split,
)

__all__ = ["SBDSegmentation", "VOCSegmentation", "VOC_CLASSES", "voc_train_aug"]

SplitLike = Union[str, PathLike, Sequence[str]]


def _find_voc2012(root: PathLike) -> Path:
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(
            f"VOCSegmentation: root directory not found: '{root}'. Pass the folder that contains 'VOCdevkit', "
            "'VOCdevkit' itself, or 'VOCdevkit/VOC2012'."
        )
    candidates = [root / "VOCdevkit" / "VOC2012", root / "VOC2012", root]
    for cand in candidates:
        if (cand / "JPEGImages").is_dir() or (cand / "SegmentationClass").is_dir():
            require_dir(cand / "JPEGImages", "VOCSegmentation", "The VOC 2012 images are missing.")
            require_dir(cand / "SegmentationClass", "VOCSegmentation", "The VOC 2012 segmentation masks are missing.")
            return cand
    tried = ", ".join(f"'{c}'" for c in candidates)
    raise FileNotFoundError(
        f"VOCSegmentation: no PASCAL VOC 2012 tree under '{root}': looked for 'JPEGImages' and "
        f"'SegmentationClass' in {tried}. Pass the folder that contains 'VOCdevkit', 'VOCdevkit' itself, or "
        "'VOCdevkit/VOC2012'."
    )


def _find_sbd(root: PathLike) -> Path:
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(
            f"SBDSegmentation: root directory not found: '{root}'. Pass 'benchmark_RELEASE', its 'dataset' "
            "folder, or the folder that contains 'benchmark_RELEASE'."
        )
    candidates = [root / "benchmark_RELEASE" / "dataset", root / "dataset", root]
    for cand in candidates:
        if (cand / "img").is_dir() or (cand / "cls").is_dir():
            require_dir(cand / "img", "SBDSegmentation", "The SBD images are missing.")
            require_dir(cand / "cls", "SBDSegmentation", "The SBD class annotations (.mat) are missing.")
            return cand
    tried = ", ".join(f"'{c}'" for c in candidates)
    raise FileNotFoundError(
        f"SBDSegmentation: no SBD tree under '{root}': looked for 'img' and 'cls' in {tried}. Pass "
        "'benchmark_RELEASE', 'benchmark_RELEASE/dataset', or the folder that contains 'benchmark_RELEASE'."
    )


def _load_sbd_mat(path: Path) -> torch.Tensor:
    try:
        import scipy.io
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("SBDSegmentation needs scipy to read the .mat annotations: pip install scipy") from e
    if not path.is_file():
        raise FileNotFoundError(f"SBD annotation file not found: '{path}'")
    try:
        mat = scipy.io.loadmat(os.fspath(path), struct_as_record=False, squeeze_me=True)
    except Exception as e:  # scipy raises ValueError, TypeError, OSError, MatReadError, ... on bad data
        raise OSError(
            f"could not read SBD annotation file '{path}': {type(e).__name__}: {e}. "
            "The file is corrupt or truncated; re-download it or remove its id from the list."
        ) from e
    if "GTcls" not in mat:
        keys = sorted(k for k in mat if not k.startswith("__"))
        raise ValueError(
            f"SBD annotation file '{path}' has no 'GTcls' struct (variables found: {keys}); expected the SBD "
            "'cls/*.mat' format with GTcls.Segmentation."
        )
    seg = getattr(mat["GTcls"], "Segmentation", None)
    if seg is None:
        raise ValueError(f"SBD annotation file '{path}': struct 'GTcls' has no field 'Segmentation'.")
    seg = np.asarray(seg)
    if seg.ndim != 2 or not np.issubdtype(seg.dtype, np.integer):
        raise ValueError(
            f"SBD annotation file '{path}': GTcls.Segmentation should be an (H, W) integer array, got shape "
            f"{seg.shape} and dtype {seg.dtype}."
        )
    return torch.from_numpy(seg.astype(np.int64))


class VOCSegmentation(Dataset):
    """PASCAL VOC 2012 semantic segmentation (21 classes, 255 = void).

    Expects the standard layout ``VOCdevkit/VOC2012/{JPEGImages/<id>.jpg, SegmentationClass/<id>.png,
    ImageSets/Segmentation/<split>.txt}``. All listed files are checked for existence at construction;
    files are decoded when a sample is loaded.

    Args:
        root: the folder containing ``VOCdevkit``, ``VOCdevkit`` itself, or ``VOCdevkit/VOC2012``.
        split: a split name (``"train"``, ``"val"``, ``"trainval"`` or any ``ImageSets/Segmentation/*.txt``),
            a path to an id-list file (one image id per line, e.g. the 346-image reduced validation list of
            the CRF-RNN paper), or a list of ids.
        transform: optional paired transform ``(image, mask) -> (image, mask)``.

    Attributes:
        ids: the image ids, in list order.
        num_classes: 21.
        class_names: the VOC class names, index 0 = background.
        ignore_index: 255.

    Sample:
        ``image`` float32 ``(3, H, W)`` on 0..255, ``mask`` int64 ``(H, W)``.
    """

    num_classes: int = 21
    class_names: Tuple[str, ...] = VOC_CLASSES
    ignore_index: int = 255

    def __init__(self, root: PathLike, split: SplitLike = "train", *, transform: Optional[Transform] = None) -> None:
        self.root = _find_voc2012(root)
        self.image_dir = self.root / "JPEGImages"
        self.mask_dir = self.root / "SegmentationClass"
        list_dir = self.root / "ImageSets" / "Segmentation"
        self.split, self.ids = resolve_split(split, list_dir, "VOCSegmentation")
        desc = f"split {self.split!r}" if self.split != "<ids>" else "the given ids"
        check_files_exist(self.ids, self.image_dir, ".jpg", "image", desc)
        check_files_exist(self.ids, self.mask_dir, ".png", "mask", desc)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.ids)

    def image_path(self, index: int) -> Path:
        """The JPEG image of sample ``index``."""
        return self.image_dir / f"{self.ids[index]}.jpg"

    def mask_path(self, index: int) -> Path:
        """The PNG label mask of sample ``index``."""
        return self.mask_dir / f"{self.ids[index]}.png"

    def __getitem__(self, index: int) -> Sample:
        ip, mp = self.image_path(index), self.mask_path(index)
        image = read_image(ip)
        mask = read_mask_png(mp)
        check_same_size(image, mask, ip, mp)
        check_labels(mask, mp, self.num_classes)
        return apply_transform(self.transform, image, mask)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(root='{self.root}', split={self.split!r}, num_samples={len(self)})"


class SBDSegmentation(Dataset):
    """Semantic Boundaries Dataset (Hariharan et al. 2011) class segmentations, VOC's 21 classes.

    Expects ``benchmark_RELEASE/dataset/{img/<id>.jpg, cls/<id>.mat, train.txt, val.txt}``, where each
    ``.mat`` holds a struct ``GTcls`` whose field ``Segmentation`` is the ``(H, W)`` uint8 label map. The
    ``.mat`` files are read with scipy (imported only when the first sample is loaded).

    Args:
        root: ``benchmark_RELEASE``, its ``dataset`` folder, or the folder that contains ``benchmark_RELEASE``.
        split: ``"train"``, ``"val"`` (or any ``dataset/*.txt``), a path to an id-list file, or a list of ids.
        transform: optional paired transform ``(image, mask) -> (image, mask)``.

    Sample:
        ``image`` float32 ``(3, H, W)`` on 0..255, ``mask`` int64 ``(H, W)``.
    """

    num_classes: int = 21
    class_names: Tuple[str, ...] = VOC_CLASSES
    ignore_index: int = 255

    def __init__(self, root: PathLike, split: SplitLike = "train", *, transform: Optional[Transform] = None) -> None:
        self.root = _find_sbd(root)
        self.image_dir = self.root / "img"
        self.mask_dir = self.root / "cls"
        self.split, self.ids = resolve_split(split, self.root, "SBDSegmentation")
        desc = f"split {self.split!r}" if self.split != "<ids>" else "the given ids"
        check_files_exist(self.ids, self.image_dir, ".jpg", "image", desc)
        check_files_exist(self.ids, self.mask_dir, ".mat", "annotation", desc)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.ids)

    def image_path(self, index: int) -> Path:
        """The JPEG image of sample ``index``."""
        return self.image_dir / f"{self.ids[index]}.jpg"

    def mask_path(self, index: int) -> Path:
        """The ``.mat`` label mask of sample ``index``."""
        return self.mask_dir / f"{self.ids[index]}.mat"

    def __getitem__(self, index: int) -> Sample:
        ip, mp = self.image_path(index), self.mask_path(index)
        image = read_image(ip)
        mask = _load_sbd_mat(mp)
        check_same_size(image, mask, ip, mp)
        check_labels(mask, mp, self.num_classes)
        return apply_transform(self.transform, image, mask)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(root='{self.root}', split={self.split!r}, num_samples={len(self)})"


class _TrainAug(ConcatDataset):
    """VOC part followed by SBD part; ``ids[i]`` and ``sources[i]`` ("voc" or "sbd") describe sample i."""

    num_classes: int = 21
    class_names: Tuple[str, ...] = VOC_CLASSES
    ignore_index: int = 255

    def __init__(self, voc: Optional[VOCSegmentation], sbd: Optional[SBDSegmentation]) -> None:
        parts: List[Any] = [d for d in (voc, sbd) if d is not None]
        super().__init__(parts)
        self.ids: List[str] = [i for d in parts for i in d.ids]
        self.sources: List[str] = ["voc"] * (len(voc) if voc else 0) + ["sbd"] * (len(sbd) if sbd else 0)

    def __repr__(self) -> str:
        n_voc = self.sources.count("voc")
        return f"voc_train_aug(num_samples={len(self)}, from_voc={n_voc}, from_sbd={len(self) - n_voc})"


def voc_train_aug(voc_root: PathLike, sbd_root: PathLike, *, transform: Optional[Transform] = None) -> Dataset:
    """The "train_aug" set used by CRF-RNN and FCN: VOC 2012 train + SBD train + SBD val - VOC 2012 val.

    Every id of VOC ``val`` is excluded (so evaluating on VOC val, or on the paper's reduced 346-image subset
    of it, stays clean). Where an id has both a VOC and an SBD annotation, the VOC one is used (its
    boundary band is marked void). With the full data sets this gives 10,582 images.

    Args:
        voc_root: any root accepted by :class:`VOCSegmentation`.
        sbd_root: any root accepted by :class:`SBDSegmentation`.
        transform: optional paired transform applied to every sample.

    Returns:
        A ``Dataset`` with the VOC-annotated samples first, then the SBD-annotated ones, and attributes
        ``ids``, ``sources`` (``"voc"``/``"sbd"`` per sample), ``num_classes``, ``class_names``.
    """
    voc_dir = _find_voc2012(voc_root)
    sbd_dir = _find_sbd(sbd_root)
    list_dir = voc_dir / "ImageSets" / "Segmentation"
    voc_train = read_id_list(list_dir / "train.txt")
    voc_val = set(read_id_list(list_dir / "val.txt"))
    sbd_ids = read_id_list(sbd_dir / "train.txt") + read_id_list(sbd_dir / "val.txt")
    voc_masks = {p[:-4] for p in os.listdir(voc_dir / "SegmentationClass") if p.endswith(".png")}
    voc_train_set = set(voc_train)

    seen: set = set()
    from_voc: List[str] = []
    from_sbd: List[str] = []
    for i in voc_train + sbd_ids:
        if i in voc_val or i in seen:
            continue
        seen.add(i)
        (from_voc if (i in voc_train_set or i in voc_masks) else from_sbd).append(i)
    voc = VOCSegmentation(voc_dir, from_voc, transform=transform) if from_voc else None
    sbd = SBDSegmentation(sbd_dir, from_sbd, transform=transform) if from_sbd else None
    if voc is None and sbd is None:
        raise ValueError("voc_train_aug: the union is empty (every id is in VOC val).")
    return _TrainAug(voc, sbd)

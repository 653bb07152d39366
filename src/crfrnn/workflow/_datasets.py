"""Data sets from a spec: one split of a synthetic, VOC or folder data set (:func:`open_dataset`), the synthetic
set a checkpoint was trained on (:func:`synthetic_spec`), and the training and validation sets of a
:class:`~crfrnn.workflow._config.TrainConfig` with the training augmentation (:func:`build_datasets`).
``crfrnn evaluate`` and :func:`crfrnn.workflow._loop.train` open their data through these.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional, cast

import torch
from torch import Tensor
from torch.utils.data import Dataset

from crfrnn.workflow._config import IGNORE_INDEX, TrainConfig

__all__ = ["SYNTHETIC_SPLITS", "build_datasets", "fill_caches", "open_dataset", "synthetic_spec", "train_transform"]

#: the splits of the synthetic data set, in :func:`crfrnn.data.synthetic_splits` order
SYNTHETIC_SPLITS: tuple[str, ...] = ("train", "val", "test")
_CACHE_BUDGET_BYTES = 2 * 1024**3


# -------------------------------------------------------------------------------------------------- data
class _CachedRaw(Dataset):
    """Keeps the untransformed samples of a deterministic data set in memory; applies ``transform`` on top."""

    def __init__(self, base: Dataset, transform: Optional[Any]) -> None:
        self.base = base
        self.transform = transform
        self._cache: dict[int, tuple[Tensor, Tensor]] = {}

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def _raw(self, index: int) -> tuple[Tensor, Tensor]:
        if index not in self._cache:
            image, mask = self.base[index]
            if torch.equal(image, image.round()) and image.min() >= 0 and image.max() <= 255:
                image = image.to(torch.uint8)  # integer-valued 0..255: a quarter of the memory, exact
            self._cache[index] = (image, mask.to(torch.uint8) if mask.min() >= 0 and mask.max() <= 255 else mask)
        return self._cache[index]

    def fill(self) -> None:
        """Generate every sample now (before DataLoader workers fork, so that they share the cache)."""
        for index in range(len(self)):
            self._raw(index)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        image, mask = self._raw(index)
        image, mask = image.to(torch.float32), mask.to(torch.int64)
        return self.transform(image, mask) if self.transform is not None else (image, mask)


def fill_caches(*datasets: Optional[Dataset]) -> None:
    """Generate the samples of the in-memory caches of :func:`build_datasets` now, before DataLoader workers
    fork, so that the workers share them (other data sets are left alone).
    """
    for dataset in datasets:
        if isinstance(dataset, _CachedRaw):
            dataset.fill()


def train_transform(config: TrainConfig) -> Any:
    """The training augmentation of a config: random scale, a ``crop_size`` crop (padded with void), flips."""
    from crfrnn.data import Compose, RandomCrop, RandomHorizontalFlip, RandomScale

    steps: list[Any] = []
    if (config.min_scale, config.max_scale) != (1.0, 1.0):
        steps.append(RandomScale(config.min_scale, config.max_scale))
    steps.append(RandomCrop(config.crop_size, ignore_index=IGNORE_INDEX))
    if config.hflip:
        steps.append(RandomHorizontalFlip(0.5))
    return Compose(steps)


def open_dataset(
    kind: str,
    split: str = "train",
    *,
    num_images: Optional[int] = None,
    synthetic: Optional[Mapping[str, Any]] = None,
    voc_root: Optional[str] = None,
    sbd_root: Optional[str] = None,
    images: Optional[str] = None,
    masks: Optional[str] = None,
    num_classes: Optional[int] = None,
    transform: Optional[Any] = None,
) -> Dataset:
    """One split of a data set, from its kind and location.

    Args:
        kind: ``"synthetic"``, ``"voc"`` or ``"folder"``.
        split: synthetic: one of :data:`SYNTHETIC_SPLITS`; voc: an ``ImageSets/Segmentation`` name or id-list
            file; folder: not used.
        num_images: synthetic: images in the split.
        synthetic: synthetic: ``{"seed", "size", **SyntheticShapes options}`` (:func:`crfrnn.data.synthetic_splits`).
        voc_root: voc: folder containing ``VOCdevkit``.
        sbd_root: voc: SBD ``benchmark_RELEASE``; when given the set is train_aug (VOC train + SBD - VOC val)
            and ``split`` is not used.
        images: folder: the images directory.
        masks: folder: the masks directory (``<stem>.png`` label maps).
        num_classes: folder: masks with other labels are named when they are read.
        transform: applied to every ``(image, mask)`` sample.

    Raises:
        ValueError: a missing setting or an unknown kind or split; FileNotFoundError: missing data.

    Example:
        >>> len(open_dataset("synthetic", "val", num_images=3, synthetic={"seed": 0, "size": 16}))
        3
    """
    from crfrnn import data

    if kind == "synthetic":
        if split not in SYNTHETIC_SPLITS:
            raise ValueError(f"the synthetic data set's splits are {list(SYNTHETIC_SPLITS)}, got {split!r}.")
        if num_images is None:
            raise ValueError("the synthetic data set needs num_images, the number of images in the split.")
        counts = {f"num_{s}": (num_images if s == split else 0) for s in SYNTHETIC_SPLITS}
        dataset = data.synthetic_splits(**dict(synthetic or {}), **counts)[SYNTHETIC_SPLITS.index(split)]
        if transform is not None:
            dataset.transform = transform
        return dataset
    if kind == "voc":
        if voc_root is None:
            raise ValueError("the voc data set needs voc_root, the folder containing VOCdevkit.")
        if sbd_root is not None:
            return data.voc_train_aug(voc_root, sbd_root, transform=transform)
        return data.VOCSegmentation(voc_root, split, transform=transform)
    if kind == "folder":
        if images is None or masks is None:
            raise ValueError("the folder data set needs both images and masks directories.")
        return data.SegmentationFolder(images, masks, transform=transform, num_classes=num_classes)
    raise ValueError(f"unknown data set kind {kind!r}; valid kinds are ['synthetic', 'voc', 'folder'].")


def synthetic_spec(
    payload: Mapping[str, Any],
    *,
    size: Optional[int] = None,
    seed: Optional[int] = None,
    void_band: Optional[int] = None,
) -> dict[str, Any]:
    """The synthetic data set a checkpoint was trained on, as :func:`open_dataset`'s ``synthetic`` spec.

    The values given win; then the checkpoint's training config (``crfrnn train``); then the defaults (96
    pixels, seed 0). Without a training config, the shapes are read from the class names when they name a
    subset of :attr:`crfrnn.data.SyntheticShapes.SHAPES`.

    Returns:
        ``{"seed", "size", **SyntheticShapes options}``.
    """
    from crfrnn.data import SyntheticShapes

    config = found if isinstance(found := payload.get("config"), dict) else {}
    kwargs = dict(config.get("synthetic_kwargs") or {}) if config.get("dataset", "synthetic") == "synthetic" else {}
    names = payload.get("class_names")
    if (
        "shapes" not in kwargs
        and names
        and names[0] == "background"
        and all(c in SyntheticShapes.SHAPES for c in names[1:])
    ):
        kwargs["shapes"] = tuple(names[1:])
    if void_band is not None:
        kwargs["void_band"] = void_band
    size = size if size is not None else config.get("image_size", 96)
    seed = seed if seed is not None else config.get("data_seed", 0)
    return {"seed": seed, "size": size, **kwargs}


def build_datasets(config: TrainConfig) -> tuple[Dataset, Optional[Dataset], int, Optional[list[str]]]:
    """The training and validation sets of a config.

    Training samples get random scaling (``min_scale``..``max_scale``), a ``crop_size`` crop padded where the
    image is smaller (mask padding 255) and horizontal flips; validation samples are left as they are (batch
    them with :func:`crfrnn.data.pad_collate`).

    Returns:
        ``(train_set, val_set or None, num_classes, class_names or None)``.

    Raises:
        FileNotFoundError: for a missing data directory; ValueError: for missing settings.
    """
    from crfrnn.data import VOC_CLASSES, SyntheticShapes

    transform = train_transform(config)
    dataset = config.dataset
    class_names: Optional[list[str]] = None
    if dataset == "synthetic":
        spec = {"seed": config.data_seed, "size": config.image_size, **config.synthetic_kwargs}
        train_raw = cast(
            SyntheticShapes, open_dataset("synthetic", "train", num_images=config.num_train, synthetic=spec)
        )
        val_raw = open_dataset("synthetic", "val", num_images=config.num_val, synthetic=spec)
        per_image = 4 * config.image_size**2
        cache = (config.num_train + config.num_val) * per_image <= _CACHE_BUDGET_BYTES
        if cache:
            train_set: Dataset = _CachedRaw(train_raw, transform)
            val_set: Optional[Dataset] = _CachedRaw(val_raw, None) if config.num_val else None
        else:
            train_raw.transform = transform
            train_set, val_set = train_raw, (val_raw if config.num_val else None)
        num_classes, class_names = train_raw.num_classes, list(train_raw.class_names)
    elif dataset == "voc":
        if config.voc_root is None:
            raise ValueError("dataset 'voc' needs voc_root (--voc-root DIR, the folder containing VOCdevkit).")
        train_set = open_dataset(
            "voc", config.train_split, voc_root=config.voc_root, sbd_root=config.sbd_root, transform=transform
        )
        val_set = open_dataset("voc", config.val_split, voc_root=config.voc_root) if config.val_split else None
        num_classes, class_names = 21, list(VOC_CLASSES)
    else:
        if config.images is None or config.masks is None:
            raise ValueError("dataset 'folder' needs both images and masks (--images DIR --masks DIR).")
        if (config.val_images is None) != (config.val_masks is None):
            raise ValueError("give both val_images and val_masks (--val-images DIR --val-masks DIR), or neither.")
        if config.num_classes is None:
            raise ValueError("dataset 'folder' needs num_classes (--num-classes L): it cannot be read from the masks.")
        classes = config.num_classes  # masks with other labels are named when they are read
        train_set = open_dataset(
            "folder", images=config.images, masks=config.masks, num_classes=classes, transform=transform
        )
        val_set = (
            open_dataset("folder", images=config.val_images, masks=config.val_masks, num_classes=classes)
            if config.val_images
            else None
        )
        num_classes = config.num_classes
    if config.num_classes is not None and config.num_classes != num_classes:
        raise ValueError(
            f"num_classes={config.num_classes} but the {dataset} data set has {num_classes} classes; "
            "leave num_classes unset to take it from the data."
        )
    if len(train_set) == 0:  # type: ignore[arg-type]
        raise ValueError(f"the {dataset} training set is empty.")
    return train_set, val_set, num_classes, class_names

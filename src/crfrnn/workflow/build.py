"""Building what a run needs from its :class:`~crfrnn.workflow.config.TrainConfig`: data sets, model, optimiser.

:func:`open_dataset` opens one split of a data set from its kind and location; :func:`build_datasets` (the
training and validation sets of a config, with the training augmentation) and ``crfrnn evaluate`` both use it.
:func:`build_model` builds the network of a stage and loads ``init_from``; :func:`build_optimizer` and
:func:`build_scheduler` give the parameter groups (the CRF's learning-rate multipliers) and the schedule.
"""

from __future__ import annotations

import difflib
from typing import Any, Mapping, Optional

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from crfrnn.models.segmenter import CrfRnnSegmenter
from crfrnn.workflow.config import DEFAULT_MODELS, IGNORE_INDEX, TrainConfig

__all__ = [
    "SYNTHETIC_SPLITS",
    "build_datasets",
    "build_model",
    "build_optimizer",
    "build_scheduler",
    "fill_caches",
    "open_dataset",
    "train_transform",
]

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
    fork, so that the workers share them (other data sets are left alone)."""
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
        images, masks: folder: the images and masks (``<stem>.png`` label maps) directories.
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
    from crfrnn.data import VOC_CLASSES

    transform = train_transform(config)
    dataset = config.dataset
    class_names: Optional[list[str]] = None
    if dataset == "synthetic":
        spec = {"seed": config.data_seed, "size": config.image_size, **config.synthetic_kwargs}
        train_raw = open_dataset("synthetic", "train", num_images=config.num_train, synthetic=spec)
        val_raw = open_dataset("synthetic", "val", num_images=config.num_val, synthetic=spec)
        per_image = 4 * config.image_size**2
        cache = (config.num_train + config.num_val) * per_image <= _CACHE_BUDGET_BYTES
        if cache:
            train_set: Dataset = _CachedRaw(train_raw, transform)
            val_set: Optional[Dataset] = _CachedRaw(val_raw, None) if config.num_val else None
        else:
            train_raw.transform = transform
            train_set, val_set = train_raw, (val_raw if config.num_val else None)
        num_classes, class_names = train_raw.num_classes, list(train_raw.class_names)  # type: ignore[attr-defined]
    elif dataset == "voc":
        if config.voc_root is None:
            raise ValueError("dataset 'voc' needs voc_root (--voc-root DIR, the folder containing VOCdevkit).")
        train_set = open_dataset("voc", config.train_split, voc_root=config.voc_root, sbd_root=config.sbd_root,
                                 transform=transform)  # fmt: skip
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
        train_set = open_dataset("folder", images=config.images, masks=config.masks, num_classes=classes,
                                 transform=transform)  # fmt: skip
        val_set = (open_dataset("folder", images=config.val_images, masks=config.val_masks, num_classes=classes)
                   if config.val_images else None)  # fmt: skip
        num_classes = config.num_classes
    if config.num_classes is not None and config.num_classes != num_classes:
        raise ValueError(
            f"num_classes={config.num_classes} but the {dataset} data set has {num_classes} classes; "
            "leave num_classes unset to take it from the data."
        )
    if len(train_set) == 0:  # type: ignore[arg-type]
        raise ValueError(f"the {dataset} training set is empty.")
    return train_set, val_set, num_classes, class_names



def _backbone_state(payload: Mapping[str, Any]) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """The backbone weights and builder kwargs of a checkpoint (its whole model, or a segmenter's backbone)."""
    state = payload["state_dict"]
    kwargs = dict(payload["model"]["kwargs"])
    if any(k.startswith("backbone.") for k in state) and any(k.startswith("crf.") for k in state):
        state = {k[len("backbone.") :]: v for k, v in state.items() if k.startswith("backbone.")}
        kwargs = dict(kwargs.get("backbone_kwargs") or {})
    kwargs.pop("num_classes", None)
    return state, kwargs


def build_model(config: TrainConfig, num_classes: int) -> tuple[nn.Module, str, dict[str, Any]]:
    """Build the network of a config, checked against its stage, with ``init_from`` weights loaded.

    Returns:
        ``(model, name, kwargs)`` with ``crfrnn.models.create(name, **kwargs)`` rebuilding the architecture.

    Raises:
        FileNotFoundError: if ``init_from`` does not exist.
        ValueError: unknown model, a model that does not fit the stage, or ``init_from`` weights that do not fit.
    """
    from crfrnn.checkpoint import load_checkpoint
    from crfrnn.models import create, list_models

    init = load_checkpoint(config.init_from) if config.init_from is not None else None
    name = config.model
    if name is None:  # stage crfrnn: the CRF version of the stage-1 model
        guess = f"{init['model']['name']}_crfrnn" if init is not None else None
        name = guess if guess in list_models() else DEFAULT_MODELS["crfrnn"]
    if name not in list_models():
        close = difflib.get_close_matches(str(name), list_models(), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"unknown model {name!r}; valid names are {list_models()}.{hint}")
    kwargs = dict(config.model_kwargs)
    if kwargs.get("num_classes", num_classes) != num_classes:
        raise ValueError(
            f"model_kwargs has num_classes={kwargs['num_classes']} but the data set has {num_classes} classes."
        )
    kwargs["num_classes"] = num_classes
    if config.stage == "crfrnn":
        crf_kwargs = dict(kwargs.get("crf_kwargs") or {})
        for key in ("num_iterations", "num_eval_iterations"):
            wanted = getattr(config, key)
            if crf_kwargs.get(key, wanted) != wanted:
                raise ValueError(
                    f"model_kwargs.crf_kwargs.{key}={crf_kwargs[key]} contradicts {key}={wanted}; set {key} only."
                )
            crf_kwargs[key] = wanted
        kwargs["crf_kwargs"] = crf_kwargs
        if init is not None and "backbone_kwargs" not in kwargs:
            kwargs["backbone_kwargs"] = _backbone_state(init)[1]
    # checked by name before building (clearer than a keyword error), and on the built model after
    if config.stage == "cnn" and name.endswith("_crfrnn"):
        _check_stage("cnn", name, True)
    if config.stage == "crfrnn" and f"{name}_crfrnn" in list_models():
        _check_stage("crfrnn", name, False)
    try:
        model = create(name, **kwargs)
    except TypeError as err:
        raise ValueError(str(err)) from err
    segmenter = isinstance(model, CrfRnnSegmenter)
    _check_stage(config.stage, name, segmenter)
    if init is not None:
        if int(init["num_classes"]) != num_classes:
            raise ValueError(
                f"init_from '{config.init_from}' was trained with {init['num_classes']} classes but the data set has "
                f"{num_classes}; start from a checkpoint with the same classes."
            )
        state, init_kwargs = _backbone_state(init) if segmenter else (init["state_dict"], None)
        target = model.backbone if segmenter else model
        try:
            target.load_state_dict(state)
        except RuntimeError as err:
            detail = str(err).strip().splitlines()
            what = "the backbone of " if segmenter else ""
            hint = (
                f" Its builder kwargs were {init_kwargs}; pass the same backbone_kwargs."
                if segmenter else " Use a checkpoint of the same architecture."
            )  # fmt: skip
            raise ValueError(
                f"the weights of init_from '{config.init_from}' (model {init['model']['name']!r}) do not fit "
                f"{what}model {name!r}: {detail[0] if detail else err}.{hint}"
            ) from err
    return model, name, kwargs


def _check_stage(stage: str, name: str, has_crf: bool) -> None:
    from crfrnn.models import list_models

    if stage == "cnn" and has_crf:
        plain = name[: -len("_crfrnn")] if name.endswith("_crfrnn") else "small_fcn"
        raise ValueError(
            f"stage 'cnn' trains the CNN alone, but model {name!r} has a CRF-RNN head; use stage 'crfrnn' for it, "
            f"or a CNN such as {plain!r} for stage 'cnn'."
        )
    if stage == "crfrnn" and not has_crf:
        crf_names = [n for n in list_models() if n.endswith("_crfrnn")]
        raise ValueError(
            f"stage 'crfrnn' trains a CNN with a CRF-RNN head, but model {name!r} has none; use one of {crf_names} "
            f"(e.g. {name + '_crfrnn'!r} with init_from a stage-1 {name!r} checkpoint), or stage 'cnn'."
        )


def build_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """The optimiser, with parameter groups: CNN (``lr``, ``weight_decay``), CRF kernel weights
    (``lr * crf_kernel_lr_mult``), CRF compatibility (``lr * crf_compat_lr_mult``), other CRF parameters
    (``lr``); CRF groups have no weight decay. Each group's ``name`` says which it is."""
    crf = model.crf if isinstance(model, CrfRnnSegmenter) else None
    crf_ids = {id(p) for p in crf.parameters()} if crf is not None else set()
    groups: list[dict[str, Any]] = [
        {"name": "cnn", "params": [p for p in model.parameters() if id(p) not in crf_ids and p.requires_grad],
         "lr": config.lr, "weight_decay": config.weight_decay},
    ]  # fmt: skip
    if crf is not None:
        by_kind: dict[str, list[nn.Parameter]] = {"crf_kernel": [], "crf_compatibility": [], "crf_other": []}
        for pname, p in crf.named_parameters():
            if not p.requires_grad:
                continue
            leaf = pname.rsplit(".", 1)[-1]
            kind = ("crf_kernel" if leaf in ("spatial_weights", "bilateral_weights")
                    else "crf_compatibility" if leaf == "compatibility" else "crf_other")  # fmt: skip
            by_kind[kind].append(p)
        mult = {"crf_kernel": config.crf_kernel_lr_mult, "crf_compatibility": config.crf_compat_lr_mult,
                "crf_other": 1.0}  # fmt: skip
        for kind, params in by_kind.items():
            if params:
                groups.append({"name": kind, "params": params, "lr": config.lr * mult[kind], "weight_decay": 0.0})
    groups = [g for g in groups if g["params"]]
    if config.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum)
    return torch.optim.Adam(groups, lr=config.lr, betas=(config.momentum, 0.999))


def build_scheduler(optimizer: torch.optim.Optimizer, config: TrainConfig, total_steps: int) -> Any:
    """The learning-rate schedule of a config over ``total_steps`` optimiser steps (stepped once per step)."""
    if config.lr_schedule == "constant":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    power, total = config.poly_power, max(1, total_steps)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: max(0.0, 1.0 - step / total) ** power)



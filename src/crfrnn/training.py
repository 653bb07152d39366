"""Training segmentation networks and CRF-RNN end to end (the recipe of Zheng et al., ICCV 2015, section 6).

Training happens in two stages, as in the paper:

1. ``stage="cnn"``: train the segmentation CNN alone (e.g. ``small_fcn``, or ``fcn8s``).
2. ``stage="crfrnn"``: build the same CNN with a CRF-RNN head (``small_fcn_crfrnn``), copy the stage-1
   weights into its ``.backbone`` (``init_from``) and train both end to end. The CRF's kernel weights and its
   compatibility matrix get their own learning-rate multipliers.

Everything is described by one :class:`TrainConfig`; :func:`train` runs it::

    >>> from crfrnn.training import TrainConfig, train
    >>> cnn = train(TrainConfig(out_dir="runs/cnn", epochs=20))  # doctest: +SKIP
    >>> crf = train(TrainConfig(out_dir="runs/crf", stage="crfrnn", init_from="runs/cnn/best.pt",
    ...                         epochs=5, lr=1e-3))  # doctest: +SKIP

A run directory holds ``config.yaml`` (the resolved configuration), ``metrics.jsonl`` (one JSON object per
epoch), ``last.pt`` (written atomically after every epoch) and ``best.pt`` (best validation mean IoU). All
checkpoints are :mod:`crfrnn.checkpoint` files, so ``crfrnn.checkpoint.load_model("runs/crf/best.pt")``
rebuilds the trained network. ``train(config, resume=True)`` continues a run from ``last.pt`` exactly where it
stopped: weights, optimiser, learning-rate schedule, epoch and the random states (torch, numpy, python) of
every process are restored, and the data order of epoch ``e`` depends only on ``(seed, e)``.

Learning rates for a mean loss
------------------------------
The paper sums the loss over the pixels of one 500x500 image (base rate 1e-13, momentum 0.99) and trains the
CRF's kernel weights at 10000x and its compatibility at 1000x the base rate. Here the loss is the mean
cross-entropy over the valid pixels of a batch, so the base rates are those usual for a mean loss (SGD 0.01,
momentum 0.9). The CRF parameters are few, shared by every pixel, of order 1 and start at sensible values
(kernel weights 3 and 5, Potts compatibility), but their gradients under a mean loss are small. The defaults
``crf_kernel_lr_mult=10`` and ``crf_compat_lr_mult=1`` keep the paper's ratio of 10 between the two while
moving the kernel weights by about 1e-2 to 1e-1 per epoch on the synthetic data, a change that matters
without destabilising the mean-field iterations. CRF parameters get no weight decay (decay would pull the
kernel weights to 0, i.e. switch the CRF off). With ``optimizer="adam"`` the step size no longer scales with
the gradient, so use multipliers near 1 there.

Distributed training
--------------------
Launch with ``torchrun --nproc_per_node=N -m crfrnn train ...`` (or ``python -m torch.distributed.run``).
:func:`train` detects the ``WORLD_SIZE``/``RANK``/``LOCAL_RANK`` environment, initialises the process group
(gloo on the CPU, nccl on CUDA) if it is not initialised yet and wraps the model in
``DistributedDataParallel``. ``batch_size`` is **per process**: the global batch is
``batch_size * WORLD_SIZE`` and each process's loss is the mean over its own valid pixels (DDP averages the
gradients). Each process sees a disjoint shard of every epoch (``DistributedSampler``, seeded with
``(seed, epoch)``); validation is sharded too and its confusion matrix all-reduced. BatchNorm statistics are
per process; the running statistics of rank 0 are broadcast to all ranks after every epoch (as DDP does before
every forward), so all ranks hold the same model. Only rank 0 writes files and shows progress.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import hashlib
import json
import math
import os
import random
import time
import types
import typing
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, Subset

__all__ = [
    "DATASETS",
    "IGNORE_INDEX",
    "LR_SCHEDULES",
    "OPTIMIZERS",
    "STAGES",
    "TrainConfig",
    "TrainingError",
    "build_datasets",
    "build_model",
    "build_optimizer",
    "load_config",
    "segmentation_loss",
    "train",
]

IGNORE_INDEX = 255
STAGES: tuple[str, ...] = ("cnn", "crfrnn")
DATASETS: tuple[str, ...] = ("synthetic", "voc", "folder")
OPTIMIZERS: tuple[str, ...] = ("sgd", "adam")
LR_SCHEDULES: tuple[str, ...] = ("poly", "constant")

_DEFAULT_MODEL = {"cnn": "small_fcn", "crfrnn": "small_fcn_crfrnn"}
#: Settings that may differ when a run is resumed (they do not change what is being trained).
_RESUMABLE_CHANGES = frozenset(
    {"epochs", "workers", "device", "threads", "eval_every", "val_batch_size", "out_dir", "init_from",
     "voc_root", "sbd_root", "images", "masks", "val_images", "val_masks"}
)  # fmt: skip
_CACHE_BUDGET_BYTES = 2 * 1024**3


class TrainingError(RuntimeError):
    """A training run failed for a reason worth one line (a non-finite loss, processes out of sync)."""


# ------------------------------------------------------------------------------------------------ config
@dataclass
class TrainConfig:
    """Every setting of a training run; :func:`train` takes one.

    Build it in code, from a YAML file with :func:`load_config` (which also applies overrides), or from a
    mapping with :meth:`from_dict` (unknown keys are errors naming the valid ones).

    Attributes:
        out_dir: run directory (``config.yaml``, ``metrics.jsonl``, ``last.pt``, ``best.pt``).
        stage: ``"cnn"`` (the CNN alone) or ``"crfrnn"`` (CNN + CRF-RNN end to end).
        model: :func:`crfrnn.models.create` name. ``None``: ``"small_fcn"`` for stage cnn; for stage crfrnn the
            ``<init_from's model>_crfrnn`` if registered, else ``"small_fcn_crfrnn"``.
        model_kwargs: further keyword arguments of the model builder (``num_classes`` is set from the data).
            For a ``*_crfrnn`` model: ``backbone_kwargs`` (default: those of the ``init_from`` checkpoint) and
            ``crf_kwargs`` (``num_iterations``/``num_eval_iterations`` come from the fields below).
        init_from: checkpoint to start from. Stage crfrnn: a stage-1 checkpoint whose weights are copied into
            the segmenter's ``.backbone`` (a stage-2 checkpoint also works: its backbone is used). Stage cnn:
            warm start from a checkpoint of the same network. ``None``: random initialisation.
        num_iterations: mean-field iterations T while training (the paper: 5).
        num_eval_iterations: mean-field iterations T at evaluation (the paper: 10).
        dataset: ``"synthetic"`` (:class:`crfrnn.data.SyntheticShapes`), ``"voc"`` or ``"folder"``.
        num_classes: number of labels; ``None`` takes it from the data set (required for ``"folder"``).
        num_train: synthetic: training images.
        num_val: synthetic: validation images (0: no validation).
        image_size: synthetic: image side in pixels.
        data_seed: synthetic: seed of the data set (kept apart from ``seed`` so the data stay fixed).
        synthetic_kwargs: synthetic: further :class:`~crfrnn.data.SyntheticShapes` options (``void_band``, ...).
        voc_root: voc: folder containing ``VOCdevkit``.
        sbd_root: voc: SBD ``benchmark_RELEASE``; when given, training uses train_aug (VOC train + SBD - VOC val).
        train_split: voc without ``sbd_root``: the VOC split to train on.
        val_split: voc: the VOC split to validate on (``None``: no validation).
        images: folder: training images directory.
        masks: folder: training masks directory (``<stem>.png`` label maps).
        val_images: folder: validation images directory (optional).
        val_masks: folder: validation masks directory (with ``val_images``).
        crop_size: training crop side in pixels; smaller images are padded (image: mean colour, mask: 255).
        min_scale: smallest random scale factor before cropping.
        max_scale: largest random scale factor (``min_scale = max_scale = 1``: no scaling).
        hflip: random horizontal flips.
        epochs: number of epochs.
        batch_size: images per optimiser step **per process** (global batch: ``batch_size * WORLD_SIZE``).
        val_batch_size: images per validation batch per process (``None``: ``batch_size``).
        optimizer: ``"sgd"`` (with momentum) or ``"adam"``.
        lr: base learning rate (of the CNN's parameters).
        momentum: SGD momentum (Adam: beta1).
        weight_decay: weight decay of the CNN's parameters (CRF parameters get none).
        lr_schedule: ``"poly"`` (``lr * (1 - step / total) ** poly_power`` per step) or ``"constant"``.
        poly_power: exponent of the poly schedule.
        crf_kernel_lr_mult: learning-rate multiplier of the CRF's ``spatial_weights`` and ``bilateral_weights``.
        crf_compat_lr_mult: learning-rate multiplier of the CRF's ``compatibility``.
        seed: seed of initialisation, shuffling, augmentation and dropout.
        workers: DataLoader worker processes (0: load in the main process, fully deterministic).
        device: ``"auto"`` (CUDA if available), ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
        threads: CPU threads for torch and numba (``None``: leave as is; under torchrun, ``OMP_NUM_THREADS``).
        eval_every: validate every this many epochs (and after the last one).
    """

    out_dir: str
    stage: str = "cnn"
    model: Optional[str] = None
    model_kwargs: dict = field(default_factory=dict)
    init_from: Optional[str] = None
    num_iterations: int = 5
    num_eval_iterations: int = 10
    dataset: str = "synthetic"
    num_classes: Optional[int] = None
    num_train: int = 400
    num_val: int = 100
    image_size: int = 96
    data_seed: int = 0
    synthetic_kwargs: dict = field(default_factory=dict)
    voc_root: Optional[str] = None
    sbd_root: Optional[str] = None
    train_split: str = "train"
    val_split: Optional[str] = "val"
    images: Optional[str] = None
    masks: Optional[str] = None
    val_images: Optional[str] = None
    val_masks: Optional[str] = None
    crop_size: int = 96
    min_scale: float = 0.75
    max_scale: float = 1.25
    hflip: bool = True
    epochs: int = 20
    batch_size: int = 8
    val_batch_size: Optional[int] = None
    optimizer: str = "sgd"
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    lr_schedule: str = "poly"
    poly_power: float = 0.9
    crf_kernel_lr_mult: float = 10.0
    crf_compat_lr_mult: float = 1.0
    seed: int = 0
    workers: int = 0
    device: str = "auto"
    threads: Optional[int] = None
    eval_every: int = 1

    def __post_init__(self) -> None:
        hints = _type_hints(type(self))
        for f in dataclasses.fields(self):
            setattr(self, f.name, _coerce(f.name, getattr(self, f.name), hints[f.name]))
        for name, choices in (("stage", STAGES), ("dataset", DATASETS), ("optimizer", OPTIMIZERS),
                              ("lr_schedule", LR_SCHEDULES)):  # fmt: skip
            if getattr(self, name) not in choices:
                raise ValueError(f"{name} must be one of {list(choices)}, got {getattr(self, name)!r}.")
        for name in ("image_size", "crop_size", "epochs", "batch_size", "eval_every",
                     "num_classes", "val_batch_size", "threads"):  # fmt: skip
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}.")
        for name in ("num_iterations", "num_eval_iterations", "num_train", "num_val", "data_seed", "seed", "workers"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}.")
        for name in ("lr", "min_scale", "max_scale", "poly_power"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}.")
        for name in ("momentum", "weight_decay", "crf_kernel_lr_mult", "crf_compat_lr_mult"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}.")
        if self.min_scale > self.max_scale:
            raise ValueError(f"min_scale ({self.min_scale}) must not exceed max_scale ({self.max_scale}).")
        if not str(self.out_dir):
            raise ValueError("out_dir must name the run directory, got an empty string.")
        if self.model is None and self.stage == "cnn":
            self.model = _DEFAULT_MODEL["cnn"]

    @classmethod
    def field_names(cls) -> list[str]:
        """The configuration keys, in declaration order."""
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "TrainConfig":
        """Build a config from a mapping (e.g. parsed YAML); dashes in keys are read as underscores.

        Raises:
            KeyError: for an unknown key; the message names it and lists the valid keys.
            ValueError, TypeError: for a missing ``out_dir`` or a value of the wrong type or range.
        """
        if not isinstance(values, Mapping):
            raise TypeError(
                f"a training configuration must be a mapping of keys to values, got {type(values).__name__}."
            )
        valid = cls.field_names()
        clean: dict[str, Any] = {}
        for key, value in values.items():
            name = str(key).replace("-", "_")
            if name not in valid:
                close = difflib.get_close_matches(name, valid, n=1)
                hint = f" Did you mean {close[0]!r}?" if close else ""
                raise KeyError(f"unknown configuration key {key!r}.{hint} Valid keys: {', '.join(valid)}.")
            clean[name] = value
        if clean.get("out_dir") is None:
            raise ValueError("no run directory: set out_dir (YAML key out_dir, or --out DIR).")
        return cls(**clean)

    def to_dict(self) -> dict[str, Any]:
        """The settings as plain Python values (YAML- and JSON-serialisable)."""
        return _plain(dataclasses.asdict(self))

    def save(self, path: Union[str, os.PathLike]) -> Path:
        """Write the settings to a YAML file (atomically); :func:`load_config` reads it back."""
        import yaml

        from crfrnn._io import atomic_write_text

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        return atomic_write_text(path, yaml.safe_dump(self.to_dict(), sort_keys=False))


class _BadConfigValue(ValueError, TypeError):
    """A configuration value of the wrong type: a ValueError like every bad setting, and a TypeError."""


_UNIONS = (Union, types.UnionType)  # Optional[int] and int | None


@functools.lru_cache(maxsize=None)
def _type_hints(cls: type) -> dict[str, Any]:
    """The evaluated annotations of a configuration dataclass (its fields' real types, not their strings)."""
    return typing.get_type_hints(cls)


def _coerce(name: str, value: Any, hint: Any) -> Any:
    """Check (and, for numbers given as strings by YAML 1.1, convert) one field value.

    ``hint`` is the field's evaluated type (from :func:`typing.get_type_hints`): ``bool``, ``int``, ``float``,
    ``str`` or ``dict``, optionally ``Optional[...]`` / ``... | None``.
    """
    base, optional = hint, False
    if typing.get_origin(hint) in _UNIONS:
        args = typing.get_args(hint)
        others = [a for a in args if a is not type(None)]
        optional = len(others) < len(args)
        base = others[0] if len(others) == 1 else None  # int | str: not one type to check against
    base = typing.get_origin(base) or base  # dict[str, Any] -> dict
    if base not in (bool, int, float, str, dict):
        raise _BadConfigValue(f"{name}: TrainConfig cannot check the annotation {hint!r}; use one of "
                              "bool, int, float, str, dict, optionally with '| None'.")  # fmt: skip
    if value is None:
        if optional:
            return None
        raise _BadConfigValue(f"{name} must not be None (expected {base.__name__}).")
    if base is bool:
        if isinstance(value, bool):
            return value
        raise _BadConfigValue(f"{name} must be true or false, got {value!r}.")
    if base is int:
        if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
            return int(value)
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise _BadConfigValue(f"{name} must be an integer, got {value!r}.")
    if base is float:
        if isinstance(value, (int, float, np.number)) and not isinstance(value, bool):
            out = float(value)
        else:
            try:
                out = float(value) if isinstance(value, str) else math.nan
            except ValueError:
                out = math.nan
            if math.isnan(out):
                raise _BadConfigValue(f"{name} must be a number, got {value!r}.")
        if not math.isfinite(out):
            raise ValueError(f"{name} must be finite, got {value!r}.")
        return out
    if base is str:
        if isinstance(value, (str, os.PathLike)):
            return os.fspath(value)
        raise _BadConfigValue(f"{name} must be a string, got {value!r}.")
    if base is dict:
        if isinstance(value, Mapping):
            return _plain(dict(value))
        raise _BadConfigValue(f"{name} must be a mapping of keyword arguments, got {value!r}.")
    raise AssertionError(f"unreachable: {base!r}")  # pragma: no cover - every base is one of the above


def _plain(value: Any) -> Any:
    """Tuples to lists and numpy scalars to Python, recursively (for YAML/JSON)."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return value


def load_config(*paths: Optional[Union[str, os.PathLike]], **overrides: Any) -> TrainConfig:
    """Read YAML configurations and apply overrides: later files win over earlier ones, overrides win over files.

    Args:
        *paths: YAML files, each a mapping of :class:`TrainConfig` keys (``None`` entries are skipped); none:
            the defaults.
        **overrides: :class:`TrainConfig` keys and values; ``None`` values are ignored.

    Returns:
        The config.

    Raises:
        FileNotFoundError: if a file does not exist.
        ValueError: if a file is not valid YAML or not a mapping, or ``out_dir`` is missing.
        KeyError: for an unknown key (the message lists the valid keys).

    Example:
        >>> cfg = load_config(out_dir="runs/cnn", epochs=3)
        >>> cfg.model, cfg.epochs
        ('small_fcn', 3)
    """
    values: dict[str, Any] = {}
    for path in paths:
        if path is not None:
            values.update(_read_yaml_mapping(path))
    values.update({k: v for k, v in overrides.items() if v is not None})
    return TrainConfig.from_dict(values)


def _read_yaml_mapping(path: Union[str, os.PathLike]) -> dict[str, Any]:
    import yaml

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"configuration file not found: '{path}'.")
    try:
        loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise ValueError(f"cannot parse the YAML configuration '{path}': {err}".replace("\n", " ")) from err
    if loaded is None:
        return {}
    if not isinstance(loaded, Mapping):
        raise ValueError(
            f"the configuration '{path}' must be a YAML mapping of keys to values, got a {type(loaded).__name__}."
        )
    return {str(k).replace("-", "_"): v for k, v in loaded.items()}


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


def _train_transform(config: TrainConfig) -> Any:
    from crfrnn.data import Compose, RandomCrop, RandomHorizontalFlip, RandomScale

    steps: list[Any] = []
    if (config.min_scale, config.max_scale) != (1.0, 1.0):
        steps.append(RandomScale(config.min_scale, config.max_scale))
    steps.append(RandomCrop(config.crop_size, ignore_index=IGNORE_INDEX))
    if config.hflip:
        steps.append(RandomHorizontalFlip(0.5))
    return Compose(steps)


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
    from crfrnn import data

    transform = _train_transform(config)
    dataset = config.dataset
    class_names: Optional[list[str]] = None
    if dataset == "synthetic":
        train_raw, val_raw, _ = data.synthetic_splits(
            config.data_seed, num_train=config.num_train, num_val=config.num_val, num_test=0,
            size=config.image_size, **config.synthetic_kwargs,
        )  # fmt: skip
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
        if config.sbd_root is not None:
            train_set = data.voc_train_aug(config.voc_root, config.sbd_root, transform=transform)
        else:
            train_set = data.VOCSegmentation(config.voc_root, config.train_split, transform=transform)
        val_set = data.VOCSegmentation(config.voc_root, config.val_split) if config.val_split else None
        num_classes, class_names = 21, list(data.VOC_CLASSES)
    else:
        if config.images is None or config.masks is None:
            raise ValueError("dataset 'folder' needs both images and masks (--images DIR --masks DIR).")
        if (config.val_images is None) != (config.val_masks is None):
            raise ValueError("give both val_images and val_masks (--val-images DIR --val-masks DIR), or neither.")
        if config.num_classes is None:
            raise ValueError("dataset 'folder' needs num_classes (--num-classes L): it cannot be read from the masks.")
        classes = config.num_classes  # masks with other labels are named when they are read
        train_set = data.SegmentationFolder(config.images, config.masks, transform=transform, num_classes=classes)
        val_set = (data.SegmentationFolder(config.val_images, config.val_masks, num_classes=classes)
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


# ------------------------------------------------------------------------------------------------- model
def _is_segmenter(model: nn.Module) -> bool:
    from crfrnn.models import CrfRnnSegmenter

    return isinstance(model, CrfRnnSegmenter)


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
        name = guess if guess in list_models() else _DEFAULT_MODEL["crfrnn"]
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
    segmenter = _is_segmenter(model)
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
    crf = model.crf if _is_segmenter(model) else None
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


def _build_scheduler(optimizer: torch.optim.Optimizer, config: TrainConfig, total_steps: int) -> Any:
    if config.lr_schedule == "constant":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    power, total = config.poly_power, max(1, total_steps)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: max(0.0, 1.0 - step / total) ** power)


def segmentation_loss(logits: Tensor, target: Tensor, ignore_index: int = IGNORE_INDEX) -> Tensor:
    """Mean cross-entropy over the pixels whose target is not ``ignore_index`` (0 if there are none).

    Args:
        logits: ``(B, L, H, W)`` scores.
        target: ``(B, H, W)`` int64 labels in ``[0, L)`` or ``ignore_index``.

    Returns:
        A scalar tensor.
    """
    num_classes = logits.shape[1]
    bad = ((target < 0) | (target >= num_classes)) & (target != ignore_index)
    if bool(bad.any()):
        values = sorted(int(v) for v in torch.unique(target[bad])[:5])
        raise ValueError(
            f"target labels {values} are outside the valid range 0..{num_classes - 1} (and {ignore_index} = void) "
            f"of the model's {num_classes} classes; fix the masks or set num_classes to cover their labels."
        )
    total = F.cross_entropy(logits, target, ignore_index=ignore_index, reduction="sum")
    return total / (target != ignore_index).sum().clamp_min(1)


# ---------------------------------------------------------------------------------------- distribution
@dataclass
class _Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    owns_group: bool = False

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _env_int(name: str) -> Optional[int]:
    value = os.environ.get(name)
    if value is None or value == "":
        return None
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name}={value!r} is not an integer.") from None


def _init_distributed(device_kind: str) -> _Dist:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return _Dist(dist.get_rank(), dist.get_world_size(), _env_int("LOCAL_RANK") or 0, owns_group=False)
    world = _env_int("WORLD_SIZE") or 1
    if world <= 1:
        return _Dist()
    rank, local = _env_int("RANK"), _env_int("LOCAL_RANK")
    if rank is None:
        raise ValueError("WORLD_SIZE is set but RANK is not; launch with torchrun, which sets both.")
    if not dist.is_available():
        raise RuntimeError("WORLD_SIZE > 1 but this torch build has no torch.distributed.")
    backend = "nccl" if device_kind == "cuda" else "gloo"
    dist.init_process_group(backend=backend)
    return _Dist(rank, world, local if local is not None else rank, owns_group=True)


def _resolve_device(spec: str, dist_info: _Dist) -> torch.device:
    if spec == "auto":
        spec = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(spec)
    except RuntimeError as err:
        raise ValueError(
            f"device {spec!r} is not a valid torch device (use 'auto', 'cpu', 'cuda' or 'cuda:N')."
        ) from err
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {spec!r} was asked for but CUDA is not available; use device 'cpu' or 'auto'.")
        if device.index is None:
            device = torch.device("cuda", dist_info.local_rank if dist_info.enabled else torch.cuda.current_device())
        torch.cuda.set_device(device)
    return device


def _gather(obj: Any, dist_info: _Dist) -> list[Any]:
    if not dist_info.enabled:
        return [obj]
    import torch.distributed as dist

    out: list[Any] = [None] * dist_info.world_size
    dist.all_gather_object(out, obj)
    return out


def _sum_across(values: Sequence[float], dist_info: _Dist, device: torch.device) -> list[float]:
    t = torch.tensor(list(values), dtype=torch.float64, device=device)
    if dist_info.enabled:
        import torch.distributed as dist

        dist.all_reduce(t)
    return t.tolist()


def _broadcast_buffers(model: nn.Module, dist_info: _Dist) -> None:
    if dist_info.enabled:
        import torch.distributed as dist

        for buf in model.buffers():
            dist.broadcast(buf, 0)


def _state_hash(model: nn.Module) -> str:
    """SHA-256 of the model's state (parameters and buffers), to check that processes agree."""
    h = hashlib.sha256()
    for key, value in sorted(model.state_dict().items()):
        h.update(key.encode())
        h.update(value.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _rng_state() -> dict[str, Any]:
    """The random states of torch, numpy and python as tensors and plain values (``weights_only`` loadable)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": str(kind), "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "python": {"version": int(version), "state": torch.tensor(internal, dtype=torch.int64),
                   "gauss_next": None if gauss_next is None else float(gauss_next)},
    }  # fmt: skip
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: Mapping[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    keys = n["keys"].numpy().astype(np.uint32)
    np.random.set_state((n["kind"], keys, n["pos"], n["has_gauss"], n["cached_gaussian"]))
    p = state["python"]
    random.setstate((p["version"], tuple(int(v) for v in p["state"].tolist()), p["gauss_next"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _derived_seed(*parts: int) -> int:
    """A 63-bit seed from integers (stable across runs and platforms)."""
    digest = hashlib.sha256(",".join(str(int(p)) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def _seed_worker(worker_id: int) -> None:  # pragma: no cover - runs in DataLoader workers
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


def _set_threads(config: TrainConfig, dist_info: _Dist) -> None:
    threads = config.threads
    if threads is None and dist_info.enabled:
        threads = torch.get_num_threads()  # torchrun sets OMP_NUM_THREADS (1 by default) for every process
    if threads is None:
        return
    torch.set_num_threads(threads)
    try:
        import numba
    except ImportError:  # pragma: no cover - numba is a dependency
        return
    numba.set_num_threads(max(1, min(threads, numba.config.NUMBA_NUM_THREADS)))


# ------------------------------------------------------------------------------------------- the loop
def _batches(loader: Iterable, show: bool, desc: str) -> Iterable:
    if not show:
        return loader
    from tqdm.auto import tqdm

    return tqdm(loader, desc=desc, leave=False, dynamic_ncols=True)


def _evaluate(
    model: nn.Module, val_set: Dataset, num_classes: int, config: TrainConfig, device: torch.device,
    dist_info: _Dist, show: bool,
) -> dict[str, Any]:  # fmt: skip
    from crfrnn.data import pad_collate
    from crfrnn.metrics import ConfusionMatrix

    shard = Subset(val_set, list(range(dist_info.rank, len(val_set), dist_info.world_size)))  # type: ignore[arg-type]
    loader = DataLoader(
        shard, batch_size=config.val_batch_size or config.batch_size, shuffle=False, num_workers=config.workers,
        collate_fn=pad_collate, generator=torch.Generator().manual_seed(0),
    )  # fmt: skip
    segmenter = _is_segmenter(model)
    refined_cm = ConfusionMatrix(num_classes, ignore_index=IGNORE_INDEX, device=device)
    cnn_cm = ConfusionMatrix(num_classes, ignore_index=IGNORE_INDEX, device=device) if segmenter else None
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for images, masks in _batches(loader, show, "validate"):
            images, masks = images.to(device), masks.to(device)
            if segmenter:
                unary = model.unary(images)
                cnn_cm.update(unary.argmax(1), masks)  # type: ignore[union-attr]
                logits = model.crf(unary, images)
            else:
                logits = _logits(model(images))
            refined_cm.update(logits.argmax(1), masks)
    model.train(was_training)
    out: dict[str, Any] = {}
    for suffix, cm in (("", refined_cm), ("_cnn", cnn_cm)):
        if cm is None:
            continue
        m = cm.all_reduce().compute()
        out[f"val_mean_iou{suffix}"] = _finite(m["mean_iou"])
        out[f"val_pixel_accuracy{suffix}"] = _finite(m["pixel_accuracy"])
        out[f"val_mean_class_accuracy{suffix}"] = _finite(m["mean_class_accuracy"])
        if not suffix:
            out["val_per_class_iou"] = [_finite(v) for v in torch.as_tensor(m["per_class_iou"]).tolist()]
    return out


def _finite(value: Any) -> Optional[float]:
    value = float(value)
    return value if math.isfinite(value) else None


def _logits(output: Any) -> Tensor:
    return output[0] if isinstance(output, (tuple, list)) else output


def _is_main_process() -> bool:
    """Rank 0 (or no distribution), from the process group if there is one, else from torchrun's RANK."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank() == 0
    return (_env_int("RANK") or 0) == 0


class _RunLock:
    """An exclusive lock on a run directory: ``fcntl.flock`` on ``<out_dir>/.lock``, which holds the pid.

    The kernel releases the lock when its process ends, however it ends, so a lock left by a crashed run is
    never in the way (the file stays; only the lock on it counts). Where ``fcntl`` does not exist (Windows)
    runs are not locked.
    """

    NAME = ".lock"

    def __init__(self, path: Path, fd: int) -> None:
        self.path, self.fd = path, fd

    @classmethod
    def acquire(cls, out_dir: Path) -> Optional["_RunLock"]:
        try:
            import fcntl
        except ImportError:  # pragma: no cover - Windows
            return None
        if out_dir.exists() and not out_dir.is_dir():
            raise NotADirectoryError(f"out_dir '{out_dir}' exists and is not a directory; pass a folder for the run.")
        out_dir.mkdir(parents=True, exist_ok=True)
        path = out_dir / cls.NAME
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:  # BlockingIOError: another process holds it
            holder = os.read(fd, 64).decode("ascii", "replace").strip() or "unknown"
            os.close(fd)
            raise ValueError(
                f"the run directory '{out_dir}' is in use by another training process (pid {holder}, lock file "
                f"'{path}'); two runs writing one directory would mix their files. Wait for that run to finish, "
                f"or choose another out_dir."
            ) from err
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode("ascii"))
        return cls(path, fd)

    def release(self) -> None:
        import fcntl

        fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)


def _read_metrics(path: Path) -> list[dict[str, Any]]:
    """The records of ``metrics.jsonl``; a last line cut short by a crash is dropped with a warning."""
    lines = path.read_text(encoding="utf-8").splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    records = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            if number == len(lines):  # the record being written when the run stopped
                warnings.warn(
                    f"dropping the last line of '{path}', cut short when the run stopped ({err}): {line[:60]!r}",
                    stacklevel=4,
                )
                break
            raise ValueError(
                f"'{path}' line {number} is not JSON ({err}): {line[:60]!r}. Only the last line can be cut short "
                "by a crash; repair or delete the file (its records are also in the checkpoints) and resume."
            ) from err
        if not isinstance(record, dict):
            raise ValueError(f"'{path}' line {number} is not a JSON object: {line[:60]!r}; repair or delete the file.")
        records.append(record)
    return records


def _check_resume(config: TrainConfig, saved: Mapping[str, Any], path: Path) -> None:
    current = config.to_dict()
    changed = [
        k for k in current
        if k not in _RESUMABLE_CHANGES and k in saved and saved[k] != current[k]
        and not (k == "model" and current[k] is None)  # None: the stage's default, resolved when the run began
    ]  # fmt: skip
    if changed:
        detail = "; ".join(f"{k}: was {saved[k]!r}, now {current[k]!r}" for k in changed)
        raise ValueError(
            f"cannot resume '{path}' with different settings ({detail}). Resume with the run's config.yaml "
            f"(only {sorted(_RESUMABLE_CHANGES)} may change), or start a new run in another out_dir."
        )


def train(
    config: TrainConfig, *, progress: bool = True, resume: bool = False, stop_after: Optional[int] = None,
    on_epoch: Optional[Callable[[dict[str, Any]], None]] = None,
) -> dict[str, Any]:
    """Train the network described by ``config``; see the module docstring for the recipe and the files.

    Args:
        config: the settings.
        progress: show tqdm progress bars and a line per epoch (rank 0 only).
        resume: continue the run in ``config.out_dir`` from its ``last.pt``. The other settings must match
            the run's (``epochs``, ``workers``, ``device``, ``threads``, ``eval_every``, data paths may change).
        stop_after: return once this many epochs are complete (the run stays resumable), e.g. to fit a job's
            time limit; ``None`` runs to ``config.epochs``.
        on_epoch: called on rank 0 with each epoch's metrics record once its checkpoint is written (e.g. to
            drive an outer progress bar).

    Returns:
        A dict with ``model`` (the trained network, unwrapped, in eval mode), ``epoch`` (epochs completed),
        ``completed`` (whether ``epoch == config.epochs``), the last epoch's metrics (``train_loss``,
        ``val_mean_iou``, ...), ``best_mean_iou``, ``best_epoch``, ``history`` (the metrics of every epoch of
        the run), ``state_hashes`` (per rank, equal when processes agree) and the paths ``out_dir``,
        ``config_path``, ``metrics_path``, ``last_checkpoint``, ``best_checkpoint`` (``None`` without validation).

    Raises:
        FileNotFoundError: missing data, ``init_from`` or (with ``resume``) ``last.pt``.
        ValueError: inconsistent settings (model and stage, classes, resume with other settings, an existing run).
        TrainingError: the loss became non-finite, or processes disagree on the model.
    """
    from crfrnn.checkpoint import load_checkpoint

    if not isinstance(config, TrainConfig):
        raise TypeError(f"config must be a TrainConfig, got {type(config).__name__}; see crfrnn.training.load_config.")
    if stop_after is not None and stop_after < 1:
        raise ValueError(f"stop_after must be >= 1 or None, got {stop_after}.")
    out_dir = Path(config.out_dir)
    last_path = out_dir / "last.pt"
    if resume and not last_path.is_file():
        raise FileNotFoundError(f"cannot resume: no checkpoint '{last_path}'. Train without resume to start the run.")
    lock = _RunLock.acquire(out_dir) if _is_main_process() else None  # before anything is read or written
    try:
        ckpt: Optional[dict[str, Any]] = None
        if resume:
            ckpt = load_checkpoint(last_path)
            _check_resume(config, ckpt.get("config", {}), last_path)
        elif last_path.exists():
            raise ValueError(
                f"'{out_dir}' already holds a run ({last_path.name}); resume it (--resume) or choose another out_dir."
            )

        cuda = config.device.startswith("cuda") or (config.device == "auto" and torch.cuda.is_available())
        dist_info = _init_distributed("cuda" if cuda else "cpu")
        try:
            return _train(config, dist_info, ckpt, progress, stop_after, on_epoch)
        finally:
            if dist_info.owns_group:
                import torch.distributed as dist

                dist.destroy_process_group()
    finally:
        if lock is not None:
            lock.release()


def _train(
    config: TrainConfig, dist_info: _Dist, ckpt: Optional[dict[str, Any]], progress: bool, stop_after: Optional[int],
    on_epoch: Optional[Callable[[dict[str, Any]], None]] = None,
) -> dict[str, Any]:
    from torch.utils.data.distributed import DistributedSampler

    from crfrnn._io import append_line, atomic_write_text
    from crfrnn.checkpoint import save_checkpoint

    out_dir = Path(config.out_dir)
    last_path, best_path = out_dir / "last.pt", out_dir / "best.pt"
    config_path, metrics_path = out_dir / "config.yaml", out_dir / "metrics.jsonl"
    device = _resolve_device(config.device, dist_info)
    _set_threads(config, dist_info)
    show = progress and dist_info.is_main

    train_set, val_set, num_classes, class_names = build_datasets(config)
    _seed_all(config.seed)  # identical initialisation on every rank
    if ckpt is not None:  # rebuild exactly the saved architecture; init_from is not needed any more
        from crfrnn.models import create

        model_name, model_kwargs = ckpt["model"]["name"], dict(ckpt["model"]["kwargs"])
        model = create(model_name, **model_kwargs)
        model.load_state_dict(ckpt["state_dict"])
        if int(ckpt["num_classes"]) != num_classes:
            raise ValueError(
                f"the run was trained with {ckpt['num_classes']} classes but the data set has {num_classes}."
            )
    else:
        model, model_name, model_kwargs = build_model(config, num_classes)
        if config.stage == "crfrnn" and config.init_from is None:
            warnings.warn(
                "stage 'crfrnn' without init_from trains the CNN from scratch together with the CRF; the paper "
                "starts from a trained CNN (train stage 'cnn' first and pass its checkpoint as init_from).",
                stacklevel=3,
            )
    config = dataclasses.replace(config, model=model_name)  # config.yaml names the model actually built
    model.to(device).train()
    optimizer = build_optimizer(model, config)
    if config.workers > 0:  # fill the in-memory caches once here; forked workers share them
        for ds in (train_set, val_set):
            if isinstance(ds, _CachedRaw):
                ds.fill()

    sampler = DistributedSampler(
        train_set, num_replicas=dist_info.world_size, rank=dist_info.rank, shuffle=True, seed=config.seed
    )
    steps_per_epoch = math.ceil(len(sampler) / config.batch_size)
    scheduler = _build_scheduler(optimizer, config, steps_per_epoch * config.epochs)

    start_epoch, global_step = 0, 0
    best_miou, best_epoch = -math.inf, None
    history: list[dict[str, Any]] = []
    if ckpt is not None:
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        start_epoch, global_step = int(ckpt["epoch"]), int(ckpt["global_step"])
        best_miou = ckpt["best_mean_iou"] if ckpt.get("best_mean_iou") is not None else -math.inf
        best_epoch = ckpt.get("best_epoch")
        states = ckpt.get("rng_states") or []
        if len(states) == dist_info.world_size:
            _set_rng_state(states[dist_info.rank])
        else:
            warnings.warn(
                f"the run was saved by {len(states)} process(es) and is resumed by {dist_info.world_size}: random "
                "states are re-seeded, so the continuation is not bit-identical to an uninterrupted run.",
                stacklevel=3,
            )
            _seed_all(_derived_seed(config.seed, start_epoch, dist_info.rank))
    else:
        _seed_all(_derived_seed(config.seed, 0, dist_info.rank))  # dropout etc. differ between ranks

    if dist_info.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        config.save(config_path)
        if ckpt is not None and metrics_path.exists():  # drop records written after the checkpoint
            history = [r for r in _read_metrics(metrics_path) if r.get("epoch", 0) <= start_epoch]
            atomic_write_text(metrics_path, "".join(json.dumps(r) + "\n" for r in history))
        elif ckpt is None and metrics_path.exists():
            metrics_path.unlink()

    net: nn.Module = model
    if dist_info.enabled:
        from torch.nn.parallel import DistributedDataParallel

        net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)

    end_epoch = config.epochs if stop_after is None else min(config.epochs, stop_after)
    record: dict[str, Any] = dict(ckpt.get("metrics") or {}) if ckpt is not None else {}
    hashes: list[str] = []
    for epoch in range(start_epoch + 1, end_epoch + 1):
        t0 = time.perf_counter()
        sampler.set_epoch(epoch)
        generator = torch.Generator().manual_seed(_derived_seed(config.seed, epoch, dist_info.rank))
        loader = DataLoader(
            train_set, batch_size=config.batch_size, sampler=sampler, num_workers=config.workers,
            worker_init_fn=_seed_worker, generator=generator,  # worker seeds depend on (seed, epoch, rank) only
        )  # fmt: skip
        net.train()
        loss_sum, pixel_batches = 0.0, 0
        bar = _batches(loader, show, f"epoch {epoch}/{config.epochs}")
        for images, masks in bar:
            images, masks = images.to(device, non_blocking=True), masks.to(device, non_blocking=True)
            loss = segmentation_loss(_logits(net(images)), masks)
            value = float(loss.detach())
            if not math.isfinite(value):
                raise TrainingError(
                    f"the training loss became {value} at epoch {epoch}, step {global_step + 1}; lower lr "
                    f"(now {config.lr:g}) or the CRF multipliers (kernel {config.crf_kernel_lr_mult:g}, "
                    f"compatibility {config.crf_compat_lr_mult:g})."
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            global_step += 1
            loss_sum += value
            pixel_batches += 1
            if show:
                bar.set_postfix(loss=f"{value:.4f}")  # type: ignore[union-attr]
        loss_sum, pixel_batches = _sum_across([loss_sum, pixel_batches], dist_info, device)
        _broadcast_buffers(model, dist_info)
        train_seconds = time.perf_counter() - t0

        record = {"epoch": epoch, "train_loss": loss_sum / max(pixel_batches, 1),
                  "lr": optimizer.param_groups[0]["lr"], "global_step": global_step}  # fmt: skip
        if _is_segmenter(model):
            crf = model.crf
            record["crf_spatial_weight_mean"] = float(crf.spatial_weights.detach().diagonal().mean())
            record["crf_bilateral_weight_mean"] = float(crf.bilateral_weights.detach().diagonal().mean())
        evaluate = val_set is not None and len(val_set) > 0  # type: ignore[arg-type]
        evaluate = evaluate and (epoch % config.eval_every == 0 or epoch == config.epochs)
        if evaluate:
            t1 = time.perf_counter()
            record.update(_evaluate(model, val_set, num_classes, config, device, dist_info, show))  # type: ignore
            record["val_seconds"] = time.perf_counter() - t1
        record["train_seconds"] = train_seconds
        record["seconds"] = time.perf_counter() - t0
        history.append(record)

        hashes = _gather(_state_hash(model), dist_info)
        if len(set(hashes)) > 1:
            raise TrainingError(f"the processes hold different models after epoch {epoch} (state hashes {hashes}).")
        rng_states = _gather(_rng_state(), dist_info)
        improved = evaluate and record.get("val_mean_iou") is not None and record["val_mean_iou"] > best_miou
        if improved:
            best_miou, best_epoch = record["val_mean_iou"], epoch
        if dist_info.is_main:
            append_line(metrics_path, json.dumps(record))  # one write() per record; see _read_metrics
            extra = {
                "stage": config.stage, "config": config.to_dict(), "epoch": epoch, "global_step": global_step,
                "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "rng_states": rng_states,
                "world_size": dist_info.world_size, "metrics": record, "state_hashes": hashes,
                "best_mean_iou": None if best_epoch is None else best_miou, "best_epoch": best_epoch,
            }  # fmt: skip
            common = dict(model_name=model_name, model_kwargs=model_kwargs, num_classes=num_classes,
                          class_names=class_names)  # fmt: skip
            save_checkpoint(last_path, model, **common, **extra)
            if improved:
                save_checkpoint(best_path, model, **common, **extra)
        if on_epoch is not None and dist_info.is_main:
            on_epoch(dict(record))
        if show:
            from tqdm.auto import tqdm

            val = f", val mIoU {record['val_mean_iou']:.4f}" if record.get("val_mean_iou") is not None else ""
            cnn = f" (CNN alone {record['val_mean_iou_cnn']:.4f})" if record.get("val_mean_iou_cnn") is not None else ""
            tqdm.write(f"epoch {epoch}/{config.epochs}: train loss {record['train_loss']:.4f}{val}{cnn}, "
                       f"{record['seconds']:.1f} s")  # fmt: skip
    if dist_info.enabled:
        import torch.distributed as dist

        dist.barrier()  # rank 0 has written the files before any process returns
    final_epoch = max(start_epoch, end_epoch)
    return {
        "model": model.eval(),
        "epoch": final_epoch,
        "completed": final_epoch >= config.epochs,
        **{k: v for k, v in record.items() if k != "epoch"},
        "best_mean_iou": None if best_epoch is None else best_miou,
        "best_epoch": best_epoch,
        "history": history,
        "state_hashes": hashes or [_state_hash(model)],
        "rank": dist_info.rank,
        "world_size": dist_info.world_size,
        "out_dir": str(out_dir),
        "config_path": str(config_path),
        "metrics_path": str(metrics_path),
        "last_checkpoint": str(last_path),
        "best_checkpoint": str(best_path) if best_path.exists() or best_epoch is not None else None,
    }

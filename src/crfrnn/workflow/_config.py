"""The settings of a training run: :class:`TrainConfig`, checked against its fields' real types.

A :class:`TrainConfig` is built in code, from YAML files with :func:`load_config` (later files and overrides
win), or from a mapping with :meth:`TrainConfig.from_dict`. Every value is checked (and a number that YAML 1.1
read as a string converted) by :func:`coerce_value` against the field's evaluated type hint, then against the
field's range.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import math
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional, Union, cast

import numpy as np

from crfrnn._utils.safe_load import bounded_yaml_loader

__all__ = [
    "DATASETS",
    "DEFAULT_MODELS",
    "IGNORE_INDEX",
    "LR_SCHEDULES",
    "OPTIMIZERS",
    "RESUMABLE_CHANGES",
    "STAGES",
    "TrainConfig",
    "coerce_fields",
    "coerce_value",
    "load_config",
    "plain",
]

IGNORE_INDEX = 255
STAGES: tuple[str, ...] = ("cnn", "crfrnn")
DATASETS: tuple[str, ...] = ("synthetic", "voc", "folder")
OPTIMIZERS: tuple[str, ...] = ("sgd", "adam")
LR_SCHEDULES: tuple[str, ...] = ("poly", "constant")

#: the model of each stage when ``model`` is not set (stage crfrnn may pick ``<init_from's model>_crfrnn``)
DEFAULT_MODELS: dict[str, str] = {"cnn": "small_fcn", "crfrnn": "small_fcn_crfrnn"}
#: Settings that may differ when a run is resumed (they do not change what is being trained).
RESUMABLE_CHANGES = frozenset(
    {
        "epochs",
        "workers",
        "device",
        "threads",
        "eval_every",
        "val_batch_size",
        "out_dir",
        "init_from",
        "voc_root",
        "sbd_root",
        "images",
        "masks",
        "val_images",
        "val_masks",
    }
)


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
        freeze_backbone: stage crfrnn: train the CRF alone on a fixed CNN (the backbone's parameters get no
            gradient and it stays in eval mode, so its normalisation statistics do not move either): the paper's
            ablation "CRF trained apart" against end-to-end training.
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
    freeze_backbone: bool = False
    seed: int = 0
    workers: int = 0
    device: str = "auto"
    threads: Optional[int] = None
    eval_every: int = 1

    def __post_init__(self) -> None:
        coerce_fields(self)
        for name, choices in (
            ("stage", STAGES),
            ("dataset", DATASETS),
            ("optimizer", OPTIMIZERS),
            ("lr_schedule", LR_SCHEDULES),
        ):
            if getattr(self, name) not in choices:
                raise ValueError(f"{name} must be one of {list(choices)}, got {getattr(self, name)!r}.")
        for name in (
            "image_size",
            "crop_size",
            "epochs",
            "batch_size",
            "eval_every",
            "num_classes",
            "val_batch_size",
            "threads",
        ):
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
        if self.freeze_backbone and self.stage != "crfrnn":
            raise ValueError(
                "freeze_backbone trains the CRF alone on a fixed CNN, so it needs stage 'crfrnn' (got stage "
                f"{self.stage!r}); a CNN trained with its weights frozen would not train at all."
            )
        if self.model is None and self.stage == "cnn":
            self.model = DEFAULT_MODELS["cnn"]

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
        return plain(dataclasses.asdict(self))

    def save(self, path: Union[str, os.PathLike]) -> Path:
        """Write the settings to a YAML file (atomically); :func:`load_config` reads it back."""
        import yaml

        from crfrnn._utils.files import atomic_write_text

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


def coerce_fields(instance: Any, *, skip: tuple[str, ...] = ()) -> None:
    """Check (and convert, see :func:`coerce_value`) every field of a configuration dataclass instance against
    its evaluated type hint, in place; the fields in ``skip`` are left to the class.
    """
    hints = _type_hints(cast(type, type(instance)))  # mypy: type[Any] is not Hashable
    for f in dataclasses.fields(instance):
        if f.name not in skip:
            value = coerce_value(f.name, getattr(instance, f.name), hints[f.name], owner=type(instance).__name__)
            setattr(instance, f.name, value)


def coerce_value(name: str, value: Any, hint: Any, *, owner: str = "TrainConfig") -> Any:
    """Check (and, for numbers given as strings by YAML 1.1, convert) one field value.

    ``hint`` is the field's evaluated type (from :func:`typing.get_type_hints`): ``bool``, ``int``, ``float``,
    ``str`` or ``dict``, optionally ``Optional[...]`` / ``... | None``. ``owner`` names the configuration class
    in the message about an annotation it cannot check.
    """
    base, optional = hint, False
    if typing.get_origin(hint) in _UNIONS:
        args = typing.get_args(hint)
        others = [a for a in args if a is not type(None)]
        optional = len(others) < len(args)
        base = others[0] if len(others) == 1 else None  # int | str: not one type to check against
    base = typing.get_origin(base) or base  # dict[str, Any] -> dict
    if base not in (bool, int, float, str, dict):
        raise _BadConfigValue(
            f"{name}: {owner} cannot check the annotation {hint!r}; use one of "
            "bool, int, float, str, dict, optionally with '| None'."
        )
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
            return plain(dict(value))
        raise _BadConfigValue(f"{name} must be a mapping of keyword arguments, got {value!r}.")
    raise AssertionError(f"unreachable: {base!r}")  # pragma: no cover - every base is one of the above


def plain(value: Any) -> Any:
    """Tuples to lists and numpy scalars to Python, recursively (for YAML/JSON)."""
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
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
        loaded = yaml.load(path.read_text(encoding="utf-8"), Loader=bounded_yaml_loader())  # noqa: S506 (a SafeLoader)
    except yaml.YAMLError as err:
        raise ValueError(f"cannot parse the YAML configuration '{path}': {err}".replace("\n", " ")) from err
    if loaded is None:
        return {}
    if not isinstance(loaded, Mapping):
        raise ValueError(
            f"the configuration '{path}' must be a YAML mapping of keys to values, got a {type(loaded).__name__}."
        )
    return {str(k).replace("-", "_"): v for k, v in loaded.items()}

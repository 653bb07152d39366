"""The settings of the paper's experiment (``crfrnn reproduce``): :class:`ReproduceConfig` and :data:`ABLATIONS`.

The experiment itself is :func:`crfrnn.workflow._experiment.reproduce`.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any, Optional

from crfrnn.workflow._config import coerce_fields

__all__ = ["ABLATIONS", "ReproduceConfig"]

#: the paper's ablations: name -> (row of the report, what the stage-2 run changes: CrfRnn keyword arguments
#: under ``crf_kwargs``, TrainConfig fields otherwise)
ABLATIONS: dict[str, tuple[str, dict[str, Any]]] = {
    "scalar_weights": ("crfrnn_scalar", {"crf_kwargs": {"kernel_weights": "scalar"}}),
    "symmetric_compatibility": ("crfrnn_symmetric", {"crf_kwargs": {"symmetric_compatibility": True}}),
    "crf_alone": ("crfrnn_crf_alone", {"freeze_backbone": True}),
}


@dataclass
class ReproduceConfig:
    """Settings of a reproduction; :meth:`quick` gives the reduced one.

    Attributes:
        out_dir: output folder.
        seeds: training seeds (initialisation, data order, augmentation); the data set is the same for all.
        num_train, num_val, num_test: images in the splits of :func:`crfrnn.data.synthetic_splits`.
        image_size: image side in pixels.
        data_seed: seed of the data set.
        width: channels of :class:`~crfrnn.models.SmallFCN`'s middle stage.
        batch_size: training batch size.
        cnn_epochs: stage-1 epochs (the CNN alone).
        cnn_lr: stage-1 learning rate (Adam, poly schedule).
        crf_epochs: stage-2 epochs (CNN + CRF-RNN end to end), also the control's extra epochs.
        crf_lr: stage-2 learning rate of every parameter (Adam, poly schedule).
        crf_kernel_lr_mult, crf_compat_lr_mult: learning-rate multipliers of the CRF's kernel weights and
            compatibility in stage 2 (the paper's are 10000 and 1000 under SGD with a summed loss; with Adam
            the step no longer scales with the gradient, see :mod:`crfrnn.workflow._loop`).
        train_iterations, test_iterations: mean-field iterations T in training and at test time.
        crf_kwargs: further :class:`crfrnn.CrfRnn` arguments (default: the released model's kernel widths
            160 / 3 / 3 and weights 3 / 5).
        search_grid: the offline dense CRF's grid (:func:`crfrnn.workflow.search_dense_crf`).
        search_images: validation images used by the search.
        grid_images: test images shown in ``grid.png``.
        ablations: which of :data:`ABLATIONS` to run (each one more stage-2 run per seed; none by default, so that
            a reproduction stays short; they can be added to a finished reproduction's folder later).
        workers: seeds trained at the same time, in separate processes (``None``: as many as there are CPU
            cores and seeds; ``1``: one after the other in this process).
        threads: CPU threads of each seed's process (``None``: the cores shared out between the workers, or
            torch's default with ``workers=1``).
        device: where the networks train (``"auto"``: CUDA if available, else the CPU; ``"cpu"``, ``"cuda"``,
            ``"cuda:N"``), as :attr:`TrainConfig.device`.
        preset: ``"full"`` or ``"quick"`` (set by :meth:`quick`; only the report's wording depends on it).
    """

    out_dir: str
    seeds: tuple[int, ...] = (0, 1, 2, 3, 4)
    num_train: int = 1000
    num_val: int = 100
    num_test: int = 200
    image_size: int = 96
    data_seed: int = 0
    width: int = 32
    batch_size: int = 8
    cnn_epochs: int = 40
    cnn_lr: float = 1e-3
    crf_epochs: int = 5
    crf_lr: float = 5e-4
    crf_kernel_lr_mult: float = 10.0
    crf_compat_lr_mult: float = 10.0
    train_iterations: int = 5
    test_iterations: int = 10
    crf_kwargs: dict = field(default_factory=dict)
    search_grid: dict = field(
        default_factory=lambda: {
            "bilateral_sxy": [3.0, 5.0, 10.0, 20.0, 80.0],
            "bilateral_srgb": [3.0, 5.0, 13.0],
            "bilateral_compat": [5.0, 10.0, 20.0],
            "gaussian_compat": [1.0, 3.0],
        }
    )
    search_images: int = 50
    grid_images: int = 6
    ablations: tuple[str, ...] = ()
    workers: Optional[int] = None
    threads: Optional[int] = None
    device: str = "auto"
    preset: str = "full"

    def __post_init__(self) -> None:
        self.seeds = tuple(int(s) for s in self.seeds)
        if not self.seeds or len(set(self.seeds)) != len(self.seeds) or min(self.seeds) < 0:
            raise ValueError(f"seeds must be distinct non-negative integers, got {self.seeds!r}.")
        if isinstance(self.ablations, str) or not all(isinstance(a, str) for a in self.ablations):
            raise TypeError(f"ablations must be a sequence of names from {list(ABLATIONS)}, got {self.ablations!r}.")
        self.ablations = tuple(self.ablations)
        unknown = [a for a in self.ablations if a not in ABLATIONS]
        if unknown or len(set(self.ablations)) != len(self.ablations):
            raise ValueError(f"ablations must be distinct names from {list(ABLATIONS)}, got {list(self.ablations)}.")
        coerce_fields(self, skip=("seeds", "ablations"))  # every other value against its type hint
        for name in (
            "num_train",
            "num_val",
            "num_test",
            "image_size",
            "width",
            "batch_size",
            "cnn_epochs",
            "crf_epochs",
            "train_iterations",
            "test_iterations",
            "search_images",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {getattr(self, name)!r}.")
        for name in ("cnn_lr", "crf_lr"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be a positive number, got {getattr(self, name)!r}.")
        for name in ("threads", "workers"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1 or None, got {getattr(self, name)}.")
        if self.preset not in ("full", "quick"):
            raise ValueError(f"preset must be 'full' or 'quick', got {self.preset!r}.")
        if self.grid_images < 0 or self.data_seed < 0:
            raise ValueError("grid_images and data_seed must be >= 0.")
        if not str(self.out_dir):
            raise ValueError("out_dir must name the output folder, got an empty string.")

    @classmethod
    def quick(cls, out_dir: str, **overrides: Any) -> "ReproduceConfig":
        """The reduced reproduction (one seed, less data, shorter training, a smaller search): a few minutes."""
        values: dict[str, Any] = dict(
            preset="quick",
            seeds=(0,),
            num_val=40,
            num_test=80,
            cnn_epochs=15,
            crf_epochs=2,
            search_images=20,
            search_grid={
                "bilateral_sxy": [3.0, 5.0, 20.0],
                "bilateral_srgb": [5.0, 13.0],
                "bilateral_compat": [10.0, 20.0],
                "gaussian_compat": [1.0],
            },
        )
        values.update(overrides)
        return cls(out_dir=out_dir, **values)

    def to_dict(self) -> dict[str, Any]:
        """The configuration as plain values (lists for the tuples), for YAML and JSON."""
        out = dataclasses.asdict(self)
        out["seeds"] = list(self.seeds)
        out["ablations"] = list(self.ablations)
        return out

    def resolved_workers(self) -> tuple[int, Optional[int]]:
        """``(processes, threads per process)`` this configuration runs with on this machine."""
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        workers = min(len(self.seeds), self.workers if self.workers is not None else cores)
        if workers <= 1:
            return 1, self.threads
        return workers, self.threads if self.threads is not None else max(1, cores // workers)

"""The training loop: :func:`train` runs a :class:`~crfrnn.workflow._config.TrainConfig` (see :mod:`crfrnn.workflow`
for the recipe, the files and distributed training).

One epoch is three steps, each a function returning what it did: :func:`train_epoch` (the optimiser steps,
an :class:`EpochResult`), :func:`crfrnn.workflow._validate.validation_metrics` (the validation record) and
:func:`save_epoch` (the checkpoints and the metrics line, a :class:`SaveResult`). :func:`train` builds the run
(:mod:`crfrnn.workflow._datasets`, :mod:`crfrnn.workflow._build`), restores a resumed one, and calls them epoch
after epoch.
"""

from __future__ import annotations

import dataclasses
import math
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Optional, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset
from torch.utils.data.distributed import DistributedSampler

from crfrnn.models.segmenter import CrfRnnSegmenter
from crfrnn.workflow._build import build_model, build_optimizer, build_scheduler, freeze_backbone
from crfrnn.workflow._config import IGNORE_INDEX, TrainConfig
from crfrnn.workflow._datasets import build_datasets, fill_caches
from crfrnn.workflow._distributed import (
    DistInfo,
    broadcast_buffers,
    gather,
    init_distributed,
    is_main_process,
    resolve_device,
    set_threads,
    state_hash,
    sum_across,
    thread_ceiling,
    threads_for_now,
)
from crfrnn.workflow._rundir import RunDir, RunLock
from crfrnn.workflow._seeding import derived_seed, rng_state, seed_all, seed_worker, set_rng_state
from crfrnn.workflow._validate import validation_metrics

__all__ = ["EpochResult", "SaveResult", "TrainingError", "save_epoch", "segmentation_loss", "train", "train_epoch"]


class TrainingError(RuntimeError):
    """A training run failed for a reason worth one line (a non-finite loss, processes out of sync)."""


def segmentation_loss(logits: Tensor, target: Tensor, ignore_index: int = IGNORE_INDEX) -> Tensor:
    """Mean cross-entropy over the pixels whose target is not ``ignore_index`` (0 if there are none).

    Args:
        logits: ``(B, L, H, W)`` scores.
        target: ``(B, H, W)`` int64 labels in ``[0, L)`` or ``ignore_index``.
        ignore_index: the label of pixels left out.

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


@dataclass
class _Run:
    """What one process holds while it trains."""

    config: TrainConfig
    dist: DistInfo
    device: torch.device
    show: bool
    run_dir: RunDir
    model: nn.Module
    net: nn.Module  # the model, wrapped in DistributedDataParallel when distributed
    model_name: str
    model_kwargs: dict[str, Any]
    num_classes: int
    class_names: Optional[list[str]]
    train_set: Dataset
    val_set: Optional[Dataset]
    optimizer: torch.optim.Optimizer
    scheduler: Any
    sampler: DistributedSampler
    start_epoch: int = 0
    global_step: int = 0
    best_miou: float = -math.inf
    best_epoch: Optional[int] = None
    history: list[dict[str, Any]] = field(default_factory=list)
    thread_ceiling: Optional[int] = None  # threads follow the free CPUs, up to this many (None: fixed)


@dataclass
class EpochResult:
    """What :func:`train_epoch` did: the mean loss over all processes' batches, the learning rate after the
    epoch, the optimiser steps so far and the seconds taken.
    """

    train_loss: float
    lr: float
    global_step: int
    seconds: float


@dataclass
class SaveResult:
    """What :func:`save_epoch` did: the model's state hash on every rank, and whether ``best.pt`` was written."""

    state_hashes: list[str]
    improved: bool


def _logits(output: Any) -> Tensor:
    return output[0] if isinstance(output, (tuple, list)) else output


def _batches(loader: Iterable, show: bool, desc: str) -> Iterable:
    if not show:
        return loader
    from tqdm.auto import tqdm

    return tqdm(loader, desc=desc, leave=False, dynamic_ncols=True)


def train(
    config: TrainConfig,
    *,
    progress: bool = True,
    resume: bool = False,
    stop_after: Optional[int] = None,
    on_epoch: Optional[Callable[[dict[str, Any]], None]] = None,
) -> dict[str, Any]:
    """Train the network described by ``config``; see :mod:`crfrnn.workflow` for the recipe and the files.

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
    if not isinstance(config, TrainConfig):
        raise TypeError(f"config must be a TrainConfig, got {type(config).__name__}; see crfrnn.workflow.load_config.")
    if stop_after is not None and stop_after < 1:
        raise ValueError(f"stop_after must be >= 1 or None, got {stop_after}.")
    run_dir = RunDir(Path(config.out_dir))
    if resume:
        run_dir.check_resumable()
    lock = RunLock.acquire(run_dir.path) if is_main_process() else None  # before anything is read or written
    try:
        ckpt = run_dir.resume_checkpoint(config, resume)
        cuda = config.device.startswith("cuda") or (config.device == "auto" and torch.cuda.is_available())
        dist_info = init_distributed("cuda" if cuda else "cpu")
        try:
            run = _setup(config, dist_info, run_dir, ckpt, progress)
            return _loop(run, ckpt, stop_after, on_epoch)
        finally:
            if dist_info.owns_group:
                import torch.distributed as dist

                dist.destroy_process_group()
    finally:
        if lock is not None:
            lock.release()


def _setup(
    config: TrainConfig, dist_info: DistInfo, run_dir: RunDir, ckpt: Optional[dict[str, Any]], progress: bool
) -> _Run:
    """Build (or, from ``ckpt``, rebuild) the model, the data, the optimiser and the schedule; restore or seed
    the random states; write ``config.yaml``.
    """
    device = resolve_device(config.device, local_rank=dist_info.local_rank if dist_info.enabled else None)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    set_threads(config.threads, dist_info)
    ceiling = thread_ceiling(config.threads, dist_info)
    threads_for_now(ceiling)  # the data and the model are built on the CPUs free now, as each epoch then runs

    train_set, val_set, num_classes, class_names = build_datasets(config)
    seed_all(config.seed)  # identical initialisation on every rank
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
        if config.stage == "crfrnn" and config.init_from is None and not config.model_kwargs.get("safe_start"):
            warnings.warn(
                "stage 'crfrnn' without init_from trains the CNN from scratch together with the CRF; the paper "
                "starts from a trained CNN (train stage 'cnn' first and pass its checkpoint as init_from), or "
                "gate the CRF in from zero with --model-kwargs '{safe_start: true}' (docs/training.md).",
                stacklevel=3,
            )
    config = dataclasses.replace(config, model=model_name)  # config.yaml names the model actually built
    if config.freeze_backbone:
        freeze_backbone(model)
    model.to(device).train()
    optimizer = build_optimizer(model, config)
    if config.workers > 0:  # fill the in-memory caches once here; forked workers share them
        fill_caches(train_set, val_set)

    sampler: DistributedSampler[int] = DistributedSampler(
        train_set, num_replicas=dist_info.world_size, rank=dist_info.rank, shuffle=True, seed=config.seed
    )
    steps_per_epoch = math.ceil(len(sampler) / config.batch_size)
    scheduler = build_scheduler(optimizer, config, steps_per_epoch * config.epochs)
    run = _Run(
        config,
        dist_info,
        device,
        progress and dist_info.is_main,
        run_dir,
        model,
        model,
        model_name,
        model_kwargs,
        num_classes,
        class_names,
        train_set,
        val_set,
        optimizer,
        scheduler,
        sampler,
    )
    run.thread_ceiling = ceiling

    if ckpt is not None:
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        run.start_epoch, run.global_step = int(ckpt["epoch"]), int(ckpt["global_step"])
        run.best_miou = ckpt["best_mean_iou"] if ckpt.get("best_mean_iou") is not None else -math.inf
        run.best_epoch = ckpt.get("best_epoch")
        states = ckpt.get("rng_states") or []
        if len(states) == dist_info.world_size:
            set_rng_state(states[dist_info.rank])
        else:
            warnings.warn(
                f"the run was saved by {len(states)} process(es) and is resumed by {dist_info.world_size}: random "
                "states are re-seeded, so the continuation is not bit-identical to an uninterrupted run.",
                stacklevel=3,
            )
            seed_all(derived_seed(config.seed, run.start_epoch, dist_info.rank))
    else:
        seed_all(derived_seed(config.seed, 0, dist_info.rank))  # dropout etc. differ between ranks

    if dist_info.is_main:
        run.history = run_dir.start(config, run.start_epoch if ckpt is not None else None)
    if dist_info.enabled:
        from torch.nn.parallel import DistributedDataParallel

        run.net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    return run


def train_epoch(run: _Run, epoch: int) -> EpochResult:
    """One pass over this process's shard of the training set (data order from ``(seed, epoch, rank)``)."""
    config, device = run.config, run.device
    t0 = time.perf_counter()
    run.sampler.set_epoch(epoch)
    generator = torch.Generator().manual_seed(derived_seed(config.seed, epoch, run.dist.rank))
    loader = DataLoader(
        run.train_set,
        batch_size=config.batch_size,
        sampler=run.sampler,
        num_workers=config.workers,
        worker_init_fn=seed_worker,
        generator=generator,  # worker seeds depend on (seed, epoch, rank) only
    )
    run.net.train()
    if config.freeze_backbone:  # a fixed CNN: no dropout, and batch norm keeps its statistics
        cast(nn.Module, run.model.backbone).eval()
    loss_sum, batches = 0.0, 0
    bar = _batches(loader, run.show, f"epoch {epoch}/{config.epochs}")
    for images, masks in bar:
        images, masks = images.to(device, non_blocking=True), masks.to(device, non_blocking=True)
        loss = segmentation_loss(_logits(run.net(images)), masks)
        value = float(loss.detach())
        if not math.isfinite(value):
            raise TrainingError(
                f"the training loss became {value} at epoch {epoch}, step {run.global_step + 1}; lower lr "
                f"(now {config.lr:g}) or the CRF multipliers (kernel {config.crf_kernel_lr_mult:g}, "
                f"compatibility {config.crf_compat_lr_mult:g})."
            )
        run.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        run.optimizer.step()
        run.scheduler.step()
        run.global_step += 1
        loss_sum += value
        batches += 1
        if run.show:
            bar.set_postfix(loss=f"{value:.4f}")  # type: ignore[attr-defined]
    total_loss, total_batches = sum_across([loss_sum, batches], run.dist, device)
    broadcast_buffers(run.model, run.dist)
    return EpochResult(
        total_loss / max(total_batches, 1),
        run.optimizer.param_groups[0]["lr"],
        run.global_step,
        time.perf_counter() - t0,
    )


def save_epoch(run: _Run, epoch: int, record: dict[str, Any], validated: bool) -> SaveResult:
    """Check that the processes agree, note a new best, and (rank 0) append the record and write the checkpoints."""
    hashes = gather(state_hash(run.model), run.dist)
    if len(set(hashes)) > 1:
        raise TrainingError(f"the processes hold different models after epoch {epoch} (state hashes {hashes}).")
    rng_states = gather(rng_state(), run.dist)
    improved = validated and record.get("val_mean_iou") is not None and record["val_mean_iou"] > run.best_miou
    if improved:
        run.best_miou, run.best_epoch = record["val_mean_iou"], epoch
    if run.dist.is_main:
        config = run.config
        run.run_dir.append_metrics(record)
        run.run_dir.save_checkpoints(
            run.model,
            best=improved,
            model_name=run.model_name,
            model_kwargs=run.model_kwargs,
            num_classes=run.num_classes,
            class_names=run.class_names,
            stage=config.stage,
            config=config.to_dict(),
            epoch=epoch,
            global_step=run.global_step,
            optimizer=run.optimizer.state_dict(),
            scheduler=run.scheduler.state_dict(),
            rng_states=rng_states,
            world_size=run.dist.world_size,
            metrics=record,
            state_hashes=hashes,
            best_mean_iou=None if run.best_epoch is None else run.best_miou,
            best_epoch=run.best_epoch,
        )
    return SaveResult(hashes, improved)


def _loop(
    run: _Run,
    ckpt: Optional[dict[str, Any]],
    stop_after: Optional[int],
    on_epoch: Optional[Callable[[dict[str, Any]], None]],
) -> dict[str, Any]:
    config, model = run.config, run.model
    end_epoch = config.epochs if stop_after is None else min(config.epochs, stop_after)
    record: dict[str, Any] = dict(ckpt.get("metrics") or {}) if ckpt is not None else {}
    hashes: list[str] = []
    for epoch in range(run.start_epoch + 1, end_epoch + 1):
        t0 = time.perf_counter()
        threads_for_now(run.thread_ceiling)
        done = train_epoch(run, epoch)
        record = {"epoch": epoch, "train_loss": done.train_loss, "lr": done.lr, "global_step": done.global_step}
        if isinstance(model, CrfRnnSegmenter) and model.crf is not None and hasattr(model.crf, "kernel_weight_means"):
            means = model.crf.kernel_weight_means()
            record["crf_spatial_weight_mean"] = means["spatial"]
            record["crf_bilateral_weight_mean"] = means["bilateral"]
        validate = run.val_set is not None and len(run.val_set) > 0  # type: ignore[arg-type]
        validate = validate and (epoch % config.eval_every == 0 or epoch == config.epochs)
        if validate:
            assert run.val_set is not None  # validate only with a validation set
            t1 = time.perf_counter()
            record.update(
                validation_metrics(
                    model,
                    run.val_set,
                    num_classes=run.num_classes,
                    batch_size=config.val_batch_size or config.batch_size,
                    device=run.device,
                    workers=config.workers,
                    progress=run.show,
                )
            )
            record["val_seconds"] = time.perf_counter() - t1
        record["train_seconds"] = done.seconds
        record["seconds"] = time.perf_counter() - t0
        run.history.append(record)
        hashes = save_epoch(run, epoch, record, validate).state_hashes
        if on_epoch is not None and run.dist.is_main:
            on_epoch(dict(record))
        if run.show:
            from tqdm.auto import tqdm

            val = f", val mIoU {100 * record['val_mean_iou']:.2f}%" if record.get("val_mean_iou") is not None else ""
            cnn = (
                f" (CNN alone {100 * record['val_mean_iou_cnn']:.2f}%)"
                if record.get("val_mean_iou_cnn") is not None
                else ""
            )
            tqdm.write(
                f"epoch {epoch}/{config.epochs}: train loss {record['train_loss']:.4f}{val}{cnn}, "
                f"{record['seconds']:.1f} s"
            )
    if run.thread_ceiling is not None:
        torch.set_num_threads(run.thread_ceiling)  # as the caller had it
    if run.dist.enabled:
        import torch.distributed as dist

        dist.barrier()  # rank 0 has written the files before any process returns
    final_epoch = max(run.start_epoch, end_epoch)
    paths = run.run_dir
    return {
        "model": model.eval(),
        "epoch": final_epoch,
        "completed": final_epoch >= config.epochs,
        **{k: v for k, v in record.items() if k != "epoch"},
        "best_mean_iou": None if run.best_epoch is None else run.best_miou,
        "best_epoch": run.best_epoch,
        "history": run.history,
        "state_hashes": hashes or [state_hash(model)],
        "rank": run.dist.rank,
        "world_size": run.dist.world_size,
        "out_dir": str(paths.path),
        "config_path": str(paths.config_path),
        "metrics_path": str(paths.metrics_path),
        "last_checkpoint": str(paths.last_path),
        "best_checkpoint": str(paths.best_path) if paths.best_path.exists() or run.best_epoch is not None else None,
    }

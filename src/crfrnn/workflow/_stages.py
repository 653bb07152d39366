"""The stages of the paper's experiment for one seed: its training runs, the offline dense CRF's search and the
evaluation of every row (used by :func:`crfrnn.workflow._experiment.reproduce` and its worker processes).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence, cast

import torch

from crfrnn._utils.files import atomic_write_text
from crfrnn.crf import CrfRnn
from crfrnn.data import synthetic_splits
from crfrnn.io.checkpoint import load_model
from crfrnn.models.segmenter import CrfRnnSegmenter
from crfrnn.workflow._config import TrainConfig
from crfrnn.workflow._experiment_config import ABLATIONS, ReproduceConfig
from crfrnn.workflow._loop import train
from crfrnn.workflow._report import jsonable
from crfrnn.workflow._validate import evaluate, search_dense_crf

__all__ = [
    "checkpoint_key",
    "metrics_row",
    "run_seed",
    "run_stage",
    "search_stage",
    "splits",
    "stage1_checkpoint",
    "stage_config",
    "stage_keys",
    "train_config",
    "train_stages",
]


def train_config(config: ReproduceConfig, seed: int, name: str, **changes: Any) -> TrainConfig:
    """The :class:`~crfrnn.workflow._config.TrainConfig` of seed ``seed``'s run ``name``, with ``changes``."""
    base: dict[str, Any] = dict(
        out_dir=str(Path(config.out_dir) / f"seed{seed}" / name),
        dataset="synthetic",
        num_train=config.num_train,
        num_val=config.num_val,
        image_size=config.image_size,
        crop_size=config.image_size,
        data_seed=config.data_seed,
        batch_size=config.batch_size,
        optimizer="adam",
        weight_decay=0.0,
        lr_schedule="poly",
        seed=seed,
        threads=config.threads,
        device=config.device,
        num_iterations=config.train_iterations,
        num_eval_iterations=config.test_iterations,
    )
    base.update(changes)
    return TrainConfig(**base)


def saved_seconds(run_dir: str) -> float:
    """The seconds of the epochs a run recorded in its ``metrics.jsonl`` (0 where there is none)."""
    total = 0.0
    try:
        with open(Path(run_dir) / "metrics.jsonl", encoding="utf-8") as fh:
            for line in fh:
                try:
                    total += float(json.loads(line).get("seconds", 0.0))
                except (ValueError, AttributeError, TypeError):
                    continue
    except OSError:
        return 0.0
    return total


def run_stage(run_config: TrainConfig, on_epoch: Callable[[dict], None]) -> Path:
    """Train (or continue, or skip when complete) one run; returns its best checkpoint."""
    out = Path(run_config.out_dir)
    resume = (out / "last.pt").is_file()
    result = train(run_config, progress=False, resume=resume, on_epoch=on_epoch)
    best = result["best_checkpoint"] or result["last_checkpoint"]
    return Path(best)


def metrics_row(result: Mapping[str, Any], method: str) -> dict[str, Any]:
    """The metrics of ``method`` that the report keeps, from :func:`~crfrnn.workflow._validate.evaluate`'s result."""
    m = result["methods"][method]
    keep = ("mean_iou", "pixel_accuracy", "mean_class_accuracy", "per_class_iou", "boundary", "seconds_per_image")
    return {k: m[k] for k in keep}


def stage_keys(config: ReproduceConfig) -> list[str]:
    """The training runs of one seed, in order: stage 1, then those that start from its weights."""
    return ["cnn", "crfrnn", "cnn_longer", *(f"ablation_{name}" for name in config.ablations)]


def checkpoint_key(key: str) -> str:
    """The report's row of the run ``key`` (an ablation's run is named after its row)."""
    return ABLATIONS[key[len("ablation_") :]][0] if key.startswith("ablation_") else key


def stage_config(config: ReproduceConfig, seed: int, key: str, cnn_ckpt: Optional[Path]) -> tuple[str, Any]:
    """``(progress title, TrainConfig)`` of one of :func:`stage_keys`."""
    if key == "cnn":
        return "(a) CNN", train_config(
            config,
            seed,
            key,
            stage="cnn",
            model="small_fcn",
            model_kwargs={"width": config.width},
            epochs=config.cnn_epochs,
            lr=config.cnn_lr,
        )
    if key == "cnn_longer":
        return "control", train_config(
            config,
            seed,
            key,
            stage="cnn",
            model="small_fcn",
            init_from=str(cnn_ckpt),
            model_kwargs={"width": config.width},
            epochs=config.crf_epochs,
            lr=config.crf_lr,
        )
    crf_kwargs, fields, title = dict(config.crf_kwargs), {}, "(c) CRF-RNN"
    if key.startswith("ablation_"):
        name = key[len("ablation_") :]
        change = ABLATIONS[name][1]
        crf_kwargs.update(change.get("crf_kwargs", {}))
        fields = {k: v for k, v in change.items() if k != "crf_kwargs"}
        title = f"ablation {name}"
    return title, train_config(
        config,
        seed,
        key,
        stage="crfrnn",
        model="small_fcn_crfrnn",
        init_from=str(cnn_ckpt),
        model_kwargs={"crf_kwargs": crf_kwargs},
        epochs=config.crf_epochs,
        lr=config.crf_lr,
        crf_kernel_lr_mult=config.crf_kernel_lr_mult,
        crf_compat_lr_mult=config.crf_compat_lr_mult,
        **fields,
    )


def stage1_checkpoint(config: ReproduceConfig, seed: int) -> Path:
    """The checkpoint of seed ``seed``'s finished stage-1 run, read from its folder (``train()`` would take the
    run's lock, which another process may hold for the same reason).
    """
    folder = Path(stage_config(config, seed, "cnn", None)[1].out_dir)
    found = [folder / name for name in ("best.pt", "last.pt") if (folder / name).is_file()]
    if not found:
        raise FileNotFoundError(f"seed {seed}'s stage-1 run '{folder}' has no checkpoint; train it first.")
    return found[0]


def search_stage(
    config: ReproduceConfig, seed: int, cnn_ckpt: Path, val: Any, num_classes: int, bar: Any, times: dict[str, float]
) -> tuple[dict, list]:
    """The offline dense CRF's parameters for seed ``seed`` (searched on the validation images, or read from the
    ``dense_crf_search.json`` an earlier search wrote) and the search's table; its seconds go to ``times``.
    """
    saved = Path(config.out_dir) / f"seed{seed}" / "dense_crf_search.json"
    stamp = [str(cnn_ckpt), os.stat(cnn_ckpt).st_mtime_ns]  # the search is of this very stage-1 checkpoint
    if saved.is_file():
        found = json.loads(saved.read_text(encoding="utf-8"))
        if (
            isinstance(found, dict)
            and found.get("cnn_checkpoint") == stamp
            and isinstance(found.get("params"), dict)
            and isinstance(found.get("table"), list)
        ):
            times.setdefault("search_dense_crf", float(found.get("seconds", 0.0)))
            return found["params"], found["table"]
    t0 = time.perf_counter()
    bar.set_description(f"seed {seed}: (b) dense CRF search")
    cnn, _ = load_model(cnn_ckpt)
    search_set = torch.utils.data.Subset(val, range(min(config.search_images, len(val))))
    params, table = search_dense_crf(cnn, search_set, num_classes=num_classes, grid=config.search_grid, progress=False)
    times["search_dense_crf"] = time.perf_counter() - t0
    atomic_write_text(
        saved,
        json.dumps(
            jsonable({"params": params, "table": table, "cnn_checkpoint": stamp, "seconds": times["search_dense_crf"]})
        ),
    )
    return params, table


def train_stages(
    config: ReproduceConfig, seed: int, keys: Sequence[str], bar: Any, times: dict[str, float]
) -> dict[str, Path]:
    """Train (or continue, or find complete) the runs ``keys`` of one seed, stage 1 first; their checkpoints by
    row (``"cnn"``, ``"crfrnn"``, ``"cnn_longer"``, ablation rows), with each run's seconds added to ``times``.
    """

    def advance(record: dict) -> None:
        bar.update(1)
        if record.get("val_mean_iou") is not None:
            bar.set_postfix(seed=seed, val_mIoU=f"{100 * record['val_mean_iou']:.1f}")

    checkpoints: dict[str, Path] = {}
    if "cnn" not in keys:  # trained by another process
        checkpoints["cnn"] = stage1_checkpoint(config, seed)
    for key in ["cnn", *(k for k in keys if k != "cnn")] if "cnn" in keys else keys:
        title, run_config = stage_config(config, seed, key, checkpoints.get("cnn"))
        t0 = time.perf_counter()
        bar.set_description(f"seed {seed}: {title}")
        checkpoints[checkpoint_key(key)] = run_stage(run_config, advance)
        if key in keys:  # the epochs' seconds the run saved, so that a resumed run counts its earlier epochs
            times[f"train_{key}"] = max(time.perf_counter() - t0, saved_seconds(run_config.out_dir))
    return checkpoints


def run_seed(
    config: ReproduceConfig,
    seed: int,
    data: tuple,
    bar: Any,
    log: Callable[[str], None],
    times: Optional[dict[str, float]] = None,
) -> dict:
    """One seed's record for ``results.json`` (its checkpoints under ``"checkpoints"``): trains what is not
    trained yet (``times``: the seconds of runs trained elsewhere), searches the dense CRF and evaluates.
    """
    _, val, test, num_classes = data
    trained: dict[str, float] = {}
    checkpoints = train_stages(config, seed, stage_keys(config), bar, trained)  # complete runs: found, not trained
    times = {**trained, **(times or {})}
    cnn_ckpt = checkpoints["cnn"]

    params, table = search_stage(config, seed, cnn_ckpt, val, num_classes, bar, times)
    cnn, _ = load_model(cnn_ckpt)

    t0 = time.perf_counter()
    bar.set_description(f"seed {seed}: evaluate")
    kw = dict(num_classes=num_classes, progress=False)

    def crf_row(model: Any) -> dict:
        return metrics_row(evaluate(model, test, methods=("crfrnn",), **kw), "crfrnn")

    base = evaluate(cnn, test, methods=("cnn", "cnn+densecrf"), dense_crf_params=params, **kw)
    rows = {"cnn": metrics_row(base, "cnn"), "cnn+densecrf": metrics_row(base, "cnn+densecrf")}
    crfrnn, _ = load_model(checkpoints["crfrnn"])
    crf = cast(CrfRnn, crfrnn.crf)  # a CRF-RNN checkpoint
    rows["crfrnn"] = crf_row(crfrnn)
    crf.num_eval_iterations = config.train_iterations
    rows["crfrnn_t5"] = crf_row(crfrnn)
    crf.num_eval_iterations = config.test_iterations
    longer = load_model(checkpoints["cnn_longer"])[0]
    rows["cnn_longer"] = metrics_row(evaluate(longer, test, methods=("cnn",), **kw), "cnn")
    untrained = CrfRnnSegmenter(
        cnn,
        CrfRnn(
            num_classes,
            num_iterations=config.train_iterations,
            num_eval_iterations=config.test_iterations,
            **config.crf_kwargs,
        ),
    )
    rows["crfrnn_untrained"] = crf_row(untrained)
    for name in config.ablations:
        row = ABLATIONS[name][0]
        rows[row] = crf_row(load_model(checkpoints[row])[0])
    times["evaluate"] = time.perf_counter() - t0

    means = crf.kernel_weight_means()
    learned = {
        "spatial_weight_diagonal_mean": means["spatial"],
        "bilateral_weight_diagonal_mean": means["bilateral"],
        "compatibility_asymmetry": float((crf.compatibility - crf.compatibility.t()).detach().abs().max()),
    }
    log(
        f"seed {seed}: mIoU (a) {100 * rows['cnn']['mean_iou']:.2f}  (b) {100 * rows['cnn+densecrf']['mean_iou']:.2f}  "
        f"(c) {100 * rows['crfrnn']['mean_iou']:.2f}  [{sum(times.values()):.0f} s]"
    )
    return {
        "seed": seed,
        "rows": rows,
        "dense_crf_params": params,
        "dense_crf_search": table,
        "crf_learned": learned,
        "seconds": times,
        "threads": torch.get_num_threads(),
        "checkpoints": {k: str(v) for k, v in checkpoints.items()},
    }


def splits(config: ReproduceConfig) -> tuple:
    """``(train, val, test, num_classes)``: the synthetic data set of ``config``."""
    train_set, val, test = synthetic_splits(
        config.data_seed,
        num_train=config.num_train,
        num_val=config.num_val,
        num_test=config.num_test,
        size=config.image_size,
    )
    return train_set, val, test, train_set.num_classes

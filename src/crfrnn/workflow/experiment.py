"""Reproducing the claims of the CRF-RNN paper at CPU scale (``crfrnn reproduce``, the project's main job).

The paper (Zheng et al., ICCV 2015, Table 1) compares, on the same images:

(a) the CNN alone (FCN-8s);
(b) the same CNN followed by an offline dense CRF whose parameters were chosen on validation data;
(c) CNN + CRF-RNN trained end to end from (a), trained with T = 5 mean-field iterations and tested with T = 10;

and claims (b) > (a), (c) > (b), with the largest gains near object boundaries, and a small gain from testing
with T = 10 rather than T = 5. :func:`reproduce` runs that experiment on the built-in procedural data set
(:class:`crfrnn.data.SyntheticShapes`) with the small stride-8 network (:class:`crfrnn.models.SmallFCN`) in
place of FCN-8s, for several training seeds, and writes a report. For each seed:

1. train the CNN alone (stage 1; :func:`crfrnn.training.train`);
2. grid-search the offline dense CRF's parameters on the validation split (:func:`search_dense_crf`);
3. train CNN + CRF-RNN end to end from the stage-1 weights (stage 2, the paper's recipe);
4. two controls: the stage-1 CNN trained further for as many epochs as stage 2, with the same optimiser
   (does the gain come from the extra training alone?), and the stage-1 CNN with a CRF-RNN head at its
   initial parameters, not trained (does it come from the head without training?);
5. on request (``ablations``), the paper's ablations (:data:`ABLATIONS`), each a stage-2 run from the same
   stage-1 weights with one thing changed: one scalar weight per kernel instead of per-class ``L x L`` weights,
   a symmetric compatibility instead of a free one, the CRF trained alone on the fixed CNN instead of end to end;
6. evaluate everything on the test split (mean IoU, accuracy, and accuracy in bands around boundaries).

The runs are shared out over worker processes (``workers``), each with its share of the CPU threads: on a 2-core
machine two single-threaded processes finish sooner than one on two threads (``benchmarks/bench_reproduce.py``).

Everything runs from a seed: the data set is generated on the fly (no downloads) and the results are the same
on every run on the same machine. Stages already finished in ``out_dir`` are not trained again, so an
interrupted reproduction continues where it stopped.

Files written to ``out_dir``: ``report.md`` (the tables, the claims checked with their numbers), ``results.json``
(every number, per seed and summarised), ``boundary.png`` (accuracy against band width), ``grid.png``
(predictions of every method on test images), ``config.yaml`` and per seed ``seed<N>/{cnn,crfrnn,cnn_longer}``
run directories (checkpoints and metrics logs of :func:`crfrnn.training.train`).
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence

import torch

from crfrnn._utils.files import atomic_write_text
from crfrnn.workflow.claims import check_claims, machine_description, plot_summary, report_markdown, summarize
from crfrnn.workflow.config import coerce_fields
from crfrnn.workflow.report import jsonable, save_method_grid

__all__ = ["ABLATIONS", "ReproduceConfig", "reproduce"]

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
            the step no longer scales with the gradient, see :mod:`crfrnn.training`).
        train_iterations, test_iterations: mean-field iterations T in training and at test time.
        crf_kwargs: further :class:`crfrnn.CrfRnn` arguments (default: the released model's kernel widths
            160 / 3 / 3 and weights 3 / 5).
        search_grid: the offline dense CRF's grid (:func:`crfrnn.evaluation.search_dense_crf`).
        search_images: validation images used by the search.
        grid_images: test images shown in ``grid.png``.
        ablations: which of :data:`ABLATIONS` to run (each one more stage-2 run per seed; none by default, so that
            five seeds fit in 25 minutes on 2 cores; they can be added to a finished reproduction's folder later).
        workers: seeds trained at the same time, in separate processes (``None``: as many as there are CPU
            cores and seeds; ``1``: one after the other in this process).
        threads: CPU threads of each seed's process (``None``: the cores shared out between the workers, or
            torch's default with ``workers=1``).
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
        for name in ("num_train", "num_val", "num_test", "image_size", "width", "batch_size", "cnn_epochs",
                     "crf_epochs", "train_iterations", "test_iterations", "search_images"):  # fmt: skip
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
            preset="quick", seeds=(0,), num_val=40, num_test=80, cnn_epochs=15, crf_epochs=2, search_images=20,
            search_grid={"bilateral_sxy": [3.0, 5.0, 20.0], "bilateral_srgb": [5.0, 13.0],
                         "bilateral_compat": [10.0, 20.0], "gaussian_compat": [1.0]},
        )  # fmt: skip
        values.update(overrides)
        return cls(out_dir=out_dir, **values)

    def to_dict(self) -> dict[str, Any]:
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


# ------------------------------------------------------------------------------------------------ stages
def _train_config(config: ReproduceConfig, seed: int, name: str, **changes: Any):
    from crfrnn.training import TrainConfig

    base = dict(
        out_dir=str(Path(config.out_dir) / f"seed{seed}" / name), dataset="synthetic", num_train=config.num_train,
        num_val=config.num_val, image_size=config.image_size, crop_size=config.image_size, data_seed=config.data_seed,
        batch_size=config.batch_size, optimizer="adam", weight_decay=0.0, lr_schedule="poly",
        seed=seed, threads=config.threads, num_iterations=config.train_iterations,
        num_eval_iterations=config.test_iterations,
    )  # fmt: skip
    base.update(changes)
    return TrainConfig(**base)


def _run_stage(train_config: Any, on_epoch: Callable[[dict], None]) -> Path:
    """Train (or continue, or skip when complete) one run; returns its best checkpoint."""
    from crfrnn.training import train

    out = Path(train_config.out_dir)
    resume = (out / "last.pt").is_file()
    result = train(train_config, progress=False, resume=resume, on_epoch=on_epoch)
    best = result["best_checkpoint"] or result["last_checkpoint"]
    return Path(best)


def _metrics(result: Mapping[str, Any], method: str) -> dict[str, Any]:
    m = result["methods"][method]
    keep = ("mean_iou", "pixel_accuracy", "mean_class_accuracy", "per_class_iou", "boundary", "seconds_per_image")
    return {k: m[k] for k in keep}


def _stage_keys(config: ReproduceConfig) -> list[str]:
    """The training runs of one seed, in order: stage 1, then those that start from its weights."""
    return ["cnn", "crfrnn", "cnn_longer", *(f"ablation_{name}" for name in config.ablations)]


def _checkpoint_key(key: str) -> str:
    return ABLATIONS[key[len("ablation_"):]][0] if key.startswith("ablation_") else key


def _stage_config(config: ReproduceConfig, seed: int, key: str, cnn_ckpt: Optional[Path]) -> tuple[str, Any]:
    """``(progress title, TrainConfig)`` of one of :func:`_stage_keys`."""
    if key == "cnn":
        return "(a) CNN", _train_config(config, seed, key, stage="cnn", model="small_fcn",
                                        model_kwargs={"width": config.width}, epochs=config.cnn_epochs,
                                        lr=config.cnn_lr)  # fmt: skip
    if key == "cnn_longer":
        return "control", _train_config(config, seed, key, stage="cnn", model="small_fcn", init_from=str(cnn_ckpt),
                                        model_kwargs={"width": config.width}, epochs=config.crf_epochs,
                                        lr=config.crf_lr)  # fmt: skip
    crf_kwargs, fields, title = dict(config.crf_kwargs), {}, "(c) CRF-RNN"
    if key.startswith("ablation_"):
        name = key[len("ablation_"):]
        change = ABLATIONS[name][1]
        crf_kwargs.update(change.get("crf_kwargs", {}))
        fields = {k: v for k, v in change.items() if k != "crf_kwargs"}
        title = f"ablation {name}"
    return title, _train_config(
        config, seed, key, stage="crfrnn", model="small_fcn_crfrnn", init_from=str(cnn_ckpt),
        model_kwargs={"crf_kwargs": crf_kwargs}, epochs=config.crf_epochs, lr=config.crf_lr,
        crf_kernel_lr_mult=config.crf_kernel_lr_mult, crf_compat_lr_mult=config.crf_compat_lr_mult, **fields,
    )  # fmt: skip


def _stage1_checkpoint(config: ReproduceConfig, seed: int) -> Path:
    """The checkpoint of seed ``seed``'s finished stage-1 run, read from its folder (``train()`` would take the
    run's lock, which another process may hold for the same reason)."""
    folder = Path(_stage_config(config, seed, "cnn", None)[1].out_dir)
    found = [folder / name for name in ("best.pt", "last.pt") if (folder / name).is_file()]
    if not found:
        raise FileNotFoundError(f"seed {seed}'s stage-1 run '{folder}' has no checkpoint; train it first.")
    return found[0]


def _search(config: ReproduceConfig, seed: int, cnn_ckpt: Path, val: Any, num_classes: int, bar: Any,
            times: dict[str, float]) -> tuple[dict, list]:  # fmt: skip
    """The offline dense CRF's parameters for seed ``seed`` (searched on the validation images, or read from the
    ``dense_crf_search.json`` an earlier search wrote) and the search's table; its seconds go to ``times``."""
    from crfrnn.io.checkpoint import load_model
    from crfrnn.evaluation import search_dense_crf

    saved = Path(config.out_dir) / f"seed{seed}" / "dense_crf_search.json"
    stamp = [str(cnn_ckpt), os.stat(cnn_ckpt).st_mtime_ns]  # the search is of this very stage-1 checkpoint
    if saved.is_file():
        found = json.loads(saved.read_text(encoding="utf-8"))
        if (isinstance(found, dict) and found.get("cnn_checkpoint") == stamp and isinstance(found.get("params"), dict)
                and isinstance(found.get("table"), list)):  # fmt: skip
            times.setdefault("search_dense_crf", float(found.get("seconds", 0.0)))
            return found["params"], found["table"]
    t0 = time.perf_counter()
    bar.set_description(f"seed {seed}: (b) dense CRF search")
    cnn, _ = load_model(cnn_ckpt)
    search_set = torch.utils.data.Subset(val, range(min(config.search_images, len(val))))
    params, table = search_dense_crf(cnn, search_set, num_classes=num_classes, grid=config.search_grid,
                                     progress=False)  # fmt: skip
    times["search_dense_crf"] = time.perf_counter() - t0
    atomic_write_text(saved, json.dumps(jsonable({"params": params, "table": table, "cnn_checkpoint": stamp,
                                                  "seconds": times["search_dense_crf"]})))  # fmt: skip
    return params, table


def _train_stages(config: ReproduceConfig, seed: int, keys: Sequence[str], bar: Any,
                  times: dict[str, float]) -> dict[str, Path]:  # fmt: skip
    """Train (or continue, or find complete) the runs ``keys`` of one seed, stage 1 first; their checkpoints by
    row (``"cnn"``, ``"crfrnn"``, ``"cnn_longer"``, ablation rows), with each run's seconds added to ``times``."""

    def advance(record: dict) -> None:
        bar.update(1)
        if record.get("val_mean_iou") is not None:
            bar.set_postfix(seed=seed, val_mIoU=f"{100 * record['val_mean_iou']:.1f}")

    checkpoints: dict[str, Path] = {}
    if "cnn" not in keys:  # trained by another process
        checkpoints["cnn"] = _stage1_checkpoint(config, seed)
    for key in ["cnn", *(k for k in keys if k != "cnn")] if "cnn" in keys else keys:
        title, train_config = _stage_config(config, seed, key, checkpoints.get("cnn"))
        t0 = time.perf_counter()
        bar.set_description(f"seed {seed}: {title}")
        checkpoints[_checkpoint_key(key)] = _run_stage(train_config, advance)
        if key in keys:
            times[f"train_{key}"] = time.perf_counter() - t0
    return checkpoints


def _run_seed(config: ReproduceConfig, seed: int, data: tuple, bar: Any, log: Callable[[str], None],
              times: Optional[dict[str, float]] = None) -> dict:  # fmt: skip
    """One seed's record for ``results.json`` (its checkpoints under ``"checkpoints"``): trains what is not
    trained yet (``times``: the seconds of runs trained elsewhere), searches the dense CRF and evaluates."""
    from crfrnn import CrfRnn
    from crfrnn.io.checkpoint import load_model
    from crfrnn.evaluation import evaluate
    from crfrnn.models import CrfRnnSegmenter

    _, val, test, num_classes = data
    trained: dict[str, float] = {}
    checkpoints = _train_stages(config, seed, _stage_keys(config), bar, trained)  # complete runs: found, not trained
    times = {**trained, **(times or {})}
    cnn_ckpt = checkpoints["cnn"]

    params, table = _search(config, seed, cnn_ckpt, val, num_classes, bar, times)
    cnn, _ = load_model(cnn_ckpt)

    t0 = time.perf_counter()
    bar.set_description(f"seed {seed}: evaluate")
    kw = dict(num_classes=num_classes, progress=False)

    def crf_row(model: Any) -> dict:
        return _metrics(evaluate(model, test, methods=("crfrnn",), **kw), "crfrnn")

    base = evaluate(cnn, test, methods=("cnn", "cnn+densecrf"), dense_crf_params=params, **kw)
    rows = {"cnn": _metrics(base, "cnn"), "cnn+densecrf": _metrics(base, "cnn+densecrf")}
    crfrnn, _ = load_model(checkpoints["crfrnn"])
    rows["crfrnn"] = crf_row(crfrnn)
    crfrnn.crf.num_eval_iterations = config.train_iterations
    rows["crfrnn_t5"] = crf_row(crfrnn)
    crfrnn.crf.num_eval_iterations = config.test_iterations
    rows["cnn_longer"] = _metrics(evaluate(load_model(checkpoints["cnn_longer"])[0], test, methods=("cnn",), **kw),
                                  "cnn")  # fmt: skip
    untrained = CrfRnnSegmenter(
        cnn, CrfRnn(num_classes, num_iterations=config.train_iterations,
                    num_eval_iterations=config.test_iterations, **config.crf_kwargs)
    )  # fmt: skip
    rows["crfrnn_untrained"] = crf_row(untrained)
    for name in config.ablations:
        row = ABLATIONS[name][0]
        rows[row] = crf_row(load_model(checkpoints[row])[0])
    times["evaluate"] = time.perf_counter() - t0

    crf = crfrnn.crf
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
    return {"seed": seed, "rows": rows, "dense_crf_params": params, "dense_crf_search": table, "crf_learned": learned,
            "seconds": times, "threads": torch.get_num_threads(),
            "checkpoints": {k: str(v) for k, v in checkpoints.items()}}  # fmt: skip


def _splits(config: ReproduceConfig) -> tuple:
    from crfrnn.data import synthetic_splits

    train_set, val, test = synthetic_splits(
        config.data_seed, num_train=config.num_train, num_val=config.num_val, num_test=config.num_test,
        size=config.image_size,
    )  # fmt: skip
    return train_set, val, test, train_set.num_classes


class _PipeBar:
    """What :func:`_run_seed` calls on its progress bar, written as JSON lines for the parent process."""

    def __init__(self, stream: Any, seed: int) -> None:
        self.stream, self.seed = stream, seed

    def send(self, kind: str, value: Any) -> None:
        self.stream.write(json.dumps({"kind": kind, "seed": self.seed, "value": jsonable(value)}) + "\n")
        self.stream.flush()

    def update(self, n: int = 1) -> None:
        self.send("update", n)

    def set_description(self, text: str) -> None:
        self.send("description", text)

    def set_postfix(self, **values: Any) -> None:
        self.send("postfix", values)


def _worker_main(argv: Optional[list[str]] = None) -> int:
    """``python -m crfrnn.workflow._seed_worker CONFIG_JSON THREADS``: a worker process of :func:`_run_parallel`.

    Reads jobs from stdin, one JSON line each: ``{"seed": N, "job": KEY}`` trains one of :func:`_stage_keys`,
    ``{"seed": N, "job": "evaluate", "times": {...}}`` gives the seed's record. Answers on stdout in JSON lines
    (progress, log lines, then ``"done"`` with the job's seconds, ``"record"`` or ``"error"``).
    """
    import sys

    from crfrnn.workflow.distributed import set_threads

    config_path, threads = (argv if argv is not None else sys.argv[1:])[:2]
    values = json.loads(Path(config_path).read_text(encoding="utf-8"))
    values["seeds"], values["ablations"] = tuple(values["seeds"]), tuple(values["ablations"])
    config = ReproduceConfig(**{**values, "threads": int(threads), "workers": 1})
    set_threads(int(threads), None)
    data = None
    for line in sys.stdin:
        job = json.loads(line)
        bar = _PipeBar(sys.stdout, int(job["seed"]))
        try:
            if job["job"] == "evaluate":
                data = data or _splits(config)
                record = _run_seed(config, bar.seed, data, bar, lambda text: bar.send("log", text), job["times"])
                bar.send("record", record)
            elif job["job"] == "search":
                data = data or _splits(config)
                times: dict[str, float] = {}
                _search(config, bar.seed, _stage1_checkpoint(config, bar.seed), data[1], data[3], bar, times)
                bar.send("done", times)
            else:
                times = {}
                _train_stages(config, bar.seed, [job["job"]], bar, times)
                bar.send("done", times)
        except Exception as err:  # reported to the parent, which raises it again
            bar.send("error", {"type": type(err).__name__, "message": str(err)})
    return 0


def _run_parallel(config: ReproduceConfig, workers: int, threads: int, bar: Any,
                  log: Callable[[str], None]) -> list[dict]:  # fmt: skip
    """Every seed's runs shared out over ``workers`` Python processes with ``threads`` threads each.

    The jobs are each seed's training runs (:func:`_stage_keys`; stage 1 first, the others once it is done), its
    dense CRF search (once stage 1 is done) and its evaluation (once everything else is); a free worker takes the first ready one, stage-1 runs first because everything waits on them,
    so no core idles while one seed finishes. Plain subprocesses rather than :mod:`multiprocessing`: a script that
    calls :func:`reproduce` needs no ``if __name__ == "__main__"`` guard, and no forked torch or numba thread
    pool is inherited. The workers' warnings go to ``worker<K>.log`` in ``out_dir``.
    """
    import collections
    import contextlib
    import queue as queue_module
    import subprocess
    import sys
    import threading

    import crfrnn
    from crfrnn.workflow.loop import TrainingError

    out = Path(config.out_dir)
    spec = out / "worker_config.json"
    atomic_write_text(spec, json.dumps(config.to_dict()))
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads),
               NUMBA_NUM_THREADS=str(threads))  # fmt: skip
    source = str(Path(crfrnn.__file__).resolve().parent.parent)  # this crfrnn, even when not installed
    env["PYTHONPATH"] = os.pathsep.join([source] + [p for p in [env.get("PYTHONPATH")] if p])

    stages = _stage_keys(config)
    todo = [(seed, key) for seed in config.seeds for key in [*stages, "search", "evaluate"]]
    rank = {"cnn": 0, "search": 1, "evaluate": 3}  # then the stage-2 runs (2); the search needs stage 1 only
    todo.sort(key=lambda job: (rank.get(job[1], 2), config.seeds.index(job[0])))
    finished: dict[int, dict[str, float]] = {seed: {} for seed in config.seeds}
    records: dict[int, dict] = {}
    status: dict[int, str] = {}
    errors: list[tuple[int, dict]] = []
    messages: "queue_module.Queue[tuple[int, Optional[dict]]]" = queue_module.Queue()

    def ready(job: tuple[int, str]) -> bool:
        seed, key = job
        done = finished[seed]
        if key == "cnn":
            return True
        if key == "evaluate":
            return all(f"train_{k}" in done for k in stages) and "search_dense_crf" in done
        return "train_cnn" in done

    def read(worker: int, stream: Any) -> None:
        for line in stream:
            try:
                messages.put((worker, json.loads(line)))
            except json.JSONDecodeError:  # something else printed on stdout
                messages.put((worker, {"kind": "log", "value": line.rstrip()}))
        messages.put((worker, None))  # the worker closed its stdout: it has ended

    def collect(lines: "collections.deque[str]", stream: Any) -> None:
        lines.extend(stream)  # the worker's warnings, written to worker<K>.log at the end

    procs, logs, readers, busy = [], [], [], {}
    try:
        for k in range(workers):
            proc = subprocess.Popen([sys.executable, "-m", "crfrnn.workflow._seed_worker", str(spec), str(threads)],
                                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                    env=env)  # fmt: skip
            logs.append(collections.deque(maxlen=10000))
            threading.Thread(target=read, args=(k, proc.stdout), daemon=True).start()
            readers.append(threading.Thread(target=collect, args=(logs[k], proc.stderr), daemon=True))
            readers[-1].start()
            procs.append(proc)
        while (todo or busy) and not errors:
            if not busy and not any(ready(j) for j in todo):  # cannot happen; never wait for nothing
                raise RuntimeError(f"reproduce: no job can start ({todo[:3]}...); this is a bug, please report it.")
            for k in range(workers):
                job = next((j for j in todo if ready(j)), None) if k not in busy else None
                if job is None:
                    continue
                todo.remove(job)
                busy[k] = job
                payload = {"seed": job[0], "job": job[1], "times": finished[job[0]]}
                try:
                    procs[k].stdin.write(json.dumps(payload) + "\n")  # type: ignore[union-attr]
                    procs[k].stdin.flush()  # type: ignore[union-attr]
                except BrokenPipeError:  # the worker has died; its reader reports how
                    pass
            worker, message = messages.get()
            if message is None:
                if worker in busy:
                    procs[worker].wait()
                    readers[worker].join(timeout=5)
                    tail = [line.rstrip() for line in list(logs[worker])[-5:]]
                    errors.append((busy[worker][0], {"type": "RuntimeError", "message": (
                        f"its worker process ended (exit code {procs[worker].wait()}): " + " / ".join(tail))}))
                continue
            kind, seed, value = message["kind"], message.get("seed"), message.get("value")
            if kind == "update":
                bar.update(value)
            elif kind == "log":
                log(value)
            elif kind == "done":
                finished[seed].update(value)
                busy.pop(worker)
            elif kind == "record":
                records[seed] = value
                busy.pop(worker)
            elif kind == "error":
                errors.append((seed, value))
            else:
                status[seed] = value if kind == "description" else f"seed {seed}: " + ", ".join(
                    f"{k} {v}" for k, v in value.items() if k != "seed")  # fmt: skip
                bar.set_description(" | ".join(status[s] for s in sorted(status) if s in
                                               {j[0] for j in busy.values()}))  # fmt: skip
    finally:
        for proc in procs:
            if proc.stdin is not None:
                with contextlib.suppress(OSError):  # a dead worker's pipe
                    proc.stdin.close()  # a worker ends when its stdin does
            if errors or todo or busy:
                proc.kill()  # interrupted or failed: stop the others too
            proc.wait()
        for k, (reader, lines) in enumerate(zip(readers, logs)):
            reader.join(timeout=5)
            atomic_write_text(out / f"worker{k}.log", "".join(lines))
        spec.unlink(missing_ok=True)
    if errors:
        seed, err = errors[0]
        kind = {"TrainingError": TrainingError, "ValueError": ValueError, "TypeError": TypeError}.get(err["type"],
                                                                                                     RuntimeError)
        raise kind(f"seed {seed}: {err['message']}")
    return [records[s] for s in config.seeds]


#: settings that may change when a reproduction is continued: how the work is spread over the CPU, and which
#: ablations run (each has runs of its own; the others are reused)
_RESUMABLE = ("workers", "threads", "ablations")


def reproduce(
    config: ReproduceConfig, *, progress: bool = True, log: Optional[Callable[[str], None]] = None
) -> dict[str, Any]:
    """Run the reproduction described by ``config`` and write its report (see the module docstring).

    Args:
        config: the settings (:class:`ReproduceConfig`, or ``ReproduceConfig.quick(out_dir)``).
        progress: show a progress bar over all training epochs.
        log: called with one line per finished seed and per file written (default: print).

    Returns:
        The content of ``results.json``: ``config``, ``per_seed`` (every row's metrics, the dense CRF search,
        the learned CRF parameters, seconds per stage), ``summary`` (:func:`summarize`), ``claims``
        (:func:`check_claims`), ``seconds`` and ``files``.
    """
    import yaml
    from tqdm.auto import tqdm

    from crfrnn.io.checkpoint import load_model

    if not isinstance(config, ReproduceConfig):
        raise TypeError(f"config must be a ReproduceConfig, got {type(config).__name__}.")
    out = Path(config.out_dir)
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"'{out}' exists and is not a directory; pass a folder for --out.")
    out.mkdir(parents=True, exist_ok=True)
    saved = out / "config.yaml"
    if saved.is_file():
        previous = yaml.safe_load(saved.read_text(encoding="utf-8")) or {}
        changed = sorted(k for k, v in config.to_dict().items() if k not in _RESUMABLE and previous.get(k) != v)
        if changed:
            raise ValueError(
                f"'{out}' holds a reproduction with other settings ({', '.join(changed)} differ); choose another "
                "--out, or delete that folder to start again."
            )
    atomic_write_text(saved, yaml.safe_dump(config.to_dict(), sort_keys=False))
    log = log or (lambda line: print(line, flush=True))
    workers, threads = config.resolved_workers()

    data = _splits(config)
    start = time.perf_counter()
    total_epochs = len(config.seeds) * (config.cnn_epochs + (2 + len(config.ablations)) * config.crf_epochs)
    with tqdm(total=total_epochs, unit="epoch", disable=not progress, dynamic_ncols=True) as bar:
        say = (lambda line: bar.write(line)) if progress else log
        say(f"{len(config.seeds)} seed(s) in {workers} process(es), {threads or torch.get_num_threads()} thread(s) each")
        if workers > 1:
            per_seed = _run_parallel(config, workers, threads, bar, say)
        else:
            if threads is not None:
                torch.set_num_threads(threads)
            per_seed = [_run_seed(config, seed, data, bar, say) for seed in config.seeds]
    seconds = time.perf_counter() - start

    summary = summarize(per_seed)
    claims = check_claims(summary, per_seed)
    files = {"report": str(out / "report.md"), "results": str(out / "results.json")}
    spread = len(per_seed) > 1
    try:
        plot_summary(summary, out / "boundary.png", "Accuracy near ground-truth boundaries" + (
            " (mean and range over seeds)" if spread else f" (one seed: {per_seed[0]['seed']})"))  # fmt: skip
        files["boundary"] = str(out / "boundary.png")
    except ImportError as err:
        log(f"boundary.png not written: matplotlib is needed ({err}); pip install 'crfrnn[repro]'")
    if config.grid_images:  # the first seed's networks
        first = per_seed[0]["checkpoints"]
        cnn, crfrnn = load_model(first["cnn"])[0], load_model(first["crfrnn"])[0]
        runs = [(cnn, ("cnn", "cnn+densecrf"), per_seed[0]["dense_crf_params"]), (crfrnn, ("crfrnn",), None)]
        save_method_grid(out / "grid.png", data[2], runs, config.grid_images)
        files["grid"] = str(out / "grid.png")
    machine = machine_description(workers, threads or torch.get_num_threads())
    results = {"config": config.to_dict(), "class_names": list(data[0].class_names), "per_seed": per_seed,
               "summary": summary, "claims": claims, "seconds": seconds, "machine": machine,
               "files": files}  # fmt: skip
    atomic_write_text(files["results"], json.dumps(jsonable(results), indent=2) + "\n")
    atomic_write_text(files["report"], report_markdown(config, summary, claims, per_seed, seconds, machine))
    return results


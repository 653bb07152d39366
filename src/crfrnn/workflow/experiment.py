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
5. evaluate everything on the test split (mean IoU, accuracy, and accuracy in bands around boundaries).

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
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Optional

import torch

from crfrnn._io import atomic_write_text
from crfrnn.workflow.claims import check_claims, plot_summary, report_markdown, summarize
from crfrnn.workflow.config import coerce_fields
from crfrnn.workflow.report import jsonable, save_method_grid

__all__ = ["ReproduceConfig", "reproduce"]


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
        threads: CPU threads (``None``: leave torch's default).
        preset: ``"full"`` or ``"quick"`` (set by :meth:`quick`; only the report's wording depends on it).
    """

    out_dir: str
    seeds: tuple[int, ...] = (0, 1, 2)
    num_train: int = 1000
    num_val: int = 100
    num_test: int = 200
    image_size: int = 96
    data_seed: int = 0
    width: int = 32
    batch_size: int = 8
    cnn_epochs: int = 40
    cnn_lr: float = 3e-3
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
    threads: Optional[int] = None
    preset: str = "full"

    def __post_init__(self) -> None:
        self.seeds = tuple(int(s) for s in self.seeds)
        if not self.seeds or len(set(self.seeds)) != len(self.seeds) or min(self.seeds) < 0:
            raise ValueError(f"seeds must be distinct non-negative integers, got {self.seeds!r}.")
        coerce_fields(self, skip=("seeds",))  # every other value against its type hint
        for name in ("num_train", "num_val", "num_test", "image_size", "width", "batch_size", "cnn_epochs",
                     "crf_epochs", "train_iterations", "test_iterations", "search_images"):  # fmt: skip
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {getattr(self, name)!r}.")
        for name in ("cnn_lr", "crf_lr"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be a positive number, got {getattr(self, name)!r}.")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"threads must be >= 1 or None, got {self.threads}.")
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
        return out


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


def _run_seed(
    config: ReproduceConfig, seed: int, data: tuple, bar: Any, log: Callable[[str], None]
) -> tuple[dict, tuple]:
    """One seed's record for ``results.json``, and ``(stage-1 CNN, CRF-RNN, dense CRF parameters)`` for pictures."""
    from crfrnn import CrfRnn
    from crfrnn.checkpoint import load_model
    from crfrnn.evaluation import evaluate, search_dense_crf
    from crfrnn.models import CrfRnnSegmenter

    _, val, test, num_classes = data
    times: dict[str, float] = {}

    def advance(record: dict) -> None:
        bar.update(1)
        if record.get("val_mean_iou") is not None:
            bar.set_postfix(seed=seed, val_mIoU=f"{100 * record['val_mean_iou']:.1f}")

    t0 = time.perf_counter()
    bar.set_description(f"seed {seed}: (a) CNN")
    cnn_ckpt = _run_stage(
        _train_config(config, seed, "cnn", stage="cnn", model="small_fcn", model_kwargs={"width": config.width},
                      epochs=config.cnn_epochs, lr=config.cnn_lr),
        advance,
    )  # fmt: skip
    times["train_cnn"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    bar.set_description(f"seed {seed}: (c) CRF-RNN")
    crf_ckpt = _run_stage(
        _train_config(config, seed, "crfrnn", stage="crfrnn", model="small_fcn_crfrnn", init_from=str(cnn_ckpt),
                      model_kwargs={"crf_kwargs": dict(config.crf_kwargs)}, epochs=config.crf_epochs, lr=config.crf_lr,
                      crf_kernel_lr_mult=config.crf_kernel_lr_mult, crf_compat_lr_mult=config.crf_compat_lr_mult),
        advance,
    )  # fmt: skip
    times["train_crfrnn"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    bar.set_description(f"seed {seed}: control")
    longer_ckpt = _run_stage(
        _train_config(config, seed, "cnn_longer", stage="cnn", model="small_fcn", init_from=str(cnn_ckpt),
                      model_kwargs={"width": config.width}, epochs=config.crf_epochs, lr=config.crf_lr),
        advance,
    )  # fmt: skip
    times["train_control"] = time.perf_counter() - t0

    cnn, _ = load_model(cnn_ckpt)
    crfrnn, _ = load_model(crf_ckpt)
    longer, _ = load_model(longer_ckpt)

    t0 = time.perf_counter()
    bar.set_description(f"seed {seed}: (b) dense CRF search")
    search_set = torch.utils.data.Subset(val, range(min(config.search_images, len(val))))
    params, table = search_dense_crf(cnn, search_set, num_classes=num_classes, grid=config.search_grid,
                                     progress=False)  # fmt: skip
    times["search_dense_crf"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    bar.set_description(f"seed {seed}: evaluate")
    kw = dict(num_classes=num_classes, progress=False)
    base = evaluate(cnn, test, methods=("cnn", "cnn+densecrf"), dense_crf_params=params, **kw)
    rows = {"cnn": _metrics(base, "cnn"), "cnn+densecrf": _metrics(base, "cnn+densecrf")}
    rows["crfrnn"] = _metrics(evaluate(crfrnn, test, methods=("crfrnn",), **kw), "crfrnn")
    crfrnn.crf.num_eval_iterations = config.train_iterations
    rows["crfrnn_t5"] = _metrics(evaluate(crfrnn, test, methods=("crfrnn",), **kw), "crfrnn")
    crfrnn.crf.num_eval_iterations = config.test_iterations
    rows["cnn_longer"] = _metrics(evaluate(longer, test, methods=("cnn",), **kw), "cnn")
    untrained = CrfRnnSegmenter(
        cnn, CrfRnn(num_classes, num_iterations=config.train_iterations,
                    num_eval_iterations=config.test_iterations, **config.crf_kwargs)
    )  # fmt: skip
    rows["crfrnn_untrained"] = _metrics(evaluate(untrained, test, methods=("crfrnn",), **kw), "crfrnn")
    times["evaluate"] = time.perf_counter() - t0

    crf = crfrnn.crf
    learned = {
        "spatial_weight_diagonal_mean": float(crf.spatial_weights.detach().diagonal().mean()),
        "bilateral_weight_diagonal_mean": float(crf.bilateral_weights.detach().diagonal().mean()),
        "compatibility_asymmetry": float((crf.compatibility - crf.compatibility.t()).detach().abs().max()),
    }
    log(
        f"seed {seed}: mIoU (a) {100 * rows['cnn']['mean_iou']:.2f}  (b) {100 * rows['cnn+densecrf']['mean_iou']:.2f}  "
        f"(c) {100 * rows['crfrnn']['mean_iou']:.2f}  [{sum(times.values()):.0f} s]"
    )
    return {"seed": seed, "rows": rows, "dense_crf_params": params, "dense_crf_search": table, "crf_learned": learned,
            "seconds": times, "checkpoints": {"cnn": str(cnn_ckpt), "crfrnn": str(crf_ckpt),
                                              "cnn_longer": str(longer_ckpt)}}, (cnn, crfrnn, params)  # fmt: skip

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

    from crfrnn.data import synthetic_splits

    if not isinstance(config, ReproduceConfig):
        raise TypeError(f"config must be a ReproduceConfig, got {type(config).__name__}.")
    out = Path(config.out_dir)
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"'{out}' exists and is not a directory; pass a folder for --out.")
    out.mkdir(parents=True, exist_ok=True)
    saved = out / "config.yaml"
    if saved.is_file():
        previous = yaml.safe_load(saved.read_text(encoding="utf-8")) or {}
        if previous != config.to_dict():
            changed = sorted(k for k in config.to_dict() if previous.get(k) != config.to_dict()[k])
            raise ValueError(
                f"'{out}' holds a reproduction with other settings ({', '.join(changed)} differ); choose another "
                "--out, or delete that folder to start again."
            )
    atomic_write_text(saved, yaml.safe_dump(config.to_dict(), sort_keys=False))
    log = log or (lambda line: print(line, flush=True))
    if config.threads is not None:
        torch.set_num_threads(config.threads)

    train_set, val, test = synthetic_splits(
        config.data_seed, num_train=config.num_train, num_val=config.num_val, num_test=config.num_test,
        size=config.image_size,
    )  # fmt: skip
    data = (train_set, val, test, train_set.num_classes)
    start = time.perf_counter()
    total_epochs = len(config.seeds) * (config.cnn_epochs + 2 * config.crf_epochs)
    per_seed, models = [], None
    with tqdm(total=total_epochs, unit="epoch", disable=not progress, dynamic_ncols=True) as bar:
        for seed in config.seeds:
            record, seed_models = _run_seed(config, seed, data, bar,
                                            lambda line: bar.write(line) if progress else log(line))  # fmt: skip
            per_seed.append(record)
            models = models or seed_models  # the pictures show the first seed's networks
    seconds = time.perf_counter() - start

    summary = summarize(per_seed)
    claims = check_claims(summary, per_seed)
    files = {"report": str(out / "report.md"), "results": str(out / "results.json")}
    try:
        plot_summary(summary, out / "boundary.png", "Accuracy near ground-truth boundaries (mean and range over seeds)")
        files["boundary"] = str(out / "boundary.png")
    except ImportError as err:
        log(f"boundary.png not written: matplotlib is needed ({err}); pip install 'crfrnn[repro]'")
    if config.grid_images:
        cnn, crfrnn, params = models  # type: ignore[misc]
        runs = [(cnn, ("cnn", "cnn+densecrf"), params), (crfrnn, ("crfrnn",), None)]
        save_method_grid(out / "grid.png", test, runs, config.grid_images)
        files["grid"] = str(out / "grid.png")
    results = {"config": config.to_dict(), "class_names": list(train_set.class_names), "per_seed": per_seed,
               "summary": summary, "claims": claims, "seconds": seconds, "files": files}  # fmt: skip
    atomic_write_text(files["results"], json.dumps(jsonable(results), indent=2) + "\n")
    atomic_write_text(files["report"], report_markdown(config, summary, claims, per_seed, seconds))
    return results

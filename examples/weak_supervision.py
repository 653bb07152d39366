"""Scribble supervision with the dense-CRF loss (Tang et al., ECCV 2018) on the built-in data set.

Three ways of training the small network (``crfrnn.models.create("small_fcn")``) on the same images of
:class:`crfrnn.data.SyntheticShapes`:

1. ``full``: the full masks, cross-entropy (the upper bound);
2. ``pce``: scribbles only (:func:`crfrnn.data.scribbles_from_mask`, a few percent of the pixels), partial
   cross-entropy (the loss over the labelled pixels; everything else is 255 = ignore);
3. ``pce+crf``: the same scribbles, partial cross-entropy plus ``lambda * dense_crf_loss`` of the softmax.

(3) starts from (2)'s weights, optimiser state and step count after ``--crf-from-epoch`` epochs and trains the
remaining epochs with the extra loss (the regulariser of an untrained network's near-uniform output carries
no information, and this halves the cost of the lattice); (2) and (3) therefore see the same data in the same
order for the same number of epochs, and differ only in the loss of the last epochs. ``lambda`` and the
kernel widths are chosen on the validation split with a separate tuning seed; the test split is used only
for the final numbers. The dense-CRF loss is computed at 1/``--crf-stride`` resolution (average-pooled
image and probabilities, ``spacing=stride`` so that ``theta_alpha`` stays in full-resolution pixels), as
Tang et al.'s code does at scale 0.5.

Reported: test mean IoU, mean and standard deviation over seeds, and the fraction of the gap (2) -> (1) that
(3) closes, ``(mIoU_3 - mIoU_2) / (mIoU_1 - mIoU_2)``. Results go to ``OUT/results.json``; the picture of
test images (image, scribbles, predictions of (2) and (3), ground truth) to ``--figure``::

    OMP_NUM_THREADS=1 NUMBA_NUM_THREADS=1 python examples/weak_supervision.py --out runs/weak \\
        --figure docs/images/scribbles.png
    python examples/weak_supervision.py --quick --out /tmp/weak       # smoke test, ~15 s
"""

from __future__ import annotations

import argparse
import copy
import itertools
import json
import math
import os
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

if __name__ == "__main__":  # one thread each for torch's and numba's pools (the machine is shared), before import
    for _name in ("OMP_NUM_THREADS", "NUMBA_NUM_THREADS"):
        os.environ.setdefault(_name, "1")

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from crfrnn.data import scribbles_from_mask, synthetic_splits
from crfrnn.losses import dense_crf_loss
from crfrnn.metrics import ConfusionMatrix
from crfrnn.models import create
from crfrnn.workflow import segmentation_loss

IGNORE = 255
SETTINGS = ("full", "pce", "pce+crf")
TITLES = {
    "full": "(1) full masks, CE",
    "pce": "(2) scribbles, partial CE",
    "pce+crf": "(3) scribbles, partial CE + dense-CRF loss",
}


@dataclass
class Config:
    """Every setting of the experiment (the defaults are the full run)."""

    seeds: Tuple[int, ...] = (0, 1, 2)
    tune_seed: int = 100
    data_seed: int = 0
    num_train: int = 160
    num_val: int = 50
    num_test: int = 100
    size: int = 64
    shapes: Tuple[str, ...] = ("box", "triangle", "ring")
    num_objects: Tuple[int, int] = (2, 4)
    epochs: int = 30
    crf_from_epoch: int = 20
    batch_size: int = 8
    lr: float = 3e-3
    width: int = 32
    fraction: float = 0.03
    stroke_width: int = 1
    crf_stride: int = 2
    lambdas: Tuple[float, ...] = (0.001, 0.003, 0.01)
    theta_alphas: Tuple[float, ...] = (20.0,)
    theta_betas: Tuple[float, ...] = (15.0,)
    figure_images: int = 4
    quick: bool = False

    @classmethod
    def quick_config(cls) -> "Config":
        return cls(
            seeds=(0,),
            num_train=16,
            num_val=8,
            num_test=8,
            size=48,
            epochs=2,
            crf_from_epoch=1,
            lambdas=(0.1,),
            figure_images=2,
            quick=True,
        )


# ------------------------------------------------------------------------------------------------ data
def make_data(cfg: Config) -> Dict[str, Tensor]:
    """All splits as tensors (generated once), plus the training scribbles."""
    train, val, test = synthetic_splits(
        cfg.data_seed,
        num_train=cfg.num_train,
        num_val=cfg.num_val,
        num_test=cfg.num_test,
        size=cfg.size,
        shapes=cfg.shapes,
        num_objects=cfg.num_objects,
    )
    out: Dict[str, Any] = {"num_classes": train.num_classes}
    for name, ds in (("train", train), ("val", val), ("test", test)):
        samples = [ds[i] for i in range(len(ds))]
        out[f"{name}_x"] = torch.stack([s[0] for s in samples])
        out[f"{name}_y"] = torch.stack([s[1] for s in samples])
    out["train_scribbles"] = torch.stack(
        [
            scribbles_from_mask(
                m, fraction=cfg.fraction, width=cfg.stroke_width, rng=np.random.default_rng((cfg.data_seed, i))
            )
            for i, m in enumerate(out["train_y"])
        ]
    )
    return out


# -------------------------------------------------------------------------------------------- training
@dataclass
class CrfTerm:
    weight: float
    theta_alpha: float
    theta_beta: float
    stride: int

    def __call__(self, logits: Tensor, images: Tensor) -> Tensor:
        probs = torch.softmax(logits, 1)
        if self.stride > 1:
            probs = F.avg_pool2d(probs, self.stride)
            images = F.avg_pool2d(images, self.stride)
        return self.weight * dense_crf_loss(
            probs, images, theta_alpha=self.theta_alpha, theta_beta=self.theta_beta, spacing=float(self.stride)
        )


def _poly(step: int, total: int) -> float:
    return max(0.0, 1.0 - step / total) ** 0.9


def train_epochs(
    cfg: Config,
    seed: int,
    images: Tensor,
    targets: Tensor,
    num_classes: int,
    *,
    first: int,
    last: int,
    state: Optional[dict] = None,
    crf: Optional[CrfTerm] = None,
    snapshot_at: Optional[int] = None,
) -> Tuple[torch.nn.Module, Optional[dict]]:
    """Epochs ``first..last-1`` of one run; epoch ``e``'s order, flips and dropout depend only on ``(seed, e)``.

    ``state`` (a snapshot) continues a run; ``snapshot_at`` returns the state after that many epochs.
    """
    torch.manual_seed(seed)
    model = create("small_fcn", num_classes=num_classes, width=cfg.width)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    steps_per_epoch = math.ceil(len(images) / cfg.batch_size)
    total = cfg.epochs * steps_per_epoch
    step = 0
    if state is not None:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        step = state["step"]
    snapshot = None
    model.train()
    for epoch in range(first, last):
        if snapshot_at is not None and epoch == snapshot_at:
            snapshot = copy.deepcopy({"model": model.state_dict(), "opt": opt.state_dict(), "step": step})
        g = torch.Generator().manual_seed(seed * 100_003 + epoch)
        torch.manual_seed(seed * 100_003 + epoch)  # dropout
        order = torch.randperm(len(images), generator=g)
        flips = torch.rand(len(images), generator=g) < 0.5
        for b in range(steps_per_epoch):
            idx = order[b * cfg.batch_size : (b + 1) * cfg.batch_size]
            x, y = images[idx].clone(), targets[idx].clone()
            f = flips[idx]
            x[f], y[f] = x[f].flip(-1), y[f].flip(-1)
            for group in opt.param_groups:
                group["lr"] = cfg.lr * _poly(step, total)
            logits = model(x)
            loss = segmentation_loss(logits, y, IGNORE)
            if crf is not None:
                loss = loss + crf(logits, x)
            if not torch.isfinite(loss):
                raise RuntimeError(f"non-finite loss at epoch {epoch}, step {step}")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
    if snapshot_at is not None and snapshot_at == last:
        snapshot = copy.deepcopy({"model": model.state_dict(), "opt": opt.state_dict(), "step": step})
    return model.eval(), snapshot


@torch.no_grad()
def predict(model: torch.nn.Module, images: Tensor, batch: int = 25) -> Tensor:
    model.eval()
    return torch.cat([model(images[i : i + batch]).argmax(1) for i in range(0, len(images), batch)])


def mean_iou(model: torch.nn.Module, images: Tensor, masks: Tensor, num_classes: int) -> float:
    cm = ConfusionMatrix(num_classes, ignore_index=IGNORE)
    cm.update(predict(model, images), masks)
    return float(cm.compute()["mean_iou"])


# ----------------------------------------------------------------------------------------- experiment
def _stats(values: Sequence[float]) -> Dict[str, float]:
    return {
        "mean": statistics.fmean(values),
        "sd": statistics.stdev(values) if len(values) > 1 else 0.0,
        "values": list(values),
    }


def _gap(full: float, pce: float, crf: float) -> float:
    return (crf - pce) / (full - pce) if full != pce else math.nan


def tune(cfg: Config, data: Dict[str, Tensor], log) -> Tuple[dict, List[dict]]:
    """Choose lambda and the widths on the validation split, with the tuning seed (not a test seed)."""
    c = data["num_classes"]
    model, snap = train_epochs(
        cfg,
        cfg.tune_seed,
        data["train_x"],
        data["train_scribbles"],
        c,
        first=0,
        last=cfg.epochs,
        snapshot_at=cfg.crf_from_epoch,
    )
    base = mean_iou(model, data["val_x"], data["val_y"], c)
    log(f"tuning (seed {cfg.tune_seed}, validation split): partial CE alone  val mIoU {base:.4f}")
    rows = [{"lambda": 0.0, "theta_alpha": None, "theta_beta": None, "val_miou": base}]
    for lam, ta, tb in itertools.product(cfg.lambdas, cfg.theta_alphas, cfg.theta_betas):
        crf = CrfTerm(lam, ta, tb, cfg.crf_stride)
        model, _ = train_epochs(
            cfg,
            cfg.tune_seed,
            data["train_x"],
            data["train_scribbles"],
            c,
            first=cfg.crf_from_epoch,
            last=cfg.epochs,
            state=snap,
            crf=crf,
        )
        v = mean_iou(model, data["val_x"], data["val_y"], c)
        rows.append({"lambda": lam, "theta_alpha": ta, "theta_beta": tb, "val_miou": v})
        log(f"  lambda {lam:<6g} theta_alpha {ta:<5g} theta_beta {tb:<5g}  val mIoU {v:.4f}")
    best = max(rows[1:], key=lambda r: (r["val_miou"], -r["lambda"]))
    return best, rows


def run(cfg: Config, out_dir: Path, figure: Optional[Path] = None, log=print) -> dict:
    torch.set_num_threads(1)
    t_wall, t_cpu = time.time(), time.process_time()
    data = make_data(cfg)
    c = data["num_classes"]
    labelled = float((data["train_scribbles"] != IGNORE).float().mean())
    log(
        f"data: {cfg.num_train}/{cfg.num_val}/{cfg.num_test} images of {cfg.size} px, {c} classes; scribbles "
        f"label {100 * labelled:.2f}% of the training pixels"
    )
    best, tuning = tune(cfg, data, log)
    log(
        f"chosen on validation: lambda {best['lambda']:g}, theta_alpha {best['theta_alpha']:g}, "
        f"theta_beta {best['theta_beta']:g}"
    )
    crf = CrfTerm(best["lambda"], best["theta_alpha"], best["theta_beta"], cfg.crf_stride)
    per_seed: List[dict] = []
    shown: Dict[str, torch.nn.Module] = {}
    for seed in cfg.seeds:
        t0 = time.time()
        m_full, _ = train_epochs(cfg, seed, data["train_x"], data["train_y"], c, first=0, last=cfg.epochs)
        m_pce, snap = train_epochs(
            cfg,
            seed,
            data["train_x"],
            data["train_scribbles"],
            c,
            first=0,
            last=cfg.epochs,
            snapshot_at=cfg.crf_from_epoch,
        )
        m_crf, _ = train_epochs(
            cfg,
            seed,
            data["train_x"],
            data["train_scribbles"],
            c,
            first=cfg.crf_from_epoch,
            last=cfg.epochs,
            state=snap,
            crf=crf,
        )
        row = {"seed": seed}
        for name, m in zip(SETTINGS, (m_full, m_pce, m_crf)):
            row[name] = mean_iou(m, data["test_x"], data["test_y"], c)
        row["gap_closed"] = _gap(row["full"], row["pce"], row["pce+crf"])
        row["seconds"] = time.time() - t0
        per_seed.append(row)
        log(
            f"seed {seed}: test mIoU full {row['full']:.4f}  pce {row['pce']:.4f}  pce+crf {row['pce+crf']:.4f}  "
            f"gap closed {row['gap_closed']:.2f}  ({row['seconds']:.0f} s)"
        )
        if not shown:
            shown = {"full": m_full, "pce": m_pce, "pce+crf": m_crf}
    summary = {name: _stats([r[name] for r in per_seed]) for name in SETTINGS}
    summary["gap_closed_of_means"] = _gap(summary["full"]["mean"], summary["pce"]["mean"], summary["pce+crf"]["mean"])
    summary["gap_closed_per_seed"] = _stats([r["gap_closed"] for r in per_seed])
    result = {
        "config": {**asdict(cfg), "seeds": list(cfg.seeds)},
        "labelled_fraction": labelled,
        "tuning": tuning,
        "chosen": best,
        "per_seed": per_seed,
        "summary": summary,
        "wall_seconds": time.time() - t_wall,
        "cpu_seconds": time.process_time() - t_cpu,
        "torch_threads": torch.get_num_threads(),
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "results.json").write_text(
        json.dumps(_finite(result), indent=2, allow_nan=False) + "\n", encoding="utf-8"
    )
    log("")
    log(table(result))
    if figure is not None:
        save_figure(figure, data, shown, cfg.figure_images)
        log(f"figure: {figure}")
    return result


def _finite(obj: Any) -> Any:
    """NaN (an undefined gap) as ``null``, so that the file is strict JSON."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def table(result: dict) -> str:
    s = result["summary"]
    n = len(result["per_seed"])
    lines = [f"| setting | test mean IoU (mean ± sd over {n} seed{'s' * (n > 1)}) |", "|---|---|"]
    for name in SETTINGS:
        lines.append(f"| {TITLES[name]} | {s[name]['mean']:.3f} ± {s[name]['sd']:.3f} |")
    g = s["gap_closed_per_seed"]
    lines.append(
        f"| gap (2) → (1) closed by (3) | {100 * s['gap_closed_of_means']:.0f}% of the means "
        f"(per seed {100 * g['mean']:.0f} ± {100 * g['sd']:.0f}%) |"
    )
    return "\n".join(lines)


def save_figure(path: Path, data: Dict[str, Tensor], models: Dict[str, torch.nn.Module], count: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from crfrnn.visualize import colorize_labels, label_overlay

    x, y = data["test_x"][:count], data["test_y"][:count]
    scribbles = torch.stack([scribbles_from_mask(m, rng=np.random.default_rng((1, i))) for i, m in enumerate(y)])
    preds = {k: predict(m, x) for k, m in models.items()}
    cols = [
        ("image", None),
        ("scribbles (2%-3% of pixels)", scribbles),
        ("(2) partial CE", preds["pce"]),
        ("(3) + dense-CRF loss", preds["pce+crf"]),
        ("(1) full masks", preds["full"]),
        ("ground truth", y),
    ]
    fig, axes = plt.subplots(count, len(cols), figsize=(2.0 * len(cols), 2.0 * count), squeeze=False)
    for i in range(count):
        for j, (title, labels) in enumerate(cols):
            ax = axes[i, j]
            if labels is None:
                ax.imshow(label_overlay(x[i], torch.full_like(y[i], IGNORE), 0.0))
            elif j == 1:  # strokes drawn thick enough to see, over the image
                thick = torch.from_numpy(_thicken(labels[i].numpy()))
                ax.imshow(label_overlay(x[i], thick, 1.0))
            else:
                ax.imshow(colorize_labels(labels[i]))
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(title, fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _thicken(labels: np.ndarray) -> np.ndarray:
    """Strokes dilated by one pixel for display only (labelled pixels win over unlabelled ones)."""
    out = labels.copy()
    h, w = labels.shape
    for dy, dx in itertools.product((-1, 0, 1), repeat=2):
        src = labels[max(dy, 0) : h + min(dy, 0), max(dx, 0) : w + min(dx, 0)]
        dst = out[max(-dy, 0) : h + min(-dy, 0), max(-dx, 0) : w + min(-dx, 0)]
        fill = (dst == IGNORE) & (src != IGNORE)
        dst[fill] = src[fill]
    return out


def _floats(text: str) -> Tuple[float, ...]:
    return tuple(float(v) for v in text.split(","))


def main(argv: Optional[Sequence[str]] = None) -> dict:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--out", default="runs/weak_supervision", help="output folder (results.json)")
    p.add_argument("--figure", default=None, help="PNG of test images: image, scribbles, predictions")
    p.add_argument("--quick", action="store_true", help="a tiny run for a smoke test")
    d = Config()
    p.add_argument("--seeds", default=None, help=f"comma-separated training seeds (default {d.seeds})")
    for name in (
        "tune_seed",
        "data_seed",
        "num_train",
        "num_val",
        "num_test",
        "size",
        "epochs",
        "crf_from_epoch",
        "batch_size",
        "width",
        "stroke_width",
        "crf_stride",
        "figure_images",
    ):
        p.add_argument("--" + name.replace("_", "-"), type=int, default=None, help=f"default {getattr(d, name)}")
    for name in ("lr", "fraction"):
        p.add_argument("--" + name, type=float, default=None, help=f"default {getattr(d, name)}")
    for name in ("lambdas", "theta_alphas", "theta_betas"):
        p.add_argument(
            "--" + name.replace("_", "-"),
            type=_floats,
            default=None,
            help=f"comma-separated grid searched on the validation split (default {getattr(d, name)})",
        )
    args = p.parse_args(argv)
    cfg = Config.quick_config() if args.quick else Config()
    for name, value in vars(args).items():
        if name in ("out", "figure", "quick") or value is None:
            continue
        setattr(cfg, name, tuple(int(s) for s in value.split(",")) if name == "seeds" else value)
    if not 0 <= cfg.crf_from_epoch < cfg.epochs:
        p.error("--crf-from-epoch must be in [0, epochs)")
    return run(cfg, Path(args.out), Path(args.figure) if args.figure else None)


if __name__ == "__main__":
    main()
    sys.exit(0)

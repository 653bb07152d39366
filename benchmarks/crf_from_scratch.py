"""A CRF-RNN head on a backbone trained from scratch: the trap, and what avoids it (docs/training.md).

Every variant trains ``small_fcn_crfrnn`` (or its backbone alone) on the built-in synthetic shapes with the same
seed, data, batches and optimiser (``crfrnn train``'s: SGD, momentum 0.9, learning rate 0.01, CRF kernel weights at
10x, constant rate; ``--optimizer adam`` for Adam), for the same number of steps, and is scored
by mean IoU on held-out images (the CRF at its evaluation ``T = 10``):

- ``cnn``: the backbone alone (``use_crf=False``): the baseline.
- ``crf_frozen``: the CRF head from the first step, its parameters frozen at their initial values (3, 5, Potts).
- ``crf_learned``: the same with the CRF's parameters learned too.
- ``warm_start``: the paper's recipe: the backbone alone for ``--cnn-fraction`` of the steps, then the CRF head
  end to end (learning rate ``--stage2-lr``, the same CRF multipliers) for the rest.
- ``safe_start``: ``CrfRnnSegmenter(..., safe_start=True)``: a gate initialised to 0 on the CRF's contribution.
- ``zero_weights``: the CRF's kernel weights initialised to 0 (``crf_kwargs={"spatial_weight": 0,
  "bilateral_weight": 0}``): also the backbone's output at the start, with no new parameter.

Besides the loss of the model's output, each logged step records the loss of the backbone's own logits (no
gradient), their scale (standard deviation over labels, mean over pixels) and, for the gated model, the gate.

    OMP_NUM_THREADS=1 NUMBA_NUM_THREADS=1 python benchmarks/crf_from_scratch.py \\
        --shapes box triangle ring --json crf_from_scratch.json \
        --plot docs/images/crf_from_scratch.png        # docs/training.md's table: about 4 CPU minutes
    python benchmarks/crf_from_scratch.py --shapes box triangle ring --variants cnn crf_frozen --steps 60
                                                       # the trap alone, under a minute
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _harness import metadata  # noqa: E402

VARIANTS = ("cnn", "crf_frozen", "crf_learned", "warm_start", "safe_start", "zero_weights")


def _data(num: int, size: int, shapes, first_index: int) -> tuple[torch.Tensor, torch.Tensor]:
    from crfrnn.data import SyntheticShapes

    ds = SyntheticShapes(num, size=size, seed=0, shapes=shapes, first_index=first_index)
    samples = [ds[i] for i in range(num)]
    return torch.stack([s[0] for s in samples]), torch.stack([s[1] for s in samples])


def _model(variant: str, num_classes: int, width: int, seed: int):
    from crfrnn.models import CrfRnnSegmenter, create

    torch.manual_seed(seed)  # the same backbone initialisation for every variant
    crf_kwargs = {"num_iterations": 5, "num_eval_iterations": 10}
    if variant == "zero_weights":
        crf_kwargs.update(spatial_weight=0.0, bilateral_weight=0.0)
    model = create("small_fcn_crfrnn", num_classes=num_classes, backbone_kwargs={"width": width}, crf_kwargs=crf_kwargs)
    if variant == "safe_start":
        model = CrfRnnSegmenter(model.backbone, model.crf, safe_start=True)
    if variant == "crf_frozen":
        model.crf.requires_grad_(False)
    return model


def _optimizer(model, args, lr: float) -> torch.optim.Optimizer:
    """``crfrnn train``'s optimiser (:func:`crfrnn.workflow.build_optimizer`): CNN group with weight decay, CRF
    kernel weights at ``lr * crf_kernel_lr_mult``, compatibility at ``lr * crf_compat_lr_mult``."""
    from crfrnn.workflow import TrainConfig, build_optimizer

    config = TrainConfig(
        out_dir="unused",
        stage="crfrnn",
        optimizer=args.optimizer,
        lr=lr,
        momentum=args.momentum,
        crf_kernel_lr_mult=args.crf_kernel_lr_mult,
        crf_compat_lr_mult=args.crf_compat_lr_mult,
    )
    return build_optimizer(model, config)


@torch.no_grad()
def _mean_iou(model, images, masks, num_classes: int, use_crf: bool, batch: int = 16) -> float:
    from crfrnn.metrics import confusion_matrix, metrics_from_confusion_matrix

    model.eval()
    total = torch.zeros(num_classes, num_classes, dtype=torch.int64)
    for i in range(0, len(images), batch):
        pred = model(images[i : i + batch], use_crf=use_crf).argmax(1)
        total += confusion_matrix(pred, masks[i : i + batch], num_classes)
    model.train()
    return float(metrics_from_confusion_matrix(total)["mean_iou"]) * 100


def run_variant(variant: str, args, train, val) -> dict:
    x_train, y_train = train
    num_classes = 1 + (len(args.shapes) if args.shapes else 6)
    model = _model(variant, num_classes, args.width, args.seed)
    stage1 = round(args.steps * args.cnn_fraction) if variant == "warm_start" else 0
    opt = _optimizer(model, args, args.lr)
    gen = torch.Generator().manual_seed(args.seed)  # the same batches for every variant
    log: dict[str, list] = {"step": [], "loss": [], "unary_loss": [], "unary_scale": [], "gate": []}
    start = time.perf_counter()
    model.train()
    for step in range(args.steps):
        if variant == "warm_start" and step == stage1:  # stage 2: the CRF head, end to end, its own rates
            opt = _optimizer(model, args, args.stage2_lr)
        idx = torch.randint(len(x_train), (args.batch_size,), generator=gen)
        image, target = x_train[idx], y_train[idx]
        use_crf = variant != "cnn" and step >= stage1
        out = model(image, use_crf=use_crf)
        loss = F.cross_entropy(out, target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % args.log_every == 0 or step == args.steps - 1:
            with torch.no_grad():
                unary = model.unary(image)
                log["step"].append(step)
                log["loss"].append(float(loss))
                log["unary_loss"].append(float(F.cross_entropy(unary, target)))
                log["unary_scale"].append(float(unary.std(1).mean()))
                log["gate"].append(None if model.crf_gate is None else model.crf_gate.item())
    seconds = time.perf_counter() - start
    x_val, y_val = val
    result = {
        "variant": variant,
        "seconds": round(seconds, 1),
        "log": log,
        "final_loss": sum(log["loss"][-5:]) / len(log["loss"][-5:]),
        "max_loss": max(log["loss"]),
        "miou_backbone": _mean_iou(model, x_val, y_val, num_classes, use_crf=False),
        "miou": _mean_iou(model, x_val, y_val, num_classes, use_crf=variant != "cnn"),
        "crf": {
            "spatial_weight_diag": model.crf.spatial_weights.diagonal().mean().item(),
            "bilateral_weight_diag": model.crf.bilateral_weights.diagonal().mean().item(),
        },
    }
    if model.crf_gate is not None:
        result["gate"] = model.crf_gate.item()
    return result


def _plot(results: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from crfrnn._utils.files import atomic_savefig

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), sharey=True)
    for r in results:
        for ax, key in zip(axes, ("loss", "unary_loss")):
            ax.plot(r["log"]["step"], r["log"][key], label=f"{r['variant']} ({r['miou']:.1f} mIoU)")
    axes[0].set_title("training loss of the model's output")
    axes[1].set_title("loss of the backbone's own logits")
    for ax in axes:
        ax.set_xlabel("step")
        ax.set_yscale("log")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("cross-entropy")
    axes[1].legend(fontsize=8)
    fig.suptitle("small_fcn_crfrnn trained from scratch (crf_from_scratch.py)", fontsize=10)
    fig.tight_layout()
    atomic_savefig(fig, path, dpi=100)
    plt.close(fig)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--num-train", type=int, default=400)
    p.add_argument("--num-val", type=int, default=64)
    p.add_argument("--width", type=int, default=16)
    p.add_argument("--shapes", nargs="+", default=None, help="SyntheticShapes classes (default: all six)")
    p.add_argument("--optimizer", choices=("sgd", "adam"), default="sgd", help="sgd (crfrnn train's default) or adam")
    p.add_argument("--lr", type=float, default=0.01, help="learning rate (0.01: crfrnn train's default)")
    p.add_argument("--momentum", type=float, default=0.9, help="SGD momentum / Adam beta1 (0.9)")
    p.add_argument("--crf-kernel-lr-mult", type=float, default=10.0, help="CRF kernel weights' multiplier (10)")
    p.add_argument("--crf-compat-lr-mult", type=float, default=1.0, help="CRF compatibility's multiplier (1)")
    p.add_argument("--cnn-fraction", type=float, default=2 / 3, help="warm_start: share of the steps in stage 1")
    p.add_argument("--stage2-lr", type=float, default=1e-3, help="warm_start: stage-2 learning rate (1e-3)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--log-every", type=int, default=10)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", metavar="FILE")
    p.add_argument("--plot", metavar="FILE.png")
    p.add_argument("--from-json", metavar="FILE", help="plot the results of an earlier --json run (trains nothing)")
    args = p.parse_args(argv)
    if args.from_json:
        if not args.plot:
            p.error("--from-json needs --plot")
        with open(args.from_json, encoding="utf-8") as fh:
            _plot(json.load(fh)["results"], args.plot)
        return 0
    torch.set_num_threads(args.threads)
    train = _data(args.num_train, args.image_size, args.shapes, 0)
    val = _data(args.num_val, args.image_size, args.shapes, 100_000)
    results = []
    print(f"{'variant':<13} {'first':>6} {'max':>6} {'final':>6} {'mIoU':>6} {'backbone':>8} {'time':>6}", flush=True)
    for variant in args.variants:
        r = run_variant(variant, args, train, val)
        results.append(r)
        extra = f"  gate {r['gate']:.3f}" if "gate" in r else ""
        print(
            f"{variant:<13} {r['log']['loss'][0]:6.2f} {r['max_loss']:6.2f} {r['final_loss']:6.2f} "
            f"{r['miou']:6.1f} {r['miou_backbone']:8.1f} {r['seconds']:5.0f}s{extra}",
            flush=True,
        )
    if args.json:
        from crfrnn._utils.files import atomic_write_text

        payload = {"meta": metadata(), "args": vars(args), "results": results}
        atomic_write_text(args.json, json.dumps(payload, indent=1) + "\n")
    if args.plot:
        _plot(results, args.plot)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

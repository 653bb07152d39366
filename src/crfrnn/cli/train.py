"""``crfrnn train``: train a segmentation CNN (stage ``cnn``) or CNN + CRF-RNN end to end (stage ``crfrnn``).

The two stages of the paper on the built-in synthetic data::

    crfrnn train --stage cnn --out runs/cnn --epochs 20
    crfrnn train --stage crfrnn --init-from runs/cnn/best.pt --out runs/crf --epochs 5 --lr 0.001

Settings come from the defaults of :class:`crfrnn.workflow.TrainConfig`, then ``--config FILE.yaml``, then the
flags (flags win). With ``--resume`` the run's own ``OUT/config.yaml`` replaces the defaults, so
``crfrnn train --out runs/crf --resume`` continues a run with its settings. The work is done by
:func:`crfrnn.workflow.train`; this module only parses arguments and reports failures.
"""

from __future__ import annotations

import argparse
import os
from typing import Any

from crfrnn.cli import (
    MAX_BATCH_SIZE,
    MAX_IMAGE_SIZE,
    MAX_ITERATIONS,
    OUTPUT_ERRNOS,
    CommandError,
    number_type,
    output_error,
)
from crfrnn.cli._flags import add_device_flag, resolve_device_flag

__all__ = ["add_parser", "run"]

_EPILOG = """\
files written to OUT:
  config.yaml    the resolved settings (reusable with --config)
  metrics.jsonl  one JSON object per epoch: epoch, train_loss, val_mean_iou, val_pixel_accuracy, seconds, ...
                 (the metrics as fractions in [0, 1]; the lines printed while training show them in %)
  last.pt        checkpoint after every epoch (atomic): weights, optimiser, schedule, epoch, random states
  best.pt        checkpoint with the best validation mean IoU
  Load a checkpoint with crfrnn.io.load_model(path).

data-parallel training (batch size is per process):
  torchrun --nproc_per_node=2 -m crfrnn train --out runs/cnn ...

exit codes:
  0 success; 1 training failed (e.g. non-finite loss); 2 bad usage or input.
"""


def _mapping(text: str) -> dict:
    import yaml

    from crfrnn._utils.safe_load import load_yaml

    try:
        value = load_yaml(text)
    except yaml.YAMLError:
        value = None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a YAML/JSON mapping such as '{{width: 16}}', got {text!r}")
    return value


def add_parser(subparsers: "argparse._SubParsersAction[argparse.ArgumentParser]") -> argparse.ArgumentParser:
    """Register ``crfrnn train`` and its options (every option defaults to the config file, then the library)."""
    from crfrnn.cli._choices import DATASETS, LR_SCHEDULES, OPTIMIZERS, STAGES

    S = argparse.SUPPRESS
    parser = subparsers.add_parser(
        "train",
        help="train a CNN (stage cnn) or CNN + CRF-RNN end to end (stage crfrnn)",
        description="Train a segmentation network: the CNN alone (stage cnn), then the CNN with a CRF-RNN head\n"
        "end to end from the stage-1 checkpoint (stage crfrnn). Defaults: crfrnn.workflow.TrainConfig.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        argument_default=S,
    )
    parser.add_argument("--config", metavar="FILE.yaml", help="YAML file of TrainConfig keys (flags override it)")
    parser.add_argument("--out", dest="out_dir", metavar="DIR", help="run directory (required unless in --config)")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out from its last.pt")
    parser.add_argument("--quiet", action="store_true", help="no progress bars or per-epoch lines")
    parser.add_argument("--stop-after", type=number_type(int, 1), metavar="N", help="return after epoch N (resumable)")

    m = parser.add_argument_group("model")
    m.add_argument("--stage", choices=STAGES, help="cnn (default) or crfrnn")
    m.add_argument("--model", metavar="NAME", help="crfrnn.models name (default small_fcn / small_fcn_crfrnn)")
    m.add_argument(
        "--model-kwargs",
        type=_mapping,
        metavar="YAML",
        help="builder keyword arguments, e.g. '{width: 16}' or '{crf_kwargs: {theta_alpha: 80}}'",
    )
    m.add_argument("--init-from", metavar="CKPT", help="stage-1 checkpoint whose weights start the backbone")
    m.add_argument(
        "--iterations",
        dest="num_iterations",
        type=number_type(int, 0, maximum=MAX_ITERATIONS),
        metavar="T",
        help="CRF iterations in training (5)",
    )
    m.add_argument(
        "--eval-iterations",
        dest="num_eval_iterations",
        type=number_type(int, 0, maximum=MAX_ITERATIONS),
        metavar="T",
        help="CRF iterations at evaluation (10)",
    )

    d = parser.add_argument_group("data")
    d.add_argument("--dataset", choices=DATASETS, help="synthetic (default), voc or folder")
    d.add_argument("--num-classes", type=number_type(int, 1), metavar="L", help="number of labels (folder: required)")
    d.add_argument("--num-train", type=number_type(int, 1), metavar="N", help="synthetic: training images (400)")
    d.add_argument("--num-val", type=number_type(int, 0), metavar="N", help="synthetic: validation images (100)")
    d.add_argument(
        "--image-size",
        type=number_type(int, 16, maximum=MAX_IMAGE_SIZE),
        metavar="PX",
        help="synthetic: image side (96)",
    )
    d.add_argument("--data-seed", type=number_type(int, 0), metavar="S", help="synthetic: data set seed (0)")
    d.add_argument("--voc-root", metavar="DIR", help="voc: folder containing VOCdevkit")
    d.add_argument("--sbd-root", metavar="DIR", help="voc: SBD benchmark_RELEASE; trains on train_aug")
    d.add_argument("--train-split", metavar="NAME", help="voc without --sbd-root: training split (train)")
    d.add_argument("--val-split", metavar="NAME", help="voc: validation split (val)")
    d.add_argument("--images", metavar="DIR", help="folder: training images")
    d.add_argument("--masks", metavar="DIR", help="folder: training label PNGs (same stems)")
    d.add_argument("--val-images", metavar="DIR", help="folder: validation images")
    d.add_argument("--val-masks", metavar="DIR", help="folder: validation label PNGs")
    d.add_argument("--crop-size", type=number_type(int, 1), metavar="PX", help="training crop side (96)")
    d.add_argument("--min-scale", type=number_type(float, 0, True), metavar="S", help="random scale, smallest (0.75)")
    d.add_argument("--max-scale", type=number_type(float, 0, True), metavar="S", help="random scale, largest (1.25)")
    d.add_argument("--no-flip", dest="hflip", action="store_false", help="no random horizontal flips")

    o = parser.add_argument_group("optimisation")
    o.add_argument("--epochs", type=number_type(int, 1), metavar="N", help="epochs (20)")
    o.add_argument(
        "--batch-size",
        type=number_type(int, 1, maximum=MAX_BATCH_SIZE),
        metavar="B",
        help="images per step per process (8)",
    )
    o.add_argument(
        "--val-batch-size",
        type=number_type(int, 1, maximum=MAX_BATCH_SIZE),
        metavar="B",
        help="validation batch (= --batch-size)",
    )
    o.add_argument("--optimizer", choices=OPTIMIZERS, help="sgd (default, with momentum) or adam")
    o.add_argument("--lr", type=number_type(float, 0, True), metavar="LR", help="base learning rate (0.01)")
    o.add_argument("--momentum", type=number_type(float, 0), metavar="M", help="SGD momentum / Adam beta1 (0.9)")
    o.add_argument("--weight-decay", type=number_type(float, 0), metavar="WD", help="CNN weight decay (5e-4)")
    o.add_argument("--lr-schedule", choices=LR_SCHEDULES, help="poly (default) or constant")
    o.add_argument("--poly-power", type=number_type(float, 0, True), metavar="P", help="poly schedule exponent (0.9)")
    o.add_argument(
        "--crf-kernel-lr-mult", type=number_type(float, 0), metavar="X", help="lr multiplier, CRF kernel weights (10)"
    )
    o.add_argument(
        "--crf-compat-lr-mult", type=number_type(float, 0), metavar="X", help="lr multiplier, CRF compatibility (1)"
    )
    o.add_argument("--eval-every", type=number_type(int, 1), metavar="N", help="validate every N epochs (1)")

    r = parser.add_argument_group("runtime")
    r.add_argument("--seed", type=number_type(int, 0), metavar="S", help="seed of init, shuffling, augmentation (0)")
    r.add_argument("--workers", type=number_type(int, 0), metavar="N", help="DataLoader workers (0)")
    add_device_flag(r, default=S)
    r.add_argument(
        "--threads",
        type=number_type(int, 1),
        metavar="N",
        help="CPU threads for torch and numba (default: the CPUs free at the start of each epoch, at most torch's "
        "threads; under torchrun OMP_NUM_THREADS)",
    )
    parser.set_defaults(func=run)
    return parser


def _config(args: argparse.Namespace) -> Any:
    """The TrainConfig: defaults < the run's config.yaml (with --resume) < --config < flags."""
    from crfrnn.workflow import TrainConfig, load_config
    from crfrnn.workflow._rundir import load_run_config

    flags = {k: v for k, v in vars(args).items() if k in TrainConfig.field_names()}
    config_file = getattr(args, "config", None)
    if not getattr(args, "resume", False):
        return load_config(config_file, **flags)
    out = flags.get("out_dir") or (load_config(config_file, **flags).out_dir if config_file else None)
    if out is None:
        raise CommandError("--resume needs --out DIR, the run directory to continue.", 2)
    return load_run_config(out, config_file, **flags)


def _one_line(err: BaseException) -> str:
    text = err.args[0] if isinstance(err, KeyError) and err.args else str(err)
    return " ".join(str(text).split())


def _kept(out_dir: Any) -> str:
    """What a failed run left in ``out_dir``: its whole files (every write is atomic)."""
    from pathlib import Path

    names = ("config.yaml", "metrics.jsonl", "last.pt", "best.pt")
    kept = [n for n in names if (Path(out_dir) / n).is_file()]
    if not kept:
        return f"Nothing was kept in {out_dir}."
    resume = " (continue with --resume)" if "last.pt" in kept else ""
    return f"Kept in {out_dir}: {', '.join(kept)}{resume}."


def run(args: argparse.Namespace) -> int:
    """Build the config, train, and print where the results are."""
    from crfrnn.workflow import TrainingError, train

    try:
        config = _config(args)
    except (FileNotFoundError, ValueError, TypeError, KeyError) as err:
        raise CommandError(_one_line(err), 2) from err
    quiet = getattr(args, "quiet", False)
    if not config.device.startswith("cuda") or "LOCAL_RANK" not in os.environ:  # torchrun picks each rank's GPU
        resolve_device_flag(config.device, "train", quiet=quiet)
    try:
        result = train(
            config,
            progress=not quiet,
            resume=getattr(args, "resume", False),
            stop_after=getattr(args, "stop_after", None),
        )
    except (FileNotFoundError, NotADirectoryError, ValueError, TypeError, KeyError) as err:
        raise CommandError(_one_line(err), 2) from err
    except TrainingError as err:
        raise CommandError(_one_line(err), 1) from err
    except OSError as err:
        if err.errno is None:  # the readers' own message (a corrupt, truncated or bomb image of the data set)
            raise CommandError(f"{_one_line(err)} {_kept(config.out_dir)}", 1) from err
        if err.errno not in OUTPUT_ERRNOS:
            raise
        raise CommandError(f"{output_error(err)} {_kept(config.out_dir)}", 1) from err
    if not quiet and result["rank"] == 0:
        best = result["best_mean_iou"]
        summary = f"best val mIoU {100 * best:.2f}% (epoch {result['best_epoch']}); " if best is not None else ""
        print(f"{summary}{result['epoch']}/{config.epochs} epochs done; checkpoints in {result['out_dir']}")
    return 0

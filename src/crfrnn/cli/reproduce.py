"""``crfrnn reproduce``: the paper's comparison (CNN, CNN + dense CRF, CRF-RNN) on the built-in data set.

    crfrnn reproduce                       # 5 seeds, into runs/reproduce
    crfrnn reproduce --ablations all       # and the paper's three ablations (reuses what is already trained)
    crfrnn reproduce --quick --out DIR     # 1 seed, less data: a first look in under 3 minutes

The work is done by :func:`crfrnn.workflow.reproduce`; this module parses arguments and prints the summary.
"""

from __future__ import annotations

import argparse
from typing import Any

from crfrnn.cli import CommandError, number_type
from crfrnn.cli._flags import add_device_flag, resolve_device_flag

__all__ = ["add_parser", "run"]

_EPILOG = """\
files written to OUT:
  report.md      the mean IoU table (mean and spread over seeds), the paper's claims checked, per-seed numbers
  results.json   every number: per seed, per method, per boundary band; the dense CRF search; timings
                 (metrics as fractions in [0, 1], the claims' gains in percentage points: its "units" key)
  boundary.png   accuracy against the width of the band around ground-truth boundaries
  grid.png       image, ground truth, CNN, CNN + dense CRF, CRF-RNN on test images
  seed<N>/       the training runs (checkpoints, metrics.jsonl), reused when the command is run again
  worker<K>.log  the warnings of each worker process (with --workers above 1)

exit codes:
  0 success (whether or not the claims hold: read report.md); 1 a run failed; 2 bad usage or input.
"""


def _seeds(text: str) -> tuple[int, ...]:
    try:
        seeds = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers such as 0,1,2, got {text!r}") from None
    if not seeds or min(seeds) < 0 or len(set(seeds)) != len(seeds):
        raise argparse.ArgumentTypeError(f"expected distinct non-negative integers such as 0,1,2, got {text!r}")
    return seeds


def _ablations(text: str) -> tuple[str, ...]:
    from crfrnn.workflow._experiment import ABLATIONS

    names = tuple(part.strip() for part in text.split(",") if part.strip())
    if text.strip().lower() == "none":
        return ()
    if text.strip().lower() == "all":
        return tuple(ABLATIONS)
    unknown = [n for n in names if n not in ABLATIONS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"expected 'all', 'none' or comma-separated names from {','.join(ABLATIONS)}, got {text!r}"
        )
    return names


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``crfrnn reproduce``."""
    parser = subparsers.add_parser(
        "reproduce",
        help="reproduce the paper's comparison on the built-in data set (the main job)",
        description=(
            "Train a small CNN, search an offline dense CRF's parameters on validation images, train CNN + "
            "CRF-RNN end to end, and compare them on test images over several seeds, with two controls "
            "(the CNN trained as long, an untrained CRF-RNN head), the T=5/T=10 ablation and, with --ablations, the "
            "paper's ablations (scalar kernel weights, symmetric compatibility, the CRF trained alone). Writes "
            "report.md, results.json, boundary.png and grid.png."
        ),
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--out",
        default=None,
        metavar="DIR",
        help="output folder (default: runs/reproduce, or runs/reproduce-quick with --quick)",
    )
    parser.add_argument("--quick", action="store_true", help="one seed, less data, shorter training (< 3 minutes)")
    parser.add_argument("--seeds", type=_seeds, metavar="S,S,...", help="training seeds (default 0,1,2,3,4; quick: 0)")
    parser.add_argument(
        "--ablations",
        type=_ablations,
        metavar="all|NAME,...",
        help="the paper's ablations, each one more stage-2 run per seed: all, or some of "
        "scalar_weights,symmetric_compatibility,crf_alone (default: none); may be added to a "
        "finished reproduction's --out",
    )
    parser.add_argument(
        "--workers",
        type=number_type(int, 1),
        metavar="N",
        help="processes training at the same time (default: one per CPU core)",
    )
    parser.add_argument("--cnn-epochs", type=number_type(int, 1), metavar="N", help="stage-1 epochs (40; quick: 15)")
    parser.add_argument("--crf-epochs", type=number_type(int, 1), metavar="N", help="stage-2 epochs (5; quick: 2)")
    parser.add_argument("--num-train", type=number_type(int, 1), metavar="N", help="training images (1000)")
    parser.add_argument("--num-test", type=number_type(int, 1), metavar="N", help="test images (200; quick: 80)")
    parser.add_argument(
        "--threads",
        type=number_type(int, 1),
        metavar="N",
        help="CPU threads of each process (default: the cores shared out between the processes)",
    )
    add_device_flag(parser)
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    """Build the configuration, run the reproduction and print the table."""
    from crfrnn.workflow import ReproduceConfig, TrainingError, reproduce

    resolve_device_flag(args.device, "reproduce")
    out = args.out or ("runs/reproduce-quick" if args.quick else "runs/reproduce")
    overrides = {
        k: getattr(args, k)
        for k in (
            "seeds",
            "cnn_epochs",
            "crf_epochs",
            "num_train",
            "num_test",
            "threads",
            "workers",
            "ablations",
            "device",
        )
        if getattr(args, k) is not None
    }
    try:
        config = ReproduceConfig.quick(out, **overrides) if args.quick else ReproduceConfig(out_dir=out, **overrides)
        results = reproduce(config, progress=not args.no_progress)
    except (ValueError, TypeError, FileNotFoundError, NotADirectoryError) as err:
        raise CommandError(" ".join(str(err).split()), 2) from err
    except TrainingError as err:
        raise CommandError(" ".join(str(err).split()), 1) from err
    report = results["files"]["report"]
    with open(report, encoding="utf-8") as fh:
        text = fh.read()
    print(text.split("\n## Per seed")[0].rstrip())
    print(f"\nwrote {', '.join(results['files'].values())}")
    return 0

"""``crfrnn fit``: fit a dense CRF's parameters to a network's outputs, for ``crfrnn refine --params``.

::

    crfrnn fit photos/ outputs/ masks/ -o crf.yaml
    crfrnn refine --images new_photos/ --probs new_outputs/ -o refined/ --params crf.yaml

Files are paired by stem across the three folders and read as ``crfrnn refine`` reads them
(:func:`crfrnn.io.read_rgb`, :func:`crfrnn.io.read_scores`); the fit is :func:`crfrnn.fit_crf` and the
file :func:`crfrnn.save_params`. This module only parses arguments, reads, reports and sets the exit code; the
readers' messages name their parameters, :data:`FLAGS` the flags that set them here.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Optional

from crfrnn.cli import MAX_ITERATIONS, CommandError, number_type
from crfrnn.cli._choices import LAYOUTS
from crfrnn.cli._flags import add_device_flag, name_flags, resolve_device_flag

__all__ = ["add_parser", "run"]

#: the readers' parameters (named in their messages) and the flags that set them; ``unknown`` is the
#: ground truth's ignored value
FLAGS = {
    "gt_prob": "--gt-prob",
    "key": "--key",
    "layout": "--layout",
    "logits": "--logits",
    "num_classes": "--num-labels",
    "resize": "--resize",
    "unknown": "--ignore-index",
}

_EPILOG = """\
inputs:
  IMAGES, PROBS and LABELS are folders whose files are paired by stem (a.jpg, a.npy, a.png). PROBS holds
  what crfrnn refine reads: .npy/.npz probabilities (L x H x W or H x W x L), raw scores with --logits, or
  label PNGs (trusted with --gt-prob). LABELS holds the ground truth as index/palette PNGs or 2-d integer
  .npy arrays; pixels labelled --ignore-index (255) are left out. Files without partners are skipped with a
  note; a file that cannot be read stops the fit (exit 2).

what is fitted:
  densecrf's Potts weights (--gaussian-compat, --bilateral-compat) and, unless --fixed-widths, its kernel
  widths (gaussian_sxy, bilateral_sxy, bilateral_srgb), by Adam on their logarithms through mean field, with
  the cross-entropy of the refined marginals on the training images. A share of the images (--val-fraction)
  is held out: the fit keeps the parameters with the lowest validation loss and stops after --patience
  epochs without improvement. Mean IoU and boundary accuracy on the held-out images are printed for the
  network alone, the starting parameters (densecrf's usual ones, or --init FILE) and the fitted ones.

output:
  -o FILE is a YAML file of crfrnn.dense_crf keyword arguments, for
  'crfrnn refine --params FILE' and 'crfrnn.dense_crf(image, probs, **crfrnn.load_params(FILE))'.
  --report FILE.json also writes the metrics, the split and the per-epoch history.

examples:
  crfrnn fit photos/ outputs/ masks/ -o crf.yaml
  crfrnn fit photos/ scores/ masks/ --logits --epochs 50 --val-fraction 0.2 -o crf.yaml --report fit.json
  crfrnn refine photo.jpg probs.npy --params crf.yaml -o labels.png

exit codes:
  0 success; 1 a file could not be written; 2 bad usage or input.
"""


def add_parser(subparsers: "argparse._SubParsersAction[argparse.ArgumentParser]") -> argparse.ArgumentParser:
    """Register ``crfrnn fit`` and its options."""
    parser = subparsers.add_parser(
        "fit",
        help="fit the dense CRF's parameters to a network's outputs and ground truth (for refine --params)",
        description="Fit a dense CRF's kernel weights and widths to a network's outputs and ground-truth masks by "
        "gradient descent through mean field, and write them as a parameter file for crfrnn refine --params.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("images", metavar="IMAGES", help="folder of images")
    parser.add_argument("probs", metavar="PROBS", help="folder of the network's outputs (.npy/.npz/.png), by stem")
    parser.add_argument("labels", metavar="LABELS", help="folder of ground-truth masks (.png/.npy), by stem")
    parser.add_argument("-o", "--output", required=True, metavar="FILE.yaml", help="parameter file to write")
    parser.add_argument("--report", metavar="FILE.json", help="also write metrics, split and history as JSON")

    inputs = parser.add_argument_group("how to read PROBS and LABELS (as crfrnn refine)")
    inputs.add_argument("--logits", action="store_true", help="the arrays are raw scores (logits), not probabilities")
    inputs.add_argument("--key", metavar="NAME", help="array to use from .npz archives (default: the first)")
    inputs.add_argument("--layout", choices=LAYOUTS, help="force labels first (lhw) or last (hwl)")
    inputs.add_argument("--resize", action="store_true", help="resize scores of another resolution to the image")
    inputs.add_argument(
        "--gt-prob",
        type=number_type(float, 0, True),
        metavar="P",
        help="PROBS given as label maps: probability that a label is right (default 0.5)",
    )
    inputs.add_argument(
        "--num-labels",
        type=number_type(int, 2),
        metavar="L",
        help="PROBS given as label maps: number of labels (default: largest label + 1)",
    )
    inputs.add_argument(
        "--ignore-index",
        type=number_type(int, 0),
        default=255,
        metavar="V",
        help="ground-truth value of pixels to leave out (default 255)",
    )

    fit = parser.add_argument_group("the fit")
    fit.add_argument(
        "--init",
        metavar="FILE.yaml",
        help="start from these parameters (default: densecrf's usual ones, see crfrnn refine --help)",
    )
    fit.add_argument(
        "--iterations",
        type=number_type(int, 1, maximum=MAX_ITERATIONS),
        metavar="N",
        help="mean-field iterations to fit with and write (default: --init's, else 5)",
    )
    fit.add_argument(
        "--epochs",
        type=number_type(int, 1),
        default=30,
        metavar="N",
        help="passes over the training images, one step per image (default 30)",
    )
    fit.add_argument(
        "--lr",
        type=number_type(float, 0, True),
        default=0.05,
        metavar="R",
        help="Adam's learning rate on the parameters' logarithms (default 0.05)",
    )
    fit.add_argument(
        "--val-fraction",
        type=number_type(float, 0, True),
        default=0.25,
        metavar="F",
        help="share of the images held out for validation (default 0.25, at least one image)",
    )
    fit.add_argument(
        "--patience",
        type=number_type(int, 1),
        default=5,
        metavar="N",
        help="stop after N epochs without a lower validation loss (default 5)",
    )
    fit.add_argument("--fixed-widths", action="store_true", help="fit the weights only; keep the widths as given")
    fit.add_argument(
        "--boundary-width",
        type=number_type(int, 0),
        default=3,
        metavar="PX",
        help="band half-width of the boundary accuracy (default 3)",
    )
    fit.add_argument(
        "--seed",
        type=number_type(int, 0),
        default=0,
        metavar="S",
        help="seed of the split and of the image order (default 0)",
    )
    add_device_flag(fit)
    fit.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)
    return parser


def _read(args: argparse.Namespace) -> tuple[list, list, list, list[str], bool]:
    """Images, scores and masks paired by stem; raises CommandError (2) for unreadable or mismatched files."""
    import numpy as np

    from crfrnn.io import default_memory_limit, format_bytes, pair_by_stem, read_rgb, read_scores

    for option, folder in (("IMAGES", args.images), ("PROBS", args.probs), ("LABELS", args.labels)):
        if not Path(folder).is_dir():
            raise CommandError(
                f"{option} must be a folder, but '{folder}' is {'a file' if Path(folder).exists() else 'missing'}."
            )
    try:
        with_scores, problems = pair_by_stem(args.images, args.probs)
        with_labels, label_problems = pair_by_stem(args.images, args.labels)
    except NotADirectoryError as err:
        raise CommandError(str(err)) from err
    masks = {stem: path for stem, _, path in with_labels}
    for name, reason in problems + [p for p in label_problems if "no scores file" not in p[1]]:
        print(f"crfrnn fit: skipped '{name}': {reason}", file=sys.stderr)
    missing = [(stem, image) for stem, image, _ in with_scores if stem not in masks]
    for _, skipped in missing:
        print(f"crfrnn fit: skipped '{skipped}': no mask of that stem in '{args.labels}'", file=sys.stderr)
    triples = [(stem, image, scores, masks[stem]) for stem, image, scores in with_scores if stem in masks]
    if len(triples) < 2:
        raise CommandError(
            f"found {len(triples)} image(s) with both scores and a mask; fitting needs at least 2 "
            "(some to fit on, some to validate on)."
        )
    limit = default_memory_limit()
    images, scores, labels, stems, kinds = [], [], [], [], set()
    need = 0
    num_labels = args.num_labels
    for stem, image_path, scores_path, mask_path in triples:
        try:
            image = read_rgb(image_path)
            size = image.shape[:2]
            s = read_scores(
                scores_path,
                size,
                key=args.key,
                layout=args.layout,
                logits=args.logits,
                gt_prob=args.gt_prob,
                num_classes=args.num_labels,
                resize=args.resize,
            )
            count = s.values.shape[0]
            num_labels = count if num_labels is None else num_labels
            if count != num_labels:
                raise ValueError(
                    f"'{scores_path}' holds scores for {count} labels but the first file for "
                    f"{num_labels}; every image needs the same labels."
                )
            mask = read_scores(mask_path, size, num_classes=max(count, 2), unknown=args.ignore_index).labels
        except MemoryError as err:
            raise CommandError(f"ran out of memory reading '{image_path}': {err or 'MemoryError'}", 1) from err
        except (OSError, ValueError, TypeError) as err:
            raise CommandError(name_flags(str(err), FLAGS)) from err
        need += int(size[0] * size[1]) * (12 * count + 24)
        if limit is not None and need > limit:
            raise CommandError(
                f"the images read so far need about {format_bytes(need)} of memory, more than "
                f"{format_bytes(limit)}; fit on fewer or smaller images."
            )
        kinds.add(s.is_logits)
        images.append(image)
        scores.append(s.values)
        labels.append(np.asarray(mask, dtype=np.int64))
        stems.append(stem)
        for note in s.notes:
            print(f"crfrnn fit: note: {name_flags(note, FLAGS)}", file=sys.stderr)
    if len(kinds) > 1:
        raise CommandError(
            "PROBS mixes label maps (read as logits) with probability arrays; give one kind, or "
            "pass --logits for raw scores."
        )
    return images, scores, labels, stems, kinds.pop()


def _comment(args: argparse.Namespace, result: Any, stems: list[str]) -> str:
    m = result.metrics
    lines = [
        f"fitted by crfrnn fit on {len(result.train_indices)} images of '{args.images}', validated on "
        f"{len(result.val_indices)}; best epoch {result.best_epoch}"
        f"{', widths fixed' if not result.fit_widths else ''}"
    ]
    for name in ("network", "initial", "fitted"):
        lines.append(
            f"validation {name:>8}: mean IoU {100 * m[name]['mean_iou']:.2f}%, boundary accuracy "
            f"({result.boundary_width} px) {100 * m[name]['boundary_accuracy']:.2f}%"
        )
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    """Run ``crfrnn fit`` on parsed arguments; returns the exit code (see the module docstring)."""
    from crfrnn._utils.files import atomic_write_text
    from crfrnn.fit import fit_crf, width_gradients_available
    from crfrnn.params import load_params, save_params

    out = Path(args.output)
    if out.suffix.lower() not in (".yaml", ".yml"):
        raise CommandError(f"-o/--output must name a .yaml file, got '{args.output}'.")
    if args.report is not None and Path(args.report).suffix.lower() != ".json":
        raise CommandError(f"--report must name a .json file, got '{args.report}'.")
    if not args.val_fraction < 1:
        raise CommandError(f"--val-fraction must be below 1, got {args.val_fraction}.")
    init: Optional[dict] = None
    if args.init is not None:
        try:
            init = load_params(args.init)
        except (OSError, ValueError, TypeError) as err:
            raise CommandError(str(err)) from err
    fit_widths = not args.fixed_widths
    if fit_widths and not width_gradients_available():
        print(
            "crfrnn fit: note: this build of crfrnn has no gradients with respect to the kernel widths; fitting "
            "the weights with the widths fixed.",
            file=sys.stderr,
        )
        fit_widths = False
    device = resolve_device_flag(args.device, "fit")
    images, scores, labels, stems, is_logits = _read(args)
    print(f"crfrnn fit: {len(images)} images, {scores[0].shape[0]} labels", file=sys.stderr)
    try:
        result = fit_crf(
            images,
            scores,
            labels,
            logits=is_logits,
            init=init,
            num_iterations=args.iterations,
            epochs=args.epochs,
            lr=args.lr,
            val_fraction=args.val_fraction,
            patience=args.patience,
            fit_widths=fit_widths,
            ignore_index=args.ignore_index,
            boundary_width=args.boundary_width,
            seed=args.seed,
            progress=not args.no_progress,
            device=device,
        )
    except (ValueError, TypeError) as err:
        raise CommandError(str(err)) from err
    print(result.summary())
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        save_params(result.params, out, comment=_comment(args, result, stems))
        if args.report is not None:
            report = {
                "params": result.params,
                "initial": result.initial,
                "metrics": result.metrics,
                "best_epoch": result.best_epoch,
                "stopped_early": result.stopped_early,
                "fit_widths": result.fit_widths,
                "boundary_width": result.boundary_width,
                "train": [stems[i] for i in result.train_indices],
                "validation": [stems[i] for i in result.val_indices],
                "history": result.history,
            }
            Path(args.report).parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(args.report, json.dumps(report, indent=2) + "\n")
    except OSError as err:
        raise CommandError(f"could not write output: {err}", 1) from err
    print(f"wrote '{out}'" + (f", '{args.report}'" if args.report else ""))
    return 0

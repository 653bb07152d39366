"""``crfrnn evaluate``: compare the CNN, the CNN + offline dense CRF and CRF-RNN of a checkpoint on a data set.

Writes ``results.json``, ``metrics.md``, ``boundary.png`` (see :func:`crfrnn.workflow.write_report`) and
``grid.png`` (predictions on the first images, see :func:`crfrnn.visualize.save_prediction_grid`) to
``--out`` and prints the summary table.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Optional

from crfrnn.cli import MAX_BATCH_SIZE, MAX_GRID, MAX_IMAGE_SIZE, MAX_NUM_IMAGES, CommandError, number_type
from crfrnn.cli._flags import add_device_flag, resolve_device_flag

__all__ = ["add_parser", "run"]

_EPILOG = """\
examples:
  crfrnn evaluate runs/crf/best.pt --out eval/                       # the synthetic validation split
  crfrnn evaluate runs/crf/best.pt --out eval/ --dense-crf-search    # and the CNN + a searched dense CRF
  crfrnn evaluate --weights TVG_CRFRNN_COCO_VOC.caffemodel --dataset voc --voc-root data/ \\
      --ids seg12valid.txt --out eval-voc/
  crfrnn evaluate runs/cnn/best.pt --dataset folder --images imgs/ --masks masks/ --out eval/

files written to --out:
  results.json (fractions in [0, 1]), metrics.md (percent), boundary.png, grid.png

exit codes:
  0 success; 1 a failure while evaluating or writing; 2 bad usage or input.
"""

#: the first bytes of files that are given where a checkpoint is expected, and what they are
_NOT_CHECKPOINTS = (
    (b"\x89PNG", "a PNG image"),
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"\x93NUMPY", "a NumPy array (.npy)"),
    (b"GIF8", "a GIF image"),
)


def _not_a_checkpoint(path: str) -> Optional[str]:
    """What the file at ``path`` is when it is plainly not a checkpoint (an image, an array), else None."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(8)
    except OSError:
        return None
    return next((what for magic, what in _NOT_CHECKPOINTS if head.startswith(magic)), None)


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register the ``evaluate`` sub-command."""
    parser = subparsers.add_parser(
        "evaluate",
        help="evaluate a checkpoint: CNN vs CNN + dense CRF vs CRF-RNN, overall and near boundaries",
        description=(
            "Evaluate a checkpoint on a data set: mean IoU, pixel accuracy, mean class accuracy, per-class IoU "
            "and accuracy in bands around ground-truth boundaries, for the CNN alone, the CNN refined by an "
            "offline dense CRF (--dense-crf) and the full CRF-RNN network. Writes results.json, metrics.md, "
            "boundary.png and grid.png to --out."
        ),
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "checkpoint",
        metavar="CHECKPOINT",
        nargs="?",
        help="checkpoint written by crfrnn (crfrnn train); or give --weights",
    )
    parser.add_argument(
        "--weights",
        metavar="FILE",
        help="a released CRF-RNN weight file instead of a checkpoint (.caffemodel, .pth, .h5; see "
        "crfrnn segment), e.g. --dataset voc --ids seg12valid.txt",
    )
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder (created if missing)")
    data = parser.add_argument_group("data")
    data.add_argument(
        "--dataset",
        choices=("synthetic", "voc", "folder"),
        default="synthetic",
        help="data set kind (default: synthetic)",
    )
    data.add_argument(
        "--split", default="val", help="train/val/test (synthetic), ImageSets/Segmentation name (voc); default: val"
    )
    data.add_argument("--ids", metavar="FILE", help="voc: id-list file to evaluate (overrides --split)")
    data.add_argument(
        "--voc-root",
        "--root",
        dest="voc_root",
        metavar="DIR",
        help="voc: folder containing VOCdevkit (or VOC2012 itself)",
    )
    data.add_argument("--images", metavar="DIR", help="folder: images folder")
    data.add_argument("--masks", metavar="DIR", help="folder: index-PNG masks folder (same file stems)")
    data.add_argument(
        "--num-images",
        type=number_type(int, 1, maximum=MAX_NUM_IMAGES),
        default=50,
        metavar="N",
        help="synthetic: images in the split (default: 50)",
    )
    data.add_argument(
        "--image-size",
        type=number_type(int, 1, maximum=MAX_IMAGE_SIZE),
        metavar="PX",
        help="synthetic: image side (default: as in training, else 96)",
    )
    data.add_argument(
        "--data-seed", type=int, metavar="S", help="synthetic: data set seed (default: as in training, else 0)"
    )
    data.add_argument(
        "--void-band",
        type=int,
        choices=(0, 1, 2),
        help="synthetic: void outline width (default: as in training, else 0)",
    )
    data.add_argument("--max-images", type=int, metavar="N", help="evaluate only the first N images")
    data.add_argument(
        "--include-void-edges",
        action="store_true",
        help="count label/void transitions as boundaries (VOC-style void outlines)",
    )

    crf = parser.add_argument_group("offline dense CRF")
    crf.add_argument("--dense-crf", action="store_true", help="also evaluate CNN + offline dense CRF")
    crf.add_argument(
        "--dense-crf-param",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="dense_crf parameter, e.g. bilateral_srgb=5 (repeatable)",
    )
    crf.add_argument(
        "--dense-crf-search",
        action="store_true",
        help="grid-search the dense CRF on --search-split first (implies --dense-crf)",
    )
    crf.add_argument("--search-split", default="val", help="split (or voc id-list file) for the search (default: val)")
    crf.add_argument(
        "--search-images",
        type=int,
        default=10,
        metavar="N",
        help="images used by the search (default: 10)",
    )
    crf.add_argument(
        "--search-grid",
        metavar="JSON",
        help="search grid, e.g. '{\"bilateral_srgb\": [3, 5, 13]}' (default: 27 points)",
    )

    run_opts = parser.add_argument_group("run")
    run_opts.add_argument(
        "--grid",
        type=number_type(int, 0, maximum=MAX_GRID),
        default=4,
        metavar="N",
        help="images in grid.png (0: no grid)",
    )
    run_opts.add_argument(
        "--batch-size",
        type=number_type(int, 1, maximum=MAX_BATCH_SIZE),
        default=1,
        help="images per forward pass (default: 1)",
    )
    add_device_flag(run_opts)
    run_opts.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.set_defaults(func=run)
    return parser


# --------------------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------------------
def _parse_value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text  # e.g. normalization=row


def _dense_crf_params(pairs: list[str]) -> dict[str, Any]:
    from crfrnn.params import DENSECRF_DEFAULTS, RENAMED_PARAMS

    params: dict[str, Any] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        name = RENAMED_PARAMS.get(name, name)  # the names of earlier releases (iterations) still work
        if not sep or name not in DENSECRF_DEFAULTS:
            raise CommandError(
                f"--dense-crf-param {pair!r}: expected NAME=VALUE with NAME one of {sorted(DENSECRF_DEFAULTS)}."
            )
        params[name] = _parse_value(value)
    return params


def _search_grid(text: Optional[str]) -> Optional[dict[str, Any]]:
    if text is None:
        return None
    try:
        grid = json.loads(text)
    except json.JSONDecodeError as err:
        raise CommandError(f"--search-grid is not valid JSON ({err}); e.g. '{{\"bilateral_srgb\": [3, 5]}}'.") from err
    if not isinstance(grid, dict) or not grid:
        raise CommandError(f"--search-grid must be a JSON object of parameter -> list of values, got {text!r}.")
    return grid


def _dataset(args: argparse.Namespace, split: str, synthetic: dict[str, Any], num_classes: Optional[int] = None) -> Any:
    """The data set named by the arguments (:func:`crfrnn.workflow._datasets.open_dataset`); data problems become
    CommandErrors.

    ``num_classes``: folder masks with other labels are reported by file name when read.
    """
    from crfrnn.workflow._datasets import SYNTHETIC_SPLITS, open_dataset

    if args.dataset == "synthetic":
        if split not in SYNTHETIC_SPLITS:
            raise CommandError(
                f"--split for the synthetic data set must be one of {list(SYNTHETIC_SPLITS)}, got {split!r}."
            )
        if args.num_images < 1:
            raise CommandError(f"--num-images must be >= 1, got {args.num_images}.")
    elif args.dataset == "voc" and not args.voc_root:
        raise CommandError("--dataset voc needs --voc-root DIR (the folder containing VOCdevkit).")
    elif args.dataset == "folder" and (not args.images or not args.masks):
        raise CommandError("--dataset folder needs --images DIR and --masks DIR.")
    try:
        return open_dataset(
            args.dataset,
            split,
            num_images=args.num_images,
            synthetic=synthetic,
            voc_root=args.voc_root,
            images=args.images,
            masks=args.masks,
            num_classes=num_classes,
        )
    except (FileNotFoundError, NotADirectoryError, OSError, ValueError, TypeError) as err:
        raise CommandError(f"cannot open the {args.dataset} data set: {err}".replace("\n", " ")) from err


def _check_classes(dataset: Any, num_classes: int, what: str) -> None:
    data_classes = getattr(dataset, "num_classes", None)
    if data_classes is not None and int(data_classes) != num_classes:
        raise CommandError(
            f"the checkpoint predicts {num_classes} classes but the {what} data set has {data_classes}; "
            "evaluate it on data with the same label set."
        )


def _check_positive(value: Optional[int], flag: str, minimum: int = 1) -> None:
    if value is not None and value < minimum:
        raise CommandError(f"{flag} must be >= {minimum}, got {value}.")


# --------------------------------------------------------------------------------------------------------
# the command
# --------------------------------------------------------------------------------------------------------
def run(args: argparse.Namespace) -> int:
    """Evaluate a checkpoint and write the report; see the module docstring."""
    import torch

    from crfrnn.io.checkpoint import load_model
    from crfrnn.models import CrfRnnSegmenter
    from crfrnn.workflow import evaluate, format_table, search_dense_crf, write_report
    from crfrnn.workflow._datasets import synthetic_spec
    from crfrnn.workflow._report import save_method_grid

    _check_positive(args.max_images, "--max-images")
    _check_positive(args.batch_size, "--batch-size")
    _check_positive(args.search_images, "--search-images")
    _check_positive(args.grid, "--grid", 0)
    crf_params = _dense_crf_params(args.dense_crf_param)
    grid_spec = _search_grid(args.search_grid)
    device = resolve_device_flag(args.device, "evaluate")

    if (args.checkpoint is None) == (args.weights is None):
        raise CommandError("give either a CHECKPOINT or --weights FILE (a released CRF-RNN weight file).")
    model: torch.nn.Module
    payload: dict[str, Any]
    try:
        if args.weights is not None:  # the released network, run as its code base ran it (crfrnn.models.pretrained)
            from crfrnn.data import VOC_CLASSES
            from crfrnn.models import load_pretrained

            model = load_pretrained(args.weights, num_classes=None, device=device)
            names = list(VOC_CLASSES) if model.num_classes == len(VOC_CLASSES) else None
            payload, args.checkpoint = {"num_classes": model.num_classes, "class_names": names}, args.weights
        else:
            what = _not_a_checkpoint(args.checkpoint)
            if what is not None:
                raise CommandError(
                    f"CHECKPOINT '{args.checkpoint}' is {what}, not a checkpoint; give a .pt file written by "
                    "crfrnn train (OUT/best.pt or OUT/last.pt), or --weights FILE for a released network."
                )
            model, payload = load_model(args.checkpoint, map_location=device)
    except (FileNotFoundError, ValueError, ImportError) as err:
        raise CommandError(str(err)) from err
    except (KeyError, TypeError, RuntimeError) as err:  # a payload that does not rebuild its model
        raise CommandError(f"cannot rebuild the model of {args.checkpoint}: {err}".replace("\n", " ")) from err
    num_classes = int(payload["num_classes"])
    class_names = payload.get("class_names")

    split = args.ids if (args.ids and args.dataset == "voc") else args.split
    synthetic = (
        synthetic_spec(payload, size=args.image_size, seed=args.data_seed, void_band=args.void_band)
        if args.dataset == "synthetic"
        else {}
    )
    dataset = _dataset(args, split, synthetic, num_classes)
    _check_classes(dataset, num_classes, args.dataset)
    if class_names is None and getattr(dataset, "class_names", None) is not None:
        class_names = list(dataset.class_names)

    methods = ["cnn"]
    if args.dense_crf or args.dense_crf_search:
        methods.append("cnn+densecrf")
    if isinstance(model, CrfRnnSegmenter):
        methods.append("crfrnn")
    progress = not args.no_progress
    out = Path(args.out)

    try:
        search = None
        if args.dense_crf_search:
            if args.search_split == split:
                print(
                    f"crfrnn evaluate: warning: the dense CRF search and the evaluation both use split {split!r}; "
                    "pass --search-split to tune on held-out images.",
                    file=sys.stderr,
                )
            search_set = _dataset(args, args.search_split, synthetic, num_classes)
            _check_classes(search_set, num_classes, args.dataset)
            best, table = search_dense_crf(
                model,
                search_set,
                num_classes=num_classes,
                grid=grid_spec,
                base_params=crf_params,
                batch_size=args.batch_size,
                device=device,
                progress=progress,
                max_images=args.search_images,
            )
            crf_params = best
            search = {
                "best_params": best,
                "table": table,
                "split": args.search_split,
                "num_images": min(len(search_set), args.search_images),
            }
        results = evaluate(
            model,
            dataset,
            num_classes=num_classes,
            methods=methods,
            dense_crf_params=crf_params,
            batch_size=args.batch_size,
            device=device,
            progress=progress,
            max_images=args.max_images,
            include_void_edges=args.include_void_edges,
        )
    except CommandError:
        raise
    except (ValueError, TypeError, OSError) as err:  # bad labels, unreadable files, bad CRF parameters
        raise CommandError(f"evaluation failed: {err}".replace("\n", " "), 1) from err

    results["checkpoint"] = str(args.checkpoint)
    results["dataset"] = {"kind": args.dataset, "split": str(split), "repr": repr(dataset)}
    if search is not None:
        results["dense_crf_search"] = search
    title = f"{Path(args.checkpoint).name} on {args.dataset} ({Path(str(split)).name})"
    try:
        paths = write_report(results, out, class_names=class_names, title=title)
        if args.grid:
            runs = [(model, methods, crf_params)]
            legend = class_names if class_names is not None and len(class_names) >= num_classes else None
            paths["grid"] = save_method_grid(
                out / "grid.png", dataset, runs, args.grid, device=device, class_names=legend
            )
    except OSError as err:
        raise CommandError(f"cannot write the report to {out}: {err}", 1) from err

    print(f"{results['num_images']} images, {num_classes} classes (values in %)")
    print(format_table(results))
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0

"""``crfrnn segment``: segment photos with the released CRF-RNN network (FCN-8s + CRF-RNN, PASCAL VOC).

::

    crfrnn segment photo.jpg photos/ --weights TVG_CRFRNN_COCO_VOC.caffemodel -o out/ --overlay --probs

For every image ``NAME.ext`` it writes ``out/NAME.png`` (the labels as a VOC palette PNG), and with
``--overlay`` ``out/NAME_overlay.png`` (the labels over the photo, with a legend of the classes present),
with ``--probs`` ``out/NAME_probs.npy`` (``L x H x W`` float32 probabilities). Every file is written to a
temporary name in the same directory and renamed into place (:mod:`crfrnn._utils.files`). Outputs that would
overwrite a photo or each other (``-o`` the photos' folder; ``a.png`` and ``a_overlay.png`` with ``--overlay``)
are refused before anything is written (:func:`crfrnn.cli._outputs.check_outputs`).

The work is done by :func:`crfrnn.models.load_pretrained` and :func:`crfrnn.models.segment_images`; this
module only parses arguments, reads and writes files and reports.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, List, Optional, Sequence, Tuple

if TYPE_CHECKING:
    import numpy as np

    from crfrnn.cli._ranks import Ranks

from crfrnn.cli import MAX_BATCH_SIZE, MAX_ITERATIONS, CommandError, number_type
from crfrnn.cli._batch import Summary, add_batch_flags, is_complete, shard_of
from crfrnn.cli._choices import FORMATS, RESIZE_POLICIES
from crfrnn.cli._flags import add_device_flag, name_flags, resolve_device_flag
from crfrnn.cli._outputs import check_outputs

__all__ = ["add_parser", "overlay_with_legend", "run"]

_OUTPUTS = ("labels", "overlay", "probabilities")

_EPILOG = """\
weights:
  TVG_CRFRNN_COCO_VOC.caffemodel (torrvision/crfasrnn), crfasrnn_weights.pth (sadeepj/crfasrnn_pytorch) or
  crfrnn_keras_model.h5 (sadeepj/crfasrnn_keras, needs h5py: pip install 'crfrnn[keras]'). The format is read
  from the content. Each file runs the way its code base ran it (mean, resizing); see docs/pretrained.md.

examples:
  crfrnn segment photo.jpg --weights TVG_CRFRNN_COCO_VOC.caffemodel -o out/
  crfrnn segment photos/ --weights crfasrnn_weights.pth -o out/ --batch-size 4 --overlay
  crfrnn segment photo.jpg --weights TVG_CRFRNN_COCO_VOC.caffemodel -o out/ --no-crf --probs
  crfrnn segment photos/ --weights crfasrnn_weights.pth -o out/ --shard $SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT

many images:
  A photo whose outputs all exist is skipped (a rerun resumes a stopped run; --overwrite redoes it). A photo
  that fails is reported and the run goes on. OUT/summary.json (summary-K-of-N.json with --shard K/N) lists
  every photo of the run with its outputs and status (done, skipped or failed with the error).
  Under torchrun (torchrun --nproc-per-node N -m crfrnn segment ...), each rank takes the share
  RANK/WORLD_SIZE (as --shard would; not both) and rank 0 writes one OUT/summary.json naming each photo's rank.

exit codes:
  0 success; 1 some images failed or a file could not be written; 2 bad usage or input.
"""


def add_parser(subparsers: "argparse._SubParsersAction[argparse.ArgumentParser]") -> argparse.ArgumentParser:
    """Register ``crfrnn segment`` and its options."""
    parser = subparsers.add_parser(
        "segment",
        help="segment photos with the released CRF-RNN network (Caffe, PyTorch or Keras weights)",
        description="Segment photos (files or folders) with the released FCN-8s + CRF-RNN network and write\n"
        "the labels as VOC palette PNGs.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="image files or folders of images")
    parser.add_argument("--weights", required=True, metavar="FILE", help="released weight file (see below)")
    parser.add_argument("-o", "--out", required=True, metavar="DIR", help="output folder (created if missing)")
    parser.add_argument("--format", choices=FORMATS, help="weight format (default: read from the content)")
    parser.add_argument(
        "--batch-size",
        type=number_type(int, 1, maximum=MAX_BATCH_SIZE),
        default=1,
        metavar="N",
        help="images per forward pass (default: 1)",
    )
    parser.add_argument("--no-crf", action="store_true", help="FCN-8s alone, without the CRF-RNN head")
    parser.add_argument("--overlay", action="store_true", help="also write NAME_overlay.png with a class legend")
    parser.add_argument("--alpha", type=float, default=0.5, help="overlay opacity of the labels (default: 0.5)")
    parser.add_argument("--probs", action="store_true", help="also write NAME_probs.npy (L x H x W float32)")
    conv = parser.add_argument_group("conventions (default: those of the weights' code base)")
    conv.add_argument(
        "--resize",
        choices=RESIZE_POLICIES,
        help="images larger than 500: shrink (Caffe demo), fit every image to 500 (PyTorch port), "
        "none = error (Keras port)",
    )
    conv.add_argument(
        "--restore-size",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="resize the labels back to the photo's size after a resize",
    )
    conv.add_argument("--mean", type=float, nargs=3, metavar=("B", "G", "R"), help="BGR mean to subtract")
    conv.add_argument(
        "--iterations",
        type=number_type(int, 0, maximum=MAX_ITERATIONS),
        default=10,
        metavar="T",
        help="mean-field iterations (default: 10, as released)",
    )
    conv.add_argument(
        "--num-classes",
        type=number_type(int, 0),
        default=21,
        metavar="L",
        help="class count the weights must have (default: 21; 0: any)",
    )
    add_device_flag(parser)
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_batch_flags(parser.add_argument_group("many images (job arrays, resuming)"))
    parser.set_defaults(func=run)
    return parser


def _collect(inputs: Sequence[str]) -> List[Path]:
    from crfrnn.io import IMAGE_SUFFIXES

    paths: List[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            found = sorted(c for c in p.iterdir() if c.is_file() and c.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise CommandError(f"folder {p} holds no images (suffixes {', '.join(IMAGE_SUFFIXES)}).")
            paths.extend(found)
        elif p.is_file():
            paths.append(p)
        else:
            raise CommandError(f"no such image or folder: {p}")
    return list(dict.fromkeys(paths))


def _plan(
    paths: Sequence[Path], out: Path, overlay: bool, probs: bool
) -> dict[Path, Tuple[Path, Optional[Path], Optional[Path]]]:
    """The outputs of every photo: labels, overlay, probabilities (``None`` when not asked for), refused
    (:func:`crfrnn.cli._outputs.check_outputs`) if one would overwrite a photo or another output.
    """
    plan = {
        p: (
            out / f"{p.stem}.png",
            out / f"{p.stem}_overlay.png" if overlay else None,
            out / f"{p.stem}_probs.npy" if probs else None,
        )
        for p in paths
    }
    check_outputs(
        [(f"the {what} of '{p}'", t) for p, targets in plan.items() for what, t in zip(_OUTPUTS, targets)],
        [("photo", p) for p in paths],
        clash_hint="rename one of the photos, or segment them into different folders",
        input_hint="write the outputs to another folder (-o)",
    )
    return plan


def overlay_with_legend(
    image: np.ndarray, labels: np.ndarray, class_names: Optional[Sequence[str]] = None, alpha: float = 0.5
) -> np.ndarray:
    """The labels blended over the photo (:func:`crfrnn.visualize.label_overlay`), with a legend of the classes
    present on the right.

    Args:
        image: ``(H, W, 3)`` uint8 RGB.
        labels: ``(H, W)`` integer labels.
        class_names: names by label index (VOC's for 21 classes); ``None`` writes ``class k``.
        alpha: opacity of the label colours.

    Returns:
        ``(H, W + legend width, 3)`` uint8 RGB.
    """
    import numpy as np
    from PIL import Image, ImageDraw, ImageFont

    from crfrnn.data.palette import color_palette
    from crfrnn.visualize import label_overlay

    blended = label_overlay(image, labels, alpha)
    present, counts = np.unique(labels, return_counts=True)
    order = present[np.argsort(-counts, kind="stable")]
    font = ImageFont.load_default()
    row = 16
    names = [class_names[k] if class_names is not None and k < len(class_names) else f"class {k}" for k in order]
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    width = 28 + max(int(measure.textlength(n, font=font)) for n in names) + 8
    h = max(blended.shape[0], row * len(order) + 8)
    canvas = Image.new("RGB", (blended.shape[1] + width, h), (255, 255, 255))
    canvas.paste(Image.fromarray(blended), (0, 0))
    draw = ImageDraw.Draw(canvas)
    palette = color_palette(256)
    x0 = blended.shape[1] + 6
    for i, (k, name) in enumerate(zip(order, names)):
        y = 4 + i * row
        draw.rectangle([x0, y + 2, x0 + 14, y + 14], fill=tuple(int(c) for c in palette[int(k)]), outline=(0, 0, 0))
        draw.text((x0 + 20, y + 2), name, fill=(0, 0, 0), font=font)
    return np.asarray(canvas)


def _segment(
    model: Any, images: List[np.ndarray], kept: List[Path], args: argparse.Namespace
) -> List[Tuple[Path, np.ndarray, Any, Optional[str]]]:
    """``(photo, image, result or None, error or None)`` of every image; a batch that fails (e.g. an image too
    large for resize 'none') is retried one image at a time, so that one bad photo fails alone.
    """
    from crfrnn.models import segment_images

    try:
        results = segment_images(
            model,
            images,
            resize=args.resize,
            restore_size=args.restore_size,
            use_crf=not args.no_crf,
            return_probs=args.probs,
        )
    except ValueError as err:
        if len(images) == 1:
            return [(kept[0], images[0], None, " ".join(str(err).split()))]
        return [item for p, image in zip(kept, images) for item in _segment(model, [image], [p], args)]
    return [(p, image, res, None) for p, image, res in zip(kept, images, results)]


def _write(
    res: Any, image: np.ndarray, targets: Tuple[Path, Optional[Path], Optional[Path]], names: Any, alpha: float
) -> None:
    """Write one photo's labels, overlay and probabilities (those asked for)."""
    import numpy as np
    from PIL import Image

    from crfrnn._utils.files import atomic_np_save, atomic_save_image
    from crfrnn.data.palette import save_label_png

    labels_path, overlay_path, probs_path = targets
    save_label_png(labels_path, res.labels)
    if overlay_path is not None:
        photo = image
        if res.labels.shape != image.shape[:2]:  # the network's size (no --restore-size)
            photo = np.asarray(
                Image.fromarray(image).resize(
                    res.labels.shape[::-1],
                    Image.BILINEAR,  # type: ignore[attr-defined]  # Pillow sets it at import
                )
            )
        picture = overlay_with_legend(photo, res.labels, names, alpha)
        atomic_save_image(Image.fromarray(picture), overlay_path)
    if probs_path is not None:
        atomic_np_save(probs_path, res.probs)


def _load_model(args: argparse.Namespace) -> Any:
    """The released network the flags ask for, on the device they name."""
    from crfrnn.models import load_pretrained

    device = resolve_device_flag(args.device, "segment")
    try:
        return load_pretrained(
            args.weights,
            format=args.format,
            crf=not args.no_crf,
            num_classes=args.num_classes or None,
            num_iterations=args.iterations,
            mean=args.mean,
            device=device,
        )
    except (FileNotFoundError, ValueError, ImportError) as err:
        raise CommandError(str(err)) from err


def run(args: argparse.Namespace) -> int:
    """Segment the images; see the module docstring. Under torchrun, this rank's share (:mod:`crfrnn.cli._ranks`)."""
    from crfrnn.cli._ranks import join_ranks

    if not 0.0 <= args.alpha <= 1.0:
        raise CommandError(f"--alpha must be between 0 and 1, got {args.alpha}.")
    ranks = join_ranks("segment", args)
    try:
        return _run_share(args, ranks)
    finally:
        if ranks is not None:
            ranks.close()


def _run_share(args: argparse.Namespace, ranks: "Optional[Ranks]") -> int:
    from crfrnn._utils.progress import Progress
    from crfrnn.data import VOC_CLASSES
    from crfrnn.io import read_rgb
    from crfrnn.workflow._shards import take_shard

    shard = shard_of(args) if ranks is None else ranks.shard
    all_paths = _collect(args.images)
    out = Path(args.out)
    plan = _plan(all_paths, out, args.overlay, args.probs)  # every photo's, so that clashes across shards are found
    paths = all_paths
    if shard is not None:
        paths = take_shard(paths, *shard, key=_stem)  # the stems are distinct: _plan refuses twins
    summary = Summary("segment", None if ranks is not None else shard, None if ranks is None else ranks.rank)
    todo = []
    for p in paths:
        if args.overwrite or not is_complete(plan[p]):
            todo.append(p)
        else:
            summary.add(p, plan[p], "skipped")
    skipped = len(paths) - len(todo)
    if skipped:
        print(
            f"crfrnn segment: skipping {skipped} of {len(paths)} images whose outputs exist (--overwrite redoes them)",
            file=sys.stderr,
        )
    model = _load_model(args) if todo else None
    names = list(VOC_CLASSES) if model is not None and model.num_classes == len(VOC_CLASSES) else None
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise CommandError(f"cannot create the output folder {out}: {err}", 1) from err

    progress = Progress(
        len(todo), "crfrnn segment", "image", enabled=not args.no_progress and (ranks is None or ranks.is_main)
    )

    def fail(p: Path, message: str) -> None:
        progress.write(f"crfrnn segment: {message}")
        summary.add(p, plan[p], "failed", message)

    try:
        for start in range(0, len(todo), args.batch_size):
            chunk = todo[start : start + args.batch_size]
            images, kept = [], []
            for p in chunk:
                try:
                    images.append(read_rgb(p))
                    kept.append(p)
                except (OSError, ValueError) as err:
                    fail(p, f"{p}: {name_flags(str(err), {})}")
            for p, image, res, error in _segment(model, images, kept, args) if images else []:
                if error is not None:
                    fail(p, f"{p}: {error}")
                    continue
                try:
                    _write(res, image, plan[p], names, args.alpha)
                except OSError as err:
                    fail(p, f"cannot write the outputs of {p} to {out}: {err}")
                    continue
                summary.add(p, plan[p], "done")
                if ranks is not None:
                    ranks.maybe_die(summary.totals()["done"])
            progress.update(len(chunk))
    finally:
        progress.close()
    totals = summary.totals()  # this rank's
    try:
        if ranks is None:
            written = summary.write(out)
        else:

            def inputs_of(k: int) -> List[Tuple[Path, list]]:
                return [(p, list(plan[p])) for p in take_shard(all_paths, k, ranks.world, key=_stem)]

            written = ranks.finish(summary, out, inputs_of)
    except OSError as err:
        raise CommandError(f"could not write the summary in {out}: {err}", 1) from err
    everyone = summary.totals()  # on rank 0 under torchrun, every rank's records
    extra = f"; {skipped} skipped (outputs exist)" if skipped else ""
    if ranks is not None:
        extra += f"; rank {ranks.rank} of {ranks.world}"
        if ranks.is_main:
            extra += f" ({everyone['done']} done, {everyone['failed']} failed by all ranks)"
    elif shard is not None:
        extra += f"; shard {shard[0]}/{shard[1]}"
    print(f"segmented {totals['done']} of {len(todo)} images into {out}{extra}; summary {written}")
    return 1 if totals["failed"] or everyone["failed"] else 0


def _stem(path: Path) -> str:
    return path.stem

"""``crfrnn refine``: sharpen a segmentation network's output with a dense CRF.

One image::

    crfrnn refine photo.jpg probs.npy -o labels.png --overlay compare.png

or a directory of images paired by file stem with a directory of outputs::

    crfrnn refine --images photos/ --probs outputs/ -o refined/

The work is done by :mod:`crfrnn.io` (reading and checking files), :func:`crfrnn.dense_crf` and
:func:`crfrnn.visualize.make_overlay` (the comparison picture); this module only parses arguments, reports and
sets the exit code. The readers' messages name their parameters; the command names its flags instead
(:data:`crfrnn.cli._refine_steps.FLAGS`). A folder is refined by :mod:`crfrnn.cli._refine_folder`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional

from PIL import Image

from crfrnn.cli import MAX_ITERATIONS, CommandError, number_type
from crfrnn.cli._batch import add_batch_flags
from crfrnn.cli._choices import LAYOUTS, NORMALIZATIONS
from crfrnn.cli._flags import add_device_flag, resolve_device_flag

__all__ = ["add_parser", "run"]

_EPILOG = """\
inputs:
  PROBS is a .npy or .npz file (first array, or --key NAME) of shape L x H x W or H x W x L, holding
  probabilities (summing to 1 over labels) or, with --logits, raw scores. It may also be a label PNG
  (palette or index PNG, pixel values = labels), trusted with probability --gt-prob.

  Volumes and other N-d data: IMAGE may be an array file (.npy, .npz, or NIfTI .nii/.nii.gz with the
  'nifti' extra) of shape S or S x C (channels last, e.g. MRI modalities), S of 1 to 3 axes; PROBS is then
  L x S or S x L (.npy/.npz/.nii/.nii.gz), and -o is a .nii/.nii.gz (written with the image's affine and
  header) or .npy label volume. Widths (--gaussian-sxy, --bilateral-sxy) are in voxels, or in mm with the
  spacing read from a NIfTI header or given with --spacing; --bilateral-srgb is in the volume's intensity
  units.

examples:
  crfrnn refine photo.jpg probs.npy -o labels.png
  crfrnn refine photo.jpg scores.npz --key logits --logits -o labels.png --overlay compare.png
  crfrnn refine photo.jpg coarse.png --gt-prob 0.7 --unknown 255 -o labels.png
  crfrnn refine --images photos/ --probs outputs/ -o refined/ --save-probs refined_probs/
  crfrnn refine --images photos/ --probs outputs/ -o refined/ --shard $SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT
  crfrnn refine t1.nii.gz tumour_probs.nii.gz -o tumour_labels.nii.gz --bilateral-sxy 10 --bilateral-srgb 20

safety:
  Outputs are written to a temporary file and renamed into place, so an interrupted run never leaves a
  truncated file. Outputs that would overwrite an input or each other are refused. Before refining, the
  memory an image needs is estimated (about 32 bytes per pixel and label plus 320 per pixel) and checked
  against --max-memory (default: 75% of this machine's memory). With --images, a pair that fails is
  reported by name and the run goes on; a pair whose outputs all exist is skipped (a rerun resumes a
  stopped run; --overwrite redoes them), and OUT/summary.json (summary-K-of-N.json with --shard K/N)
  lists every pair with its outputs and status (done, skipped or failed with the error).
  Under torchrun (torchrun --nproc-per-node N -m crfrnn refine --images ...), each rank refines the share
  RANK/WORLD_SIZE (as --shard would; not both) and rank 0 writes one OUT/summary.json naming each pair's rank.

exit codes:
  0 success; 1 a file could not be written, or (with --images) some pairs failed; 2 bad usage or input.
"""

_SIZE_UNITS = {
    "": 1,
    "b": 1,
    "k": 2**10,
    "kb": 2**10,
    "m": 2**20,
    "mb": 2**20,
    "g": 2**30,
    "gb": 2**30,
    "t": 2**40,
    "tb": 2**40,
}


def _size(text: str) -> int:
    """A memory size: bytes, or a number with K, M, G or T (powers of 1024), e.g. 512M, 8G, 1.5T."""
    number = text.strip().lower().rstrip("ib")
    unit = ""
    while number and number[-1].isalpha():
        unit = number[-1] + unit
        number = number[:-1]
    try:
        value = float(number) * _SIZE_UNITS[unit]
    except (ValueError, KeyError):
        raise argparse.ArgumentTypeError(f"expected a size such as 8G, 512M or 1000000 (bytes), got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text!r}")
    return int(value)


def _probability(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"must be strictly between 0 and 1, got {text}")
    return value


def _widths(text: str) -> List[float]:
    """Widths: one number, or several separated by commas (``20,20,30,30``); each finite and > 0."""
    parse = number_type(float, 0, True)
    parts = text.replace(",", " ").split()
    if not parts:
        raise argparse.ArgumentTypeError(f"expected a number or comma-separated numbers, got {text!r}")
    return [parse(part) for part in parts]


class _JoinWidths(argparse.Action):
    """``--bilateral-srgb 20 20 30,30`` -> ``[20.0, 20.0, 30.0, 30.0]`` (the last use of the flag wins)."""

    def __call__(self, parser: Any, namespace: argparse.Namespace, values: Any, option_string: Any = None) -> None:
        setattr(namespace, self.dest, [v for part in values for v in part])


def _unit(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {text}")
    return value


def add_parser(subparsers: "argparse._SubParsersAction[argparse.ArgumentParser]") -> argparse.ArgumentParser:
    """Register ``crfrnn refine`` and its options."""
    parser = subparsers.add_parser(
        "refine",
        help="refine a segmentation with a dense CRF (one image or a directory)",
        description="Refine a segmentation network's output with a fully connected CRF guided by the image\n"
        "and write the refined labels (argmax) as a palette PNG.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("image", nargs="?", metavar="IMAGE", help="RGB image (grey or RGBA is converted)")
    parser.add_argument("probs", nargs="?", metavar="PROBS", help=".npy/.npz probabilities or logits, or a label .png")
    parser.add_argument(
        "-o",
        "--output",
        required=True,
        metavar="OUT",
        help="refined labels, a palette .png (a directory with --images)",
    )

    batch = parser.add_argument_group("many images (instead of IMAGE PROBS)")
    batch.add_argument("--images", dest="images_dir", metavar="DIR", help="directory of images")
    batch.add_argument(
        "--probs",
        dest="probs_dir",
        metavar="DIR",
        help="directory of .npy/.npz/.png files paired with the images by file stem",
    )

    inputs = parser.add_argument_group("how to read PROBS")
    inputs.add_argument("--logits", action="store_true", help="the arrays are raw scores (logits), not probabilities")
    inputs.add_argument("--key", metavar="NAME", help="array to use from a .npz archive (default: the first)")
    inputs.add_argument(
        "--layout",
        choices=LAYOUTS,
        help="force labels first (lhw: L x H x W) or last (hwl: H x W x L); default: found from the image size, "
        "lhw when both fit",
    )
    inputs.add_argument(
        "--gt-prob",
        type=_probability,
        metavar="P",
        help="label maps: probability that a given label is right (default 0.5)",
    )
    inputs.add_argument(
        "--num-labels",
        type=number_type(int, 2, False),
        metavar="L",
        help="label maps: number of labels (default: largest label + 1)",
    )
    inputs.add_argument(
        "--unknown",
        type=int,
        metavar="V",
        help="label maps: value meaning 'unknown' (e.g. 0), left to the CRF; 255 is read as VOC's void when the "
        "other labels are below 128",
    )
    inputs.add_argument(
        "--resize",
        action="store_true",
        help="resize scores of another resolution (a network's output stride) to the image, bilinearly on logits "
        "(on log-probabilities for probabilities)",
    )

    inputs.add_argument(
        "--spacing",
        type=number_type(float, 0, True),
        nargs="+",
        metavar="S",
        help="volumes: voxel size per axis (e.g. 2.5 1 1 mm), so that the widths are in those units (default: "
        "the NIfTI header's, else 1)",
    )

    batch.add_argument(
        "--jobs",
        type=number_type(int, 1, False),
        metavar="N",
        help="worker processes for a folder, one thread each (default: one image per free CPU, side by side in "
        "threads of this process, which starts nothing)",
    )

    add_batch_flags(batch)
    add_device_flag(parser)

    limits = parser.add_argument_group("limits")
    limits.add_argument(
        "--max-memory",
        type=_size,
        metavar="SIZE",
        help="refuse images whose estimated memory is above SIZE, e.g. 8G (default: 75%% of this machine's memory)",
    )
    limits.add_argument(
        "--max-pixels",
        type=number_type(int, 1),
        metavar="N",
        help="largest image decoded, in pixels (default: Pillow's decompression-bomb limit, about 89 million)",
    )

    crf = parser.add_argument_group("dense CRF (densecrf's parameters and defaults)")
    crf.add_argument(
        "--params",
        metavar="FILE.yaml",
        help="read the parameters below from a file written by crfrnn fit (YAML); flags given on the command line "
        "override the file's values",
    )
    crf.add_argument(
        "--iterations",
        dest="num_iterations",
        type=number_type(int, 0, False, MAX_ITERATIONS),
        default=None,
        metavar="N",
        help="mean-field iterations (default 5)",
    )
    crf.add_argument(
        "--gaussian-sxy",
        type=number_type(float, 0, True),
        default=None,
        metavar="PX",
        help="smoothness kernel width in pixels (default 3)",
    )
    crf.add_argument(
        "--gaussian-compat",
        type=number_type(float, 0, False),
        default=None,
        metavar="W",
        help="smoothness kernel weight (default 3)",
    )
    crf.add_argument(
        "--bilateral-sxy",
        type=number_type(float, 0, True),
        default=None,
        metavar="PX",
        help="appearance kernel width in pixels (default 80)",
    )
    crf.add_argument(
        "--bilateral-srgb",
        type=_widths,
        nargs="+",
        action=_JoinWidths,
        default=None,
        metavar="C",
        help="appearance kernel colour width, 0..255 scale (default 13); one number for every guide channel, or "
        "one per channel (e.g. --bilateral-srgb 20 20 30 30 or 20,20,30,30 for a T1/T1c/T2/FLAIR volume)",
    )
    crf.add_argument(
        "--bilateral-compat",
        type=number_type(float, 0, False),
        default=None,
        metavar="W",
        help="appearance kernel weight (default 10)",
    )
    crf.add_argument(
        "--normalization", choices=NORMALIZATIONS, default=None, help="kernel normalisation (default symmetric)"
    )

    out = parser.add_argument_group("more outputs (directories with --images)")
    out.add_argument("--save-probs", metavar="FILE.npy", help="also save the refined marginals, L x H x W float32")
    out.add_argument(
        "--overlay",
        metavar="FILE.png",
        help="also save a comparison picture: image | input labels | refined labels, with a legend of the labels "
        "present",
    )
    out.add_argument(
        "--overlay-alpha",
        type=_unit,
        default=0.55,
        metavar="A",
        help="weight of label colours over the image in --overlay; 1 shows the palette alone (default 0.55)",
    )
    out.add_argument("--no-titles", action="store_true", help="no panel titles and no legend in --overlay")
    parser.set_defaults(func=run)
    return parser


def _resolve_crf_options(args: argparse.Namespace) -> None:
    """Fill the CRF options not given as flags from --params FILE, then from densecrf's defaults."""
    from crfrnn.params import DENSECRF_DEFAULTS, load_params

    params: Dict[str, Any] = {}
    if getattr(args, "params", None) is not None:
        try:
            params = load_params(args.params)
        except (OSError, ValueError, TypeError) as err:
            raise CommandError(str(err), 2) from err
    args.crf_extra = {k: v for k, v in params.items() if k not in DENSECRF_DEFAULTS}  # e.g. clip
    for name, default in DENSECRF_DEFAULTS.items():
        if getattr(args, name, None) is None:
            setattr(args, name, params.get(name, default))
    srgb = args.bilateral_srgb
    if isinstance(srgb, (list, tuple)) and len(srgb) == 1:
        args.bilateral_srgb = float(srgb[0])  # one number: every channel


def _check_suffix(path: Optional[str], suffix: str, option: str) -> None:
    if path is not None and Path(path).suffix.lower() != suffix:
        raise CommandError(f"{option} must name a {suffix} file, got '{path}'.", 2)


def _run_volume(args: argparse.Namespace) -> int:
    from crfrnn.cli._refine_steps import refine_volume

    name = args.output.lower()
    if not name.endswith((".nii", ".nii.gz", ".npy", ".png")):
        raise CommandError(
            f"-o/--output for a volume must name a .nii, .nii.gz or .npy file (.png for 2-d data), got "
            f"'{args.output}'.",
            2,
        )
    if args.overlay is not None:
        raise CommandError(
            "--overlay draws 2-d images; for volumes, write the labels and view them in a volume viewer.", 2
        )
    _check_suffix(args.save_probs, ".npy", "--save-probs")
    out = Path(args.output)
    save_probs = Path(args.save_probs) if args.save_probs else None
    notes = refine_volume(args, Path(args.image), Path(args.probs), out, save_probs)
    for note in notes:
        print(f"crfrnn refine: note: {note}", file=sys.stderr)
    print("wrote " + ", ".join(f"'{p}'" for p in (out, save_probs) if p is not None))
    return 0


def _run_single(args: argparse.Namespace) -> int:
    from crfrnn.cli._refine_steps import refine_one
    from crfrnn.io import is_array_path

    if is_array_path(args.image):
        return _run_volume(args)
    for name, given in (("IMAGE", args.image), ("PROBS", args.probs)):
        if Path(given).is_dir():
            raise CommandError(
                f"{name} '{given}' is a folder; to refine a folder, pass --images DIR --probs DIR -o OUT_DIR.", 2
            )
    if args.spacing is not None:
        raise CommandError("--spacing applies to volumes (an IMAGE given as .npy, .npz, .nii or .nii.gz).", 2)
    _check_suffix(args.output, ".png", "-o/--output")
    _check_suffix(args.save_probs, ".npy", "--save-probs")
    _check_suffix(args.overlay, ".png", "--overlay")
    paths = [Path(p) if p is not None else None for p in (args.output, args.save_probs, args.overlay)]
    out, save_probs, overlay = paths
    assert out is not None  # -o/--output is required
    notes = refine_one(args, Path(args.image), Path(args.probs), out, save_probs, overlay)
    for note in notes:
        print(f"crfrnn refine: note: {note}", file=sys.stderr)
    print("wrote " + ", ".join(f"'{p}'" for p in paths if p is not None))
    return 0


def run(args: argparse.Namespace) -> int:
    """Run ``crfrnn refine`` on parsed arguments; returns the exit code (see the module docstring)."""
    import crfrnn.io
    from crfrnn.cli._refine_folder import run_folder

    batch = args.images_dir is not None or args.probs_dir is not None
    if batch:
        if args.images_dir is None or args.probs_dir is None:
            raise CommandError("--images DIR and --probs DIR go together; pass both.", 2)
        if args.image is not None or args.probs is not None:
            raise CommandError("pass either IMAGE PROBS or --images DIR --probs DIR, not both.", 2)
    elif args.image is None or args.probs is None:
        raise CommandError("expected IMAGE and PROBS (or --images DIR --probs DIR); see 'crfrnn refine --help'.", 2)
    elif args.shard is not None:
        raise CommandError("--shard splits a folder among tasks; pass --images DIR --probs DIR with it.", 2)
    _resolve_crf_options(args)
    args.torch_device = resolve_device_flag(args.device, "refine")
    if args.max_memory is None:
        args.max_memory = crfrnn.io.default_memory_limit()
    saved_limit = Image.MAX_IMAGE_PIXELS
    if args.max_pixels is not None:
        Image.MAX_IMAGE_PIXELS = args.max_pixels
    try:
        return run_folder(args) if batch else _run_single(args)
    finally:
        Image.MAX_IMAGE_PIXELS = saved_limit

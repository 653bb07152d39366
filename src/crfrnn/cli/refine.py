"""``crfrnn refine``: sharpen a segmentation network's output with a dense CRF.

One image::

    crfrnn refine photo.jpg probs.npy -o labels.png --overlay compare.png

or a directory of images paired by file stem with a directory of outputs::

    crfrnn refine --images photos/ --probs outputs/ -o refined/

The work is done by :mod:`crfrnn.refine` (reading and checking files, the overlay picture) and
:func:`crfrnn.dense_crf`; this module only parses arguments, reports and sets the exit code.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple

from crfrnn.cli import CommandError, number_type

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
  crfrnn refine t1.nii.gz tumour_probs.nii.gz -o tumour_labels.nii.gz --bilateral-sxy 10 --bilateral-srgb 20

safety:
  Outputs are written to a temporary file and renamed into place, so an interrupted run never leaves a
  truncated file. Outputs that would overwrite an input or each other are refused. Before refining, the
  memory an image needs is estimated (about 32 bytes per pixel and label plus 320 per pixel) and checked
  against --max-memory (default: 75% of this machine's memory). With --images, a pair that fails is
  reported by name and the run goes on.

exit codes:
  0 success; 1 a file could not be written, or (with --images) some pairs failed; 2 bad usage or input.
"""

_SIZE_UNITS = {"": 1, "b": 1, "k": 2**10, "kb": 2**10, "m": 2**20, "mb": 2**20, "g": 2**30, "gb": 2**30,
               "t": 2**40, "tb": 2**40}  # fmt: skip


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
        raise argparse.ArgumentTypeError(f"expected a size such as 8G, 512M or 1000000 (bytes), got {text!r}")
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text!r}")
    return int(value)



def _probability(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}")
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"must be strictly between 0 and 1, got {text}")
    return value


def _unit(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}")
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {text}")
    return value


def add_parser(subparsers: "argparse._SubParsersAction[argparse.ArgumentParser]") -> argparse.ArgumentParser:
    """Register ``crfrnn refine`` and its options."""
    from crfrnn.crf import NORMALIZATIONS
    from crfrnn.refine import LAYOUTS

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
        "-o", "--output", required=True, metavar="OUT",
        help="refined labels, a palette .png (a directory with --images)",
    )  # fmt: skip

    batch = parser.add_argument_group("many images (instead of IMAGE PROBS)")
    batch.add_argument("--images", dest="images_dir", metavar="DIR", help="directory of images")
    batch.add_argument(
        "--probs", dest="probs_dir", metavar="DIR",
        help="directory of .npy/.npz/.png files paired with the images by file stem",
    )  # fmt: skip

    inputs = parser.add_argument_group("how to read PROBS")
    inputs.add_argument("--logits", action="store_true", help="the arrays are raw scores (logits), not probabilities")
    inputs.add_argument("--key", metavar="NAME", help="array to use from a .npz archive (default: the first)")
    inputs.add_argument(
        "--layout", choices=LAYOUTS,
        help="force labels first (lhw: L x H x W) or last (hwl: H x W x L); default: found from the image size, "
        "lhw when both fit",
    )  # fmt: skip
    inputs.add_argument(
        "--gt-prob", type=_probability, metavar="P",
        help="label maps: probability that a given label is right (default 0.5)",
    )  # fmt: skip
    inputs.add_argument(
        "--num-labels", type=number_type(int, 2, False), metavar="L",
        help="label maps: number of labels (default: largest label + 1)",
    )  # fmt: skip
    inputs.add_argument(
        "--unknown", type=int, metavar="V",
        help="label maps: value meaning 'unknown' (e.g. 0), left to the CRF; 255 is read as VOC's void when the "
        "other labels are below 128",
    )  # fmt: skip
    inputs.add_argument(
        "--resize", action="store_true",
        help="resize scores of another resolution (a network's output stride) to the image, bilinearly on logits "
        "(on log-probabilities for probabilities)",
    )  # fmt: skip

    inputs.add_argument(
        "--spacing", type=number_type(float, 0, True), nargs="+", metavar="S",
        help="volumes: voxel size per axis (e.g. 2.5 1 1 mm), so that the widths are in those units (default: "
        "the NIfTI header's, else 1)",
    )  # fmt: skip

    batch.add_argument(
        "--jobs", type=number_type(int, 1, False), metavar="N",
        help="worker processes for a folder, one thread each (default: the free CPUs when there are at least "
        f"{_MIN_IMAGES_FOR_PROCESSES} images, else this process with all its threads)",
    )  # fmt: skip

    limits = parser.add_argument_group("limits")
    limits.add_argument(
        "--max-memory", type=_size, metavar="SIZE",
        help="refuse images whose estimated memory is above SIZE, e.g. 8G (default: 75%% of this machine's memory)",
    )  # fmt: skip
    limits.add_argument(
        "--max-pixels", type=number_type(int, 1), metavar="N",
        help="largest image decoded, in pixels (default: Pillow's decompression-bomb limit, about 89 million)",
    )  # fmt: skip

    crf = parser.add_argument_group("dense CRF (densecrf's parameters and defaults)")
    crf.add_argument(
        "--params", metavar="FILE.yaml",
        help="read the parameters below from a file written by crfrnn fit (YAML); flags given on the command line "
        "override the file's values",
    )  # fmt: skip
    crf.add_argument(
        "--iterations", type=number_type(int, 0, False), default=None, metavar="N", help="mean-field iterations (default 5)"
    )
    crf.add_argument(
        "--gaussian-sxy", type=number_type(float, 0, True), default=None, metavar="PX",
        help="smoothness kernel width in pixels (default 3)",
    )  # fmt: skip
    crf.add_argument(
        "--gaussian-compat", type=number_type(float, 0, False), default=None, metavar="W",
        help="smoothness kernel weight (default 3)",
    )  # fmt: skip
    crf.add_argument(
        "--bilateral-sxy", type=number_type(float, 0, True), default=None, metavar="PX",
        help="appearance kernel width in pixels (default 80)",
    )  # fmt: skip
    crf.add_argument(
        "--bilateral-srgb", type=number_type(float, 0, True), default=None, metavar="C",
        help="appearance kernel colour width, 0..255 scale (default 13)",
    )  # fmt: skip
    crf.add_argument(
        "--bilateral-compat", type=number_type(float, 0, False), default=None, metavar="W",
        help="appearance kernel weight (default 10)",
    )  # fmt: skip
    crf.add_argument(
        "--normalization", choices=NORMALIZATIONS, default=None, help="kernel normalisation (default symmetric)"
    )

    out = parser.add_argument_group("more outputs (directories with --images)")
    out.add_argument("--save-probs", metavar="FILE.npy", help="also save the refined marginals, L x H x W float32")
    out.add_argument(
        "--overlay", metavar="FILE.png",
        help="also save a comparison picture: image | input labels | refined labels",
    )  # fmt: skip
    out.add_argument(
        "--overlay-alpha", type=_unit, default=0.55, metavar="A",
        help="weight of label colours over the image in --overlay; 1 shows the palette alone (default 0.55)",
    )  # fmt: skip
    out.add_argument("--no-titles", action="store_true", help="no panel titles in --overlay")
    parser.set_defaults(func=run)
    return parser


_CRF_DEFAULTS = {"iterations": 5, "gaussian_sxy": 3.0, "gaussian_compat": 3.0, "bilateral_sxy": 80.0,
                 "bilateral_srgb": 13.0, "bilateral_compat": 10.0, "normalization": "symmetric"}  # fmt: skip


def _resolve_crf_options(args: argparse.Namespace) -> None:
    """Fill the CRF options not given as flags from --params FILE, then from densecrf's defaults."""
    from crfrnn.params import load_params

    params: Dict[str, Any] = {}
    if getattr(args, "params", None) is not None:
        try:
            params = load_params(args.params)
        except (OSError, ValueError, TypeError) as err:
            raise CommandError(str(err), 2) from err
    args.crf_extra = {k: v for k, v in params.items() if k not in _CRF_DEFAULTS}  # e.g. clip
    for name, default in _CRF_DEFAULTS.items():
        if getattr(args, name, None) is None:
            setattr(args, name, params.get(name, default))


def _crf_options(args: argparse.Namespace) -> Dict[str, Any]:
    names = ("iterations", "gaussian_sxy", "gaussian_compat", "bilateral_sxy", "bilateral_srgb", "bilateral_compat")
    return {name: getattr(args, name) for name in names} | {"normalization": args.normalization} | \
        getattr(args, "crf_extra", {})


def _same_file(a: Path, b: Path) -> bool:
    """Whether two paths name one file: the same file on disk, or the same path once resolved."""
    if a.exists() and b.exists():
        return os.path.samefile(a, b)
    return a.resolve() == b.resolve()


def _check_collisions(outputs: Dict[str, Optional[Path]], inputs: Dict[str, Optional[Path]], kind: str) -> None:
    """Refuse outputs that are the same file (or, with --images, the same folder) as another output or an input."""
    named = [(o, p) for o, p in outputs.items() if p is not None]
    for i, (option, path) in enumerate(named):
        for other, other_path in named[i + 1 :]:
            if _same_file(path, other_path):
                raise CommandError(
                    f"{option} and {other} name the same {kind} '{path}', so one output would overwrite the other; "
                    f"give each output its own {kind}.", 2,
                )  # fmt: skip
        for other, source in inputs.items():
            if source is not None and _same_file(path, source):
                raise CommandError(
                    f"{option} '{path}' is the input {other} '{source}'; refusing to overwrite an input with an "
                    f"output. Choose another {kind}.", 2,
                )  # fmt: skip


def _refine_one(
    args: argparse.Namespace,
    image_path: Path,
    probs_path: Path,
    out: Path,
    save_probs: Optional[Path],
    overlay: Optional[Path],
) -> List[str]:
    """Refine one pair and write its outputs; returns notes. Raises CommandError (2: input, 1: writing)."""
    from crfrnn._utils.files import atomic_np_save, atomic_save_image
    from crfrnn.data.palette import save_label_png
    from crfrnn.dense import dense_crf
    from crfrnn.refine import (MemoryLimitError, estimate_memory, format_bytes, labels_of, make_overlay, read_rgb,
                               read_scores)

    _check_collisions({"-o/--output": out, "--save-probs": save_probs, "--overlay": overlay},
                      {"IMAGE": image_path, "PROBS": probs_path}, "file")  # fmt: skip
    try:
        image = read_rgb(image_path)
        scores = read_scores(
            probs_path, image.shape[:2], key=args.key, layout=args.layout, logits=args.logits,
            gt_prob=args.gt_prob, num_labels=args.num_labels, unknown=args.unknown, resize=args.resize,
            max_memory=args.max_memory,
        )  # fmt: skip
    except MemoryLimitError as err:
        raise CommandError(str(err), 2) from err
    except MemoryError as err:
        raise CommandError(f"ran out of memory reading '{image_path}' and '{probs_path}' ({err or 'MemoryError'}); "
                           "use a smaller image or fewer labels.", 1) from err  # fmt: skip
    except (OSError, ValueError, TypeError) as err:
        raise CommandError(str(err), 2) from err
    kind = "logits" if scores.is_logits else "probs"
    try:
        marginals = dense_crf(image, **{kind: scores.values}, **_crf_options(args))
    except MemoryError as err:
        h, w = image.shape[:2]
        need = format_bytes(estimate_memory(h, w, scores.values.shape[0]))
        raise CommandError(
            f"ran out of memory refining '{image_path}' ({w}x{h} pixels, {scores.values.shape[0]} labels, estimated "
            f"{need}); use fewer labels or a smaller image, or lower --max-memory so that such images are refused "
            "before they start.", 1,
        ) from err  # fmt: skip
    except (ValueError, TypeError) as err:
        raise CommandError(f"{image_path}: {err}", 2) from err
    labels = labels_of(marginals)
    try:
        for target in (t for t in (out, save_probs, overlay) if t is not None):
            target.parent.mkdir(parents=True, exist_ok=True)
        save_label_png(out, labels)
        if save_probs is not None:
            atomic_np_save(save_probs, marginals.astype("float32", copy=False))
        if overlay is not None:
            from PIL import Image

            titles = None if args.no_titles else ("image", "input (argmax)", "refined (dense CRF)")
            picture = make_overlay(image, scores.labels, labels, alpha=args.overlay_alpha, titles=titles)
            atomic_save_image(Image.fromarray(picture), overlay, format="PNG", optimize=True)
    except OSError as err:
        raise CommandError(f"could not write output: {err}", 1) from err
    return scores.notes


def _check_suffix(path: Optional[str], suffix: str, option: str) -> None:
    if path is not None and Path(path).suffix.lower() != suffix:
        raise CommandError(f"{option} must name a {suffix} file, got '{path}'.", 2)


def _refine_volume(args: argparse.Namespace, guide_path: Path, probs_path: Path, out: Path,
                   save_probs: Optional[Path]) -> List[str]:
    """Refine an N-d guide (a volume) and its scores; write labels (.nii/.nii.gz/.npy/.png) and marginals."""
    import numpy as np

    from crfrnn._utils.files import atomic_np_save
    from crfrnn.dense import dense_crf
    from crfrnn.refine import MemoryLimitError, check_memory, labels_of
    from crfrnn.volumes import read_guide, read_volume_scores, write_labels

    _check_collisions({"-o/--output": out, "--save-probs": save_probs},
                      {"IMAGE": guide_path, "PROBS": probs_path}, "file")  # fmt: skip
    labels_last = {None: None, "lhw": False, "hwl": True}[args.layout]
    try:
        guide = read_guide(guide_path, max_bytes=args.max_memory)
        scores, shape, notes = read_volume_scores(probs_path, guide.data.shape, key=args.key, labels_last=labels_last,
                                                  max_bytes=args.max_memory)  # fmt: skip
        check_memory(guide_path, (1, int(np.prod(shape))), scores.shape[0], args.max_memory)
    except (MemoryLimitError, MemoryError) as err:
        raise CommandError(str(err), 2) from err
    except (OSError, ValueError, TypeError, ImportError) as err:
        raise CommandError(str(err), 2) from err
    if scores.shape[0] == 1 and save_probs is not None:
        notes.append("--save-probs holds the refined foreground probability of the one map.")
    ndim = len(shape)
    spacing = args.spacing if args.spacing is not None else (guide.spacing[:ndim] if guide.spacing else None)
    if spacing is not None and len(spacing) != ndim:
        raise CommandError(f"--spacing needs {ndim} numbers (one per axis of {shape}), got {len(spacing)}.", 2)
    data = guide.data
    if data.dtype.kind == "f" or data.max() > 255:
        notes.append(f"guide intensities span {float(data.min()):g}..{float(data.max()):g}; --bilateral-srgb "
                     f"{args.bilateral_srgb:g} is in those units.")  # fmt: skip
    if spacing is not None:
        shown = ", ".join(f"{float(v):.4g}" for v in spacing)
        notes.append(f"spacing ({shown}): --gaussian-sxy and --bilateral-sxy are in those units.")
    kind = "logits" if args.logits else "probs"
    try:
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # the intensity-scale hint is in the notes instead
            marginals = dense_crf(data.astype(np.float32, copy=False), **{kind: scores}, spacing=spacing,
                                  **_crf_options(args))  # fmt: skip
    except MemoryError as err:
        raise CommandError(f"ran out of memory refining '{guide_path}' (shape {shape}, {scores.shape[0]} labels).", 1) from err
    except (ValueError, TypeError) as err:
        raise CommandError(f"{guide_path}: {err}", 2) from err
    labels = labels_of(marginals)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        if out.suffix.lower() == ".png":
            from crfrnn.data.palette import save_label_png

            save_label_png(out, labels)
        else:
            write_labels(out, labels, guide, spacing)
        if save_probs is not None:
            save_probs.parent.mkdir(parents=True, exist_ok=True)
            atomic_np_save(save_probs, marginals.astype("float32", copy=False))
    except (OSError, ImportError) as err:
        raise CommandError(f"could not write output: {err}", 1) from err
    return notes


def _run_volume(args: argparse.Namespace) -> int:
    name = args.output.lower()
    if not name.endswith((".nii", ".nii.gz", ".npy", ".png")):
        raise CommandError(f"-o/--output for a volume must name a .nii, .nii.gz or .npy file (.png for 2-d data), got "
                           f"'{args.output}'.", 2)  # fmt: skip
    if args.overlay is not None:
        raise CommandError("--overlay draws 2-d images; for volumes, write the labels and view them in a volume viewer.", 2)
    _check_suffix(args.save_probs, ".npy", "--save-probs")
    out = Path(args.output)
    save_probs = Path(args.save_probs) if args.save_probs else None
    notes = _refine_volume(args, Path(args.image), Path(args.probs), out, save_probs)
    for note in notes:
        print(f"crfrnn refine: note: {note}", file=sys.stderr)
    print("wrote " + ", ".join(f"'{p}'" for p in (out, save_probs) if p is not None))
    return 0


def _run_single(args: argparse.Namespace) -> int:
    from crfrnn.volumes import is_array_path

    if is_array_path(args.image):
        return _run_volume(args)
    if args.spacing is not None:
        raise CommandError("--spacing applies to volumes (an IMAGE given as .npy, .npz, .nii or .nii.gz).", 2)
    _check_suffix(args.output, ".png", "-o/--output")
    _check_suffix(args.save_probs, ".npy", "--save-probs")
    _check_suffix(args.overlay, ".png", "--overlay")
    paths = [Path(p) if p is not None else None for p in (args.output, args.save_probs, args.overlay)]
    notes = _refine_one(args, Path(args.image), Path(args.probs), *paths)
    for note in notes:
        print(f"crfrnn refine: note: {note}", file=sys.stderr)
    print("wrote " + ", ".join(f"'{p}'" for p in paths if p is not None))
    return 0


def _output_dir(path: Optional[str], option: str) -> Optional[Path]:
    if path is None:
        return None
    directory = Path(path)
    if directory.exists() and not directory.is_dir():
        raise CommandError(f"with --images, {option} must be a directory, but '{path}' is a file.", 2)
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise CommandError(f"could not create the directory '{path}' for {option}: {err}", 1) from err
    return directory


#: Below this many images a folder is refined in this process: starting a worker (importing torch and the
#: compiled kernels) costs as much as their speed-up gains on about 40 photos of 500x375 (benchmarks/README.md).
_MIN_IMAGES_FOR_PROCESSES = 48


def _worker_count(jobs: Optional[int], count: int) -> int:
    """Worker processes for ``count`` images: ``jobs`` if given, else the free CPUs when there are enough images.

    Single-threaded processes beat one process with as many threads because part of every call (building the
    lattices) is sequential; below :data:`_MIN_IMAGES_FOR_PROCESSES` images their start-up costs more than that.
    """
    if jobs is not None:
        return max(1, min(jobs, count))
    from crfrnn._utils.threads import free_cpus

    cpus = free_cpus()
    return cpus if cpus > 1 and count >= _MIN_IMAGES_FOR_PROCESSES else 1


def _refine_target(args: argparse.Namespace, target: tuple) -> Tuple[Path, Optional[str], List[str]]:
    """One pair: ``(image_path, failure message or None, notes)``; never raises but for KeyboardInterrupt."""
    stem, image_path, probs_path, out, save_probs, overlay = target
    try:
        return image_path, None, _refine_one(args, image_path, probs_path, out, save_probs, overlay)
    except CommandError as err:
        return image_path, str(err), []
    except Exception as err:  # anything else fails this pair only; KeyboardInterrupt still stops the run
        text = " ".join(str(err).split()) or "(no message)"
        return image_path, f"{type(err).__name__}: {text}", []


def _refine_in_this_process(args: argparse.Namespace, targets: list) -> Iterator[Tuple[Path, Optional[str], List[str]]]:
    for target in targets:
        yield _refine_target(args, target)


def _worker_init() -> None:
    import numba
    import torch

    numba.set_num_threads(1)
    torch.set_num_threads(1)


def _refine_in_processes(args: argparse.Namespace, targets: list, jobs: int) -> Iterator[Tuple[Path, Optional[str], List[str]]]:
    """Refine in ``jobs`` spawned single-threaded processes, yielding results as they finish."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed
    from functools import partial

    pool = ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn"),
                               initializer=_worker_init)  # fmt: skip
    try:
        futures = [pool.submit(partial(_refine_target, args), target) for target in targets]
        for future in as_completed(futures):
            yield future.result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _run_batch(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from crfrnn.refine import pair_by_stem

    try:
        pairs, problems = pair_by_stem(args.images_dir, args.probs_dir)
    except NotADirectoryError as err:
        raise CommandError(str(err), 2) from err
    if not pairs and not problems:
        raise CommandError(f"no images in '{args.images_dir}' and no scores in '{args.probs_dir}'.", 2)
    inputs = {"--images": Path(args.images_dir), "--probs": Path(args.probs_dir)}
    pngs = {o: None if p is None else Path(p) for o, p in (("-o/--output", args.output), ("--overlay", args.overlay))}
    _check_collisions(pngs, inputs, "directory")  # both write <stem>.png
    _check_collisions({"--save-probs": None if args.save_probs is None else Path(args.save_probs)}, inputs, "directory")
    out_dir = _output_dir(args.output, "-o/--output")
    probs_dir = _output_dir(args.save_probs, "--save-probs")
    overlay_dir = _output_dir(args.overlay, "--overlay")
    for name, reason in problems:
        print(f"crfrnn refine: skipped '{name}': {reason}", file=sys.stderr)
    start = time.perf_counter()
    jobs = _worker_count(args.jobs, len(pairs))
    targets = [
        (stem, image_path, probs_path, out_dir / f"{stem}.png", None if probs_dir is None else probs_dir / f"{stem}.npy",
         None if overlay_dir is None else overlay_dir / f"{stem}.png")
        for stem, image_path, probs_path in pairs
    ]  # fmt: skip
    if jobs > 1:
        print(f"crfrnn refine: {len(pairs)} images in {jobs} worker processes, one thread each", file=sys.stderr)
        results = _refine_in_processes(args, targets, jobs)
    else:
        results = _refine_in_this_process(args, targets)
    done = 0
    seen: Dict[str, int] = {}  # a note told once, with the file names taken out: how often it came again
    bar = tqdm(results, total=len(targets), desc="refine", unit="image", file=sys.stderr, disable=None)
    for image_path, failure, notes in bar:
        if failure is not None:
            tqdm.write(f"crfrnn refine: failed '{image_path}': {failure}", file=sys.stderr)
            continue
        for note in notes:
            kind = re.sub(r"'[^']*'", "''", note)
            if kind in seen:
                seen[kind] += 1
            else:
                seen[kind] = 0
                tqdm.write(f"crfrnn refine: note: {note}", file=sys.stderr)
        done += 1
    repeated = sum(seen.values())
    if repeated:
        print(f"crfrnn refine: note: {repeated} more notes like those above for other files were not repeated.",
              file=sys.stderr)  # fmt: skip
    failed = len(pairs) - done + len(problems)
    elapsed = time.perf_counter() - start
    unpaired = f" ({len(problems)} without a partner)" if problems else ""
    print(f"crfrnn refine: {done} done, {failed} failed{unpaired}, {elapsed:.1f} s; labels in '{out_dir}'")
    return 0 if failed == 0 else 1


def run(args: argparse.Namespace) -> int:
    """Run ``crfrnn refine`` on parsed arguments; returns the exit code (see the module docstring)."""
    from PIL import Image

    from crfrnn.refine import default_memory_limit

    batch = args.images_dir is not None or args.probs_dir is not None
    if batch:
        if args.images_dir is None or args.probs_dir is None:
            raise CommandError("--images DIR and --probs DIR go together; pass both.", 2)
        if args.image is not None or args.probs is not None:
            raise CommandError("pass either IMAGE PROBS or --images DIR --probs DIR, not both.", 2)
    elif args.image is None or args.probs is None:
        raise CommandError("expected IMAGE and PROBS (or --images DIR --probs DIR); see 'crfrnn refine --help'.", 2)
    _resolve_crf_options(args)
    if args.max_memory is None:
        args.max_memory = default_memory_limit()
    saved_limit = Image.MAX_IMAGE_PIXELS
    if args.max_pixels is not None:
        Image.MAX_IMAGE_PIXELS = args.max_pixels
    try:
        return _run_batch(args) if batch else _run_single(args)
    finally:
        Image.MAX_IMAGE_PIXELS = saved_limit

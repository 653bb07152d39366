"""The steps of ``crfrnn refine`` on one input: read, check, refine, write (:mod:`crfrnn.cli.refine`).

The readers (:mod:`crfrnn.io`) name their parameters in their messages; :data:`FLAGS` names the flags that set
them, and :func:`input_error` rewrites a reader's error with them.
"""

from __future__ import annotations

import argparse
import warnings
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np
import torch
from PIL import Image

import crfrnn.dense
from crfrnn._utils.files import atomic_np_save, atomic_save_image
from crfrnn.cli import CommandError
from crfrnn.cli._flags import name_flags
from crfrnn.cli._outputs import check_outputs
from crfrnn.data.palette import save_label_png
from crfrnn.io import (
    MemoryLimitError,
    check_memory,
    format_bytes,
    kernel_spans,
    labels_of,
    read_rgb,
    read_scores,
    read_volume,
    write_labels,
)
from crfrnn.visualize import make_overlay

__all__ = ["FLAGS", "crf_options", "input_error", "refine_one", "refine_volume"]

#: the readers' parameters (named in their messages) and the flags that set them
FLAGS = {
    "PIL.Image.MAX_IMAGE_PIXELS": "--max-pixels",
    "gt_prob": "--gt-prob",
    "key": "--key",
    "layout": "--layout",
    "logits": "--logits",
    "max_memory": "--max-memory",
    "num_classes": "--num-labels",
    "resize": "--resize",
    "unknown": "--unknown",
}


def input_error(err: BaseException) -> CommandError:
    """A reader's error as this command's (exit code 2), its parameters named as flags."""
    return CommandError(name_flags(str(err), FLAGS), 2)


def crf_options(args: argparse.Namespace, channels: Optional[int] = None, guide: Any = None) -> Dict[str, Any]:
    """The CRF's parameters from the flags; ``channels``: the guide's, to which --bilateral-srgb's widths are
    matched (one width is every channel's; else one per channel, checked here; ``guide`` is named in the error).
    """
    names = ("num_iterations", "gaussian_sxy", "gaussian_compat", "bilateral_sxy", "bilateral_srgb", "bilateral_compat")
    options = (
        {name: getattr(args, name) for name in names}
        | {"normalization": args.normalization}
        | getattr(args, "crf_extra", {})
    )
    srgb = options["bilateral_srgb"]
    if channels is not None:
        widths = [float(v) for v in np.atleast_1d(np.asarray(srgb, dtype=np.float64))]
        if len(widths) == 1:
            options["bilateral_srgb"] = widths * channels if channels > 1 else widths[0]
        elif len(widths) != channels:
            shown = " ".join(f"{v:g}" for v in widths)
            raise CommandError(
                f"--bilateral-srgb got {len(widths)} widths ({shown}) but the guide '{guide}' has {channels} "
                f"channel{'s' if channels != 1 else ''}; give one width for all channels or {channels} (one per "
                "channel, in the guide's channel order).",
                2,
            )
    return options


def check_size(
    args: argparse.Namespace,
    path: Path,
    guide: np.ndarray,
    spatial: tuple,
    num_labels: int,
    options: Dict[str, Any],
    spacing: Any = None,
) -> int:
    """The memory check once the widths and the guide are known: :func:`crfrnn.io.check_memory` with the
    kernels' spans (small widths or many channels make the lattice, and the memory, many times larger).

    ``guide``: ``S`` or ``S + (C,)`` with ``spatial = S``. Returns the estimate in bytes; raises MemoryLimitError.
    """
    flat = guide.reshape(int(np.prod(spatial)), -1)
    ranges = [float(v) for v in flat.max(0).astype(np.float64) - flat.min(0).astype(np.float64)]
    widths = (options["gaussian_sxy"], options["bilateral_sxy"], options["bilateral_srgb"])
    kernels = kernel_spans(spatial, ranges, *widths, spacing=spacing)
    size = tuple(spatial) if len(spatial) == 2 else (1, int(np.prod(spatial)))
    return check_memory(path, size, max(2, num_labels), args.max_memory, kernels=kernels)


def _srgb_text(srgb: Any) -> str:
    return " ".join(f"{float(v):g}" for v in np.atleast_1d(np.asarray(srgb, dtype=np.float64)))


def on_device(
    args: argparse.Namespace, image: np.ndarray, unary: Dict[str, Any], options: Dict[str, Any]
) -> np.ndarray:
    """:func:`crfrnn.dense_crf` of ``image (H, W, 3)`` and ``unary`` (``(L, H, W)`` arrays) on ``--device``, with
    the CRF ``options`` (:func:`crf_options`).

    On the CPU the arrays go in as they are (the compiled kernels); elsewhere as tensors on that device (the
    PyTorch path), the marginals ``(L, H, W)`` coming back as a NumPy array.
    """
    device = getattr(args, "torch_device", None)
    if device is None or device.type == "cpu":
        return crfrnn.dense.dense_crf(image, **unary, **options)  # type: ignore[return-value]
    guide = torch.from_numpy(np.ascontiguousarray(image)).to(device=device, dtype=torch.float32)
    on: Dict[str, Any] = {k: torch.from_numpy(np.ascontiguousarray(v)).to(device) for k, v in unary.items()}
    return crfrnn.dense.dense_crf(guide, **on, **options).cpu().numpy()  # type: ignore[union-attr]


def refine_one(
    args: argparse.Namespace,
    image_path: Path,
    probs_path: Path,
    out: Path,
    save_probs: Optional[Path],
    overlay: Optional[Path],
) -> List[str]:
    """Refine one pair and write its outputs; returns notes. Raises CommandError (2: input, 1: writing)."""
    check_outputs(
        [("-o/--output", out), ("--save-probs", save_probs), ("--overlay", overlay)],
        [("IMAGE", image_path), ("PROBS", probs_path)],
    )
    try:
        image = read_rgb(image_path)
        scores = read_scores(
            probs_path,
            image.shape[:2],
            key=args.key,
            layout=args.layout,
            logits=args.logits,
            gt_prob=args.gt_prob,
            num_classes=args.num_labels,
            unknown=args.unknown,
            resize=args.resize,
            max_memory=args.max_memory,
        )
    except MemoryLimitError as err:
        raise input_error(err) from err
    except MemoryError as err:
        raise CommandError(
            f"ran out of memory reading '{image_path}' and '{probs_path}' ({err or 'MemoryError'}); "
            "use a smaller image or fewer labels.",
            1,
        ) from err
    except (OSError, ValueError, TypeError) as err:
        raise input_error(err) from err
    unary: dict[str, Any] = {"logits" if scores.is_logits else "probs": scores.values}
    options = crf_options(args, image.shape[2] if image.ndim == 3 else 1, image_path)
    try:
        need_bytes = check_size(args, image_path, image, image.shape[:2], scores.values.shape[0], options)
    except MemoryLimitError as err:
        raise input_error(err) from err
    try:
        marginals = on_device(args, image, unary, options)
    except MemoryError as err:
        h, w = image.shape[:2]
        need = format_bytes(need_bytes)
        raise CommandError(
            f"ran out of memory refining '{image_path}' ({w}x{h} pixels, {scores.values.shape[0]} labels, estimated "
            f"{need}); use fewer labels or a smaller image, or lower --max-memory so that such images are refused "
            "before they start.",
            1,
        ) from err
    except (ValueError, TypeError) as err:
        raise CommandError(f"{image_path}: {err}", 2) from err
    assert isinstance(marginals, np.ndarray)  # NumPy in, NumPy out
    labels = labels_of(marginals)
    try:
        for target in (t for t in (out, save_probs, overlay) if t is not None):
            target.parent.mkdir(parents=True, exist_ok=True)
        save_label_png(out, labels)
        if save_probs is not None:
            atomic_np_save(save_probs, marginals.astype("float32", copy=False))
        if overlay is not None:
            titles = None if args.no_titles else ("image", "input (argmax)", "refined (dense CRF)")
            picture = make_overlay(
                image, scores.labels, labels, alpha=args.overlay_alpha, titles=titles, legend=titles is not None
            )
            atomic_save_image(Image.fromarray(picture), overlay, format="PNG", optimize=True)
    except OSError as err:
        raise CommandError(f"could not write output: {err}", 1) from err
    return [name_flags(note, FLAGS) for note in scores.notes]


def refine_volume(
    args: argparse.Namespace, guide_path: Path, probs_path: Path, out: Path, save_probs: Optional[Path]
) -> List[str]:
    """Refine an N-d guide (a volume) and its scores; write labels (.nii/.nii.gz/.npy/.png) and marginals."""
    check_outputs([("-o/--output", out), ("--save-probs", save_probs)], [("IMAGE", guide_path), ("PROBS", probs_path)])
    labels_last = {None: None, "lhw": False, "hwl": True}[args.layout]
    try:
        guide, scores, shape, notes = read_volume(  # a NumPy guide may be stored channels first
            guide_path, probs_path, key=args.key, labels_last=labels_last, max_bytes=args.max_memory
        )
        check_memory(guide_path, (1, int(np.prod(shape))), scores.shape[0], args.max_memory, kernels=())
    except (MemoryLimitError, MemoryError) as err:
        raise input_error(err) from err
    except (OSError, ValueError, TypeError, ImportError) as err:
        raise input_error(err) from err
    notes = [name_flags(note, FLAGS) for note in notes]
    if scores.shape[0] == 1 and save_probs is not None:
        notes.append("--save-probs holds the refined foreground probability of the one map.")
    ndim = len(shape)
    spacing = args.spacing if args.spacing is not None else (guide.spacing[:ndim] if guide.spacing else None)
    if spacing is not None and len(spacing) != ndim:
        raise CommandError(f"--spacing needs {ndim} numbers (one per axis of {shape}), got {len(spacing)}.", 2)
    data = guide.data
    if data.dtype.kind == "f" or data.max() > 255:
        notes.append(
            f"guide intensities span {float(data.min()):g}..{float(data.max()):g}; --bilateral-srgb "
            f"{_srgb_text(args.bilateral_srgb)} is in those units."
        )
    if spacing is not None:
        shown = ", ".join(f"{float(v):.4g}" for v in spacing)
        notes.append(f"spacing ({shown}): --gaussian-sxy and --bilateral-sxy are in those units.")
    unary: dict[str, Any] = {"logits" if args.logits else "probs": scores}
    options = crf_options(args, data.shape[-1] if data.ndim > ndim else 1, guide_path)
    try:
        check_size(args, guide_path, data, tuple(shape), scores.shape[0], options, spacing)
    except MemoryLimitError as err:
        raise input_error(err) from err
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # the intensity-scale hint is in the notes instead
            marginals = crfrnn.dense.dense_crf(data.astype(np.float32, copy=False), **unary, spacing=spacing, **options)
    except MemoryError as err:
        raise CommandError(
            f"ran out of memory refining '{guide_path}' (shape {shape}, {scores.shape[0]} labels).", 1
        ) from err
    except (ValueError, TypeError) as err:
        raise CommandError(f"{guide_path}: {err}", 2) from err
    assert isinstance(marginals, np.ndarray)  # NumPy in, NumPy out
    labels = labels_of(marginals)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        if out.suffix.lower() == ".png":
            save_label_png(out, labels)
        else:
            write_labels(out, labels, guide, spacing)
        if save_probs is not None:
            save_probs.parent.mkdir(parents=True, exist_ok=True)
            atomic_np_save(save_probs, marginals.astype("float32", copy=False))
    except (OSError, ImportError) as err:
        raise CommandError(f"could not write output: {err}", 1) from err
    return notes

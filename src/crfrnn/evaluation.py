"""Evaluating segmentation networks the way the CRF-RNN paper compares them.

Three methods are compared on the same images (Zheng et al. 2015, Table 1):

- ``"cnn"``: the CNN alone (the backbone of a :class:`~crfrnn.models.CrfRnnSegmenter`, or a plain
  network returning logits);
- ``"cnn+densecrf"``: the CNN's logits refined offline by :func:`crfrnn.dense_crf` with fixed parameters
  (densecrf's by default, or those found by :func:`search_dense_crf`);
- ``"crfrnn"``: the full CNN + CRF-RNN network in eval mode (its ``num_eval_iterations``).

The CNN runs once per batch and its logits feed every method. For each method :func:`evaluate` accumulates
a confusion matrix (mean IoU, pixel accuracy, mean class accuracy, per-class IoU) and the same metrics in
bands of 1 to 20 pixels around ground-truth label boundaries (:class:`crfrnn.metrics.BoundaryAccuracy`),
where the paper's claim is that a CRF helps most. :func:`write_report` writes the results as JSON, a
Markdown table and a plot of boundary accuracy against band width.

Distributed evaluation: when :mod:`torch.distributed` is initialised, each process evaluates every
``world_size``-th image (starting at its rank) and the confusion matrices are summed across processes, so
every process returns the metrics of the whole data set.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import os
import time
import warnings
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, Subset

from crfrnn._io import atomic_savefig, atomic_write_text
from crfrnn.dense import dense_crf
from crfrnn.metrics import DEFAULT_WIDTHS, BoundaryAccuracy, ConfusionMatrix
from crfrnn.models.segmenter import CrfRnnSegmenter

__all__ = [
    "DEFAULT_SEARCH_GRID",
    "DENSE_CRF_DEFAULTS",
    "METHODS",
    "METHOD_TITLES",
    "PLOT_DPI",
    "PLOT_SIZE",
    "evaluate",
    "format_table",
    "predict",
    "search_dense_crf",
    "write_report",
]

PathLike = Union[str, "os.PathLike[str]"]
DeviceLike = Union[torch.device, str, None]

#: the evaluation methods, in the order of the paper's Table 1
METHODS: tuple[str, ...] = ("cnn", "cnn+densecrf", "crfrnn")
#: display names of the methods (report tables, plot legends, grid titles)
METHOD_TITLES: dict[str, str] = {"cnn": "CNN", "cnn+densecrf": "CNN + dense CRF", "crfrnn": "CRF-RNN"}
#: Krähenbühl's densecrf parameters as usually called (SPEC section 8); keyword arguments of dense_crf
DENSE_CRF_DEFAULTS: dict[str, Any] = {
    "iterations": 5,
    "gaussian_sxy": 3.0,
    "gaussian_compat": 3.0,
    "bilateral_sxy": 80.0,
    "bilateral_srgb": 13.0,
    "bilateral_compat": 10.0,
    "normalization": "symmetric",
}
#: the default grid of :func:`search_dense_crf` (27 points around densecrf's defaults)
DEFAULT_SEARCH_GRID: dict[str, tuple[float, ...]] = {
    "bilateral_sxy": (20.0, 50.0, 80.0),
    "bilateral_srgb": (5.0, 13.0, 25.0),
    "bilateral_compat": (3.0, 5.0, 10.0),
}


# --------------------------------------------------------------------------------------------------------
# argument checks
# --------------------------------------------------------------------------------------------------------
def _unwrap(model: nn.Module) -> nn.Module:
    """The module inside ``DataParallel`` / ``DistributedDataParallel`` wrappers."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}.")
    while isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
        model = model.module
    return model


def _check_methods(methods: Union[str, Iterable[str]], model: nn.Module) -> tuple[str, ...]:
    if isinstance(methods, str):
        methods = (methods,)
    methods = tuple(methods)
    if not methods:
        raise ValueError(f"methods must name at least one of {list(METHODS)}, got an empty sequence.")
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ValueError(f"unknown method(s) {unknown}; valid methods are {list(METHODS)}.")
    if len(set(methods)) != len(methods):
        raise ValueError(f"methods must not repeat a name, got {list(methods)}.")
    if "crfrnn" in methods and not isinstance(model, CrfRnnSegmenter):
        raise ValueError(
            f"method 'crfrnn' needs a CNN + CRF-RNN model (crfrnn.models.CrfRnnSegmenter), got a "
            f"{type(model).__name__}. Drop 'crfrnn' from methods to evaluate this network as a plain CNN."
        )
    return tuple(m for m in METHODS if m in methods)  # canonical order


def _dense_crf_params(params: Optional[Mapping[str, Any]]) -> dict[str, Any]:
    """densecrf's defaults updated with ``params``; unknown names are rejected."""
    out = dict(DENSE_CRF_DEFAULTS)
    if params is None:
        return out
    if not isinstance(params, Mapping):
        raise TypeError(
            f"dense_crf_params must be a mapping of dense_crf keyword arguments, got {type(params).__name__}."
        )
    unknown = sorted(set(params) - set(DENSE_CRF_DEFAULTS))
    if unknown:
        raise ValueError(
            f"unknown dense CRF parameter(s) {unknown}; valid names are {sorted(DENSE_CRF_DEFAULTS)} "
            "(keyword arguments of crfrnn.dense_crf)."
        )
    out.update(params)
    return out


def _check_count(value: Optional[int], name: str, minimum: int) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum} or None, got {value!r}.")


def _model_device(model: nn.Module) -> torch.device:
    for p in itertools.chain(model.parameters(), model.buffers()):
        return p.device
    return torch.device("cpu")


@contextlib.contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    """Put every submodule in eval mode and restore each one's own flag afterwards."""
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for m, flag in flags:
            m.training = flag


# --------------------------------------------------------------------------------------------------------
# prediction
# --------------------------------------------------------------------------------------------------------
def _cnn_logits(model: nn.Module, image: Tensor) -> Tensor:
    """The CNN's logits ``(B, L, H, W)`` at the image size (a segmenter's backbone, or the plain model)."""
    if isinstance(model, CrfRnnSegmenter):
        return model.unary(image)
    out = model(image)
    if not isinstance(out, Tensor) or out.ndim != 4:
        got = f"shape {tuple(out.shape)}" if isinstance(out, Tensor) else f"a {type(out).__name__}"
        raise ValueError(f"the model must return logits of shape (B, L, H, W), got {got}.")
    if out.shape[-2:] != image.shape[-2:]:
        out = F.interpolate(out, size=image.shape[-2:], mode="bilinear", align_corners=False)
    return out


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _predict(
    model: nn.Module,
    image: Tensor,
    methods: Sequence[str],
    crf_params: Mapping[str, Any],
    num_classes: Optional[int] = None,
) -> tuple[dict[str, Tensor], dict[str, float]]:
    """Worker: label maps ``(B, H, W)`` and seconds per method (the whole pipeline of each)."""
    labels: dict[str, Tensor] = {}
    seconds: dict[str, float] = {}
    t0 = time.perf_counter()
    unary = _cnn_logits(model, image)
    if num_classes is not None and unary.shape[1] != num_classes:
        raise ValueError(
            f"the model returned scores for {unary.shape[1]} classes but num_classes={num_classes}; pass the "
            "number of classes the model was built for (and data with those labels)."
        )
    _sync(unary.device)
    t_cnn = time.perf_counter() - t0
    if "cnn" in methods:
        labels["cnn"] = unary.argmax(1)
        seconds["cnn"] = t_cnn
    if "cnn+densecrf" in methods:
        t0 = time.perf_counter()
        q = dense_crf(image, logits=unary, **crf_params)
        labels["cnn+densecrf"] = q.argmax(1)
        _sync(q.device)
        seconds["cnn+densecrf"] = t_cnn + time.perf_counter() - t0
    if "crfrnn" in methods:
        t0 = time.perf_counter()
        released = getattr(model, "pad_to", None) is not None or getattr(model, "crf_input", None) is not None
        if released:  # e.g. the released network: padded canvas, BGR guide; run its whole pipeline
            out = model(image, use_crf=True)
            refined = out[0] if isinstance(out, tuple) else out
        else:
            refined = model.crf(unary, image)
        labels["crfrnn"] = refined.argmax(1)
        _sync(refined.device)
        seconds["crfrnn"] = (0.0 if released else t_cnn) + time.perf_counter() - t0
    return labels, seconds


def predict(
    model: nn.Module,
    image: Tensor,
    *,
    methods: Iterable[str] = ("cnn", "crfrnn"),
    dense_crf_params: Optional[Mapping[str, Any]] = None,
) -> dict[str, Tensor]:
    """Label maps of a batch of images by each method, the CNN computed once.

    The model runs in eval mode without gradients; the training flags of its submodules are restored.

    Args:
        model: a :class:`~crfrnn.models.CrfRnnSegmenter` or a plain network mapping an image to logits.
        image: ``(B, 3, H, W)`` RGB on the 0..255 scale, on the model's device.
        methods: names from :data:`METHODS`; ``"crfrnn"`` needs a ``CrfRnnSegmenter``.
        dense_crf_params: keyword arguments of :func:`crfrnn.dense_crf` for ``"cnn+densecrf"``, updating
            :data:`DENSE_CRF_DEFAULTS`.

    Returns:
        ``{method: (B, H, W) int64 labels}`` on the image's device, methods in :data:`METHODS` order.

    Example:
        >>> from crfrnn.models import create
        >>> model = create("small_fcn_crfrnn", num_classes=3, backbone_kwargs={"width": 8})
        >>> out = predict(model, torch.rand(1, 3, 16, 16) * 255, methods=("cnn", "cnn+densecrf", "crfrnn"))
        >>> {k: tuple(v.shape) for k, v in out.items()}
        {'cnn': (1, 16, 16), 'cnn+densecrf': (1, 16, 16), 'crfrnn': (1, 16, 16)}
    """
    model = _unwrap(model)
    methods = _check_methods(methods, model)
    params = _dense_crf_params(dense_crf_params)
    with _eval_mode(model), torch.no_grad():
        return _predict(model, image, methods, params)[0]


# --------------------------------------------------------------------------------------------------------
# data
# --------------------------------------------------------------------------------------------------------
def _distributed() -> tuple[int, int]:
    """``(rank, world_size)``, ``(0, 1)`` when torch.distributed is not initialised."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def _loader(dataset: Dataset, batch_size: int, max_images: Optional[int], ignore_index: int) -> tuple[DataLoader, int]:
    """This process's share of the first ``max_images`` samples, batched with padding; and the total count."""
    from crfrnn.data import pad_collate

    if not hasattr(dataset, "__len__") or not hasattr(dataset, "__getitem__"):
        raise TypeError(
            f"dataset must be a map-style data set (with __len__ and __getitem__), got {type(dataset).__name__}."
        )
    total = len(dataset) if max_images is None else min(len(dataset), max_images)
    if total == 0:
        raise ValueError("the data set is empty (or max_images=0): there is nothing to evaluate.")
    rank, world = _distributed()
    subset = Subset(dataset, range(rank, total, world))

    def collate(batch: list) -> tuple[Tensor, Tensor]:
        return pad_collate(batch, ignore_index=ignore_index)

    return DataLoader(subset, batch_size=batch_size, shuffle=False, collate_fn=collate), total


def _progress(iterable: Iterable, enabled: bool, total: int, desc: str) -> Iterable:
    if not enabled or _distributed()[0] != 0:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, total=total, desc=desc, unit="batch", leave=False)


def _resolve_device(model: nn.Module, device: DeviceLike) -> torch.device:
    if device is None:
        return _model_device(model)
    device = torch.device(device)
    if _model_device(model) != device:
        model.to(device)
    return device


# --------------------------------------------------------------------------------------------------------
# evaluation
# --------------------------------------------------------------------------------------------------------
def _json_metrics(cm: ConfusionMatrix, boundary: BoundaryAccuracy) -> dict[str, Any]:
    m = cm.compute()
    out = {k: v for k, v in m.items() if k != "confusion_matrix"}
    out["confusion_matrix"] = m["confusion_matrix"].cpu().tolist()
    out["boundary"] = [
        {"width": int(w), **{k: r[k] for k in ("pixel_accuracy", "mean_iou", "mean_class_accuracy", "num_pixels")}}
        for w, r in boundary.compute().items()
    ]
    return out


def evaluate(
    model: nn.Module,
    dataset: Dataset,
    *,
    num_classes: int,
    methods: Iterable[str] = ("cnn", "crfrnn"),
    dense_crf_params: Optional[Mapping[str, Any]] = None,
    boundary_widths: Iterable[int] = DEFAULT_WIDTHS,
    batch_size: int = 1,
    device: DeviceLike = None,
    progress: bool = True,
    max_images: Optional[int] = None,
    ignore_index: int = 255,
    include_void_edges: bool = False,
) -> dict[str, Any]:
    """Segmentation metrics of the CNN, the CNN + offline dense CRF and CRF-RNN on a data set.

    Batches of more than one image are padded to a common size with :func:`crfrnn.data.pad_collate`
    (padded pixels are void and never counted, but the network and the CRFs see them); ``batch_size=1``
    evaluates every image at its own size.

    Args:
        model: a :class:`~crfrnn.models.CrfRnnSegmenter` or a plain network mapping ``(B, 3, H, W)`` images
            (0..255) to logits ``(B, L, h, w)`` (up-sampled bilinearly to the image size if smaller). It is
            run in eval mode without gradients; its submodules' training flags are restored afterwards.
        dataset: map-style data set of ``(image (3, H, W) float 0..255, mask (H, W) int64)`` samples.
        num_classes: number of labels ``L``.
        methods: names from :data:`METHODS`; ``"crfrnn"`` needs a ``CrfRnnSegmenter``.
        dense_crf_params: keyword arguments of :func:`crfrnn.dense_crf` for ``"cnn+densecrf"``, updating
            :data:`DENSE_CRF_DEFAULTS` (densecrf's usual parameters).
        boundary_widths: band half-widths in pixels for the boundary metrics.
        batch_size: images per forward pass.
        device: where to run; the model is moved there if it is elsewhere. ``None``: the model's device.
        progress: show a progress bar (on rank 0 only).
        max_images: evaluate only the first ``max_images`` images.
        ignore_index: mask value of void pixels.
        include_void_edges: count label/void transitions as boundaries (for VOC-style void outlines); see
            :func:`crfrnn.metrics.boundary_mask`.

    Returns:
        A JSON-friendly dict (the metrics are Python floats, ``NaN`` where undefined)::

            {"num_images": N, "num_classes": L, "ignore_index": 255, "include_void_edges": False,
             "boundary_widths": [1, 2, ...], "dense_crf_params": {...} or None,
             "methods": {method: {"mean_iou", "pixel_accuracy", "mean_class_accuracy",
                                  "frequency_weighted_iou", "per_class_iou": [L], "per_class_accuracy": [L],
                                  "num_pixels", "confusion_matrix": [[L] * L],
                                  "boundary": [{"width", "pixel_accuracy", "mean_iou",
                                                "mean_class_accuracy", "num_pixels"}, ...],
                                  "seconds_per_image": time of the whole pipeline (CNN + CRF) per image}}}

        ``dense_crf_params`` holds the full parameters used when ``"cnn+densecrf"`` was evaluated.

    Example:
        >>> from crfrnn.data import SyntheticShapes
        >>> from crfrnn.models import create
        >>> model = create("small_fcn_crfrnn", num_classes=7, backbone_kwargs={"width": 8})
        >>> r = evaluate(model, SyntheticShapes(2, size=32), num_classes=7, progress=False)
        >>> sorted(r["methods"]), 0.0 <= r["methods"]["crfrnn"]["mean_iou"] <= 1.0
        (['cnn', 'crfrnn'], True)
    """
    model = _unwrap(model)
    methods = _check_methods(methods, model)
    params = _dense_crf_params(dense_crf_params)
    _check_count(batch_size, "batch_size", 1)
    _check_count(max_images, "max_images", 1)
    widths = tuple(boundary_widths)
    dev = _resolve_device(model, device)
    loader, total = _loader(dataset, batch_size, max_images, ignore_index)

    confusion = {m: ConfusionMatrix(num_classes, ignore_index=ignore_index, device=dev) for m in methods}
    boundary = {
        m: BoundaryAccuracy(
            num_classes, widths=widths, ignore_index=ignore_index, include_void_edges=include_void_edges, device=dev
        )
        for m in methods
    }
    seconds = dict.fromkeys(methods, 0.0)
    with _eval_mode(model), torch.no_grad():
        for image, mask in _progress(loader, progress, len(loader), "evaluate"):
            image, mask = image.to(dev), mask.to(dev)
            labels, times = _predict(model, image, methods, params, num_classes)
            for m in methods:
                confusion[m].update(labels[m], mask)
                boundary[m].update(labels[m], mask)
                seconds[m] += times[m]

    for m in methods:
        confusion[m].all_reduce()
        boundary[m].all_reduce()
    results: dict[str, Any] = {
        "num_images": total,
        "num_classes": num_classes,
        "ignore_index": ignore_index,
        "include_void_edges": include_void_edges,
        "boundary_widths": list(boundary[methods[0]].widths),
        "dense_crf_params": params if "cnn+densecrf" in methods else None,
        "methods": {},
    }
    local_images = len(loader.dataset)
    for m in methods:
        results["methods"][m] = _json_metrics(confusion[m], boundary[m])
        results["methods"][m]["seconds_per_image"] = seconds[m] / local_images if local_images else math.nan
    return results


def _grid_points(grid: Optional[Mapping[str, Any]]) -> list[dict[str, Any]]:
    grid = DEFAULT_SEARCH_GRID if grid is None else grid
    if not isinstance(grid, Mapping) or not grid:
        raise ValueError(
            f"grid must be a non-empty mapping of dense_crf parameter names to lists of values, got {grid!r}."
        )
    unknown = sorted(set(grid) - set(DENSE_CRF_DEFAULTS))
    if unknown:
        raise ValueError(
            f"unknown dense CRF parameter(s) {unknown} in grid; valid names are {sorted(DENSE_CRF_DEFAULTS)}."
        )
    names, values = [], []
    for name, vals in grid.items():
        vals = [vals] if isinstance(vals, (str, int, float)) else list(vals)
        if not vals:
            raise ValueError(f"grid[{name!r}] is empty; give at least one value.")
        names.append(name)
        values.append(vals)
    return [dict(zip(names, combo)) for combo in itertools.product(*values)]


def search_dense_crf(
    model: nn.Module,
    dataset: Dataset,
    *,
    num_classes: int,
    grid: Optional[Mapping[str, Any]] = None,
    base_params: Optional[Mapping[str, Any]] = None,
    batch_size: int = 1,
    device: DeviceLike = None,
    progress: bool = True,
    max_images: Optional[int] = None,
    ignore_index: int = 255,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Grid search of the offline dense CRF's parameters by mean IoU, as the paper cross-validated them.

    Every grid point refines the same CNN logits: the CNN runs once per batch and its logits are reused by
    all grid points before the next batch is loaded, so nothing has to be cached across the data set (and
    memory does not grow with it). Run it on a validation split, not on the images you report on.

    Args:
        model: a :class:`~crfrnn.models.CrfRnnSegmenter` (its backbone is used) or a plain network.
        dataset: map-style data set of ``(image, mask)`` samples.
        num_classes: number of labels ``L``.
        grid: ``{dense_crf parameter: values}``; every combination is tried. Default
            :data:`DEFAULT_SEARCH_GRID` (bilateral ``sxy``, ``srgb`` and ``compat``, 27 points).
        base_params: values of the parameters not in the grid, updating :data:`DENSE_CRF_DEFAULTS`.
        batch_size, device, progress, max_images, ignore_index: as in :func:`evaluate`.

    Returns:
        ``(best_params, table)``: the full :func:`crfrnn.dense_crf` keyword arguments of the grid point with
        the highest mean IoU (the first one on ties), and one row per grid point in grid order:
        ``{**grid point, "mean_iou", "pixel_accuracy", "mean_class_accuracy"}``.

    Example:
        >>> from crfrnn.data import SyntheticShapes
        >>> from crfrnn.models import create
        >>> model = create("small_fcn", num_classes=7, width=8)
        >>> best, table = search_dense_crf(model, SyntheticShapes(1, size=24), num_classes=7,
        ...                                grid={"bilateral_compat": [3, 10]}, progress=False)
        >>> len(table), best["bilateral_compat"] in (3, 10)
        (2, True)
    """
    model = _unwrap(model)
    base = _dense_crf_params(base_params)
    points = _grid_points(grid)
    _check_count(batch_size, "batch_size", 1)
    _check_count(max_images, "max_images", 1)
    dev = _resolve_device(model, device)
    loader, _ = _loader(dataset, batch_size, max_images, ignore_index)
    matrices = [ConfusionMatrix(num_classes, ignore_index=ignore_index, device=dev) for _ in points]
    with _eval_mode(model), torch.no_grad():
        for image, mask in _progress(loader, progress, len(loader), "dense CRF search"):
            image, mask = image.to(dev), mask.to(dev)
            unary = _cnn_logits(model, image)
            if unary.shape[1] != num_classes:
                raise ValueError(
                    f"the model returned scores for {unary.shape[1]} classes but num_classes={num_classes}."
                )
            for point, cm in zip(points, matrices):
                cm.update(dense_crf(image, logits=unary, **{**base, **point}).argmax(1), mask)
    table = []
    for point, cm in zip(points, matrices):
        m = cm.all_reduce().compute()
        table.append({**point, **{k: m[k] for k in ("mean_iou", "pixel_accuracy", "mean_class_accuracy")}})
    scores = [row["mean_iou"] if _finite(row["mean_iou"]) else -math.inf for row in table]
    best = points[max(range(len(points)), key=lambda i: (scores[i], -i))]
    return {**base, **best}, table


# --------------------------------------------------------------------------------------------------------
# reports
# --------------------------------------------------------------------------------------------------------
def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _pct(x: Any) -> str:
    return f"{100.0 * float(x):.2f}" if _finite(x) else "–"


def _title(method: str) -> str:
    return METHOD_TITLES.get(method, method)


def _boundary_rows(metrics: Mapping[str, Any]) -> dict[int, Mapping[str, Any]]:
    return {int(r["width"]): r for r in metrics.get("boundary", [])}


def _table_widths(results: Mapping[str, Any], preferred: Sequence[int]) -> list[int]:
    widths = [int(w) for w in results.get("boundary_widths", [])]
    chosen = [w for w in preferred if w in widths]
    return chosen or widths[:4]


def _check_results(results: Any) -> None:
    if not isinstance(results, Mapping) or not isinstance(results.get("methods"), Mapping) or not results["methods"]:
        raise ValueError(
            "results must be the dict returned by crfrnn.evaluation.evaluate (with a non-empty 'methods' "
            f"entry), got {type(results).__name__}"
            + (f" with keys {sorted(results)}" if isinstance(results, Mapping) else "")
            + "."
        )


def format_table(results: Mapping[str, Any], *, widths: Sequence[int] = (1, 3, 5, 10)) -> str:
    """The summary table of :func:`evaluate`'s results as Markdown (one row per method, values in %).

    Columns: mean IoU, pixel accuracy, mean class accuracy, then the pixel accuracy in the boundary bands
    of the given widths (those that were evaluated), then seconds per image.

    Args:
        results: the dict returned by :func:`evaluate` (or read back from ``results.json``).
        widths: band widths to show.

    Returns:
        The table, lines joined by ``"\\n"``.
    """
    _check_results(results)
    shown = _table_widths(results, widths)
    header = ["method", "mIoU", "pixel acc.", "mean class acc."] + [f"boundary acc. {w}px" for w in shown]
    header.append("s / image")
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    for method, m in results["methods"].items():
        band = _boundary_rows(m)
        cells = [_title(method), _pct(m.get("mean_iou")), _pct(m.get("pixel_accuracy")),
                 _pct(m.get("mean_class_accuracy"))]  # fmt: skip
        cells += [_pct(band[w]["pixel_accuracy"]) if w in band else "–" for w in shown]
        sec = m.get("seconds_per_image")
        cells.append(f"{float(sec):.3f}" if _finite(sec) else "–")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _markdown(results: Mapping[str, Any], class_names: Optional[Sequence[str]], title: str) -> str:
    methods = list(results["methods"])
    out = [f"# {title}", ""]
    out.append(
        f"{results.get('num_images', '?')} images, {results.get('num_classes', '?')} classes. "
        "Values in %; boundary metrics count only the pixels within the band width of a ground-truth label "
        "boundary."
    )
    out += ["", "## Summary", "", format_table(results), ""]

    widths = [int(w) for w in results.get("boundary_widths", [])]
    if widths:
        for key, name in (("pixel_accuracy", "pixel accuracy"), ("mean_iou", "mean IoU")):
            out += [f"## Boundary {name} by band width (px)", ""]
            out.append("| method | " + " | ".join(str(w) for w in widths) + " |")
            out.append("|---|" + "---:|" * len(widths))
            for method in methods:
                band = _boundary_rows(results["methods"][method])
                cells = [_pct(band[w][key]) if w in band else "–" for w in widths]
                out.append(f"| {_title(method)} | " + " | ".join(cells) + " |")
            out.append("")

    num_classes = max(len(results["methods"][m].get("per_class_iou", [])) for m in methods)
    if num_classes:
        out += ["## Per-class IoU", ""]
        out.append("| class | " + " | ".join(_title(m) for m in methods) + " |")
        out.append("|---|" + "---:|" * len(methods))
        for c in range(num_classes):
            label = f"{c}: {class_names[c]}" if class_names is not None and c < len(class_names) else str(c)
            cells = []
            for m in methods:
                ious = results["methods"][m].get("per_class_iou", [])
                cells.append(_pct(ious[c]) if c < len(ious) else "–")
            out.append(f"| {label} | " + " | ".join(cells) + " |")
        out.append("")

    params = results.get("dense_crf_params")
    if params:
        out += ["## Dense CRF parameters (CNN + dense CRF)", ""]
        out += [f"- `{k}`: {v}" for k, v in params.items()]
        out.append("")

    search = results.get("dense_crf_search")
    if search and search.get("table"):
        table = search["table"]
        keys = [k for k in table[0] if k not in ("mean_iou", "pixel_accuracy", "mean_class_accuracy")]
        out += ["## Dense CRF parameter search", ""]
        if search.get("num_images") is not None:
            out += [f"Mean IoU on {search['num_images']} validation images; best first.", ""]
        out.append("| " + " | ".join(keys) + " | mIoU | pixel acc. |")
        out.append("|" + "---:|" * (len(keys) + 2))
        order = sorted(table, key=lambda r: -r["mean_iou"] if _finite(r["mean_iou"]) else math.inf)
        for row in order:
            out.append(
                "| " + " | ".join(f"{row[k]:g}" if isinstance(row[k], (int, float)) else str(row[k]) for k in keys)
                + f" | {_pct(row['mean_iou'])} | {_pct(row['pixel_accuracy'])} |"
            )
        out.append("")
    return "\n".join(out)


def _jsonable(x: Any) -> Any:
    """Strict JSON: NaN and infinities become ``null``, tensors lists, tuples lists, keys strings."""
    if isinstance(x, Mapping):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, Tensor):
        return _jsonable(x.tolist())
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, (str, int, bool)) or x is None:
        return x
    if hasattr(x, "item"):  # numpy scalars
        return _jsonable(x.item())
    return str(x)


#: size of ``boundary.png`` in inches and its resolution: 1000 x 400 pixels
PLOT_SIZE: tuple[float, float] = (10.0, 4.0)
PLOT_DPI: int = 100


def _plot(results: Mapping[str, Any], path: Path, title: str) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # lazy: matplotlib is optional
    from matplotlib.figure import Figure

    fig = Figure(figsize=PLOT_SIZE, dpi=PLOT_DPI)
    FigureCanvasAgg(fig)  # the Agg backend, without pyplot's global state
    axes = fig.subplots(1, 2)
    for ax, key, name in zip(axes, ("pixel_accuracy", "mean_iou"), ("pixel accuracy (%)", "mean IoU (%)")):
        for method, m in results["methods"].items():
            points = [(w, r.get(key)) for w, r in sorted(_boundary_rows(m).items())]
            points = [(w, 100.0 * v) for w, v in points if _finite(v)]
            ax.plot([w for w, _ in points], [v for _, v in points], marker="o", label=_title(method))
        ax.set_xticks([int(w) for w in results.get("boundary_widths", [])] or ax.get_xticks())
        ax.set_xlabel("band width around ground-truth boundaries (px)")
        ax.set_ylabel(name)
        ax.grid(True, alpha=0.3)
    axes[0].legend(loc="best")
    fig.suptitle(title)
    fig.tight_layout()
    atomic_savefig(fig, path, format="png", dpi=PLOT_DPI)


def write_report(
    results: Mapping[str, Any],
    out_dir: PathLike,
    *,
    class_names: Optional[Sequence[str]] = None,
    title: str = "Segmentation evaluation",
    plot: bool = True,
) -> dict[str, Path]:
    """Write ``results.json``, ``metrics.md`` and ``boundary.png`` for the results of :func:`evaluate`.

    - ``results.json``: ``results`` as strict JSON (``NaN`` written as ``null``), plus ``"class_names"``
      when given.
    - ``metrics.md``: the summary table of :func:`format_table`, boundary pixel accuracy and mean IoU at
      every band width, the per-class IoU of each method, the dense CRF parameters and, if ``results`` has a
      ``"dense_crf_search"`` entry (``{"best_params", "table", "num_images"}``), the search table.
    - ``boundary.png``: boundary pixel accuracy and mean IoU against the band width, one line per method
      (matplotlib, Agg backend; :data:`PLOT_SIZE` x :data:`PLOT_DPI` = 1000 x 400 pixels). Skipped with a
      warning if matplotlib is not installed.

    Args:
        results: the dict returned by :func:`evaluate`, possibly with extra JSON-friendly entries.
        out_dir: output folder, created if missing; existing files are overwritten.
        class_names: label names for the per-class table (index ``c`` -> ``class_names[c]``).
        title: heading of the Markdown file and the plot.
        plot: write ``boundary.png``.

    Returns:
        ``{"results": path, "metrics": path, "boundary": path}`` of the files written.
    """
    _check_results(results)
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"out_dir '{out}' exists and is not a directory; pass a folder path.")
    out.mkdir(parents=True, exist_ok=True)
    if class_names is not None:
        class_names = [str(c) for c in class_names]
    paths: dict[str, Path] = {}

    payload = dict(results)
    if class_names is not None:
        payload["class_names"] = class_names
    paths["results"] = out / "results.json"
    atomic_write_text(paths["results"], json.dumps(_jsonable(payload), indent=2, allow_nan=False) + "\n")

    paths["metrics"] = out / "metrics.md"
    atomic_write_text(paths["metrics"], _markdown(results, class_names, title) + "\n")

    if plot:
        try:
            _plot(results, out / "boundary.png", title)
        except ImportError as err:
            warnings.warn(f"boundary.png not written: matplotlib is needed for the plot ({err}).", stacklevel=2)
        else:
            paths["boundary"] = out / "boundary.png"
    return paths

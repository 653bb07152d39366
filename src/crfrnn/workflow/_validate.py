"""The validation loop: metrics of a model on a data set, by method, overall and near label boundaries.

One loop serves everything: :func:`evaluate` (the paper's comparison of the CNN, the CNN + offline dense CRF and
CRF-RNN, with boundary bands and timings), :func:`validation_metrics` (what :func:`crfrnn.workflow._loop.train`
logs after an epoch) and :func:`search_dense_crf` (the offline CRF's parameters by mean IoU).

Distributed evaluation: when :mod:`torch.distributed` is initialised, each process evaluates every
``world_size``-th image (starting at its rank) and the confusion matrices are summed across processes, so
every process returns the metrics of the whole data set.
"""

from __future__ import annotations

import functools
import itertools
import math
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Optional, Sequence, Sized, Union, cast

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, Subset

from crfrnn._deprecated import renamed_keys
from crfrnn.crf.kernels import KernelCache
from crfrnn.dense import dense_crf
from crfrnn.metrics import DEFAULT_WIDTHS, BoundaryAccuracy, ConfusionMatrix
from crfrnn.models.segmenter import CrfRnnSegmenter
from crfrnn.params import DENSECRF_DEFAULTS, RENAMED_PARAMS
from crfrnn.workflow._distributed import rank_and_world, resolve_device
from crfrnn.workflow._predict import (
    DEFAULT_SEARCH_GRID,
    check_count,
    check_methods,
    cnn_logits,
    eval_mode,
    labels_of_scores,
    merge_dense_crf_params,
    model_device,
    predict_timed,
    unwrap,
)
from crfrnn.workflow._report import finite
from crfrnn.workflow._seeding import quiet_worker

__all__ = ["MethodTotals", "accumulate", "evaluate", "search_dense_crf", "sharded_loader", "validation_metrics"]

DeviceLike = Union[torch.device, str, None]


# --------------------------------------------------------------------------------------------------------
# the loop
# --------------------------------------------------------------------------------------------------------
def sharded_loader(
    dataset: Dataset,
    batch_size: int,
    *,
    max_images: Optional[int] = None,
    ignore_index: int = 255,
    workers: int = 0,
    generator: Optional[torch.Generator] = None,
) -> tuple[DataLoader, int]:
    """This process's share of the first ``max_images`` samples, batched with padding; and the total count.

    ``generator``: the DataLoader's (``None``: its base seed is drawn from torch's global generator).
    """
    from crfrnn.data import pad_collate

    if not hasattr(dataset, "__len__") or not hasattr(dataset, "__getitem__"):
        raise TypeError(
            f"dataset must be a map-style data set (with __len__ and __getitem__), got {type(dataset).__name__}."
        )
    total = len(dataset) if max_images is None else min(len(dataset), max_images)
    if total == 0:
        raise ValueError("the data set is empty (or max_images=0): there is nothing to evaluate.")
    rank, world = rank_and_world()
    subset = Subset(dataset, range(rank, total, world))

    collate = functools.partial(pad_collate, ignore_index=ignore_index)
    loader = DataLoader(
        subset,
        batch_size=batch_size,
        shuffle=False,
        collate_fn=collate,
        num_workers=workers,
        generator=generator,
        worker_init_fn=quiet_worker,  # a Ctrl-C stops the main process alone: no traceback from each worker
    )
    return loader, total


def _progress(iterable: Iterable, enabled: bool, total: int, desc: str) -> Iterable:
    if not enabled or rank_and_world()[0] != 0:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, total=total, desc=desc, unit="batch", leave=False)


def _device(model: nn.Module, device: DeviceLike) -> torch.device:
    """``device`` (the model is moved there if it is elsewhere); ``None``: the model's device."""
    if device is None:
        return model_device(model)
    device = resolve_device(device)
    if model_device(model) != device:
        model.to(device)
    return device


@dataclass
class MethodTotals:
    """What :func:`accumulate` counted for one method (summed over the processes)."""

    confusion: ConfusionMatrix
    boundary: Optional[BoundaryAccuracy]
    seconds: float


def accumulate(
    model: nn.Module,
    loader: Iterable[tuple[Tensor, Tensor]],
    *,
    methods: Sequence[str],
    num_classes: int,
    device: torch.device,
    dense_crf_params: Mapping[str, Any],
    boundary_widths: Optional[Sequence[int]] = None,
    ignore_index: int = 255,
    include_void_edges: bool = False,
    progress: Optional[str] = None,
) -> dict[str, MethodTotals]:
    """Run the checked ``methods`` over the batches and count, per method, a confusion matrix, the boundary
    bands (``boundary_widths``; ``None``: none) and the seconds; the counts are summed over the processes.

    The model runs in eval mode without gradients; its submodules' training flags are restored afterwards.
    ``progress``: the progress bar's title (``None``: no bar).
    """
    confusion = {m: ConfusionMatrix(num_classes, ignore_index=ignore_index, device=device) for m in methods}
    boundary = (
        {
            m: BoundaryAccuracy(
                num_classes,
                widths=boundary_widths,
                ignore_index=ignore_index,
                include_void_edges=include_void_edges,
                device=device,
            )
            for m in methods
        }
        if boundary_widths is not None
        else {}
    )
    seconds = dict.fromkeys(methods, 0.0)
    total = len(cast(Sized, loader)) if hasattr(loader, "__len__") else None
    with eval_mode(model), torch.no_grad():
        for image, mask in _progress(loader, progress is not None, total, progress or ""):  # type: ignore[arg-type]
            image, mask = image.to(device), mask.to(device)
            labels, times = predict_timed(model, image, methods, dense_crf_params, num_classes)
            for m in methods:
                confusion[m].update(labels[m], mask)
                if boundary:
                    boundary[m].update(labels[m], mask)
                seconds[m] += times[m]
    out = {}
    for m in methods:
        confusion[m].all_reduce()
        if boundary:
            boundary[m].all_reduce()
        out[m] = MethodTotals(confusion[m], boundary.get(m), seconds[m])
    return out


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
            :data:`DENSECRF_DEFAULTS` (densecrf's usual parameters).
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
    model = unwrap(model)
    methods = check_methods(methods, model)
    params = merge_dense_crf_params(dense_crf_params)
    check_count(batch_size, "batch_size", 1)
    check_count(max_images, "max_images", 1)
    widths = tuple(boundary_widths)
    dev = _device(model, device)
    loader, total = sharded_loader(dataset, batch_size, max_images=max_images, ignore_index=ignore_index)
    totals = accumulate(
        model,
        loader,
        methods=methods,
        num_classes=num_classes,
        device=dev,
        dense_crf_params=params,
        boundary_widths=widths,
        ignore_index=ignore_index,
        include_void_edges=include_void_edges,
        progress="evaluate" if progress else None,
    )
    results: dict[str, Any] = {
        "num_images": total,
        "num_classes": num_classes,
        "ignore_index": ignore_index,
        "include_void_edges": include_void_edges,
        "boundary_widths": list(totals[methods[0]].boundary.widths),  # type: ignore[union-attr]
        "dense_crf_params": params if "cnn+densecrf" in methods else None,
        "methods": {},
    }
    local_images = len(loader.dataset)  # type: ignore[arg-type]
    for m in methods:
        results["methods"][m] = _json_metrics(totals[m].confusion, totals[m].boundary)  # type: ignore[arg-type]
        results["methods"][m]["seconds_per_image"] = totals[m].seconds / local_images if local_images else math.nan
    return results


def validation_metrics(
    model: nn.Module,
    dataset: Dataset,
    *,
    num_classes: int,
    batch_size: int,
    device: torch.device,
    workers: int = 0,
    progress: bool = False,
    ignore_index: int = 255,
) -> dict[str, Any]:
    """The validation record of a training epoch: ``val_mean_iou``, ``val_pixel_accuracy``,
    ``val_mean_class_accuracy`` and ``val_per_class_iou`` of the model's output and, for a
    :class:`~crfrnn.models.CrfRnnSegmenter`, the same of its CNN alone with the suffix ``_cnn`` (without the
    per-class list). Undefined values are ``None``. Leaves torch's global random state alone.
    """
    segmenter = isinstance(model, CrfRnnSegmenter)
    loader, _ = sharded_loader(
        dataset, batch_size, ignore_index=ignore_index, workers=workers, generator=torch.Generator().manual_seed(0)
    )
    methods = ("cnn", "crfrnn") if segmenter else ("cnn",)
    totals = accumulate(
        model,
        loader,
        methods=methods,
        num_classes=num_classes,
        device=device,
        dense_crf_params={},
        ignore_index=ignore_index,
        progress="validate" if progress else None,
    )
    out: dict[str, Any] = {}
    for suffix, method in (("", methods[-1]), ("_cnn", "cnn" if segmenter else None)):
        if method is None:
            continue
        m = totals[method].confusion.compute()
        out[f"val_mean_iou{suffix}"] = finite(m["mean_iou"])
        out[f"val_pixel_accuracy{suffix}"] = finite(m["pixel_accuracy"])
        out[f"val_mean_class_accuracy{suffix}"] = finite(m["mean_class_accuracy"])
        if not suffix:
            out["val_per_class_iou"] = [finite(v) for v in torch.as_tensor(m["per_class_iou"]).tolist()]
    return out


def _grid_points(grid: Optional[Mapping[str, Any]]) -> list[dict[str, Any]]:
    grid = DEFAULT_SEARCH_GRID if grid is None else grid
    if not isinstance(grid, Mapping) or not grid:
        raise ValueError(
            f"grid must be a non-empty mapping of dense_crf parameter names to lists of values, got {grid!r}."
        )
    grid = renamed_keys(grid, RENAMED_PARAMS, "grid", stacklevel=3)
    unknown = sorted(set(grid) - set(DENSECRF_DEFAULTS))
    if unknown:
        raise ValueError(
            f"unknown dense CRF parameter(s) {unknown} in grid; valid names are {sorted(DENSECRF_DEFAULTS)}."
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
        base_params: values of the parameters not in the grid, updating :data:`DENSECRF_DEFAULTS`.
        batch_size: images per forward pass.
        device: where to run; the model is moved there if it is elsewhere. ``None``: the model's device.
        progress: show a progress bar.
        max_images: search on the first ``max_images`` images only.
        ignore_index: mask value of void pixels.

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
    model = unwrap(model)
    base = merge_dense_crf_params(base_params)
    points = _grid_points(grid)
    check_count(batch_size, "batch_size", 1)
    check_count(max_images, "max_images", 1)
    dev = _device(model, device)
    loader, _ = sharded_loader(dataset, batch_size, max_images=max_images, ignore_index=ignore_index)
    matrices = [ConfusionMatrix(num_classes, ignore_index=ignore_index, device=dev) for _ in points]
    cache = KernelCache()  # the spatial kernel of each image size, built once for every grid point and image
    with eval_mode(model), torch.no_grad():
        for image, mask in _progress(loader, progress, len(loader), "dense CRF search"):
            image, mask = image.to(dev), mask.to(dev)
            unary = cnn_logits(model, image)
            if unary.shape[1] != num_classes:
                raise ValueError(
                    f"the model returned scores for {unary.shape[1]} classes but num_classes={num_classes}."
                )
            for point, cm in zip(points, matrices):
                q = cast(Tensor, dense_crf(image, logits=unary, cache=cache, **{**base, **point}))  # tensors in and out
                cm.update(labels_of_scores(q), mask)
    table = []
    for point, cm in zip(points, matrices):
        m = cm.all_reduce().compute()
        table.append({**point, **{k: m[k] for k in ("mean_iou", "pixel_accuracy", "mean_class_accuracy")}})
    scores = [finite(row["mean_iou"]) for row in table]
    scores = [-math.inf if v is None else v for v in scores]
    best = points[max(range(len(points)), key=lambda i: (scores[i], -i))]
    return {**base, **best}, table

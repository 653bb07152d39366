"""Reporting: numbers as text and JSON, the boundary plot and the prediction grid (one helper each).

- :func:`finite` (a value as a float, or ``None`` when it is not a finite number) and :func:`jsonable` (strict
  JSON) are what every table and ``results.json`` use;
- :func:`format_table` and :func:`write_report` turn :func:`crfrnn.workflow._validate.evaluate`'s results into
  ``results.json``, ``metrics.md`` and ``boundary.png``;
- :func:`plot_boundary` draws accuracy against the width of the band around ground-truth boundaries for any
  set of :class:`BoundaryCurve` (one method, or a mean over seeds with its range);
- :func:`save_method_grid` predicts images with each method and saves the grid of
  :func:`crfrnn.visualize.save_prediction_grid`.
"""

from __future__ import annotations

import json
import math
import numbers
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

from torch import Tensor, nn
from torch.utils.data import Subset

from crfrnn._utils.files import PathLike, atomic_savefig, atomic_write_text
from crfrnn.workflow._predict import METHOD_TITLES, predict

__all__ = [
    "BoundaryCurve",
    "PLOT_DPI",
    "PLOT_SIZE",
    "finite",
    "format_table",
    "jsonable",
    "plot_boundary",
    "save_method_grid",
    "write_report",
]

#: size of ``boundary.png`` in inches and its resolution: 1000 x 400 pixels
PLOT_SIZE: tuple[float, float] = (10.0, 4.0)
PLOT_DPI: int = 100


# -------------------------------------------------------------------------------------------------- values
def finite(x: Any) -> Optional[float]:
    """``x`` as a float if it is a finite real number, else ``None`` (NaN, infinities, ``None``, bools, text).

    Example:
        >>> finite(0.5), finite(float("nan")), finite(None), finite(True)
        (0.5, None, None, None)
    """
    if isinstance(x, bool) or not isinstance(x, numbers.Real):
        return None
    value = float(x)
    return value if math.isfinite(value) else None


def jsonable(x: Any) -> Any:
    """Strict JSON: NaN and infinities become ``null``, tensors lists, tuples lists, keys strings.

    Example:
        >>> jsonable({1: (float("inf"), 2.5)})
        {'1': [None, 2.5]}
    """
    if isinstance(x, Mapping):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
    if isinstance(x, Tensor):
        return jsonable(x.tolist())
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, (str, int, bool)) or x is None:
        return x
    if hasattr(x, "item"):  # numpy scalars
        return jsonable(x.item())
    return str(x)


def _pct(x: Any) -> str:
    value = finite(x)
    return f"{100.0 * value:.2f}" if value is not None else "–"


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
            "results must be the dict returned by crfrnn.workflow.evaluate (with a non-empty 'methods' "
            f"entry), got {type(results).__name__}"
            + (f" with keys {sorted(results)}" if isinstance(results, Mapping) else "")
            + "."
        )


def format_table(results: Mapping[str, Any], *, widths: Sequence[int] = (1, 3, 5, 10)) -> str:
    r"""The summary table of :func:`evaluate`'s results as Markdown (one row per method, values in %).

    Columns: mean IoU, pixel accuracy, mean class accuracy, then the pixel accuracy in the boundary bands
    of the given widths (those that were evaluated), then seconds per image.

    Args:
        results: the dict returned by :func:`evaluate` (or read back from ``results.json``).
        widths: band widths to show.

    Returns:
        The table, lines joined by ``"\n"``.
    """
    _check_results(results)
    shown = _table_widths(results, widths)
    header = ["method", "mIoU", "pixel acc.", "mean class acc."] + [f"boundary acc. {w}px" for w in shown]
    header.append("s / image")
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    for method, m in results["methods"].items():
        band = _boundary_rows(m)
        cells = [
            _title(method),
            _pct(m.get("mean_iou")),
            _pct(m.get("pixel_accuracy")),
            _pct(m.get("mean_class_accuracy")),
        ]
        cells += [_pct(band[w]["pixel_accuracy"]) if w in band else "–" for w in shown]
        sec = m.get("seconds_per_image")
        cells.append(f"{finite(sec):.3f}" if finite(sec) is not None else "–")
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
        order = sorted(table, key=lambda r: -r["mean_iou"] if finite(r["mean_iou"]) is not None else math.inf)
        for row in order:
            out.append(
                "| "
                + " | ".join(f"{row[k]:g}" if isinstance(row[k], (int, float)) else str(row[k]) for k in keys)
                + f" | {_pct(row['mean_iou'])} | {_pct(row['pixel_accuracy'])} |"
            )
        out.append("")
    return "\n".join(out)


# ---------------------------------------------------------------------------------------------- pictures
@dataclass
class BoundaryCurve:
    """One line of :func:`plot_boundary`.

    Attributes:
        label: legend entry.
        points: per metric (``"pixel_accuracy"``, ``"mean_iou"``): ``(band width, value in %)`` pairs.
        spread: per metric: ``(low, high)`` values in % at the widths of ``points``, shaded around the line.
        style: matplotlib format string of the line (e.g. ``"--"``); ``None``: a solid line.
    """

    label: str
    points: Mapping[str, Sequence[tuple[int, float]]]
    spread: Optional[Mapping[str, tuple[Sequence[float], Sequence[float]]]] = None
    style: Optional[str] = None


def plot_boundary(
    path: PathLike,
    curves: Sequence[BoundaryCurve],
    *,
    title: str,
    xticks: Optional[Sequence[int]] = None,
    legend: Optional[Mapping[str, Any]] = None,
) -> Path:
    """Save the boundary plot: pixel accuracy (left) and mean IoU (right) against the band width, one line per
    curve (matplotlib's Agg backend, without pyplot's global state; :data:`PLOT_SIZE` x :data:`PLOT_DPI`).

    Args:
        path: the PNG file.
        curves: the lines, in legend order.
        title: the figure's title.
        xticks: the band widths to mark on the x axes (an empty list: the current ticks); ``None``: automatic.
        legend: keyword arguments of the left axes' legend (default ``loc="best"``).

    Raises:
        ImportError: without matplotlib.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # lazy: matplotlib is optional
    from matplotlib.figure import Figure

    fig = Figure(figsize=PLOT_SIZE, dpi=PLOT_DPI)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 2)
    for ax, key, name in zip(axes, ("pixel_accuracy", "mean_iou"), ("pixel accuracy (%)", "mean IoU (%)")):
        for curve in curves:
            points = list(curve.points.get(key, ()))
            xy = ([w for w, _ in points], [v for _, v in points])
            (line,) = (
                ax.plot(*xy, marker="o", label=curve.label)
                if curve.style is None
                else ax.plot(*xy, curve.style, marker="o", label=curve.label)
            )
            if curve.spread is not None and key in curve.spread:
                low, high = curve.spread[key]
                ax.fill_between(xy[0], low, high, color=line.get_color(), alpha=0.15)
        if xticks is not None:
            ax.set_xticks([int(w) for w in xticks] or ax.get_xticks())
        ax.set_xlabel("band width around ground-truth boundaries (px)")
        ax.set_ylabel(name)
        ax.grid(True, alpha=0.3)
    axes[0].legend(**(legend if legend is not None else {"loc": "best"}))
    fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    atomic_savefig(fig, path, format="png", dpi=PLOT_DPI)
    return path


def _method_curves(results: Mapping[str, Any]) -> list[BoundaryCurve]:
    curves = []
    for method, m in results["methods"].items():
        points = {}
        for key in ("pixel_accuracy", "mean_iou"):
            values = [(w, finite(r.get(key))) for w, r in sorted(_boundary_rows(m).items())]
            points[key] = [(w, 100.0 * v) for w, v in values if v is not None]
        curves.append(BoundaryCurve(_title(method), points))
    return curves


def save_method_grid(
    path: PathLike,
    dataset: Any,
    runs: Sequence[tuple[nn.Module, Sequence[str], Optional[Mapping[str, Any]]]],
    num_images: int,
    *,
    device: Any = None,
    class_names: Optional[Sequence[str]] = None,
) -> Path:
    """Predict the first ``num_images`` samples of ``dataset`` and save the grid image | ground truth | methods.

    Args:
        path: the image file.
        dataset: ``(image (3, H, W), mask (H, W))`` samples.
        runs: ``(model, methods, dense_crf_params)`` triples; each model predicts its methods
            (:func:`crfrnn.workflow._predict.predict`), one column per method titled by :data:`METHOD_TITLES`.
        num_images: rows (at most ``len(dataset)``).
        device: where the images are sent (``None``: left where they are).
        class_names: names by label index for the grid's colour legend; ``None`` takes ``dataset.class_names``
            (or, for a :class:`torch.utils.data.Subset`, its ``dataset.class_names``) and draws no legend when
            there is none.

    Returns:
        The path written (see :func:`crfrnn.visualize.save_prediction_grid`).
    """
    from crfrnn.visualize import save_prediction_grid

    if class_names is None:
        class_names = _dataset_class_names(dataset)
    images, masks = [], []
    columns: dict[str, list] = {METHOD_TITLES[m]: [] for _, methods, _ in runs for m in methods}
    for k in range(min(num_images, len(dataset))):
        image, mask = dataset[k]
        batch = image[None] if device is None else image[None].to(device)
        for model, methods, params in runs:
            labels = predict(model, batch, methods=methods, dense_crf_params=params)
            for m in methods:
                columns[METHOD_TITLES[m]].append(labels[m][0].cpu())
        images.append(image)
        masks.append(mask)
    return save_prediction_grid(path, images, columns, gt=masks, class_names=class_names)


def _dataset_class_names(dataset: Any) -> Optional[Sequence[str]]:
    """``dataset.class_names``, looking through one :class:`torch.utils.data.Subset`; ``None`` if none."""
    names = getattr(dataset, "class_names", None)
    if names is None and isinstance(dataset, Subset):
        names = getattr(dataset.dataset, "class_names", None)
    return names


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
    atomic_write_text(paths["results"], json.dumps(jsonable(payload), indent=2, allow_nan=False) + "\n")

    paths["metrics"] = out / "metrics.md"
    atomic_write_text(paths["metrics"], _markdown(results, class_names, title) + "\n")

    if plot:
        try:
            plot_boundary(
                out / "boundary.png", _method_curves(results), title=title, xticks=results.get("boundary_widths", [])
            )
        except ImportError as err:
            warnings.warn(f"boundary.png not written: matplotlib is needed for the plot ({err}).", stacklevel=2)
        else:
            paths["boundary"] = out / "boundary.png"
    return paths

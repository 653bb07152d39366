"""What the paper's experiment (:mod:`crfrnn.workflow._experiment`) concludes: the rows of its table, the
statistics over seeds, the claims checked against them, and the report (``report.md``, ``boundary.png``).
"""

from __future__ import annotations

import math
import os
import platform
import statistics
from pathlib import Path
from typing import Any, Mapping, Sequence

from crfrnn.workflow._experiment_config import ReproduceConfig
from crfrnn.workflow._report import BoundaryCurve, finite, plot_boundary

__all__ = [
    "ABLATION_CLAIMS",
    "CLAIMS",
    "MARGIN",
    "ROWS",
    "check_claims",
    "machine_description",
    "plot_summary",
    "report_markdown",
    "summarize",
]

#: the rows of the report, in order: key -> title
ROWS: dict[str, str] = {
    "cnn": "(a) CNN alone",
    "cnn+densecrf": "(b) CNN + offline dense CRF (parameters searched on validation)",
    "crfrnn": "(c) CRF-RNN end to end (train T=5, test T=10)",
    "crfrnn_t5": "ablation: CRF-RNN tested with T=5",
    "cnn_longer": "control: CNN trained as many more epochs as (c)",
    "crfrnn_untrained": "control: CNN + CRF-RNN head, not trained",
    "crfrnn_scalar": "ablation: CRF-RNN with one scalar weight per kernel",
    "crfrnn_symmetric": "ablation: CRF-RNN with a symmetric compatibility",
    "crfrnn_crf_alone": "ablation: CRF trained alone on the fixed CNN",
}
_SHORT = {
    "cnn": "(a) CNN",
    "cnn+densecrf": "(b) CNN + dense CRF",
    "crfrnn": "(c) CRF-RNN",
    "cnn_longer": "control: CNN trained longer",
}
#: the paper's claims that the report checks: (name, better row, worse row)
CLAIMS: tuple[tuple[str, str, str], ...] = (
    ("dense CRF post-processing beats the CNN", "cnn+densecrf", "cnn"),
    ("end-to-end CRF-RNN beats post-processing", "crfrnn", "cnn+densecrf"),
)
#: the paper's ablations (Zheng et al. 2015, section 7): (name, the full model's row, the ablation's row, the paper's
#: gain in mean IoU points)
ABLATION_CLAIMS: tuple[tuple[str, str, str, float], ...] = (
    ("class-specific kernel weights beat one scalar weight per kernel", "crfrnn", "crfrnn_scalar", 1.8),
    ("an asymmetric compatibility beats a symmetric one", "crfrnn", "crfrnn_symmetric", 0.9),
    ("end-to-end training beats the CRF trained alone on the fixed CNN", "crfrnn", "crfrnn_crf_alone", 3.4),
)
#: the margin in mean IoU (percentage points) that each of :data:`CLAIMS` must clear on every seed
MARGIN = 1.0


def _stats(values: Sequence[float]) -> dict[str, float]:
    vals = [v for v in map(finite, values) if v is not None]
    if not vals:
        return {"mean": math.nan, "std": math.nan, "min": math.nan, "max": math.nan, "n": 0}
    return {
        "mean": statistics.fmean(vals),
        "std": statistics.stdev(vals) if len(vals) > 1 else 0.0,
        "min": min(vals),
        "max": max(vals),
        "n": len(vals),
    }


def summarize(per_seed: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Mean, standard deviation, min and max over seeds of every row's metrics (fractions, not percent).

    Returns:
        ``{row: metrics}``, each ``metrics`` a dict of ``"mean_iou"``, ``"pixel_accuracy"`` and
        ``"mean_class_accuracy"`` stats and ``"boundary"``: ``{width: {"pixel_accuracy": stats, "mean_iou": stats}}``;
        and, under ``"paired"``, the per-seed differences of each claim's rows (``better - worse``) and of the
        narrowest band.
    """
    out: dict[str, Any] = {}
    for row in ROWS:
        seeds = [s["rows"][row] for s in per_seed if row in s["rows"]]
        if not seeds:
            continue
        entry: dict[str, Any] = {
            k: _stats([m[k] for m in seeds]) for k in ("mean_iou", "pixel_accuracy", "mean_class_accuracy")
        }
        widths = [b["width"] for b in seeds[0]["boundary"]]
        entry["boundary"] = {
            int(w): {
                k: _stats([next(b[k] for b in m["boundary"] if b["width"] == w) for m in seeds])
                for k in ("pixel_accuracy", "mean_iou")
            }
            for w in widths
        }
        out[row] = entry
    return out


def check_claims(summary: Mapping[str, Any], per_seed: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The paper's claims against the numbers: mean gain, per-seed gains, and whether each holds by ``MARGIN``.

    Also checks that the gains are largest near boundaries: the gain in pixel accuracy within the narrowest band
    against the gain over the whole image.
    """
    claims = []
    for name, better, worse in CLAIMS:
        if better not in summary or worse not in summary:
            continue
        gains = [100 * (s["rows"][better]["mean_iou"] - s["rows"][worse]["mean_iou"]) for s in per_seed]
        mean_gain = statistics.fmean(gains)
        claims.append(
            {
                "claim": name,
                "better": better,
                "worse": worse,
                "gain_mean_iou": mean_gain,
                "gains_per_seed": gains,
                "margin": MARGIN,
                "holds": min(gains) >= MARGIN,
            }
        )
    if "cnn" in summary:
        narrow = min(summary["cnn"]["boundary"])
        for row in ("cnn+densecrf", "crfrnn"):
            if row not in summary:
                continue
            band = 100 * (
                summary[row]["boundary"][narrow]["pixel_accuracy"]["mean"]
                - summary["cnn"]["boundary"][narrow]["pixel_accuracy"]["mean"]
            )
            overall = 100 * (summary[row]["pixel_accuracy"]["mean"] - summary["cnn"]["pixel_accuracy"]["mean"])
            claims.append(
                {
                    "claim": f"{ROWS[row].split(' (')[0]}: the gain is largest near boundaries",
                    "row": row,
                    "band_width": narrow,
                    "gain_in_band": band,
                    "gain_overall": overall,
                    "holds": band > overall,
                }
            )
    if "crfrnn" in summary and "crfrnn_t5" in summary:
        gains = [100 * (s["rows"]["crfrnn"]["mean_iou"] - s["rows"]["crfrnn_t5"]["mean_iou"]) for s in per_seed]
        claims.append(
            {
                "claim": "testing with T=10 beats T=5 (paper: +0.2)",
                "better": "crfrnn",
                "worse": "crfrnn_t5",
                "gain_mean_iou": statistics.fmean(gains),
                "gains_per_seed": gains,
                "margin": 0.0,
                "holds": statistics.fmean(gains) > 0,
            }
        )
    for name, better, worse, paper in ABLATION_CLAIMS:
        if better not in summary or worse not in summary:
            continue
        gains = [100 * (s["rows"][better]["mean_iou"] - s["rows"][worse]["mean_iou"]) for s in per_seed]
        claims.append(
            {
                "claim": f"ablation: {name} (paper: +{paper})",
                "better": better,
                "worse": worse,
                "gain_mean_iou": statistics.fmean(gains),
                "gains_per_seed": gains,
                "margin": 0.0,
                "holds": statistics.fmean(gains) > 0,
            }
        )
    return claims


# ------------------------------------------------------------------------------------------------ report
def _pm(stats: Mapping[str, float]) -> str:
    if not stats["n"]:
        return "n/a"
    if stats["n"] == 1:
        return f"{100 * stats['mean']:.2f}"
    return f"{100 * stats['mean']:.2f} ± {100 * stats['std']:.2f}"


def report_markdown(
    config: ReproduceConfig,
    summary: Mapping[str, Any],
    claims: Sequence[Mapping[str, Any]],
    per_seed: Sequence[Mapping[str, Any]],
    seconds: float,
    machine: str = "",
) -> str:
    """``report.md``: the table (mean ± sd over seeds), the claims with their numbers, per-seed details.

    ``machine`` (e.g. :func:`machine_description`) says where the run's time was measured.
    """
    seeds = ", ".join(str(s["seed"]) for s in per_seed)
    widths = sorted(summary["cnn"]["boundary"])
    shown = [w for w in widths if w in (1, 3, 5, 10)] or widths[:4]
    lines = [
        "# CRF-RNN reproduction on the built-in synthetic data set",
        "",
        f"SmallFCN (width {config.width}, output stride 8) on `SyntheticShapes` ({config.image_size}x"
        f"{config.image_size}, {config.num_train} train / {config.num_val} validation / {config.num_test} test images, "
        f"data seed {config.data_seed}); training seeds {seeds}. Values in %, "
        + ("mean ± standard deviation over seeds" if len(per_seed) > 1 else "one seed, so no spread over seeds")
        + f", on the test split. Total time {seconds / 60:.1f} min"
        + (f" on {machine}" if machine else "")
        + f"; the stages' own times, summed over seeds and counting work done before an interruption, "
        f"{stage_minutes(per_seed):.1f} min.",
        "",
        "| method | mIoU | pixel acc. | mean class acc. | " + " | ".join(f"boundary acc. {w}px" for w in shown) + " |",
        "|---|---:|---:|---:|" + "---:|" * len(shown),
    ]
    for row, title in ROWS.items():
        if row not in summary:
            continue
        s = summary[row]
        cells = [_pm(s["mean_iou"]), _pm(s["pixel_accuracy"]), _pm(s["mean_class_accuracy"])]
        cells += [_pm(s["boundary"][w]["pixel_accuracy"]) for w in shown]
        lines.append(f"| {title} | " + " | ".join(cells) + " |")
    if config.preset == "quick":
        lines += [
            "",
            "This is the quick preset: one seed and a CNN trained for only a few epochs, a first look and a "
            "smoke test. Its numbers say little about the claims; run `crfrnn reproduce` (the full preset) "
            "for those.",
        ]
    lines += ["", "## The paper's claims, checked", ""]
    quick = config.preset == "quick"
    undecided = (
        f"not decided by a quick run ({len(per_seed)} seed{'s' if len(per_seed) > 1 else ''}, "
        f"{config.cnn_epochs} CNN epochs)"
    )
    for c in claims:
        mark = undecided if quick else ("holds" if c["holds"] else "does NOT hold")
        if "gain_in_band" in c:
            lines.append(
                f"- {c['claim']}: {mark} (pixel accuracy gain over the CNN {c['gain_in_band']:+.2f} points "
                f"within {c['band_width']} px of a boundary, {c['gain_overall']:+.2f} over the whole image)."
            )
        else:
            per = ", ".join(f"{g:+.2f}" for g in c["gains_per_seed"])
            need = f" (asked: at least +{c['margin']:.1f} on every seed)" if c["margin"] else ""
            lines.append(
                f"- {c['claim']}: {mark}: mean IoU {c['gain_mean_iou']:+.2f} points on average; per seed {per}{need}."
            )
    lines += [
        "",
        "## Per seed",
        "",
        "| seed | "
        + " | ".join(ROWS[r].split(" (")[0].split(":")[0] + f" [{r}]" for r in ROWS if r in summary)
        + " | minutes |",
        "|---:|" + "---:|" * (len([r for r in ROWS if r in summary]) + 1),
    ]
    for s in per_seed:
        cells = [f"{100 * s['rows'][r]['mean_iou']:.2f}" for r in ROWS if r in summary]
        lines.append(f"| {s['seed']} | " + " | ".join(cells) + f" | {sum(s['seconds'].values()) / 60:.1f} |")
    lines += ["", "## Offline dense CRF parameters chosen on the validation split", ""]
    for s in per_seed:
        p = s["dense_crf_params"]
        lines.append(f"- seed {s['seed']}: " + ", ".join(f"{k}={p[k]}" for k in sorted(p)))
    lines += ["", "## CRF parameters learned end to end", ""]
    for s in per_seed:
        c = s["crf_learned"]
        lines.append(
            f"- seed {s['seed']}: spatial weight diagonal mean {c['spatial_weight_diagonal_mean']:.3f} "
            f"(init 3), bilateral {c['bilateral_weight_diagonal_mean']:.3f} (init 5), compatibility "
            f"asymmetry max |mu - mu^T| {c['compatibility_asymmetry']:.3f} (init 0)"
        )
    lines += [
        "",
        "Files: `results.json` (every number: metrics as fractions in [0, 1], the claims' gains in percentage "
        "points, as its `units` says), `boundary.png`, `grid.png`, `seed<N>/` (runs).",
        f"Reproduce: `{reproduce_command(config)}` (or the same settings through `crfrnn.workflow.reproduce`).",
    ]
    return "\n".join(lines) + "\n"


def stage_minutes(per_seed: Sequence[Mapping[str, Any]]) -> float:
    """Minutes of every seed's stages (training read from the runs' saved records, search, evaluation), summed."""
    return sum(sum(s["seconds"].values()) for s in per_seed) / 60


#: the settings that change a reproduction's results or speed, and their flags
_FLAGS = (
    ("seeds", "--seeds"),
    ("cnn_epochs", "--cnn-epochs"),
    ("crf_epochs", "--crf-epochs"),
    ("num_train", "--num-train"),
    ("num_test", "--num-test"),
    ("ablations", "--ablations"),
    ("workers", "--workers"),
    ("threads", "--threads"),
    ("device", "--device"),
)


def reproduce_command(config: ReproduceConfig) -> str:
    """The ``crfrnn reproduce`` command line that repeats ``config``: every setting of :data:`_FLAGS` that
    differs from its preset's default, so that none that changes the results or the speed is dropped.
    """
    quick = config.preset == "quick"
    base = ReproduceConfig.quick(config.out_dir) if quick else ReproduceConfig(out_dir=config.out_dir)
    parts = ["crfrnn reproduce"] + (["--quick"] if quick else [])
    for name, flag in _FLAGS:
        value = getattr(config, name)
        if value != getattr(base, name) and value is not None:
            text = ",".join(str(v) for v in value) if isinstance(value, tuple) else str(value)
            parts.append(f"{flag} {text or 'none'}")
    return " ".join(parts + [f"--out {config.out_dir}"])


def machine_description(workers: int = 1, threads: int = 1) -> str:
    """``"<CPU model>, <n> cores, <workers> process(es) x <threads> thread(s)"`` of this machine (Linux names the
    model in ``/proc/cpuinfo``; elsewhere :func:`platform.processor`).
    """
    model = ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            model = next((line.split(":", 1)[1].strip() for line in fh if line.startswith("model name")), "")
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return (
        f"{model or platform.processor() or 'an unknown CPU'}, {cores} cores, {workers} process(es) x "
        f"{threads} thread(s)"
    )


def plot_summary(summary: Mapping[str, Any], path: Path, title: str) -> Path:
    """``boundary.png`` of the experiment: each row's mean over seeds, shaded between its min and max (one seed:
    the lines alone).
    """
    curves = []
    for row in [r for r in ("cnn", "cnn+densecrf", "crfrnn", "cnn_longer") if r in summary]:
        widths = sorted(summary[row]["boundary"])
        points, spread = {}, {}
        for key in ("pixel_accuracy", "mean_iou"):
            band = [summary[row]["boundary"][w][key] for w in widths]
            points[key] = [(w, 100 * s["mean"]) for w, s in zip(widths, band)]
            spread[key] = ([100 * s["min"] for s in band], [100 * s["max"] for s in band])
        several = all(s["n"] > 1 for s in band)
        curves.append(
            BoundaryCurve(_SHORT[row], points, spread if several else None, "--" if row == "cnn_longer" else "-")
        )
    return plot_boundary(path, curves, title=title, legend={"loc": "lower right", "fontsize": 8})

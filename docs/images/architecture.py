"""Draw docs/images/architecture.png: crfrnn's layers and two calls through them.

Run from the repository root: ``python docs/images/architecture.py`` (needs matplotlib).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch  # noqa: E402

#: top to bottom: a layer imports only from the layers below it
LAYERS = [
    ("command line", "crfrnn.cli"),
    ("workflow", "crfrnn.workflow"),
    ("files, pictures", "crfrnn.io    crfrnn.visualize"),
    ("models, data", "crfrnn.models    crfrnn.data"),
    ("API", "crfrnn.dense  .energy  .losses  .fit  .params  .metrics  .compat"),
    ("CRF engine", "crfrnn.crf"),
    ("lattice", "crfrnn.lattice"),
    ("compiled kernels", "crfrnn._kernels  (a leaf)"),
    ("utilities", "crfrnn._utils"),
]

#: (layer index, module.function) of each step; the arrows between steps are the calls
DENSE_CRF = [
    (4, "dense.dense_crf"),
    (5, "crf.pairwise.image_kernels"),
    (5, "crf.engine.infer"),
    (5, "crf._fused.infer_fused"),
    (6, "lattice.PermutohedralLattice"),
    (7, "_kernels.construct.build"),
    (7, "_kernels.meanfield.mean_field"),
]
TRAINING_STEP = [
    (1, "workflow._loop.train"),
    (3, "models.segmenter.CrfRnnSegmenter"),
    (5, "crf.module.CrfRnn.forward"),
    (5, "crf.functional.mean_field"),
    (5, "crf.engine.infer"),
    (5, "crf._compiled.compiled_mean_field"),
    (6, "lattice.PermutohedralLattice"),
    (7, "_kernels.meanfield / .adjoint"),
]


def draw(path: Path) -> None:
    """Draw the picture and write it to ``path`` (through a temporary file renamed into place)."""
    fig, ax = plt.subplots(figsize=(13, 7.5))
    ax.set_xlim(0, 13)
    ax.set_ylim(0, len(LAYERS))
    ax.axis("off")
    band = 0.86
    for i, (title, modules) in enumerate(LAYERS):
        y = len(LAYERS) - 1 - i
        colour = "#eef3fb" if i % 2 else "#f7f7f7"
        ax.add_patch(FancyBboxPatch((0.05, y + 0.07), 12.9, band, boxstyle="round,pad=0.01", fc=colour, ec="#c8d0dc"))
        ax.text(0.2, y + 0.62, title, fontsize=10, weight="bold", va="center")
        ax.text(0.2, y + 0.3, modules, fontsize=8, family="monospace", va="center", color="#333333")
    for steps, x0, colour, name in (
        (DENSE_CRF, 5.3, "#1f77b4", "crfrnn.dense_crf(image, probs)"),
        (TRAINING_STEP, 9.0, "#d62728", "one CrfRnn training step"),
    ):
        ax.text(x0, len(LAYERS) - 0.2, name, fontsize=10, weight="bold", color=colour, ha="left", va="center")
        previous = None
        count: dict[int, int] = {}
        for layer, label in steps:
            k = count.get(layer, 0)
            count[layer] = k + 1
            y = len(LAYERS) - 1 - layer + 0.72 - 0.22 * k
            x = x0 + 0.25 * k
            ax.text(
                x,
                y,
                label,
                fontsize=7.5,
                family="monospace",
                color=colour,
                va="center",
                bbox=dict(boxstyle="round,pad=0.15", fc="white", ec=colour, lw=0.8),
            )
            if previous is not None:
                ax.add_patch(
                    FancyArrowPatch(
                        (previous[0] - 0.08, previous[1] - 0.08),
                        (x - 0.08, y + 0.08),
                        arrowstyle="-|>",
                        mutation_scale=8,
                        color=colour,
                        lw=0.8,
                    )
                )
            previous = (x, y)
    fig.tight_layout()
    fd, tmp = tempfile.mkstemp(suffix=".png", dir=path.parent)
    os.close(fd)
    fig.savefig(tmp, dpi=110)
    os.replace(tmp, path)


if __name__ == "__main__":
    draw(Path(__file__).with_name("architecture.png"))

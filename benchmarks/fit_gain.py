"""What ``crfrnn fit`` gains over densecrf's usual parameters and over ``crfrnn evaluate``'s grid search.

For each scenario, images with known ground truth and a stand-in "network" (the ground truth degraded by
:func:`crfrnn.fit.degraded_probs`: down-sampled by ``factor``, noisy, up-sampled bilinearly) are split into a
*fit* set and a *test* set that nothing is tuned on. On the fit set:

- ``densecrf defaults``: nothing is tuned (densecrf's usual parameters: Gaussian 3/3, bilateral 80/13/10, 5 iterations);
- ``grid search``: :func:`crfrnn.workflow.search_dense_crf`, the search of ``crfrnn evaluate --search``
  (its default 27-point grid over bilateral sxy, srgb and compat, picked by mean IoU over the fit set);
- ``fit (weights)``: :func:`crfrnn.fit_crf` with the widths fixed (75 % of the fit set to fit, 25 % to stop);
- ``fit (weights + widths)``: :func:`crfrnn.fit_crf` with the widths fitted too (when available).

Every row is then measured on the test set: mean IoU and pixel accuracy within 3 px of a label boundary.

Scenarios (``--scenarios``):

- ``coarse``: the built-in synthetic data set, network = ground truth at stride 8 with noise 1.0;
- ``noisy``: the same scenes, stride 2 and noise 2.5 (a sharp but unreliable network);
- ``textures``: the synthetic scenes' label maps filled with crops of real photos shipped inside
  scikit-image (grass, brick, gravel, coffee, chelsea, astronaut, rocket: one per class), stride 8, noise
  1.0: real image statistics with exact ground truth (no package installed here ships labelled photos).

    python benchmarks/fit_gain.py                     # all three scenarios, a few minutes on 2 cores
    python benchmarks/fit_gain.py --scenarios coarse --json fit_gain.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np
import torch
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _harness import metadata  # noqa: E402

SCENARIOS = {
    "coarse": {"factor": 8, "noise": 1.0},
    "noisy": {"factor": 2, "noise": 2.5},
    "textures": {"factor": 8, "noise": 1.0},
}
_TEXTURES = ("grass", "brick", "gravel", "coffee", "chelsea", "astronaut", "rocket")


def _textures(size: int) -> list:
    from skimage import data
    from skimage.color import gray2rgb
    from skimage.transform import rescale

    out = []
    for name in _TEXTURES:
        img = getattr(data, name)()
        img = gray2rgb(img) if img.ndim == 2 else img[..., :3]
        scale = max(2 * size / min(img.shape[:2]), 0.35)  # crops of about a third of the photo
        out.append((rescale(img, scale, channel_axis=-1, anti_aliasing=True) * 255).astype(np.uint8))
    return out


def scenes(name: str, count: int, size: int, first_index: int, seed: int = 0):
    """Images ``(H, W, 3) uint8``, ground truth ``(H, W) int64`` and degraded probabilities ``(L, H, W)``."""
    from crfrnn.data import SyntheticShapes
    from crfrnn.fit import degraded_probs

    ds = SyntheticShapes(count, size=size, seed=seed, first_index=first_index)
    textures = _textures(size) if name == "textures" else None
    rng = np.random.default_rng(1000 + first_index)
    images, masks, probs = [], [], []
    for i in range(count):
        image, mask = ds[i]
        image = image.permute(1, 2, 0).numpy().astype(np.uint8)
        mask = mask.numpy()
        if textures is not None:
            image = np.empty_like(image)
            for k, tex in enumerate(textures):
                y, x = (int(rng.integers(0, n - size + 1)) for n in tex.shape[:2])
                crop = tex[y : y + size, x : x + size]
                image[mask == k] = crop[mask == k]
        images.append(image)
        masks.append(mask)
        probs.append(degraded_probs(mask, ds.num_classes, seed=first_index + i, **SCENARIOS[name]))
    return images, masks, probs, ds.num_classes


class Outputs(nn.Module):
    """A stand-in "network" for search_dense_crf: returns the stored logits of each image it is shown."""

    def __init__(self, images, probs) -> None:
        super().__init__()
        self.register_buffer("anchor", torch.zeros(()))  # gives the module a device
        self.table = {
            torch.from_numpy(im).permute(2, 0, 1).float().numpy().tobytes(): torch.from_numpy(p).clamp_min(1e-5).log()
            for im, p in zip(images, probs)
        }

    def forward(self, image):
        return torch.stack([self.table[x.numpy().tobytes()] for x in image])


def measure(images, masks, probs, num_labels, params):
    from crfrnn import dense_crf
    from crfrnn.metrics import BoundaryAccuracy, ConfusionMatrix

    cm, band = ConfusionMatrix(num_labels), BoundaryAccuracy(num_labels, widths=(3,))
    for image, mask, p in zip(images, masks, probs):
        q = p if params is None else dense_crf(image, p, **params)
        pred, target = torch.from_numpy(q.argmax(0)), torch.from_numpy(mask)
        cm.update(pred, target)
        band.update(pred, target)
    return {"mean_iou": cm.compute()["mean_iou"], "boundary_accuracy": band.compute()[3]["pixel_accuracy"]}


def run_scenario(name: str, args) -> dict:
    from crfrnn import fit_crf
    from crfrnn.fit import width_gradients_available
    from crfrnn.params import DENSECRF_DEFAULTS as DENSE_CRF_DEFAULTS
    from crfrnn.workflow import search_dense_crf

    fit_set = scenes(name, args.fit_images, args.size, first_index=0)
    test_set = scenes(name, args.test_images, args.size, first_index=100_000)
    images, masks, probs, num_labels = fit_set
    rows, times = {"network alone": None, "densecrf defaults": dict(DENSE_CRF_DEFAULTS)}, {}

    t = time.perf_counter()
    dataset = [(torch.from_numpy(im).permute(2, 0, 1).float(), torch.from_numpy(m)) for im, m in zip(images, masks)]
    best, _ = search_dense_crf(Outputs(images, probs), dataset, num_classes=num_labels, progress=False)
    rows["grid search (crfrnn evaluate, 27 points)"] = best
    times["grid search"] = time.perf_counter() - t

    t = time.perf_counter()
    fit = fit_crf(
        images, probs, masks, epochs=args.epochs, lr=args.lr, fit_widths=False, seed=args.seed, progress=False
    )
    rows["fit: weights"] = fit.params
    times["fit: weights"] = time.perf_counter() - t
    if width_gradients_available():
        t = time.perf_counter()
        fit = fit_crf(
            images, probs, masks, epochs=args.epochs, lr=args.lr, fit_widths=True, seed=args.seed, progress=False
        )
        rows["fit: weights + widths"] = fit.params
        times["fit: weights + widths"] = time.perf_counter() - t
    results = {
        row: {"params": params, "test": measure(*test_set[:3], num_labels, params)} for row, params in rows.items()
    }
    return {"scenario": name, **SCENARIOS[name], "results": results, "seconds": times}


def table(result: dict, args) -> str:
    head = (
        f"{result['scenario']} (stride {result['factor']}, noise {result['noise']}; fit on {args.fit_images}, "
        f"test on {args.test_images} other {args.size}x{args.size} images)"
    )
    lines = [
        head,
        f"{'':44} {'mean IoU':>9} {'boundary acc (3 px)':>20}   parameters (bilateral sxy/srgb/compat, "
        "gaussian sxy/compat)",
    ]
    for row, r in result["results"].items():
        m, p = r["test"], r["params"]
        shown = (
            ""
            if p is None
            else (
                f"{p['bilateral_sxy']:.3g}/{p['bilateral_srgb']:.3g}/{p['bilateral_compat']:.3g}, "
                f"{p['gaussian_sxy']:.3g}/{p['gaussian_compat']:.3g}"
            )
        )
        lines.append(f"{row:44} {100 * m['mean_iou']:>8.2f}% {100 * m['boundary_accuracy']:>19.2f}%   {shown}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenarios", nargs="+", choices=sorted(SCENARIOS), default=list(SCENARIOS))
    parser.add_argument("--fit-images", type=int, default=16)
    parser.add_argument("--test-images", type=int, default=32)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    args = parser.parse_args()
    out = {"args": vars(args), "scenarios": [], "machine": metadata()}
    for name in args.scenarios:
        result = run_scenario(name, args)
        out["scenarios"].append(result)
        print(table(result, args), flush=True)
        print("  seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in result["seconds"].items()), flush=True)
    if args.json:
        from crfrnn._utils.files import atomic_write_text

        atomic_write_text(args.json, json.dumps(out, indent=2) + "\n")
    print(json.dumps(out["machine"]))


if __name__ == "__main__":
    main()

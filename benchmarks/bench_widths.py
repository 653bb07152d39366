"""What learning the kernel widths costs: CrfRnn forward+backward with ``learn_widths=True`` against without.

Training mode, 500x375 (the astronaut photo resized), 21 labels, T = 5, batch size 1, float32, CPU, default
backend. Each figure is the median of --repeats calls after a warm-up call, the two layers alternated call by
call so that a change in the machine's load hits both alike; the ratio is of the medians. Also timed: the
layer with fixed widths but a guide that requires a gradient (the per-point feature gradient, which a learned
guide needs, costs more than the widths' alone; see docs/widths.md).

    python benchmarks/bench_widths.py
    python benchmarks/bench_widths.py --json out.json
    python benchmarks/bench_widths.py --accuracy    # lattice against exact gradients (docs/widths.md)
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _harness import report  # noqa: E402


def setup(h: int, w: int, num_labels: int, iters: int):
    import torch
    from skimage.data import astronaut
    from skimage.transform import resize

    from crfrnn import CrfRnn

    image = torch.from_numpy(resize(astronaut(), (h, w), anti_aliasing=True) * 255).float().permute(2, 0, 1)[None]
    g = torch.Generator().manual_seed(0)
    unary = torch.randn(1, num_labels, h // 8, w // 8, generator=g)
    unary = torch.nn.functional.interpolate(unary, size=(h, w), mode="bilinear").requires_grad_(True)
    layers = {
        "fixed widths": CrfRnn(num_labels, num_iterations=iters).train(),
        "learn_widths=True": CrfRnn(num_labels, num_iterations=iters, learn_widths=True).train(),
    }
    guide = image.clone().requires_grad_(True)

    def step(crf, img):
        def run():
            crf.zero_grad(set_to_none=True)
            unary.grad = img.grad = None
            crf(unary, img).square().mean().backward()

        return run

    calls = {name: step(crf, image) for name, crf in layers.items()}
    calls["fixed widths, guide grad"] = step(layers["fixed widths"], guide)
    return calls


def accuracy() -> list[dict]:
    """Lattice against exact (O(N^2)) gradients of a loss through 3 mean-field iterations, float64, on small photo
    crops and a smooth synthetic image, for the widths of densecrf (80/13/3) and CRF-RNN (160/3/3) and looser ones."""
    import torch
    import torch.nn.functional as F
    from skimage.data import astronaut, chelsea
    from skimage.transform import resize

    from crfrnn import mean_field

    def photo(img, h, w):
        return torch.from_numpy(resize(img, (h, w), anti_aliasing=True) * 255).permute(2, 0, 1)[None].double()

    h, w = 24, 32
    yy, xx = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64), indexing="ij")
    smooth = torch.stack(
        [127 + 100 * torch.sin(xx / 5), 127 + 100 * torch.cos(yy / 4), 127 + 80 * torch.sin((xx + yy) / 7)]
    )[None]
    images = {"astronaut": photo(astronaut(), h, w), "chelsea": photo(chelsea(), h, w), "smooth": smooth}
    configs = {
        "8/30/3": (8.0, 30.0, 3.0),
        "80/13/3 (densecrf)": (80.0, 13.0, 3.0),
        "160/3/3 (CRF-RNN)": (160.0, 3.0, 3.0),
    }
    g = torch.Generator().manual_seed(0)
    unary = F.interpolate(
        torch.randn(1, 3, h // 4, w // 4, generator=g, dtype=torch.float64) * 2, size=(h, w), mode="bilinear"
    )
    target = torch.randn(1, 3, h, w, generator=g, dtype=torch.float64)
    rows = []
    for iname, img in images.items():
        for cname, (a, b, c) in configs.items():
            res = {}
            for exact in (True, False):
                ws = [torch.tensor(v, dtype=torch.float64, requires_grad=True) for v in (a, b, c)]
                im = img.clone().requires_grad_(True)
                out = mean_field(
                    unary, im, theta_alpha=ws[0], theta_beta=ws[1], theta_gamma=ws[2], num_iterations=3, exact=exact
                )
                (out.softmax(1) * target).sum().backward()
                res[exact] = (im.grad.flatten(), torch.stack([t.grad for t in ws]))
            (ge, we), (gl, wl) = res[True], res[False]
            row = {
                "image": iname,
                "widths": cname,
                "guide_cosine": float(F.cosine_similarity(ge, gl, 0)),
                "guide_relative": float((ge - gl).norm() / ge.norm()),
                "width_exact": we.tolist(),
                "width_lattice": wl.tolist(),
                "width_relative": ((wl - we).abs() / we.abs()).tolist(),
            }
            rows.append(row)
            print(
                f"{iname:>9} {cname:>18} | guide cos {row['guide_cosine']:.3f} rel {row['guide_relative']:.3f} | "
                "widths (alpha, beta, gamma) exact "
                + " ".join(f"{x:+.3g}" for x in row["width_exact"])
                + " lattice "
                + " ".join(f"{x:+.3g}" for x in row["width_lattice"]),
                flush=True,
            )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, nargs=2, default=(375, 500), metavar=("H", "W"))
    parser.add_argument("--labels", type=int, default=21)
    parser.add_argument("--iterations", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--no-guide", action="store_true", help="skip the guide-gradient row")
    parser.add_argument("--accuracy", action="store_true", help="lattice against exact gradients instead of timing")
    parser.add_argument("--json")
    args = parser.parse_args()
    if args.accuracy:
        report({"benchmark": "bench_widths --accuracy", "rows": accuracy()}, args.json)
        return
    h, w = args.size
    calls = setup(h, w, args.labels, args.iterations)
    if args.no_guide:
        calls.pop("fixed widths, guide grad")
    times: dict[str, list[float]] = {name: [] for name in calls}
    for fn in calls.values():  # warm-up: compiled kernels, the spatial kernel's cache, allocator pools
        fn()
    for _ in range(args.repeats):
        for name, fn in calls.items():
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
    base = statistics.median(times["fixed widths"])
    print(
        f"CrfRnn forward+backward, {w}x{h}, L={args.labels}, T={args.iterations}, train mode, "
        f"median of {args.repeats} after warm-up"
    )
    rows = []
    for name, ts in times.items():
        med = statistics.median(ts)
        rows.append({"layer": name, "median": med, "min": min(ts), "max": max(ts), "ratio": med / base})
        print(
            f"{name:>26} | {med * 1e3:8.0f} ms (min {min(ts) * 1e3:.0f}, max {max(ts) * 1e3:.0f}) | {med / base:4.2f}x",
            flush=True,
        )
    report(
        {
            "benchmark": "bench_widths",
            "size": [h, w],
            "labels": args.labels,
            "iterations": args.iterations,
            "rows": rows,
        },
        args.json,
    )


if __name__ == "__main__":
    main()

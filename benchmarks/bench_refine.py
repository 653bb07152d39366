"""crfrnn.dense_crf against Krähenbühl's densecrf (pydensecrf2), side by side in one run.

Same inputs for both: a real photo (scikit-image's astronaut) resized, and coarse noisy probabilities
over L labels; densecrf's usual parameters (Gaussian sxy 3 / compat 3, bilateral sxy 80, srgb 13,
compat 10, symmetric normalisation). Each time is the median of --repeats calls after a warm-up call,
covering everything from the arrays to the marginals (lattice construction included). "crfrnn" builds
both lattices on every call, like densecrf; "crfrnn_warm" keeps the spatial lattice of the previous call
of the same image size (what happens when refining a folder of same-sized images); the speed-up and the
memory ratio are those of the cold "crfrnn" column. Peak memory is
measured once per tool and configuration in a fresh child process: resident memory added at the peak of
one call, after a warm-up call on a 64x48 input.

    python benchmarks/bench_refine.py                 # the issue's table + scaling, ~2 minutes
    python benchmarks/bench_refine.py --quick         # 500x375 only
    python benchmarks/bench_refine.py --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _harness import in_child, peak_memory, report, time_it  # noqa: E402


def make_inputs(h: int, w: int, num_labels: int, seed: int = 0):
    import torch
    import torch.nn.functional as F
    from skimage.data import astronaut
    from skimage.transform import resize

    image = np.ascontiguousarray((resize(astronaut(), (h, w), anti_aliasing=True) * 255).astype(np.uint8))
    g = torch.Generator().manual_seed(seed)
    coarse = torch.randn(1, num_labels, h // 16 + 1, w // 16 + 1, generator=g) * 2.5
    logits = F.interpolate(coarse, size=(h, w), mode="bilinear")[0] + 0.5 * torch.randn(num_labels, h, w, generator=g)
    return image, np.ascontiguousarray(torch.softmax(logits, 0).numpy())


def runner(tool: str, image: np.ndarray, probs: np.ndarray, iterations: int):
    if tool in ("crfrnn", "crfrnn_warm"):
        from crfrnn import KernelCache, dense_crf

        cache = KernelCache() if tool == "crfrnn_warm" else None  # cold: both lattices on every call, as densecrf

        def run():
            return dense_crf(image, probs, num_iterations=iterations, cache=cache)

        return run
    import pydensecrf.densecrf as dcrf
    from pydensecrf.utils import unary_from_softmax

    num_labels, h, w = probs.shape

    def run():
        d = dcrf.DenseCRF2D(w, h, num_labels)
        d.setUnaryEnergy(unary_from_softmax(probs))
        d.addPairwiseGaussian(sxy=3, compat=3)
        d.addPairwiseBilateral(sxy=80, srgb=13, rgbim=image, compat=10)
        return np.array(d.inference(iterations))

    return run


def have_densecrf() -> bool:
    try:
        import pydensecrf.densecrf  # noqa: F401

        return True
    except ImportError:
        return False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="only 500x375, 21 labels")
    parser.add_argument("--repeats", type=int, default=11)
    parser.add_argument("--no-memory", action="store_true", help="skip the child-process memory measurements")
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("--child", nargs=5, metavar=("TOOL", "H", "W", "L", "ITERS"), help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:  # peak memory of one tool and configuration, in this fresh process
        tool, h, w, num_labels, iters = args.child[0], *map(int, args.child[1:])
        image, probs = make_inputs(h, w, num_labels)
        warm = runner(tool, *make_inputs(48, 64, num_labels), iters)  # kernels loaded, pools still small
        print(json.dumps({"peak_bytes": peak_memory(runner(tool, image, probs, iters), warmup=warm)}))
        return

    tools = ["crfrnn", "crfrnn_warm"] + (["densecrf"] if have_densecrf() else [])
    if "densecrf" not in tools:
        print("pydensecrf2 is not installed: timing crfrnn alone (pip install pydensecrf2 for the comparison)")
    configs = [(375, 500, 21, 5), (375, 500, 21, 10)]
    if not args.quick:
        configs += [(750, 1000, 21, 5), (750, 1000, 21, 10)]
        # scaling in pixels (0.25, 1 and 4 megapixels) and in labels, at 10 iterations
        configs += [(433, 577, 21, 10), (866, 1155, 21, 10), (1732, 2309, 21, 10)]
        configs += [(375, 500, 7, 10), (375, 500, 63, 10)]
    rows = []
    print(f"{'size':>11} {'L':>3} {'T':>3} | " + " | ".join(f"{t:>16}" for t in tools) + " | speed-up | memory ratio")
    for h, w, num_labels, iters in configs:
        image, probs = make_inputs(h, w, num_labels)
        row = {"height": h, "width": w, "labels": num_labels, "iterations": iters, "megapixels": h * w / 1e6}
        for tool in tools:
            row[tool] = time_it(runner(tool, image, probs, iters), repeats=args.repeats)
            if not args.no_memory and tool != "crfrnn_warm":
                child = in_child(__file__, ["--child", tool, str(h), str(w), str(num_labels), str(iters)])
                row[tool]["peak_bytes"] = child["peak_bytes"]
        line = f"{w:>5}x{h:<5} {num_labels:>3} {iters:>3} | " + " | ".join(
            f"{row[t]['median'] * 1e3:8.1f} ms"
            + (f" {row[t]['peak_bytes'] / 2**20:4.0f}M" if "peak_bytes" in row[t] else "")
            for t in tools
        )
        if "densecrf" in row:
            row["speedup"] = row["densecrf"]["median"] / row["crfrnn"]["median"]
            line += f" | {row['speedup']:7.2f}x"
            if "peak_bytes" in row["crfrnn"]:
                row["memory_ratio"] = row["crfrnn"]["peak_bytes"] / row["densecrf"]["peak_bytes"]
                line += f" | {row['memory_ratio']:6.2f}x"
        print(line, flush=True)
        rows.append(row)
    report({"benchmark": "bench_refine", "rows": rows}, args.json)


if __name__ == "__main__":
    main()

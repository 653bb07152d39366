"""How closely crfrnn.dense_crf agrees with Krähenbühl's densecrf (pydensecrf2) on real photos.

The inputs of tests/test_parity.py (scikit-image's sample photos at 500x375, coarse noisy probabilities
over 21 labels, densecrf's usual parameters), with the numbers printed rather than only bounded:
label agreement, mean and largest absolute difference of the marginals, and for scale how many labels
the CRF changed.

    python benchmarks/parity.py          # needs pydensecrf2 (pip install -e ".[parity]")
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _harness import report  # noqa: E402
from bench_refine import make_inputs, runner  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json")
    args = parser.parse_args()
    try:
        import pydensecrf.densecrf  # noqa: F401
    except ImportError:
        sys.exit("pydensecrf2 is not installed: pip install pydensecrf2 (or the project's 'parity' extra)")
    from skimage import data
    from skimage.transform import resize

    rows = []
    print(f"{'photo':>10} {'T':>3} | label agreement | mean |dQ|  | max |dQ|  | labels changed by the CRF")
    for name in ("astronaut", "chelsea", "coffee"):
        image = (resize(getattr(data, name)(), (375, 500), anti_aliasing=True) * 255).astype(np.uint8)
        _, probs = make_inputs(375, 500, 21)
        image = np.ascontiguousarray(image)
        for iterations in (5, 10):
            ours = runner("crfrnn_warm", image, probs, iterations)()
            ref = runner("densecrf", image, probs, iterations)().reshape(ours.shape)
            row = {
                "photo": name,
                "iterations": iterations,
                "agreement": float((ours.argmax(0) == ref.argmax(0)).mean()),
                "mean_abs_diff": float(np.abs(ours - ref).mean()),
                "max_abs_diff": float(np.abs(ours - ref).max()),
                "changed": float((ref.argmax(0) != probs.argmax(0)).mean()),
            }
            rows.append(row)
            print(
                f"{name:>10} {iterations:>3} | {100 * row['agreement']:13.4f} % | {row['mean_abs_diff']:.2e} | "
                f"{row['max_abs_diff']:.2e} | {100 * row['changed']:.1f} %",
                flush=True,
            )
    report({"benchmark": "parity", "rows": rows}, args.json)


if __name__ == "__main__":
    main()

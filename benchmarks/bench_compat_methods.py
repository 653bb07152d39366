"""crfrnn.compat against pydensecrf, method by method, in the setting of a typical pydensecrf script.

500x375 photo (scikit-image's astronaut), 21 labels, probabilities from a coarse random field upsampled with
noise (``bench_refine.make_inputs``), Gaussian ``sxy=3, compat=3`` and bilateral ``sxy=80, srgb=13, compat=10``
(symmetric normalisation). Both objects are built once and warmed up; then each method is called on one and the
other in turn (the order alternating pair by pair), and the median of the per-pair time ratios crfrnn /
pydensecrf is printed with its interquartile range against the 1.3x target:

- ``startInference()``; ``stepInference(Q, tmp1, tmp2)`` (one step on a Q kept between calls); ``klDivergence(Q)``;
  ``inference(5)``; ``map(5)`` (pydensecrf2 has no ``map``: its side is densecrf's definition,
  ``argmax(inference(5), 0)``);
- ``setup + first step``: constructor, ``setUnaryEnergy``, both ``addPairwise*``, ``startInference`` and one
  ``stepInference`` (pydensecrf builds its lattices in ``addPairwise*``, crfrnn on the first step).

The max difference of the marginals after five steps is printed too. Needs pydensecrf2 (``pip install
pydensecrf2``, the ``parity`` extra).

    python benchmarks/bench_compat_methods.py
    python benchmarks/bench_compat_methods.py --repeats 5 --size 120 160 --json out.json
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
from _harness import paired_ratio, report  # noqa: E402
from bench_refine import have_densecrf, make_inputs  # noqa: E402

TARGET = 1.3


def build(module, image: np.ndarray, probs: np.ndarray):
    from crfrnn.compat.utils import unary_from_softmax

    num_labels, h, w = probs.shape
    d = module.DenseCRF2D(w, h, num_labels)
    d.setUnaryEnergy(unary_from_softmax(probs))
    d.addPairwiseGaussian(sxy=3, compat=3)
    d.addPairwiseBilateral(sxy=80, srgb=13, rgbim=image, compat=10)
    return d


def methods(module, image: np.ndarray, probs: np.ndarray, ours: bool) -> dict:
    d = build(module, image, probs)
    q, t1, t2 = d.startInference()
    d.stepInference(q, t1, t2)

    def setup_and_step():
        e = build(module, image, probs)
        p, s1, s2 = e.startInference()
        e.stepInference(p, s1, s2)

    return {
        "startInference": d.startInference,
        "stepInference": lambda: d.stepInference(q, t1, t2),
        "klDivergence": lambda: d.klDivergence(q),
        "inference(5)": lambda: d.inference(5),
        "map(5)": (lambda: d.map(5)) if ours else (lambda: np.argmax(d.inference(5), axis=0)),
        "setup + first step": setup_and_step,
    }


def five_steps(module, image: np.ndarray, probs: np.ndarray) -> np.ndarray:
    d = build(module, image, probs)
    q, t1, t2 = d.startInference()
    for _ in range(5):
        d.stepInference(q, t1, t2)
    return np.array(q)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=11)
    parser.add_argument("--size", type=int, nargs=2, default=(375, 500), metavar=("H", "W"))
    parser.add_argument("--json")
    args = parser.parse_args()
    if not have_densecrf():
        raise SystemExit("pydensecrf2 is not installed (pip install pydensecrf2); nothing to compare with.")
    import pydensecrf.densecrf as pdc

    import crfrnn.compat.densecrf as cdc

    h, w = args.size
    image, probs = make_inputs(h, w, 21)
    diff = float(np.abs(five_steps(cdc, image, probs) - five_steps(pdc, image, probs)).max())
    ours, theirs = methods(cdc, image, probs, True), methods(pdc, image, probs, False)
    print(f"crfrnn.compat vs pydensecrf, {w}x{h}, 21 labels; max |dQ| after 5 steps {diff:.1e}")
    print(f"  {'method':<20} {'crfrnn':>10} {'pydensecrf':>11} {'ratio':>7}  IQR          target {TARGET}x")
    rows = {}
    for name in ours:
        r = paired_ratio(ours[name], theirs[name], repeats=args.repeats)
        rows[name] = {
            "crfrnn_ms": r["median"] * 1e3,
            "pydensecrf_ms": r["base_median"] * 1e3,
            "ratio": r["ratio"],
            "ratio_iqr": [r["ratio_q1"], r["ratio_q3"]],
            "within_target": r["ratio"] <= TARGET,
        }
        print(
            f"  {name:<20} {r['median'] * 1e3:7.1f} ms {r['base_median'] * 1e3:8.1f} ms {r['ratio']:6.2f}x  "
            f"{r['ratio_q1']:.2f}-{r['ratio_q3']:.2f}    {'ok' if r['ratio'] <= TARGET else 'OVER'}",
            flush=True,
        )
    report({"benchmark": "bench_compat_methods", "size": [h, w], "max_abs_diff": diff, "methods": rows}, args.json)


if __name__ == "__main__":
    main()

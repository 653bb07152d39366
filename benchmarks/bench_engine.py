"""Every entry point of the one engine side by side, quiet and under contention, against pydensecrf.

500x375 photo (scikit-image's astronaut), 21 labels, 10 iterations, densecrf's usual parameters (Gaussian sxy 3
/ compat 3, bilateral sxy 80 / srgb 13 / compat 10, symmetric normalisation), all in one run:

- entry points, as a new user calls them, relative to ``dense_crf``: ``mean_field`` under ``torch.no_grad()``,
  ``CrfRnn(21).eval()`` (which adds the L x L products), ``compat.DenseCRF2D`` and ``compat.DenseCRF`` with
  ``addPairwiseEnergy``; all give the same marginals (the max difference is printed); each is called in turn
  with ``dense_crf``, and the median of the per-pair ratios is printed with its interquartile range (the
  ratio of two back-to-back calls cancels the drift of a shared machine);
- threads: ``dense_crf`` quiet with 2 threads and with 1, and with one CPU-bound competing process (a busy
  loop in a child process) with its default settings and with 1 thread, each against pydensecrf in the same
  conditions; then, under contention again, the default and 1 thread alternated call by call (the fairest
  comparison of the two on a machine whose speed drifts).

Medians of --repeats calls after a warm-up call; everything from the arrays to the marginals is timed.

    python benchmarks/bench_engine.py
    python benchmarks/bench_engine.py --repeats 5 --json out.json
"""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _harness import paired_ratio, report, time_it  # noqa: E402
from bench_refine import have_densecrf, make_inputs, runner  # noqa: E402


@contextlib.contextmanager
def busy_process():
    """One CPU-bound competitor (what a DataLoader worker or a second job does to us)."""
    proc = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        yield
    finally:
        proc.kill()
        proc.wait()


@contextlib.contextmanager
def threads(n):
    import numba

    before = numba.get_num_threads()
    if n is not None:
        numba.set_num_threads(n)
    try:
        yield
    finally:
        numba.set_num_threads(before)


def alternated(fn, repeats: int) -> dict:
    """``fn`` with the default threads against one thread, called in turn (:func:`paired_ratio`)."""

    def with_threads(n):
        def run():
            with threads(n):
                return fn()

        return run

    r = paired_ratio(with_threads(None), with_threads(1), repeats=repeats)
    return {
        "default_ms": r["median"] * 1e3,
        "one_thread_ms": r["base_median"] * 1e3,
        "ratio": r["ratio"],
        "ratio_iqr": [r["ratio_q1"], r["ratio_q3"]],
    }


def entry_points(image: np.ndarray, probs: np.ndarray, iterations: int) -> dict:
    import torch

    import crfrnn
    import crfrnn.compat as dcrf

    num_labels, h, w = probs.shape
    logits = torch.from_numpy(np.log(np.clip(probs, 1e-5, 1.0)))[None]
    img = torch.from_numpy(image).permute(2, 0, 1)[None].float()
    kw = dict(theta_alpha=80.0, theta_beta=13.0, theta_gamma=3.0, normalization="symmetric")
    crf = crfrnn.CrfRnn(
        num_labels, **kw, spatial_weight=3.0, bilateral_weight=10.0, num_eval_iterations=iterations
    ).eval()

    def mean_field():
        with torch.no_grad():
            return (
                crfrnn.mean_field(
                    logits, img, **kw, spatial_weight=3.0, bilateral_weight=10.0, num_iterations=iterations
                )
                .softmax(1)[0]
                .numpy()
            )

    def crfrnn_eval():
        crf.cache.clear()  # build both lattices every call, like the others
        with torch.no_grad():
            return crf(logits, img).softmax(1)[0].numpy()

    def compat_2d():
        d = dcrf.DenseCRF2D(w, h, num_labels)
        d.setUnaryEnergy(dcrf.unary_from_softmax(probs))
        d.addPairwiseGaussian(sxy=3, compat=3)
        d.addPairwiseBilateral(sxy=80, srgb=13, rgbim=image, compat=10)
        return np.array(d.inference(iterations)).reshape(probs.shape)

    def compat_generic():
        d = dcrf.DenseCRF(h * w, num_labels)
        d.setUnaryEnergy(dcrf.unary_from_softmax(probs))
        pos = dcrf.create_pairwise_gaussian((3, 3), (h, w))[::-1].copy()  # (x, y), as DenseCRF2D orders them
        d.addPairwiseEnergy(pos, compat=3)
        bil = dcrf.create_pairwise_bilateral((80, 80), (13, 13, 13), image, chdim=2)
        d.addPairwiseEnergy(np.concatenate([bil[1::-1], bil[2:]]), compat=10)
        return np.array(d.inference(iterations)).reshape(probs.shape)

    return {
        "mean_field (no_grad)": mean_field,
        "CrfRnn.eval()": crfrnn_eval,
        "compat.DenseCRF2D": compat_2d,
        "compat.DenseCRF (addPairwiseEnergy)": compat_generic,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=11)
    parser.add_argument("--size", type=int, nargs=2, default=(375, 500), metavar=("H", "W"))
    parser.add_argument("--iterations", type=int, default=10)
    parser.add_argument("--json")
    args = parser.parse_args()
    h, w = args.size
    image, probs = make_inputs(h, w, 21)
    t = args.iterations
    out = {"size": [h, w], "labels": 21, "iterations": t}
    base_fn = runner("crfrnn", image, probs, t)
    ref = base_fn()

    print(f"entry points, {w}x{h}, 21 labels, T={t}, quiet (median of per-pair ratios to dense_crf, called in turn)")
    rows = {}
    for name, fn in entry_points(image, probs, t).items():
        diff = float(np.abs(fn() - ref).max())
        r = paired_ratio(fn, base_fn, repeats=args.repeats)
        rows[name] = {
            "ms": r["median"] * 1e3,
            "dense_crf_ms": r["base_median"] * 1e3,
            "ratio": r["ratio"],
            "ratio_iqr": [r["ratio_q1"], r["ratio_q3"]],
            "max_abs_diff": diff,
        }
        print(
            f"  {name:<38} {r['median'] * 1e3:8.1f} ms  dense_crf {r['base_median'] * 1e3:7.1f} ms  "
            f"{r['ratio']:5.2f}x  (IQR {r['ratio_q1']:.2f}-{r['ratio_q3']:.2f}; max |dQ| {diff:.1e})",
            flush=True,
        )
    out["entry_points"] = rows

    print("threads: dense_crf against pydensecrf (ratio = crfrnn / densecrf)")
    dense = runner("densecrf", image, probs, t) if have_densecrf() else None
    rows = {}
    for label, competing, n in [
        ("quiet, 2 threads", False, 2),
        ("quiet, 1 thread", False, 1),
        ("contended, default", True, None),
        ("contended, 1 thread", True, 1),
    ]:
        with contextlib.ExitStack() as stack:
            if competing:
                stack.enter_context(busy_process())
            with threads(n):
                ours = time_it(base_fn, repeats=args.repeats)["median"]
            theirs = time_it(dense, repeats=args.repeats)["median"] if dense else float("nan")
        rows[label] = {"crfrnn_ms": ours * 1e3, "densecrf_ms": theirs * 1e3, "ratio": ours / theirs}
        print(
            f"  {label:<22} crfrnn {ours * 1e3:8.1f} ms  densecrf {theirs * 1e3:8.1f} ms  {ours / theirs:5.2f}x",
            flush=True,
        )
    out["threads"] = rows
    c = rows["contended, default"]["crfrnn_ms"] / rows["contended, 1 thread"]["crfrnn_ms"]
    print(f"  contended default / contended 1 thread: {c:.2f}x")
    with busy_process():  # the same comparison with the two settings alternated call by call (drift cancels)
        alt = alternated(base_fn, args.repeats)
    out["contended_alternated"] = alt
    print(
        f"  contended, alternated call by call: default {alt['default_ms']:.1f} ms, 1 thread "
        f"{alt['one_thread_ms']:.1f} ms: {alt['ratio']:.2f}x (median of per-pair ratios, IQR "
        f"{alt['ratio_iqr'][0]:.2f}-{alt['ratio_iqr'][1]:.2f})"
    )
    report({"benchmark": "bench_engine", **out}, args.json)


if __name__ == "__main__":
    main()

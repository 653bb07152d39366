"""CPU time of one thread: crfrnn.dense_crf against pydensecrf, split into set-up and per iteration.

Wall-clock medians on a shared machine move with its load; the CPU time of a single-threaded run moves much
less (caches and memory bandwidth are still shared), so this is what the optimisations of the fused loop were
measured with. Both tools run single-threaded in this process (numba and PyTorch set to one thread); set-up is
a call with 0 iterations, per iteration is (T=10 - T=0) / 10. Minimum of --repeats rounds after a warm-up
round, the four calls (two tools, T=0 and T=10) made in turn in each round.

    python benchmarks/cpu_time.py            # 500x375 photo, 21 labels
    python benchmarks/cpu_time.py --volume   # 64x128x128 volume, 2 labels, the model of bench_volume.py
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def cpu_interleaved(fns: dict, repeats: int) -> dict:
    """Least CPU time of each function over ``repeats`` rounds, the functions called in turn within each round
    (so that the machine's drift over the run reaches every one of them alike), after one warm-up round."""
    for fn in fns.values():
        fn()
    best = {name: float("inf") for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t = time.process_time()
            fn()
            best[name] = min(best[name], time.process_time() - t)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--volume", action="store_true")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    import numba
    import torch

    numba.set_num_threads(1)
    torch.set_num_threads(1)
    import pydensecrf.densecrf as dcrf
    from pydensecrf.utils import create_pairwise_bilateral, create_pairwise_gaussian, unary_from_softmax

    import crfrnn

    if args.volume:
        from bench_volume import BIL_I, BIL_POS, BIL_W, POS, POS_W, make_volume

        vol, probs = make_volume((64, 128, 128), 2)

        def ours(t):
            return lambda: crfrnn.dense_crf(
                vol,
                probs,
                num_iterations=t,
                gaussian_sxy=POS,
                gaussian_compat=POS_W,
                bilateral_sxy=BIL_POS,
                bilateral_srgb=BIL_I,
                bilateral_compat=BIL_W,
            )

        def theirs(t):
            def run():
                d = dcrf.DenseCRF(vol.size, probs.shape[0])
                d.setUnaryEnergy(unary_from_softmax(probs))
                d.addPairwiseEnergy(create_pairwise_gaussian((POS,) * 3, vol.shape), compat=POS_W)
                d.addPairwiseEnergy(create_pairwise_bilateral((BIL_POS,) * 3, (BIL_I,), vol, chdim=-1), compat=BIL_W)
                return np.array(d.inference(t))

            return run
    else:
        from bench_refine import make_inputs, runner

        image, probs = make_inputs(375, 500, 21)

        def ours(t):
            return runner("crfrnn", image, probs, t)

        def theirs(t):
            return runner("densecrf", image, probs, t)

    fns = {(name, t): make(t) for name, make in (("crfrnn", ours), ("densecrf", theirs)) for t in (0, 10)}
    best = cpu_interleaved(fns, args.repeats)
    for name in ("crfrnn", "densecrf"):
        t0, t10 = best[name, 0], best[name, 10]
        print(
            f"{name:9s} set-up {t0 * 1e3:7.1f} ms CPU, per iteration {(t10 - t0) / 10 * 1e3:6.1f} ms CPU, "
            f"T=10 {t10 * 1e3:7.1f} ms CPU",
            flush=True,
        )
    print(f"crfrnn / densecrf at T=10: {best['crfrnn', 10] / best['densecrf', 10]:.2f}x")


if __name__ == "__main__":
    main()

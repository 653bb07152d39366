"""CPU time of one thread: crfrnn.dense_crf against pydensecrf, split into set-up and per iteration.

Wall-clock medians on a shared machine move with its load; the CPU time of a single-threaded run moves much
less (caches and memory bandwidth are still shared), so this is what the optimisations of the fused loop were
measured with. Both tools run single-threaded in this process (numba and PyTorch set to one thread); set-up is
a call with 0 iterations, per iteration is (T=10 - T=0) / 10. Minimum of --repeats calls after a warm-up.

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


def cpu(fn, repeats: int) -> float:
    fn()
    best = float("inf")
    for _ in range(repeats):
        t = time.process_time()
        fn()
        best = min(best, time.process_time() - t)
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
            return lambda: crfrnn.dense_crf(vol, probs, iterations=t, gaussian_sxy=POS, gaussian_compat=POS_W,
                                            bilateral_sxy=BIL_POS, bilateral_srgb=BIL_I, bilateral_compat=BIL_W)

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

    for name, make in (("crfrnn", ours), ("densecrf", theirs)):
        t0, t10 = cpu(make(0), args.repeats), cpu(make(10), args.repeats)
        print(f"{name:9s} set-up {t0 * 1e3:7.1f} ms CPU, per iteration {(t10 - t0) / 10 * 1e3:6.1f} ms CPU, "
              f"T=10 {t10 * 1e3:7.1f} ms CPU", flush=True)


if __name__ == "__main__":
    main()

"""3-D dense CRF: crfrnn.dense_crf on a volume against pydensecrf's generic DenseCRF and SimpleCRF's densecrf3d.

A synthetic 64x128x128 uint8 volume (smooth blobs plus noise, one modality) and coarse noisy probabilities over
2 and 4 labels; the same model for all three tools: a Gaussian kernel (width 5 voxels, Potts weight 2) and a
bilateral kernel (width 5 voxels, intensity width 5, Potts weight 3), symmetric normalisation, 5 iterations.
pydensecrf gets its features from ``create_pairwise_gaussian`` / ``create_pairwise_bilateral`` and
``addPairwiseEnergy``; SimpleCRF (``pip install SimpleCRF``; with NumPy 2 its source needs ``NPY_IN_ARRAY``
replaced by ``NPY_ARRAY_IN_ARRAY`` before it builds) gets the same numbers through its parameter dictionary.
Each time is the median of --repeats calls after a warm-up call, from the arrays to the result. crfrnn is also
timed at 1/8 of the voxels, to show that its cost is linear in them.

    python benchmarks/bench_volume.py
    python benchmarks/bench_volume.py --repeats 3 --json out.json
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _harness import report, time_it  # noqa: E402

POS, POS_W, BIL_POS, BIL_I, BIL_W, ITERS = 5.0, 2.0, 5.0, 5.0, 3.0, 5


def make_volume(shape, num_labels: int, seed: int = 0):
    import torch
    import torch.nn.functional as F

    g = torch.Generator().manual_seed(seed)
    small = tuple(max(2, s // 16) for s in shape)
    vol = F.interpolate(torch.rand(1, 1, *small, generator=g), size=shape, mode="trilinear")[0, 0]
    vol = (vol * 200 + torch.randn(shape, generator=g) * 10).clamp(0, 255).to(torch.uint8).numpy()
    logits = F.interpolate(torch.randn(1, num_labels, *small, generator=g) * 2.5, size=shape, mode="trilinear")[0]
    logits = logits + 0.8 * torch.randn(num_labels, *shape, generator=g)
    return np.ascontiguousarray(vol), np.ascontiguousarray(torch.softmax(logits, 0).numpy())


@contextlib.contextmanager
def quiet_stdout():
    """SimpleCRF prints its parameters from C++ on every call."""
    sys.stdout.flush()
    saved = os.dup(1)
    with open(os.devnull, "w") as null:
        os.dup2(null.fileno(), 1)
        try:
            yield
        finally:
            os.dup2(saved, 1)
            os.close(saved)


def runners(vol: np.ndarray, probs: np.ndarray) -> dict:
    from crfrnn import dense_crf

    out = {
        "crfrnn": lambda: dense_crf(
            vol,
            probs,
            num_iterations=ITERS,
            gaussian_sxy=POS,
            gaussian_compat=POS_W,
            bilateral_sxy=BIL_POS,
            bilateral_srgb=BIL_I,
            bilateral_compat=BIL_W,
        )
    }
    num_labels = probs.shape[0]
    try:
        import pydensecrf.densecrf as dcrf
        from pydensecrf.utils import create_pairwise_bilateral, create_pairwise_gaussian, unary_from_softmax

        def densecrf():
            d = dcrf.DenseCRF(vol.size, num_labels)
            d.setUnaryEnergy(unary_from_softmax(probs))
            d.addPairwiseEnergy(create_pairwise_gaussian((POS,) * 3, vol.shape), compat=POS_W)
            d.addPairwiseEnergy(create_pairwise_bilateral((BIL_POS,) * 3, (BIL_I,), vol, chdim=-1), compat=BIL_W)
            return np.array(d.inference(ITERS))

        out["pydensecrf DenseCRF"] = densecrf
    except ImportError:
        print("pydensecrf2 is not installed: skipped")
    try:
        import denseCRF3D

        param = {
            "MaxIterations": float(ITERS),
            "PosW": POS_W,
            "PosRStd": POS,
            "PosCStd": POS,
            "PosZStd": POS,
            "BilateralW": BIL_W,
            "BilateralRStd": BIL_POS,
            "BilateralCStd": BIL_POS,
            "BilateralZStd": BIL_POS,
            "ModalityNum": 1,
            "BilateralModsStds": (BIL_I,),
        }
        img = np.ascontiguousarray(vol[..., None])
        p = np.ascontiguousarray(probs.transpose(1, 2, 3, 0))

        def simplecrf():
            with quiet_stdout():
                return denseCRF3D.densecrf3d(img, p, param)

        out["SimpleCRF densecrf3d"] = simplecrf
    except ImportError:
        print("SimpleCRF is not installed: skipped")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--shape", type=int, nargs=3, default=(64, 128, 128))
    parser.add_argument("--json")
    args = parser.parse_args()
    shape = tuple(args.shape)
    rows = []
    for num_labels in (2, 4):
        vol, probs = make_volume(shape, num_labels)
        row = {"shape": list(shape), "labels": num_labels, "iterations": ITERS}
        for name, fn in runners(vol, probs).items():
            row[name] = time_it(fn, repeats=args.repeats)["median"]
        small = tuple(s // 2 for s in shape)
        v8, p8 = make_volume(small, num_labels)
        row["crfrnn, 1/8 of the voxels"] = time_it(runners(v8, p8)["crfrnn"], repeats=args.repeats)["median"]
        line = f"{'x'.join(map(str, shape))}, L={num_labels}: " + ", ".join(
            f"{k} {v * 1e3:.0f} ms" for k, v in row.items() if isinstance(v, float)
        )
        ratios = [
            f"crfrnn / {k} = {row['crfrnn'] / row[k]:.2f}x"
            for k in ("pydensecrf DenseCRF", "SimpleCRF densecrf3d")
            if k in row
        ]
        ratios.append(f"full / (1/8) = {row['crfrnn'] / row['crfrnn, 1/8 of the voxels']:.2f} (8 if linear)")
        print(line + "\n    " + "; ".join(ratios), flush=True)
        rows.append(row)
    report({"benchmark": "bench_volume", "rows": rows}, args.json)


if __name__ == "__main__":
    main()

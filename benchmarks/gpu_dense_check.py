"""dense_crf on a device with the "torch" and "triton" lattice backends against the CPU engine, on a real photo.

The guide is scikit-image's astronaut (a synthetic scene when scikit-image is missing, said in the report); the
probabilities are a blurred colour clustering of it with noise, 5 labels, float32. Each backend's marginals are
compared with the CPU engine's (``backend="auto"``: the compiled kernels): the largest absolute difference and the
share of pixels whose most likely label differs. Exits 1 when a difference is over --tol.

    python benchmarks/gpu_dense_check.py                       # on CUDA
    python benchmarks/gpu_dense_check.py --device cpu --size 24x32   # the logic on the CPU (triton interpreted:
                                                               # set TRITON_INTERPRET=1)
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _harness import report  # noqa: E402


def _guide(h: int, w: int) -> tuple[np.ndarray, str]:
    try:
        from skimage import data
        from skimage.transform import resize
    except ImportError:
        ys, xs = np.mgrid[0:h, 0:w]
        img = np.stack([xs * 255.0 / w, ys * 255.0 / h, ((xs // 8 + ys // 8) % 2) * 200.0], -1)
        return img.astype(np.uint8), "synthetic (scikit-image missing)"
    img = resize(data.astronaut(), (h, w), anti_aliasing=True) * 255.0
    return np.ascontiguousarray(img.clip(0, 255).astype(np.uint8)), "skimage astronaut"


def _probs(image: np.ndarray, labels: int) -> np.ndarray:
    import torch

    g = torch.Generator().manual_seed(0)
    pix = torch.from_numpy(image).reshape(-1, 3).float()
    centres = pix[torch.randperm(pix.shape[0], generator=g)[:labels]]
    logits = -torch.cdist(pix, centres) / 40.0
    h, w = image.shape[:2]
    logits = logits.t().reshape(1, labels, h, w)
    logits = torch.nn.functional.avg_pool2d(logits, 5, 1, 2) + 0.5 * torch.randn(1, labels, h, w, generator=g)
    return torch.softmax(logits[0], 0).numpy().astype(np.float32)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--size", default="240x320", help="HxW of the photo")
    parser.add_argument("--backends", default="torch,triton")
    parser.add_argument("--tol", type=float, default=1e-3, help="largest accepted absolute difference")
    parser.add_argument("--json", help="write the report here")
    args = parser.parse_args()

    import torch

    from crfrnn import dense_crf

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("gpu_dense_check: no CUDA GPU here; nothing to check.")
        return 0
    h, w = (int(v) for v in args.size.lower().split("x"))
    image, source = _guide(h, w)
    probs = _probs(image, 5)
    reference = torch.from_numpy(np.asarray(dense_crf(image, probs, backend="auto")))
    result: dict = {"guide": source, "size": [h, w], "device": args.device, "rows": []}
    failed = False
    for backend in [b.strip() for b in args.backends.split(",") if b.strip()]:
        row: dict = {"backend": backend}
        try:
            img_t = torch.from_numpy(image).to(args.device)
            out = dense_crf(img_t, torch.from_numpy(probs).to(args.device), backend=backend)
            out = out.detach().cpu()
            row["max_abs_diff"] = float((out - reference).abs().max())
            row["label_disagreement"] = float((out.argmax(0) != reference.argmax(0)).double().mean())
            row["ok"] = row["max_abs_diff"] <= args.tol
        except Exception as exc:  # noqa: BLE001 - reported, and the check fails
            row["error"] = f"{type(exc).__name__}: {exc}"
            row["ok"] = False
        failed = failed or not row["ok"]
        print(json.dumps(row), flush=True)
        result["rows"].append(row)
    report(result, args.json)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

"""How close the permutohedral lattice is to the exact Gaussian: the figures of docs/lattice.md.

1. The lattice's impulse response fitted by ``A exp(-r^2 / (2 s^2))`` on dense random points (20 per
   unit volume, unit = kernel width): effective width ``s`` and amplitude ``A`` per dimension, and the
   range of the self-weights (the operator's diagonal).
2. Relative error ``|a - b| / |b|`` of the normalised filter ``K v / K 1`` against the exact O(N^2)
   Gaussian, on dense random points (9 per unit volume), on real photos at 72x96 and on a white-noise
   image (sparse in colour); and the change under a shift of all features.
3. Mean field (5 iterations, CRF-RNN's weights 3 and 5) with the lattice against the exact kernel on
   photos at 40x56: mean absolute difference of the marginals and label agreement.

    python benchmarks/lattice_accuracy.py     # about a minute
"""

from __future__ import annotations

import numpy as np
import torch

from crfrnn import PermutohedralLattice, bilateral_features, gaussian_filter, spatial_features


def dense_points(d: int, n: int, density: float, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(1, n, d, generator=g, dtype=torch.float64) * (n / density) ** (1.0 / d)


def fit_kernel(d: int) -> tuple[float, float, float, float]:
    f = dense_points(d, 2000, 20.0)
    lat = PermutohedralLattice(f)
    n = f.shape[1]
    idx = torch.arange(0, n, n // 10)
    impulses = torch.zeros(1, n, len(idx), dtype=torch.float64)
    impulses[0, idx, torch.arange(len(idx))] = 1.0
    k = lat.filter(impulses)[0].t()
    r2 = ((f[0, idx, None] - f[0, None]) ** 2).sum(-1)
    best = min(
        (float((((k - a * g) ** 2).sum() / (k**2).sum())), float(s), float(a))
        for s in torch.linspace(0.9, 1.2, 301, dtype=torch.float64)
        for g in [torch.exp(-r2 / (2 * s * s))]
        for a in [(g * k).sum() / (g * g).sum()]
    )
    sw = lat.self_weights()
    return best[1], best[2], float(sw.min()), float(sw.max())


def normalised_error(f: torch.Tensor, seed: int = 1) -> float:
    v = torch.rand(1, f.shape[1], 2, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    lat = PermutohedralLattice(f)
    ones = torch.ones_like(v[..., :1])
    a = lat.filter(v) / lat.filter(ones)
    b = gaussian_filter(v, f) / gaussian_filter(ones, f)
    return float((a - b).norm() / b.norm())


def main() -> None:
    print("1. impulse response of the lattice vs A exp(-r^2 / (2 s^2)), dense random points")
    print(f"{'D':>3} {'width s':>8} {'amplitude A':>12} {'self-weight range':>20}")
    for d in (1, 2, 3, 5):
        s, a, lo, hi = fit_kernel(d)
        print(f"{d:>3} {s:8.3f} {a:12.3f} {lo:9.3f} .. {hi:6.3f}")
    print("\n2. relative error of the normalised filter K v / K 1 against the exact Gaussian")
    for d in (1, 2, 3, 5):
        print(f"   random points, D={d}, 9 per unit volume: {normalised_error(dense_points(d, 3000, 9.0)):.2%}")
    from skimage import data
    from skimage.transform import resize

    for name in ("astronaut", "chelsea", "coffee"):
        img = torch.from_numpy(resize(getattr(data, name)(), (72, 96), anti_aliasing=True) * 255)
        img = img.permute(2, 0, 1)[None].double()
        cases = {
            "spatial, width 3 px": spatial_features(1, 72, 96, 3.0, dtype=torch.float64),
            "bilateral 80 px / 13 (densecrf's)": bilateral_features(img, 80.0, 13.0),
            "bilateral 160 px / 3 (CRF-RNN's)": bilateral_features(img, 160.0, 3.0),
        }
        for label, f in cases.items():
            print(f"   {name} 72x96, {label}: {normalised_error(f):.2%}")
    noise = torch.rand(1, 3, 9, 11, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * 255
    f = bilateral_features(noise, 5.0, 30.0)
    lat = PermutohedralLattice(f)
    v = torch.rand(1, f.shape[1], 1, dtype=torch.float64, generator=torch.Generator().manual_seed(1)) * 0.8 + 0.1
    ones = torch.ones_like(v)
    diff = lat.filter(v) / lat.filter(ones) - gaussian_filter(v, f) / gaussian_filter(ones, f)
    print(
        f"   white-noise image 9x11, bilateral 5 px / 30: largest error {float(diff.abs().max()):.3f} "
        "(values in 0.1..0.9)"
    )
    f = dense_points(2, 500, 9.0)
    v = torch.rand(1, 500, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    a = PermutohedralLattice(f).filter(v)
    b = PermutohedralLattice(f + 0.37).filter(v)
    print(
        f"   shifting all features by 0.37 (random points, D=2): relative change {float((b - a).norm() / a.norm()):.2%}"
    )

    print("\n3. mean field, 5 iterations, lattice vs exact kernel, photos at 40x56")
    import torch.nn.functional as F

    from crfrnn import mean_field

    for name in ("astronaut", "chelsea", "coffee"):
        img = torch.from_numpy(resize(getattr(data, name)(), (40, 56), anti_aliasing=True) * 255)
        img = img.permute(2, 0, 1)[None].double()
        for seed in (0, 1):
            g = torch.Generator().manual_seed(seed)
            u = F.interpolate(
                torch.randn(1, 3, 5, 7, dtype=torch.float64, generator=g) * 2, size=(40, 56), mode="bilinear"
            )
            kw = dict(theta_alpha=20.0, theta_beta=13.0, theta_gamma=3.0, num_iterations=5)
            exact = mean_field(u, img, **kw, exact=True).softmax(1)
            approx = mean_field(u, img, **kw).softmax(1)
            agree = float((approx.argmax(1) == exact.argmax(1)).double().mean())
            print(
                f"   {name}, seed {seed}: mean |dQ| {float((approx - exact).abs().mean()):.4f}, "
                f"labels identical {agree:.1%}"
            )


if __name__ == "__main__":
    np.set_printoptions(precision=3)
    main()

"""The permutohedral lattice against the exact O(N^2) Gaussian, its adjoint, and its invariants."""

from __future__ import annotations

import pytest
import torch
from tests.conftest import photo, relative_error

import crfrnn.lattice._construction as construction
from crfrnn import PermutohedralLattice, bilateral_features, gaussian_filter, spatial_features
from crfrnn.lattice._reference import walk_self_weights

BACKENDS = ["torch", "numba"]
# The lattice's impulse response fitted by A exp(-r^2 / (2 s^2)) on dense random points (docs/lattice.md,
# reproduced by benchmarks/lattice_accuracy.py): amplitude A per dimension; effective width s ~ 1.05-1.07.
AMPLITUDE = {1: 0.889, 2: 0.807, 3: 0.711, 5: 0.525}


def dense_points(d: int, n: int = 3000, density: float = 9.0, batch: int = 1, seed: int = 0) -> torch.Tensor:
    """``n`` uniform random points with ``density`` points per unit volume (unit = kernel width)."""
    g = torch.Generator().manual_seed(seed)
    side = (n / density) ** (1.0 / d)
    return torch.rand(batch, n, d, generator=g, dtype=torch.float64) * side


def normalised(filter_fn, values: torch.Tensor) -> torch.Tensor:
    return filter_fn(values) / filter_fn(torch.ones_like(values[..., :1]))


class TestPermutohedralLattice:
    @pytest.mark.parametrize("backend", BACKENDS)
    @pytest.mark.parametrize("d", [1, 2, 3, 5])
    def test_smoke(self, backend, d):
        lat = PermutohedralLattice(dense_points(d, n=200), backend=backend)
        out = lat.filter(torch.rand(1, 200, 3, dtype=torch.float64))
        assert out.shape == (1, 200, 3) and out.dtype == torch.float64
        assert lat.num_vertices > 0 and "num_vertices" in repr(lat)

    @pytest.mark.parametrize("shape", [(1, 1, 1, 1), (3, 17, 2, 5), (2, 64, 7, 1)])
    def test_cardinality(self, shape):
        b, n, d, c = shape
        lat = PermutohedralLattice(torch.rand(b, n, d))
        assert lat.filter(torch.rand(b, n, c)).shape == (b, n, c)

    def test_exception(self):
        with pytest.raises(ValueError, match=r"\(B, N, D\)"):
            PermutohedralLattice(torch.rand(10, 2))
        with pytest.raises(TypeError, match="float32 or float64"):
            PermutohedralLattice(torch.ones(1, 10, 2, dtype=torch.int64))
        with pytest.raises(ValueError, match="NaN or infinite"):
            PermutohedralLattice(torch.tensor([[[0.0], [float("nan")]]]))
        with pytest.raises(ValueError, match="N >= 1"):
            PermutohedralLattice(torch.rand(1, 0, 2))
        with pytest.raises(ValueError, match="backend"):
            PermutohedralLattice(torch.rand(1, 5, 2), backend="cuda")
        with pytest.raises(TypeError, match="torch.Tensor"):
            PermutohedralLattice([[0.0, 1.0]])
        lat = PermutohedralLattice(torch.rand(2, 10, 2))
        with pytest.raises(ValueError, match=r"\(B, N\) = \(2, 10\)"):
            lat.filter(torch.rand(2, 11, 3))
        with pytest.raises(ValueError, match="3-D|2-D"):
            lat.filter(torch.rand(20, 3))
        with pytest.raises(TypeError, match="float32 or float64"):
            lat.filter(torch.ones(2, 10, 3, dtype=torch.int32))

    @pytest.mark.parametrize("backend", BACKENDS)
    @pytest.mark.parametrize("d", [1, 2, 3, 5])
    def test_reference_random_points(self, backend, d):
        f = dense_points(d)
        v = torch.rand(1, f.shape[1], 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
        lat = PermutohedralLattice(f, backend=backend)
        err = relative_error(normalised(lat.filter, v), normalised(lambda x: gaussian_filter(x, f), v))
        assert err < 0.01, f"D={d}: normalised lattice filter is {err:.2%} from the exact Gaussian"

    @pytest.mark.parametrize(
        "kernel, bound",
        [("spatial", 0.01), ("bilateral 80/13", 0.01), ("bilateral 160/3", 0.06)],
    )
    def test_reference_photo(self, kernel, bound):
        img = photo("astronaut")
        _, _, h, w = img.shape
        f = {
            "spatial": spatial_features(1, h, w, 3.0, dtype=torch.float64),
            "bilateral 80/13": bilateral_features(img, 80.0, 13.0),
            # colour width 3 on a 0..255 image: the points are sparse in colour, the lattice coarser
            "bilateral 160/3": bilateral_features(img, 160.0, 3.0),
        }[kernel]
        v = torch.rand(1, h * w, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
        lat = PermutohedralLattice(f)
        err = relative_error(normalised(lat.filter, v), normalised(lambda x: gaussian_filter(x, f), v))
        assert err < bound, f"{kernel}: {err:.2%}"

    @pytest.mark.parametrize("d", [1, 2, 3, 5])
    def test_amplitude_and_width(self, d):
        """Unnormalised scale: pins the scale constants (a wrong alpha or elevation scale fails here)."""
        f = dense_points(d, n=2000, density=20.0)
        lat = PermutohedralLattice(f)
        n = f.shape[1]
        idx = torch.arange(0, n, n // 10)
        impulses = torch.zeros(1, n, len(idx), dtype=torch.float64)
        impulses[0, idx, torch.arange(len(idx))] = 1.0
        k = lat.filter(impulses)[0].t()  # (10, n): impulse responses
        r2 = ((f[0, idx, None] - f[0, None]) ** 2).sum(-1)
        best = None
        for s in torch.linspace(0.9, 1.2, 61, dtype=torch.float64):
            g = torch.exp(-r2 / (2 * s * s))
            a = (g * k).sum() / (g * g).sum()
            err = float(((k - a * g) ** 2).sum() / (k**2).sum())
            if best is None or err < best[0]:
                best = (err, float(s), float(a))
        err, s, a = best
        assert 1.02 < s < 1.10, f"effective width {s}"
        assert abs(a - AMPLITUDE[d]) < 0.03, f"amplitude {a} vs documented {AMPLITUDE[d]}"
        assert err < 0.03

    @pytest.mark.parametrize("backend", BACKENDS)
    @pytest.mark.parametrize("d", [1, 2, 5])
    def test_adjoint(self, backend, d):
        f = dense_points(d, n=400, batch=2)
        lat = PermutohedralLattice(f, backend=backend)
        g = torch.Generator().manual_seed(3)
        x = torch.randn(2, 400, 3, dtype=torch.float64, generator=g)
        y = torch.randn(2, 400, 3, dtype=torch.float64, generator=g)
        kx = lat.filter(x)
        lhs = (kx * y).sum()
        assert torch.allclose(lhs, (x * lat.filter(y, reverse=True)).sum(), rtol=1e-12, atol=1e-12)
        if d > 1:  # the blur order makes K itself asymmetric, so the adjoint is a real test
            assert abs(float(lhs - (x * lat.filter(y)).sum())) > 1e-9
        # and autograd's backward is that adjoint: vjp(y) == K^T y
        x.requires_grad_(True)
        (grad,) = torch.autograd.grad(lat.filter(x), x, y)
        assert torch.allclose(grad, lat.filter(y, reverse=True), rtol=1e-12, atol=1e-12)

    @pytest.mark.parametrize("backend", BACKENDS)
    def test_gradcheck(self, backend):
        lat = PermutohedralLattice(dense_points(3, n=60, batch=2), backend=backend)
        v = torch.rand(2, 60, 2, dtype=torch.float64, requires_grad=True)
        assert torch.autograd.gradcheck(lat.filter, (v,))
        assert torch.autograd.gradgradcheck(lat.filter, (v,))

    def test_lattice_built_once(self, monkeypatch):
        calls = {"n": 0}
        original = construction.simplex_coordinates

        def counting(*args):
            calls["n"] += 1
            return original(*args)

        monkeypatch.setattr(construction, "simplex_coordinates", counting)
        lat = PermutohedralLattice(dense_points(2, n=100), backend="torch")
        v = torch.rand(1, 100, 4, dtype=torch.float64, requires_grad=True)
        for _ in range(3):
            lat.filter(lat.filter(v)).sum().backward()
        assert calls["n"] == 1

    @pytest.mark.parametrize("backend", BACKENDS)
    def test_inputs_not_modified(self, backend):
        f = dense_points(2, n=100)
        f0 = f.clone()
        v = torch.rand(1, 100, 3, dtype=torch.float64, requires_grad=True)
        v0 = v.detach().clone()
        lat = PermutohedralLattice(f, backend=backend)
        g = torch.rand(1, 100, 3, dtype=torch.float64)
        g0 = g.clone()
        lat.filter(v).backward(g)
        assert torch.equal(f, f0) and torch.equal(v.detach(), v0) and torch.equal(g, g0)

    @pytest.mark.parametrize("backend", BACKENDS)
    def test_batch_equals_singles(self, backend):
        f = torch.cat([dense_points(3, n=300, seed=s) for s in range(3)])
        v = torch.rand(3, 300, 4, dtype=torch.float64)
        batched = PermutohedralLattice(f, backend=backend).filter(v)
        for i in range(3):
            single = PermutohedralLattice(f[i : i + 1], backend=backend).filter(v[i : i + 1])
            assert torch.allclose(batched[i : i + 1], single, rtol=1e-12, atol=1e-12)

    @pytest.mark.parametrize("backend", BACKENDS)
    def test_float32_matches_float64(self, backend):
        f = dense_points(5, n=500)
        v = torch.rand(1, 500, 3, dtype=torch.float64)
        a = PermutohedralLattice(f, backend=backend).filter(v)
        b = PermutohedralLattice(f.float(), backend=backend).filter(v.float())
        assert b.dtype == torch.float32
        assert relative_error(b.double(), a) < 1e-5

    @pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
    @pytest.mark.parametrize("d", [1, 2, 3, 5, 8])
    def test_backends_agree(self, d, dtype):
        f = dense_points(d, n=700, batch=2).to(dtype)
        v = torch.randn(2, 700, 5, dtype=dtype)
        a = PermutohedralLattice(f, backend="torch")
        b = PermutohedralLattice(f, backend="numba")
        assert a.num_vertices == b.num_vertices
        tol = 1e-6 if dtype == torch.float32 else 1e-13  # float32 sums run in a different order
        for reverse in (False, True):
            assert relative_error(b.filter(v, reverse=reverse), a.filter(v, reverse=reverse)) < tol
        assert relative_error(b.self_weights(), a.self_weights()) < tol

    def test_wide_keys_fall_back_to_rows(self, monkeypatch):
        """Keys too wide for one int64 code take the row-deduplication path, with the same result."""
        f = dense_points(4, n=500, batch=2)
        v = torch.rand(2, 500, 3, dtype=torch.float64)
        expected = PermutohedralLattice(f, backend="torch").filter(v)
        monkeypatch.setattr(construction, "MAX_CODE_BITS", 1)
        for backend in BACKENDS:
            lat = PermutohedralLattice(f, backend=backend)
            assert lat.backend == backend
            assert torch.allclose(lat.filter(v), expected, rtol=1e-12, atol=1e-12)

    @pytest.mark.parametrize("backend", BACKENDS)
    @pytest.mark.parametrize("d", [1, 2, 5])
    def test_self_weights_are_the_diagonal(self, backend, d):
        f = dense_points(d, n=300, density=3.0, batch=2)
        lat = PermutohedralLattice(f, backend=backend)
        idx = torch.arange(0, 300, 30)
        impulses = torch.zeros(2, 300, len(idx), dtype=torch.float64)
        impulses[:, idx, torch.arange(len(idx))] = 1.0
        diag = lat.filter(impulses)[:, idx, torch.arange(len(idx))]
        assert torch.allclose(lat.self_weights()[:, idx], diag, rtol=1e-12, atol=1e-12)

    @pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
    def test_compiled_self_weights_on_a_photo(self, dtype):
        """The compiled self weights (distinct simplices found per chunk of points, paths walked once per simplex)
        equal the PyTorch walk of every path point by point, on a photo whose pixels share simplices, over more
        points than one chunk holds, for a batch of two images (their lattices' vertices differ)."""
        img = torch.cat([photo("astronaut", (120, 160)), photo("coffee", (120, 160))]).to(dtype)
        for f in (
            bilateral_features(img, 20.0, 13.0),
            spatial_features(2, 120, 160, 3.0, dtype=dtype),
            bilateral_features(img, 5.0, 40.0),
        ):
            lat = PermutohedralLattice(f, backend="numba")
            ref = walk_self_weights(lat.offsets, lat.weights, lat.rank, lat.neighbours, lat.alpha)
            shared = 1.0 - torch.unique(lat.offsets, dim=0).shape[0] / lat.offsets.shape[0]
            assert shared > 0.2  # the reuse is exercised
            tol = 1e-6 if dtype == torch.float32 else 1e-13
            assert relative_error(lat.self_weights().reshape(-1), ref) < tol

    def test_translation_invariance_of_features(self):
        """Translating every feature by a lattice vector maps the lattice onto itself: same filter.

        For D = 2 the elevation sends a feature shift (t, 0) to (s0 t, -s0 t, 0), with s0 the first
        elevation scale; t = 3 / s0 gives (3, -3, 0), a vector of the remainder-0 lattice.
        """
        f = dense_points(2, n=500)
        v = torch.rand(1, 500, 2, dtype=torch.float64)
        s0 = (2.0 / 3.0) ** 0.5 * 3 / 2**0.5
        shift = torch.tensor([3.0 / s0, 0.0], dtype=torch.float64)
        a = PermutohedralLattice(f).filter(v)
        b = PermutohedralLattice(f + shift).filter(v)
        assert torch.allclose(a, b, rtol=1e-9, atol=1e-9)
        # an arbitrary shift is only approximately invariant (the lattice is a discretisation)
        c = PermutohedralLattice(f + 0.37).filter(v)
        assert relative_error(c, a) < 0.02

"""crfrnn.energy: labelling energy and mean-field free energy against brute force, and against pydensecrf."""

import itertools

import numpy as np
import pytest
import torch

from crfrnn.crf.pairwise import Pairwise
from crfrnn.energy import crf_energy, dense_crf_energy, dense_crf_kernels, kl_divergence


@pytest.fixture(autouse=True)
def _float64():
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


def _dense_kernel(feats, normalization, exclude_self):
    """The normalised kernel matrix k(i, j) = post_i K_ij pre_j, written from scratch (exact Gaussian)."""
    f = feats[0]
    k = torch.exp(-0.5 * ((f[:, None] - f[None]) ** 2).sum(-1))
    if exclude_self:
        k = k - torch.eye(len(f))
    n = k.sum(1)
    if normalization == "row":
        k = k / n[:, None]
    elif normalization == "column":
        k = k / n[None, :]
    elif normalization == "symmetric":
        k = k / n.sqrt()[:, None] / n.sqrt()[None, :]
    return k


def _compat_matrix(weight, compat, L):
    w = torch.as_tensor(weight, dtype=torch.float64)
    w = w * torch.eye(L) if w.dim() == 0 else (torch.diag(w) if w.dim() == 1 else w)
    mu = 1 - torch.eye(L) if compat is None else (torch.diag(compat) if compat.dim() == 1 else compat)
    return mu @ w


def _brute_energy(x, unary, specs):
    """E(x) = -sum_i U_i(x_i) + sum_{i<j} sum_m (A(x_i,x_j) k(i,j) + A(x_j,x_i) k(j,i)) / 2."""
    n = len(x)
    e = -sum(float(unary[x[i], i]) for i in range(n))
    for a, k in specs:
        for i in range(n):
            for j in range(i + 1, n):
                e += 0.5 * (float(a[x[i], x[j]] * k[i, j]) + float(a[x[j], x[i]] * k[j, i]))
    return e


def _problem(seed, L=3, n=5, normalization="symmetric", exclude_self=False, kind="potts"):
    g = torch.Generator().manual_seed(seed)
    unary = torch.randn(1, L, n, generator=g)
    f1 = torch.rand(1, n, 2, generator=g) * 2
    f2 = torch.rand(1, n, 3, generator=g) * 2
    if kind == "potts":
        w1, w2, c = 1.5, 0.7, None
    elif kind == "vector":
        w1, w2, c = torch.rand(L, generator=g) + 0.5, 0.8, torch.rand(L, generator=g)
    else:
        w1, w2, c = torch.rand(L, L, generator=g), torch.rand(L, L, generator=g), torch.rand(L, L, generator=g)
    kernels = [
        Pairwise(f, weight=w, compatibility=c, normalization=normalization, exclude_self=exclude_self)
        for f, w in ((f1, w1), (f2, w2))
    ]
    specs = [
        (_compat_matrix(k.weight, k.compatibility, L), _dense_kernel(k.features, normalization, exclude_self))
        for k in kernels
    ]
    return unary, kernels, specs


CASES = [
    ("none", False, "potts"),
    ("symmetric", False, "vector"),
    ("row", True, "matrix"),
    ("column", False, "matrix"),
    ("symmetric", True, "potts"),
]


class TestCrfEnergy:
    @pytest.mark.parametrize("normalization,exclude_self,kind", CASES)
    def test_reference(self, normalization, exclude_self, kind):
        unary, kernels, specs = _problem(0, normalization=normalization, exclude_self=exclude_self, kind=kind)
        xs = torch.tensor(list(itertools.product(range(3), repeat=5)))
        got = crf_energy(xs, unary.expand(len(xs), -1, -1), kernels, exact=True)
        want = torch.tensor([_brute_energy(x.tolist(), unary[0], specs) for x in xs])
        torch.testing.assert_close(got, want, rtol=0, atol=1e-10)

    def test_lattice_close(self):
        """The pairwise energy on the lattice within 1% of the exact one (measured: 0.03-0.1%) on a smooth image.

        (On pure noise at srgb = 13 each pixel has almost no neighbour but itself and the relative error of the
        small off-diagonal sums grows to 25%.)"""
        g = torch.Generator().manual_seed(1)
        image = torch.rand(2, 3, 16, 18, generator=g) * 20 + 100
        image[..., 8:] += 80
        labels = torch.randint(0, 4, (2, 16, 18), generator=g)
        zero = torch.zeros(2, 4, 16, 18)
        a = dense_crf_energy(labels, image, zero, exact=True)
        b = dense_crf_energy(labels, image, zero)
        torch.testing.assert_close(b, a, rtol=1e-2, atol=0)

    def test_cardinality_and_gradients(self):
        unary, kernels, _ = _problem(2, kind="matrix")
        unary = unary.repeat(2, 1, 1).requires_grad_()
        e = crf_energy(torch.zeros(2, 5, dtype=torch.long), unary, kernels, exact=True)
        assert e.shape == (2,)
        e.sum().backward()
        assert torch.equal(unary.grad[:, 0], -torch.ones(2, 5)) and not unary.grad[:, 1:].any()

    def test_exception(self):
        unary, kernels, _ = _problem(3)
        with pytest.raises(ValueError, match="labels must lie in 0..2"):
            crf_energy(torch.full((1, 5), 3), unary, kernels)
        with pytest.raises(ValueError, match="do not match unary"):
            crf_energy(torch.zeros(1, 4, dtype=torch.long), unary, kernels)
        with pytest.raises(TypeError, match="labels must be an integer"):
            crf_energy(torch.zeros(1, 5), unary, kernels)
        with pytest.raises(ValueError, match="unary contains NaN"):
            crf_energy(torch.zeros(1, 5, dtype=torch.long), unary * float("nan"), kernels)
        with pytest.raises(ValueError, match="kernel features"):
            crf_energy(torch.zeros(1, 5, dtype=torch.long), unary, [Pairwise(torch.zeros(1, 4, 2))])


class TestKlDivergence:
    @pytest.mark.parametrize("normalization,exclude_self,kind", CASES)
    def test_reference(self, normalization, exclude_self, kind):
        """F(Q) + log Z = KL(Q || P) over every labelling, P = exp(-E) / Z."""
        unary, kernels, specs = _problem(4, normalization=normalization, exclude_self=exclude_self, kind=kind)
        q = torch.softmax(torch.randn(1, 3, 5, generator=torch.Generator().manual_seed(5)), 1)
        xs = list(itertools.product(range(3), repeat=5))
        energies = torch.tensor([_brute_energy(x, unary[0], specs) for x in xs])
        log_z = torch.logsumexp(-energies, 0)
        log_q = torch.tensor([sum(float(q[0, l, i].log()) for i, l in enumerate(x)) for x in xs])
        kl = float((log_q.exp() * (log_q + energies + log_z)).sum())
        got = kl_divergence(q, unary, kernels, exact=True)
        assert abs(float(got[0]) + float(log_z) - kl) < 1e-10

    def test_matches_energy_on_hard_labels(self):
        unary, kernels, _ = _problem(6, kind="vector")
        x = torch.tensor([[0, 2, 1, 1, 0]])
        q = torch.nn.functional.one_hot(x, 3).transpose(1, 2).double()
        torch.testing.assert_close(
            kl_divergence(q, unary, kernels, exact=True), crf_energy(x, unary, kernels, exact=True), rtol=0, atol=1e-12
        )

    def test_gradcheck(self):
        unary, kernels, _ = _problem(7, kind="matrix")
        logits = torch.randn(1, 3, 5, requires_grad=True)
        assert torch.autograd.gradcheck(
            lambda z: kl_divergence(torch.softmax(z, 1), unary, kernels, exact=True), (logits,)
        )

    def test_exception(self):
        unary, kernels, _ = _problem(8)
        with pytest.raises(ValueError, match="q must be marginals"):
            kl_divergence(torch.full((1, 3, 5), 0.5), unary, kernels)
        with pytest.raises(ValueError, match="q contains NaN"):
            kl_divergence(torch.full((1, 3, 5), float("nan")), unary, kernels)
        with pytest.raises(ValueError, match="does not match unary"):
            kl_divergence(torch.full((1, 3, 4), 1 / 3), unary, kernels)
        with pytest.raises(ValueError, match="convention must be one of"):
            kl_divergence(torch.full((1, 3, 5), 1 / 3), unary, kernels, convention="pydensecrf")


class TestPyDenseCrf:
    """What pydensecrf's klDivergence computes, measured: no 1/2, self terms included, Potts as -w [x_i = x_j]."""

    def _crfs(self, compat):
        dcrf = pytest.importorskip("pydensecrf.densecrf")
        eig = pytest.importorskip("pydensecrf.eigen")
        import crfrnn.compat.densecrf as ccrf

        rng = np.random.default_rng(0)
        h, w, L = 14, 17, 3
        image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        energy = (rng.random((L, h * w)) * 3).astype(np.float32)
        q = rng.random((L, h * w)).astype(np.float32)
        q /= q.sum(0)
        out = []
        for mod in (dcrf, ccrf):
            d = mod.DenseCRF2D(w, h, L)
            d.setUnaryEnergy(energy)
            d.addPairwiseGaussian(sxy=3, compat=3)
            d.addPairwiseBilateral(sxy=20, srgb=30, rgbim=image, compat=compat)
            out.append(d.klDivergence(eig.matrixXf(q) if mod is dcrf else q))
        img = torch.from_numpy(image).permute(2, 0, 1)[None].double()
        kernels = dense_crf_kernels(img, gaussian_sxy=3, bilateral_sxy=20, bilateral_srgb=30)
        return out, kernels, torch.from_numpy(energy)[None].double(), torch.from_numpy(q)[None].double()

    @pytest.mark.parametrize("compat", [10.0, "diag", "matrix"])
    def test_kl_divergence(self, compat):
        if compat == "diag":
            compat = np.array([1.0, 2.0, 3.0], np.float32)
        elif compat == "matrix":
            compat = np.array([[0, 1, 2], [1, 0, 3], [2, 3, 0]], np.float32)
        (theirs, ours), kernels, energy, q = self._crfs(compat)
        # the rest is the two lattices' difference on a noise image (about 5e-5 here), not the definition
        assert abs(ours - theirs) <= 2e-4 * abs(theirs)
        if isinstance(compat, float):  # the same number from the functional API
            got = float(
                kl_divergence(q.reshape(1, 3, 14, 17), -energy.reshape(1, 3, 14, 17), kernels, convention="densecrf")[0]
            )
            assert abs(got - ours) <= 1e-5 * abs(ours)

    def test_definition(self):
        """Far-apart points: every kernel is its diagonal, so the self term and the missing 1/2 show exactly."""
        dcrf = pytest.importorskip("pydensecrf.densecrf")
        eig = pytest.importorskip("pydensecrf.eigen")
        from crfrnn.lattice import PermutohedralLattice

        rng = np.random.default_rng(1)
        n, L, w = 7, 3, 2.0
        feats = (np.arange(n)[None].repeat(2, 0) * 100.0).astype(np.float32)
        energy = (rng.random((L, n)) * 3).astype(np.float32)
        q = rng.random((L, n)).astype(np.float32)
        q /= q.sum(0)
        d = dcrf.DenseCRF(n, L)
        d.setUnaryEnergy(energy)
        d.addPairwiseEnergy(feats, compat=w, normalization=dcrf.NO_NORMALIZATION)
        theirs = d.klDivergence(eig.matrixXf(q))
        qd = q.astype(np.float64)
        selfw = PermutohedralLattice(torch.from_numpy(feats.T.copy()).double()[None]).self_weights()[0].numpy()
        want = (qd * np.log(qd)).sum() + (qd * energy).sum() - w * (selfw * (qd**2).sum(0)).sum()
        assert abs(theirs - want) < 1e-4
        # ... and the exact convention has no pairwise term at all there (no pair i != j interacts)
        kernel = Pairwise(torch.from_numpy(feats.T.copy()).double()[None], weight=w, normalization="none")
        exact = kl_divergence(torch.from_numpy(qd)[None], -torch.from_numpy(energy)[None].double(), [kernel])
        assert abs(float(exact[0]) - ((qd * np.log(qd)).sum() + (qd * energy).sum())) < 1e-6

"""The one mean-field engine: an independent dense O(N^2) reference, fused against differentiable, every entry
point through it, any number of kernels and spatial axes, binary maps, caches and threads."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from tests.conftest import DEVICE

import crfrnn.compat as dcrf
from crfrnn import CrfRnn, KernelCache, Pairwise, dense_crf, infer, mean_field


def dense_reference(unary, terms, iterations, from_probs=False, clip=1e-5):
    """The mean-field iteration with dense N x N matrices, written without any of the library's code.

    unary: (L, N) logits (or probabilities); terms: (features (N, D), weight, compat, normalization,
    exclude_self) with weight a number, (L,) or (L, L) and compat None (Potts), (L,) or (L, L).
    Returns the marginals (L, N).
    """
    u = unary.clamp(clip, 1.0).log() if from_probs else unary
    num_labels = u.shape[0]
    ops = []
    for f, w, mu, norm, excl in terms:
        k = torch.exp(-0.5 * torch.cdist(f, f) ** 2)
        if excl:
            k = k - torch.eye(k.shape[0], dtype=k.dtype)
        n = k.sum(1)
        if norm == "row":
            k = k / n[:, None]
        elif norm == "column":
            k = k / n[None, :]
        elif norm == "symmetric":
            k = k / n.sqrt()[:, None] / n.sqrt()[None, :]
        wm = torch.as_tensor(w, dtype=u.dtype)
        wm = wm * torch.eye(num_labels, dtype=u.dtype) if wm.dim() < 2 else wm
        mm = 1 - torch.eye(num_labels, dtype=u.dtype) if mu is None else torch.as_tensor(mu, dtype=u.dtype)
        mm = torch.diag(mm) if mm.dim() == 1 else mm
        ops.append((k, mm @ wm))
    logits = u
    for _ in range(iterations):
        q = torch.softmax(logits, 0)
        logits = u - sum(a @ (q @ k.t()) for k, a in ops)
    return torch.softmax(logits, 0)


def random_terms(count, n, num_labels, dtype, g, batch=1):
    """Up to 4 kernels covering every weight and compatibility form and every normalisation."""
    forms = [
        (3.0, None, "row", False),
        (torch.rand(num_labels, dtype=dtype, generator=g) * 4, None, "symmetric", False),
        (
            torch.randn(num_labels, num_labels, dtype=dtype, generator=g),
            torch.rand(num_labels, dtype=dtype, generator=g),
            "column",
            True,
        ),
        (2.0, torch.randn(num_labels, num_labels, dtype=dtype, generator=g), "none", False),
    ]
    terms = []
    for i in range(count):
        d = 1 + i  # 1- to 4-D features
        f = torch.rand(batch, n, d, dtype=dtype, generator=g) * (2.0 + i)
        terms.append((f,) + forms[i])
    return terms


def on(device, terms):
    """The terms with their tensors moved to ``device`` (drawn on the CPU, so every device gets the same numbers)."""
    return [tuple(x.to(device) if isinstance(x, torch.Tensor) else x for x in t) for t in terms]


def as_pairwise(terms):
    return [
        Pairwise(f, weight=w, compatibility=mu, normalization=norm, exclude_self=ex) for f, w, mu, norm, ex in terms
    ]


class TestEngine:
    @pytest.mark.parametrize("count", [1, 2, 3, 4])
    def test_exact_matches_dense_reference(self, count):
        g = torch.Generator().manual_seed(count)
        n, num_labels = 60, 4
        terms = random_terms(count, n, num_labels, torch.float64, g, batch=2)
        u = torch.randn(2, num_labels, n, dtype=torch.float64, generator=g)
        ours = infer(u.to(DEVICE), as_pairwise(on(DEVICE, terms)), num_iterations=4, exact=True)
        assert ours.device.type == DEVICE.type
        ours = ours.cpu()  # the reference runs on the CPU
        for b in range(2):
            ref = dense_reference(u[b], [(t[0][b],) + t[1:] for t in terms], 4)
            assert torch.allclose(ours[b], ref, atol=1e-10), (ours[b] - ref).abs().max()

    @pytest.mark.parametrize("count", [1, 2, 3, 4])
    @pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
    def test_fused_equals_differentiable(self, count, dtype):
        # on the CPU: the fused path is compiled CPU code
        g = torch.Generator().manual_seed(10 + count)
        n, num_labels = 300, 5
        terms = random_terms(count, n, num_labels, dtype, g, batch=2)
        terms[0] = (terms[0][0][:1],) + terms[0][1:]  # one kernel shared by the batch
        u = torch.randn(2, num_labels, n, dtype=dtype, generator=g) * 2
        with torch.no_grad():
            fused = infer(u, as_pairwise(terms), num_iterations=5)
            fused_logits = infer(u, as_pairwise(terms), num_iterations=5, return_logits=True)
        diff = infer(u.clone().requires_grad_(), as_pairwise(terms), num_iterations=5)  # the torch path
        diff_logits = infer(u.clone().requires_grad_(), as_pairwise(terms), num_iterations=5, return_logits=True)
        assert diff.requires_grad
        tol = 1e-10 if dtype == torch.float64 else 2e-5
        assert (fused - diff.detach()).abs().max() < tol
        assert (fused_logits - diff_logits.detach()).abs().max() < tol * 10 * (1 + diff_logits.abs().max())
        assert fused.dtype == dtype

    @pytest.mark.parametrize("count", [1, 3])
    def test_lattice_close_to_exact(self, count):
        g = torch.Generator().manual_seed(20 + count)
        terms = on(DEVICE, random_terms(count, 400, 3, torch.float64, g))
        u = (torch.randn(1, 3, 400, dtype=torch.float64, generator=g) * 2).to(DEVICE)
        exact = infer(u, as_pairwise(terms), num_iterations=5, exact=True)
        approx = infer(u, as_pairwise(terms), num_iterations=5)
        assert (approx - exact).abs().mean() < 0.03
        assert (approx.argmax(1) == exact.argmax(1)).double().mean() > 0.95

    def test_batch_equals_singles(self):
        g = torch.Generator().manual_seed(3)
        terms = on(DEVICE, random_terms(3, 100, 4, torch.float64, g, batch=3))
        u = torch.randn(3, 4, 100, dtype=torch.float64, generator=g).to(DEVICE)
        batched = infer(u, as_pairwise(terms), num_iterations=3)
        for b in range(3):
            single = infer(u[b : b + 1], as_pairwise([(t[0][b : b + 1],) + t[1:] for t in terms]), num_iterations=3)
            assert torch.allclose(batched[b : b + 1], single, atol=1e-12)

    @pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
    def test_batch_side_by_side_same_bits(self, dtype, monkeypatch):
        # the fused path refines a batch one image per thread; the bits must be those of one image after another
        import numba

        if DEVICE.type != "cpu" or numba.config.NUMBA_NUM_THREADS < 2:
            pytest.skip("the fused CPU path with at least 2 threads")
        g = torch.Generator().manual_seed(5)
        image = torch.rand(3, 3, 40, 50, generator=g, dtype=dtype) * 255
        probs = torch.rand(3, 5, 40, 50, generator=g, dtype=dtype).softmax(1)
        before = numba.get_num_threads()
        numba.set_num_threads(2)
        try:
            side = dense_crf(image, probs, num_iterations=3)
            monkeypatch.setenv("CRFRNN_BATCH_SIDE_BY_SIDE", "0")
            serial = dense_crf(image, probs, num_iterations=3)
        finally:
            numba.set_num_threads(before)
        assert torch.equal(side, serial)

    def test_gradcheck_every_form(self):
        g = torch.Generator().manual_seed(4)
        terms = on(DEVICE, random_terms(4, 12, 3, torch.float64, g))
        u = torch.randn(1, 3, 12, dtype=torch.float64, generator=g).to(DEVICE).requires_grad_()
        w = torch.randn(3, 3, dtype=torch.float64, generator=g).to(DEVICE).requires_grad_()
        mu = torch.rand(3, dtype=torch.float64, generator=g).to(DEVICE).requires_grad_()

        def fn(u, w, mu):
            ts = [terms[0], (terms[1][0], w, mu, "row", True), terms[3]]
            return infer(u, as_pairwise(ts), num_iterations=3, return_logits=True)

        assert torch.autograd.gradcheck(fn, (u, w, mu))

    def test_bad_kernels(self):
        u = torch.randn(1, 3, 10)
        f = torch.rand(1, 10, 2)
        with pytest.raises(ValueError, match=r"\(L,\) = \(3,\)"):
            infer(u, [Pairwise(f, weight=torch.ones(4))], num_iterations=1)
        with pytest.raises(ValueError, match="NaN or infinite"):
            infer(u, [Pairwise(f, weight=torch.tensor([1.0, float("nan"), 1.0]))], num_iterations=1)
        with pytest.raises(ValueError, match="finite"):
            infer(u, [Pairwise(f, weight=float("inf"))], num_iterations=1)
        with pytest.raises(ValueError, match="features must be"):
            infer(u, [Pairwise(torch.rand(1, 11, 2))], num_iterations=1)
        with pytest.raises(ValueError, match="normalization"):
            infer(u, [Pairwise(f, normalization="l2")], num_iterations=1)
        with pytest.raises(ValueError, match="Potts"):
            infer(u, [Pairwise(f, compatibility=torch.tensor(2.0))], num_iterations=1)


def photo_problem(h=24, w=32, num_labels=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(1, 3, 3, 4, generator=g) * 255
    img = F.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=True)
    logits = F.interpolate(torch.randn(1, num_labels, 4, 5, generator=g) * 3, size=(h, w), mode="bilinear")
    probs = torch.softmax(logits + 0.5 * torch.randn(1, num_labels, h, w, generator=g), 1)
    return img, probs


def densecrf_reference(
    img, probs, iterations, *, gsxy=3.0, gcompat=3.0, bsxy=10.0, bsrgb=20.0, bcompat=5.0, norm="symmetric"
):
    h, w = img.shape[2:]
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64), indexing="ij")
    pos = torch.stack([xs, ys], -1).reshape(-1, 2)
    col = img[0].permute(1, 2, 0).reshape(-1, 3).double()
    terms = [
        (pos / gsxy, gcompat, None, norm, False),
        (torch.cat([pos / bsxy, col / bsrgb], 1), bcompat, None, norm, False),
    ]
    p = probs[0].reshape(probs.shape[1], -1).double()
    return dense_reference(p.clamp(1e-5, 1).log(), terms, iterations).reshape(probs.shape[1:])


class TestEntryPoints:
    """Each public door gives the engine's answer, and that answer is close to the exact dense CRF."""

    def _close(self, ours, exact):
        ours = torch.as_tensor(np.asarray(ours)).double().reshape(exact.shape)
        assert (ours - exact).abs().mean() < 0.03, (ours - exact).abs().mean()
        assert (ours.argmax(0) == exact.argmax(0)).double().mean() > 0.95

    def test_dense_crf_and_compat(self):
        img, probs = photo_problem()
        exact = densecrf_reference(img, probs, 5)
        image = img[0].permute(1, 2, 0).round().to(torch.uint8).numpy()
        exact = densecrf_reference(torch.from_numpy(image).permute(2, 0, 1)[None], probs, 5)
        p = probs[0].numpy()
        q = dense_crf(image, p, num_iterations=5, bilateral_sxy=10.0, bilateral_srgb=20.0, bilateral_compat=5.0)
        self._close(q, exact)
        d = dcrf.DenseCRF2D(32, 24, 4)
        d.setUnaryEnergy(dcrf.unary_from_softmax(p))
        d.addPairwiseGaussian(sxy=3, compat=3)
        d.addPairwiseBilateral(sxy=10, srgb=20, rgbim=image, compat=5)
        q2 = np.array(d.inference(5)).reshape(q.shape)
        assert np.abs(q2 - q).max() < 1e-5  # the same engine
        g = dcrf.DenseCRF(24 * 32, 4)  # the generic class with addPairwiseEnergy
        g.setUnaryEnergy(dcrf.unary_from_softmax(p))
        g.addPairwiseEnergy(dcrf.create_pairwise_gaussian((3, 3), (24, 32)), compat=3)
        g.addPairwiseEnergy(dcrf.create_pairwise_bilateral((10, 10), (20, 20, 20), image, chdim=2), compat=5)
        q3 = np.array(g.inference(5)).reshape(q.shape)
        self._close(q3, exact)  # ij feature order: a different (equally valid) lattice orientation

    def test_mean_field_and_crfrnn(self):
        img, probs = photo_problem(seed=1)
        u = probs.clamp(1e-5, 1).log()
        kw = dict(theta_alpha=10.0, theta_beta=20.0, theta_gamma=3.0, normalization="symmetric")
        exact = densecrf_reference(img, probs, 5)
        with torch.no_grad():
            q = (
                mean_field(
                    u.to(DEVICE), img.to(DEVICE), **kw, spatial_weight=3.0, bilateral_weight=5.0, num_iterations=5
                )
                .softmax(1)[0]
                .cpu()
            )
            crf = CrfRnn(4, **kw, spatial_weight=3.0, bilateral_weight=5.0, num_eval_iterations=5).eval().to(DEVICE)
            q2 = crf(u.to(DEVICE), img.to(DEVICE)).softmax(1)[0].cpu()
        self._close(q, exact)
        assert (q - q2).abs().max() < 1e-5
        q3 = dense_crf(img, probs, num_iterations=5, bilateral_sxy=10.0, bilateral_srgb=20.0, bilateral_compat=5.0)[0]
        assert (q - q3).abs().max() < 1e-5


class TestDimensions:
    @pytest.mark.parametrize("shape", [(50,), (9, 11), (5, 6, 7)])
    def test_lattice_close_to_exact_any_dims(self, shape):
        g = torch.Generator().manual_seed(len(shape))
        guide = torch.rand(1, 2, *shape, generator=g, dtype=torch.float64) * 100
        u = torch.randn(1, 3, *shape, generator=g, dtype=torch.float64) * 2
        kw = dict(theta_alpha=4.0, theta_beta=30.0, theta_gamma=2.0, num_iterations=4)
        exact = mean_field(u.to(DEVICE), guide.to(DEVICE), **kw, exact=True).softmax(1).cpu()
        approx = mean_field(u.to(DEVICE), guide.to(DEVICE), **kw).softmax(1).cpu()
        assert approx.shape == u.shape
        assert (approx - exact).abs().mean() < 0.03
        # and against the dense reference written from scratch
        pos = torch.stack(
            torch.meshgrid(*[torch.arange(n, dtype=torch.float64) for n in shape], indexing="ij")[::-1], -1
        ).reshape(-1, len(shape))
        col = guide[0].reshape(2, -1).t()
        terms = [(pos / 2.0, 3.0, None, "row", False), (torch.cat([pos / 4.0, col / 30.0], 1), 5.0, None, "row", False)]
        ref = dense_reference(u[0].reshape(3, -1), terms, 4)
        assert torch.allclose(exact[0].reshape(3, -1), ref, atol=1e-10)

    def test_spacing_is_physical_units(self):
        """A volume with 2 mm slices and widths in mm equals one resampled to unit steps with widths / step."""
        g = torch.Generator().manual_seed(5)
        u = torch.randn(1, 2, 4, 6, 6, generator=g, dtype=torch.float64).to(DEVICE)
        guide = (torch.rand(1, 1, 4, 6, 6, generator=g, dtype=torch.float64) * 200).to(DEVICE)
        kw = dict(theta_beta=20.0, num_iterations=3, exact=True)
        mm = mean_field(u, guide, theta_alpha=8.0, theta_gamma=4.0, spacing=(2.0, 1.0, 1.0), **kw)
        steps = mean_field(u, guide, theta_alpha=(4.0, 8.0, 8.0), theta_gamma=(2.0, 4.0, 4.0), **kw)
        assert torch.allclose(mm, steps, atol=1e-12)
        iso = mean_field(u, guide, theta_alpha=8.0, theta_gamma=4.0, **kw)
        assert not torch.allclose(mm, iso, atol=1e-3)

    def test_dense_crf_volume_numpy_layout(self):
        rng = np.random.default_rng(0)
        vol = (rng.random((6, 8, 10)) * 255).astype(np.uint8)
        probs = rng.dirichlet(np.ones(3), (6, 8, 10)).transpose(3, 0, 1, 2).astype(np.float32)
        q = dense_crf(vol, probs, num_iterations=3, spacing=(2.5, 1.0, 1.0))
        assert q.shape == probs.shape and np.allclose(q.sum(0), 1, atol=1e-5)
        q_c = dense_crf(vol[..., None], probs, num_iterations=3, spacing=(2.5, 1.0, 1.0))  # S + (C,)
        assert np.abs(q - q_c).max() < 1e-6
        two = np.stack([vol, 255 - vol], -1)  # two modalities
        assert dense_crf(two, probs, num_iterations=3, bilateral_srgb=(13.0, 20.0)).shape == probs.shape
        with pytest.raises(ValueError, match="bilateral_srgb must be one number or 2"):
            dense_crf(two, probs, bilateral_srgb=(13.0, 20.0, 5.0))
        with pytest.raises(ValueError, match="spacing"):
            dense_crf(vol, probs, spacing=(1.0, 1.0))
        with pytest.raises(ValueError, match="does not match"):
            dense_crf(vol[:5], probs)

    def test_signal_1d(self):
        x = np.concatenate([np.zeros(30), np.full(30, 200.0)]).astype(np.float32)
        p = np.where(np.arange(60) < 33, 0.7, 0.3).astype(np.float32)
        probs = np.stack([p, 1 - p])
        q = dense_crf(x, probs, num_iterations=5, gaussian_sxy=2.0, bilateral_sxy=10.0, bilateral_srgb=20.0)
        assert q.shape == (2, 60)
        assert (q.argmax(0)[:30] == 0).all() and (q.argmax(0)[30:] == 1).all()  # the edge moved to the signal's


class TestBinary:
    def test_single_map_is_the_two_label_problem(self):
        img, probs = photo_problem(num_labels=2, seed=2)
        fg = probs[:, 1:]
        q1 = dense_crf(img, fg, num_iterations=4)
        q2 = dense_crf(img, probs, num_iterations=4)
        assert q1.shape == fg.shape
        assert torch.allclose(q1, q2[:, 1:], atol=1e-6)
        z = torch.logit(fg.clamp(1e-4, 1 - 1e-4))
        out = mean_field(z, img, num_iterations=3)
        two = mean_field(torch.cat([torch.zeros_like(z), z], 1), img, num_iterations=3)
        assert out.shape == z.shape
        assert torch.allclose(torch.sigmoid(out), two.softmax(1)[:, 1:], atol=1e-5)
        crf = CrfRnn(1).eval()
        assert crf.spatial_weights.shape == (2, 2)
        with torch.no_grad():
            assert torch.allclose(
                torch.sigmoid(crf(z, img)),
                CrfRnn(2).eval()(torch.cat([torch.zeros_like(z), z], 1), img).softmax(1)[:, 1:],
                atol=1e-5,
            )

    def test_numpy_binary(self):
        img = np.zeros((10, 12, 3), np.uint8)
        img[:, 6:] = 200
        p = np.full((1, 10, 12), 0.4, np.float32)
        p[0, :, 7:] = 0.9
        q = dense_crf(img, p, num_iterations=5)
        assert q.shape == (1, 10, 12) and ((q >= 0) & (q <= 1)).all()


class TestCacheAndThreads:
    def test_cache_reuses_and_clears(self):
        img, probs = photo_problem()
        cache = KernelCache()
        a = dense_crf(img, probs, num_iterations=3, cache=cache)
        assert len(cache) == 1
        b = dense_crf(img, probs, num_iterations=3, cache=cache)
        assert torch.equal(a, b) and len(cache) == 1
        cache.clear()
        assert len(cache) == 0
        assert torch.equal(dense_crf(img, probs, num_iterations=3), a)  # without a cache: nothing kept, same result
        crf = CrfRnn(4)
        with torch.no_grad():
            crf.eval()(probs.log(), img)
        assert len(crf.cache) == 1
        import copy

        assert len(copy.deepcopy(crf).cache) == 0  # copies start empty

    @pytest.mark.parametrize("same_size", [True, False])
    def test_threads_give_the_sequential_results(self, same_size):
        problems = [photo_problem(h=20 + (0 if same_size else 3 * i), w=28, seed=i) for i in range(6)]
        cache = KernelCache()
        expected = [dense_crf(img, p, num_iterations=5) for img, p in problems]
        results: dict[int, torch.Tensor] = {}
        errors: list[BaseException] = []

        def work(i):
            try:
                for _ in range(3):
                    img, p = problems[i]
                    results[i] = dense_crf(img, p, num_iterations=5, cache=cache)
                    assert torch.equal(results[i], expected[i])
            except BaseException as e:  # noqa: BLE001 - reported below
                errors.append(e)

        threads = [threading.Thread(target=work, args=(i,)) for i in range(len(problems))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors, errors
        for i, e in enumerate(expected):
            assert torch.equal(results[i], e)


class TestValidation:
    def test_width_bounds_and_parameters(self):
        img, probs = photo_problem()
        with pytest.raises(ValueError, match="gaussian_sxy=1e-18 is too small"):
            dense_crf(img, probs, gaussian_sxy=1e-18)
        with pytest.raises(ValueError, match="bilateral_srgb"):
            dense_crf(img, probs, bilateral_srgb=1e-30)
        with pytest.raises(ValueError, match="bilateral_compat must be finite"):
            dense_crf(img, probs, bilateral_compat=float("nan"))
        with pytest.raises(ValueError, match="gaussian_compat must be finite"):
            dense_crf(img, probs, gaussian_compat=float("inf"))
        with pytest.raises(TypeError, match="iterations must be a whole number"):
            dense_crf(img, probs, num_iterations=2.7)
        with pytest.raises(ValueError, match="iterations must be >= 0"):
            dense_crf(img, probs, num_iterations=-1)
        with pytest.raises(ValueError, match="theta_alpha must be one number or 2"):
            mean_field(probs.log(), img, theta_alpha=(1.0, 2.0, 3.0))
        with pytest.raises(ValueError, match="compatibility contains NaN"):
            mean_field(probs.log(), img, compatibility=torch.full((4, 4), float("nan")))

    def test_image_scale_and_kind(self):
        img, probs = photo_problem()
        with pytest.warns(UserWarning, match="multiply the image by 255"):
            dense_crf(img / 255.0, probs)
        with pytest.warns(UserWarning, match="0..255"):
            dense_crf((img.long() * 257).to(torch.int32), probs)
        with pytest.raises(TypeError, match="real-valued"):
            dense_crf(img > 100, probs)
        with pytest.raises(TypeError, match="real-valued"):
            dense_crf(img.to(torch.complex64), probs)
        rgba = np.zeros((24, 32, 4), np.uint8)
        with pytest.raises(ValueError, match="RGBA"):
            dense_crf(rgba, probs[0].numpy())
        assert dense_crf(rgba, probs[0].numpy(), bilateral_srgb=(13, 13, 13, 13)).shape == (4, 24, 32)

    def test_half_precision_probabilities(self):
        img, probs = photo_problem()
        q = dense_crf(img, probs.to(torch.bfloat16), num_iterations=2)
        assert q.dtype == torch.float32 and torch.isfinite(q).all()
        out = mean_field(probs.log().to(torch.bfloat16), img, num_iterations=2)
        assert out.dtype == torch.bfloat16


class TestCompat:
    def test_utils_module_is_a_drop_in(self):
        from crfrnn.compat import utils

        for name in (
            "unary_from_softmax",
            "unary_from_labels",
            "create_pairwise_bilateral",
            "create_pairwise_gaussian",
            "compute_unary",
            "softmax_to_unary",
        ):
            assert callable(getattr(utils, name))
        assert dcrf.KernelType.DIAG_KERNEL == dcrf.DIAG_KERNEL == 1
        assert dcrf.NormalizationType.NORMALIZE_SYMMETRIC == dcrf.NORMALIZE_SYMMETRIC == 3
        import crfrnn.compat.densecrf as densecrf

        assert densecrf.DenseCRF2D is dcrf.DenseCRF2D

    def test_partial_schan_scales_only_the_listed_channels(self):
        from crfrnn.compat.utils import create_pairwise_bilateral

        img = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
        f = create_pairwise_bilateral(sdims=(2, 2), schan=(10,), img=img, chdim=2)
        assert f.shape == (6, 6)
        assert np.allclose(f[2], img[..., 0].ravel() / 10)
        assert np.allclose(f[3:], img[..., 1:].reshape(-1, 3).T)  # unscaled, as pydensecrf leaves them
        with pytest.raises(ValueError, match="schan has 5 entries"):
            create_pairwise_bilateral(sdims=(2, 2), schan=(1,) * 5, img=img, chdim=2)

    def test_bad_arguments_refused(self):
        d = dcrf.DenseCRF2D(4, 3, 2)
        for bad in (-1, 2.7, "3", True):
            with pytest.raises((ValueError, TypeError)):
                d.inference(bad)
        with pytest.raises(ValueError, match="w must be"):
            dcrf.DenseCRF2D(-5, -5, 2)
        with pytest.raises(ValueError, match="nlabels"):
            dcrf.DenseCRF(10, 1)
        with pytest.raises(ValueError, match="NaN"):
            d.setUnaryEnergy(np.full((2, 12), np.nan, np.float32))
        with pytest.raises(ValueError, match="compat must be finite"):
            d.addPairwiseGaussian(sxy=3, compat=float("inf"))
        with pytest.raises(ValueError, match="sxy must be one number or 2"):
            d.addPairwiseGaussian(sxy=(1, 2, 3), compat=3)
        e = np.ones((2, 12), np.float32)
        e[0, :6] = np.inf  # probability 0 for label 0: allowed, as in pydensecrf
        d.setUnaryEnergy(e)
        d.addPairwiseGaussian(sxy=1, compat=3)
        q = np.array(d.inference(3))
        assert np.isfinite(q).all() and (q[0, :6] < 1e-6).all()

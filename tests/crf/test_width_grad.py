"""Gradients with respect to the kernel widths and the guide (issue 8 section 1, ``docs/widths.md``).

- the moment-channel backward against autograd through an exact dense Gaussian (the derivation itself);
- gradcheck in float64 on the exact O(N^2) path, widths (one, per axis, per channel) and guide;
- the lattice path's gradients against the exact path's (cosine similarity and relative error, bounds below);
- the widths-only backward (no per-point feature gradient) against the per-point one on the same lattice;
- recovery: widths fitted to an exact dense CRF's marginals from twice the true widths;
- ``CrfRnn(learn_widths=True)``: parameters, state dicts, module equals functional, no cache holding a graph;
- bad width tensors.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch.autograd.gradcheck import GradcheckError

from crfrnn import CrfRnn, KernelCache, PermutohedralLattice, dense_crf, mean_field
from crfrnn.crf.features import bilateral_features, position_features, width_factors
from crfrnn.lattice._autograd import feature_backward as _feature_backward

#: Lattice against exact gradients on the smooth 20x24 photo-like inputs below (docs/widths.md, "Accuracy"),
#: "row" and "symmetric" normalisation: measured guide-gradient cosine 0.971-0.978 and relative error 0.21-0.24,
#: width-gradient cosine 0.904-0.968 (the lattice's Gaussian is 3-9% wider than the nominal one, and a width's
#: gradient is a small difference of large terms); the widths that matter agree in sign.
GUIDE_COSINE, GUIDE_RELATIVE, WIDTH_COSINE = 0.95, 0.30, 0.85


def smooth_photo(h: int, w: int, batch: int = 1, dtype=torch.float64) -> torch.Tensor:
    yy, xx = torch.meshgrid(torch.arange(h, dtype=dtype), torch.arange(w, dtype=dtype), indexing="ij")
    img = torch.stack(
        [127 + 100 * torch.sin(xx / 5), 127 + 100 * torch.cos(yy / 4), 127 + 80 * torch.sin((xx + yy) / 7)]
    )
    out = img[None].repeat(batch, 1, 1, 1)
    if batch > 1:
        out[1] = out[1].flip(-1)
    return out


def smooth_unary(batch: int, labels: int, h: int, w: int, seed: int = 0, dtype=torch.float64) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    coarse = torch.randn(batch, labels, max(2, h // 4), max(2, w // 4), generator=g, dtype=dtype) * 2
    return F.interpolate(coarse, size=(h, w), mode="bilinear")


def widths(a=6.0, b=30.0, g=3.0, dtype=torch.float64):
    return [torch.tensor(v, dtype=dtype, requires_grad=True) for v in (a, b, g)]


class TestMomentBackward:
    """The moment-channel formula against autograd through an exact dense kernel (any linear K would do)."""

    @pytest.mark.parametrize("seed", [0, 1, 2])
    @pytest.mark.parametrize("batch", [1, 2])
    def test_reference(self, seed, batch):
        g = torch.Generator().manual_seed(seed)
        n, d, c = 25, 3, 4
        base = torch.randn(batch * n, d, generator=g, dtype=torch.float64) * 3 + 5
        w = torch.tensor([1.5, 2.0, 0.7], dtype=torch.float64, requires_grad=True)
        b = base.clone().requires_grad_(True)
        v = torch.randn(batch * n, c, generator=g, dtype=torch.float64, requires_grad=True)
        up = torch.randn(batch * n, c, generator=g, dtype=torch.float64)
        f = (b / w).view(batch, n, d)
        k = torch.exp(-0.5 * torch.cdist(f, f) ** 2)  # (batch, n, n), block-diagonal overall
        out = (k @ v.view(batch, n, c)).reshape(batch * n, c)
        (out * up).sum().backward()
        kd = k.detach()

        def filt(x, reverse):
            m = kd.transpose(1, 2) if reverse else kd
            return (m @ x.view(batch, n, -1)).reshape(batch * n, -1)

        gv, gb, gw = _feature_backward(filt, v.detach(), out.detach(), up, base, w.detach(), batch, (True, True, True))
        assert torch.allclose(gv, v.grad, rtol=1e-12, atol=1e-12)
        assert torch.allclose(gb, b.grad, rtol=1e-10, atol=1e-11)
        assert torch.allclose(gw, w.grad, rtol=1e-10, atol=1e-11)
        # the widths alone, through the cheaper identities
        none, none2, gw_only = _feature_backward(
            filt, v.detach(), out.detach(), up, base, w.detach(), batch, (False, False, True)
        )
        assert none is None and none2 is None
        assert torch.allclose(gw_only, w.grad, rtol=1e-10, atol=1e-11)

    def test_width_only_equals_per_point_on_the_lattice(self):
        """On the lattice (an asymmetric K with its exact adjoint), both backward forms give the same widths'
        gradient: the identities hold for any linear K."""
        img = smooth_photo(10, 12, batch=2)
        u = smooth_unary(2, 3, 10, 12)
        grads = []
        for guide_grad in (False, True):
            ta, tb, tg = widths()
            im = img.clone().requires_grad_(guide_grad)
            out = mean_field(u, im, theta_alpha=ta, theta_beta=tb, theta_gamma=tg, num_iterations=3)
            (out.softmax(1) * u).sum().backward()
            grads.append(torch.stack([ta.grad, tb.grad, tg.grad]))
        assert torch.allclose(grads[0], grads[1], rtol=1e-9, atol=1e-12)


class TestGradcheckExact:
    """float64 gradcheck on the exact O(N^2) path: widths (scalar, per axis, per channel) and guide."""

    def test_widths(self):
        img = smooth_photo(4, 5, batch=2)
        u = smooth_unary(2, 3, 4, 5)

        def fn(ta, tb, tg):
            return mean_field(u, img, theta_alpha=ta, theta_beta=tb, theta_gamma=tg, num_iterations=2, exact=True)

        assert torch.autograd.gradcheck(fn, tuple(widths(3.0, 40.0, 1.5)), atol=1e-8, fast_mode=True)

    @pytest.mark.parametrize("normalization", ["row", "symmetric", "column", "none"])
    def test_per_axis_and_per_channel_widths_and_guide(self, normalization):
        img = smooth_photo(4, 5)
        u = smooth_unary(1, 3, 4, 5, seed=1)
        ta = torch.tensor([3.0, 4.0], dtype=torch.float64, requires_grad=True)
        tb = torch.tensor([30.0, 50.0, 40.0], dtype=torch.float64, requires_grad=True)
        tg = torch.tensor([1.5, 2.0], dtype=torch.float64, requires_grad=True)
        im = img.clone().requires_grad_(True)

        def fn(ta, tb, tg, im):
            return mean_field(
                u,
                im,
                theta_alpha=ta,
                theta_beta=tb,
                theta_gamma=tg,
                num_iterations=2,
                exact=True,
                normalization=normalization,
            )

        # "none" keeps the kernel's sum (logits of about 100 here): finite differences are good to about 1e-7
        assert torch.autograd.gradcheck(fn, (ta, tb, tg, im), atol=1e-6 if normalization == "none" else 1e-8)

    def test_sequence_of_scalar_tensors_and_exclude_self(self):
        img = smooth_photo(4, 5)
        u = smooth_unary(1, 2, 4, 5, seed=2)
        a0, a1 = (torch.tensor(v, dtype=torch.float64, requires_grad=True) for v in (3.0, 4.0))

        def fn(a0, a1):
            return mean_field(
                u, img, theta_alpha=(a0, a1), theta_beta=40.0, num_iterations=2, exact=True, exclude_self=True
            )

        assert torch.autograd.gradcheck(fn, (a0, a1), atol=1e-8)

    def test_gradcheck_can_fail(self):
        """A width gradient off by 2% is caught: the checks above are not vacuous (every width matters there)."""
        img = smooth_photo(4, 5, batch=2)
        u = smooth_unary(2, 3, 4, 5)

        class Wrong(torch.autograd.Function):
            @staticmethod
            def forward(ctx, t):
                return t.clone()

            @staticmethod
            def backward(ctx, g):
                return 1.02 * g

        for name in ("theta_alpha", "theta_beta", "theta_gamma"):
            kw = dict(zip(("theta_alpha", "theta_beta", "theta_gamma"), widths(3.0, 40.0, 1.5)))

            def fn(t):  # a scalar output: a failing gradcheck recomputes the whole Jacobian for its message
                out = mean_field(u, img, **{**kw, name: Wrong.apply(t)}, num_iterations=2, exact=True)
                return (out * u).sum()

            with pytest.raises(GradcheckError):
                torch.autograd.gradcheck(fn, (kw[name],), atol=1e-8, fast_mode=True)


class TestLatticeAgainstExact:
    @pytest.mark.parametrize("normalization", ["row", "symmetric"])
    def test_guide_and_widths(self, normalization):
        img = smooth_photo(20, 24)
        u = smooth_unary(1, 3, 20, 24)
        target = torch.randn(1, 3, 20, 24, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
        res = {}
        for exact in (True, False):
            ta, tb, tg = widths(8.0, 30.0, 3.0)
            im = img.clone().requires_grad_(True)
            out = mean_field(
                u,
                im,
                theta_alpha=ta,
                theta_beta=tb,
                theta_gamma=tg,
                num_iterations=3,
                exact=exact,
                normalization=normalization,
            )
            (out.softmax(1) * target).sum().backward()
            res[exact] = (im.grad.flatten(), torch.stack([ta.grad, tb.grad, tg.grad]))
        (ge, we), (gl, wl) = res[True], res[False]
        assert F.cosine_similarity(ge, gl, 0) >= GUIDE_COSINE
        assert (ge - gl).norm() / ge.norm() <= GUIDE_RELATIVE
        big = we.abs() > 0.2 * we.abs().max()  # the widths that matter here agree in sign
        assert torch.equal(torch.sign(we[big]), torch.sign(wl[big]))
        assert F.cosine_similarity(we, wl, 0) >= WIDTH_COSINE

    def test_lattice_filter_features_gradient(self):
        """PermutohedralLattice.filter(features=...) against the exact Gaussian's autograd, dense random points."""
        g = torch.Generator().manual_seed(0)
        f = torch.rand(1, 600, 2, generator=g, dtype=torch.float64) * 6
        v = torch.rand(1, 600, 2, generator=g, dtype=torch.float64)
        up = torch.rand(1, 600, 2, generator=g, dtype=torch.float64)
        grads = []
        for exact in (True, False):
            ff = f.clone().requires_grad_(True)
            if exact:
                out = torch.exp(-0.5 * torch.cdist(ff, ff) ** 2) @ v
                out = out / (torch.exp(-0.5 * torch.cdist(ff, ff) ** 2).sum(-1, keepdim=True))
            else:
                lat = PermutohedralLattice(ff.detach())
                out = lat.filter(v, features=ff) / lat.filter(torch.ones_like(v[..., :1]), features=ff)
            (out * up).sum().backward()
            grads.append(ff.grad.flatten())
        assert F.cosine_similarity(grads[0], grads[1], 0) >= 0.95


class TestLatticePaths:
    """The same gradients from every way of running the lattice path."""

    def grads(self, dtype=torch.float64, **kw):
        img = smooth_photo(16, 20, batch=2)
        u = smooth_unary(2, 4, 16, 20)
        target = torch.randn(2, 4, 16, 20, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
        ws = widths(20.0, 13.0, 3.0, dtype=dtype)
        im = img.to(dtype).requires_grad_(True)
        out = mean_field(
            u.to(dtype), im, theta_alpha=ws[0], theta_beta=ws[1], theta_gamma=ws[2], num_iterations=3, **kw
        )
        (out.softmax(1) * target.to(dtype)).sum().backward()
        return torch.stack([t.grad for t in ws]).double(), im.grad.double()

    def test_backends_and_memory_efficient(self):
        ref = self.grads(backend="numba")
        for kw in (dict(backend="torch"), dict(memory_efficient=True)):
            for a, b in zip(ref, self.grads(**kw)):
                assert torch.allclose(a, b, rtol=1e-9, atol=1e-12), kw

    def test_float32_close_to_float64(self):
        """Centred moments keep float32 usable (measured at 120x160, 21 labels, 80/13/3: 1e-4 relative)."""
        (w64, g64), (w32, g32) = self.grads(), self.grads(torch.float32)
        assert ((w32 - w64).abs() / w64.abs()).max() < 1e-2
        assert (g32 - g64).norm() / g64.norm() < 1e-2


class TestRecovery:
    def test_widths_recovered_from_twice_too_large(self):
        """Marginals of an exact dense CRF with known widths; Adam on the log-widths from 2x finds them (10%)."""
        h, w, labels = 12, 14, 3
        img = smooth_photo(h, w, batch=2)
        img = torch.stack([127 + 0.9 * (img[0] - 127), img[1]])  # two different images
        u = smooth_unary(2, labels, h, w)
        true = torch.tensor([4.0, 40.0, 2.0], dtype=torch.float64)
        kw = dict(num_iterations=3, exact=True, spatial_weight=3.0, bilateral_weight=5.0)
        with torch.no_grad():
            target = mean_field(u, img, theta_alpha=true[0], theta_beta=true[1], theta_gamma=true[2], **kw).softmax(1)
        log_w = (2 * true).log().requires_grad_(True)
        opt = torch.optim.Adam([log_w], lr=0.1)
        for _ in range(60):
            t = log_w.exp()
            logq = mean_field(u, img, theta_alpha=t[0], theta_beta=t[1], theta_gamma=t[2], **kw).log_softmax(1)
            loss = (target * (target.log() - logq)).sum(1).mean()  # KL(target || q)
            opt.zero_grad()
            loss.backward()
            opt.step()
        fitted = log_w.detach().exp()
        assert ((fitted - true).abs() / true).max() <= 0.10, fitted.tolist()


class TestCrfRnnLearnWidths:
    def test_parameters_and_repr(self):
        crf = CrfRnn(3, theta_alpha=50.0, learn_widths=True)
        names = {n for n, _ in crf.named_parameters()}
        assert {"log_theta_alpha", "log_theta_beta", "log_theta_gamma"} <= names
        assert not any("theta" in n for n, _ in crf.named_buffers())
        assert math.isclose(float(crf.theta_alpha.detach()), 50.0, rel_tol=1e-6)
        assert crf.theta_alpha.requires_grad
        assert "learn_widths=True" in repr(crf) and "theta_alpha=50" in repr(crf)
        assert "learn_widths" not in repr(CrfRnn(3))

    def test_state_dicts_convert(self):
        fixed = CrfRnn(3, theta_alpha=50.0, theta_beta=7.0, theta_gamma=2.0)
        learned = CrfRnn(3, learn_widths=True)
        learned.load_state_dict(fixed.state_dict())
        assert math.isclose(float(learned.theta_beta.detach()), 7.0, rel_tol=1e-6)
        with torch.no_grad():
            learned.log_theta_gamma.fill_(math.log(4.0))
        back = CrfRnn(3)
        back.load_state_dict(learned.state_dict())
        assert math.isclose(float(back.theta_gamma), 4.0, rel_tol=1e-6)
        assert math.isclose(back._fixed_widths["theta_gamma"], 4.0, rel_tol=1e-6)  # forward reads the new value

    def test_module_equals_functional_and_trains(self):
        crf = CrfRnn(3, theta_alpha=8.0, theta_beta=30.0, theta_gamma=3.0, num_iterations=2, learn_widths=True).double()
        img = smooth_photo(10, 12)
        u = smooth_unary(1, 3, 10, 12)
        out = crf(u, img)
        out.square().mean().backward()
        ws = [
            getattr(crf, n).detach().clone().requires_grad_(True) for n in ("theta_alpha", "theta_beta", "theta_gamma")
        ]
        ref = mean_field(
            u,
            img,
            theta_alpha=ws[0],
            theta_beta=ws[1],
            theta_gamma=ws[2],
            num_iterations=2,
            spatial_weight=crf.spatial_weights,
            bilateral_weight=crf.bilateral_weights,
            compatibility=crf.compatibility,
        )
        assert torch.allclose(out, ref, rtol=1e-10, atol=1e-10)
        ref.square().mean().backward()
        for name, t in zip(("alpha", "beta", "gamma"), ws):
            p = getattr(crf, f"log_theta_{name}")
            assert p.grad is not None and p.grad != 0
            assert torch.allclose(p.grad, t.grad * t.detach(), rtol=1e-8)  # d/dlog w = w d/dw
        assert len(crf.cache) == 0  # the spatial kernel with a learned width holds a graph: not cached

    def test_eval_without_grad_is_fused_and_cached(self):
        crf = CrfRnn(3, learn_widths=True).eval()
        with torch.no_grad():
            crf(torch.randn(1, 3, 10, 12), torch.rand(1, 3, 10, 12) * 255)
        assert len(crf.cache) == 1


class TestOtherDoors:
    def test_dense_crf_torch_widths_and_guide(self):
        img = smooth_photo(10, 12)[0].permute(1, 2, 0).contiguous().requires_grad_(True)
        probs = smooth_unary(1, 3, 10, 12)[0].softmax(0)
        sxy = torch.tensor(8.0, dtype=torch.float64, requires_grad=True)
        srgb = torch.tensor([20.0, 30.0, 25.0], dtype=torch.float64, requires_grad=True)
        gxy = torch.tensor([2.0, 3.0], dtype=torch.float64, requires_grad=True)
        q = dense_crf(img, probs, bilateral_sxy=sxy, bilateral_srgb=srgb, gaussian_sxy=gxy, num_iterations=2)
        (q * probs.roll(1, 0)).sum().backward()
        for t in (sxy, srgb, gxy, img):
            assert t.grad is not None and bool(torch.isfinite(t.grad).all()) and t.grad.abs().sum() > 0

    def test_features_remember_their_factors(self):
        t = torch.tensor([2.0, 3.0], requires_grad=True)
        f = position_features((3, 4), t)
        base, w = width_factors(f)
        assert torch.equal(w.detach(), torch.tensor([3.0, 2.0]))  # last axis first, as the features
        assert torch.allclose(base / w, f)
        img = torch.rand(2, 3, 3, 4) * 255
        fixed = bilateral_features(img, (2.0, 3.0), 13.0)
        learned = bilateral_features(img, t, torch.tensor(13.0, requires_grad=True))
        assert torch.allclose(fixed, learned) and width_factors(learned) is not None
        assert width_factors(learned * 1.0) is None  # derived features: the general per-point backward

    def test_cache_never_keeps_a_graph(self):
        cache = KernelCache()
        u = torch.randn(1, 3, 8, 9)
        img = torch.rand(1, 3, 8, 9) * 255
        tg = torch.tensor(3.0, requires_grad=True)
        mean_field(u, img, theta_gamma=tg, cache=cache).sum().backward()
        assert len(cache) == 0 and tg.grad is not None
        mean_field(u, img, theta_gamma=3.0, cache=cache)
        assert len(cache) == 1


class TestException:
    @pytest.mark.parametrize("bad", [-1.0, 0.0, float("nan"), float("inf")])
    def test_bad_width_tensors(self, bad):
        u = torch.randn(1, 3, 6, 7)
        img = torch.rand(1, 3, 6, 7) * 255
        t = torch.tensor(bad, requires_grad=True)
        for name in ("theta_alpha", "theta_beta", "theta_gamma"):
            with pytest.raises(ValueError, match=f"{name} must be positive finite"):
                mean_field(u, img, **{name: t})
        with pytest.raises(ValueError, match="theta_alpha must be positive finite"):
            mean_field(u, img, theta_alpha=torch.tensor([4.0, bad], requires_grad=True))
        with pytest.raises(ValueError, match="bilateral_srgb must be positive finite"):
            dense_crf(img[0].permute(1, 2, 0), u[0].softmax(0), bilateral_srgb=t)

    def test_wrong_number_of_widths(self):
        u = torch.randn(1, 3, 6, 7)
        img = torch.rand(1, 3, 6, 7) * 255
        with pytest.raises(ValueError, match="one per guide channel"):
            mean_field(u, img, theta_beta=torch.tensor([1.0, 2.0], requires_grad=True))
        lat = PermutohedralLattice(torch.rand(1, 10, 2))
        with pytest.raises(ValueError, match="features must have the lattice's shape"):
            lat.filter(torch.rand(1, 10, 1), features=torch.rand(1, 10, 3, requires_grad=True))
        with pytest.raises(ValueError, match="forward filter only"):
            lat.filter(torch.rand(1, 10, 1), features=torch.rand(1, 10, 2, requires_grad=True), reverse=True)


class TestProbes:
    """The lattice's random-sign estimator of the widths' gradient (``width_probes``): unbiased, never the default
    (too noisy for mean_field at many labels, docs/widths.md)."""

    def test_unbiased(self):
        g = torch.Generator().manual_seed(3)
        n, d, c = 40, 3, 6
        base = torch.randn(n, d, generator=g, dtype=torch.float64) * 2
        w = torch.tensor([1.5, 2.0, 0.7], dtype=torch.float64)
        v = torch.rand(n, c, generator=g, dtype=torch.float64)
        up = torch.randn(n, c, generator=g, dtype=torch.float64)
        f = base / w
        k = torch.exp(-0.5 * torch.cdist(f, f) ** 2)

        def filt(x, reverse):
            return (k.T if reverse else k) @ x

        out = k @ v
        exact = _feature_backward(filt, v, out, up, base, w, 1, (True, False, True))
        torch.manual_seed(0)
        many = _feature_backward(filt, v, out, up, base, w, 1, (True, False, True), probes=20000)
        one = _feature_backward(filt, v, out, up, base, w, 1, (True, False, True), probes=1)
        assert torch.allclose(many[0], exact[0], rtol=1e-12, atol=1e-12)  # dL/dv stays exact
        assert ((many[2] - exact[2]).norm() / exact[2].norm()) < 0.06  # the mean of 20000 probes (measured 0.03)
        assert not torch.allclose(one[2], exact[2], rtol=1e-3)  # one probe is noisy: a real estimate

    def test_lattice_option(self):
        base = torch.rand(1, 30, 2, dtype=torch.float64) * 3
        w = torch.ones(2, dtype=torch.float64, requires_grad=True)
        lat = PermutohedralLattice(base / w.detach())
        values = torch.rand(1, 30, 3, dtype=torch.float64)
        lat.filter(values, features=base, widths=w, width_probes=2).square().sum().backward()
        assert w.grad is not None and bool(torch.isfinite(w.grad).all())
        with pytest.raises(ValueError, match="width_probes"):
            lat.filter(values, features=base, widths=w, width_probes=-1)

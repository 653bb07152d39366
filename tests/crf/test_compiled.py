"""The compiled differentiable mean field (``crfrnn.crf._compiled``) against the PyTorch-ops path of the engine.

Both paths run the same lattices, so their forward values and gradients agree to rounding; gradcheck in float64
checks the compiled backward against finite differences of the compiled forward.
"""

from __future__ import annotations

import pytest
import torch

from crfrnn import CrfRnn, mean_field
from crfrnn.crf.engine import infer
from crfrnn.crf.features import position_features
from crfrnn.crf.kernels import NORMALIZATIONS, KernelCache
from crfrnn.crf.pairwise import Pairwise

pytest.importorskip("numba")

H, W, L, B = 9, 11, 4, 2
N = H * W


def _problem(
    dtype,
    form: str,
    normalization: str = "row",
    exclude_self: bool = False,
    seed: int = 0,
    shape: tuple[int, int] = (H, W),
):
    """A unary, two kernels (one shared by the batch, one per image) and the tensors the gradient is taken of."""
    g = torch.Generator().manual_seed(seed)
    n = shape[0] * shape[1]
    unary = torch.randn(B, L, n, generator=g, dtype=dtype).requires_grad_(True)
    shared = position_features(shape, 2.5, dtype=dtype)
    per_image = torch.cat([shared.expand(B, -1, -1), torch.rand(B, n, 3, generator=g, dtype=dtype) * 4], -1)
    if form == "number":
        w1, c1 = torch.tensor(1.5, dtype=dtype, requires_grad=True), None
    elif form == "vector":
        w1 = (torch.rand(L, generator=g, dtype=dtype) + 0.5).requires_grad_(True)
        c1 = torch.rand(L, generator=g, dtype=dtype).requires_grad_(True)
    else:  # full, asymmetric
        w1 = torch.rand(L, L, generator=g, dtype=dtype).requires_grad_(True)
        c1 = torch.rand(L, L, generator=g, dtype=dtype).requires_grad_(True)
    w2 = (torch.rand(L, L, generator=g, dtype=dtype) * 2).requires_grad_(True)
    opts = dict(normalization=normalization, exclude_self=exclude_self)
    kernels = [Pairwise(shared, weight=w1, compatibility=c1, **opts), Pairwise(per_image, weight=w2, **opts)]
    params = [unary, w1, w2] + ([] if c1 is None else [c1])
    return unary, kernels, params


def _grads(unary, kernels, params, compiled: bool, upstream: torch.Tensor, **kwargs):
    out = infer(unary, kernels, compiled=compiled, **kwargs)
    return out.detach(), torch.autograd.grad((out * upstream).sum(), params)


class TestAgainstTorchPath:
    @pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-10), (torch.float32, 2e-4)])
    @pytest.mark.parametrize("form", ["number", "vector", "matrix"])
    @pytest.mark.parametrize("normalization", NORMALIZATIONS)
    @pytest.mark.parametrize("exclude_self", [False, True])
    def test_values_and_gradients(self, dtype, tol, form, normalization, exclude_self):
        unary, kernels, params = _problem(dtype, form, normalization, exclude_self)
        upstream = torch.randn(B, L, N, generator=torch.Generator().manual_seed(5), dtype=dtype)
        kwargs = dict(num_iterations=3, return_logits=form == "matrix")
        out_c, grads_c = _grads(unary, kernels, params, True, upstream, **kwargs)
        out_t, grads_t = _grads(unary, kernels, params, False, upstream, **kwargs)
        assert torch.allclose(out_c, out_t, rtol=tol, atol=tol * out_t.abs().max())
        for gc, gt in zip(grads_c, grads_t):
            assert gc.shape == gt.shape
            assert float((gc - gt).abs().max()) <= tol * float(gt.abs().max()), (gc - gt).abs().max()

    def test_untied_iterations(self):
        unary, kernels, params = _problem(torch.float64, "matrix")
        g = torch.Generator().manual_seed(3)
        sets = [
            [(torch.rand(L, L, generator=g, dtype=torch.float64).requires_grad_(True), None) for _ in kernels]
            for _ in range(2)
        ]
        extra = [w for pairs in sets for w, _ in pairs]
        upstream = torch.randn(B, L, N, generator=g, dtype=torch.float64)
        kwargs = dict(num_iterations=4, iteration_weights=sets)
        out_c, grads_c = _grads(unary, kernels, [unary] + extra, True, upstream, **kwargs)
        out_t, grads_t = _grads(unary, kernels, [unary] + extra, False, upstream, **kwargs)
        assert torch.allclose(out_c, out_t, atol=1e-12)
        for gc, gt in zip(grads_c, grads_t):
            assert torch.allclose(gc, gt, atol=1e-10 * float(gt.abs().max()))

    def test_probabilities(self):
        _, kernels, params = _problem(torch.float64, "vector")
        g = torch.Generator().manual_seed(4)
        probs = torch.softmax(torch.randn(B, L, N, generator=g, dtype=torch.float64) * 3, 1).requires_grad_(True)
        upstream = torch.randn(B, L, N, generator=g, dtype=torch.float64)
        out_c, grads_c = _grads(probs, kernels, [probs] + params[1:], True, upstream, num_iterations=2, from_probs=True)
        out_t, grads_t = _grads(
            probs, kernels, [probs] + params[1:], False, upstream, num_iterations=2, from_probs=True
        )
        assert torch.allclose(out_c, out_t, atol=1e-12)
        for gc, gt in zip(grads_c, grads_t):
            assert torch.allclose(gc, gt, atol=1e-10 * float(gt.abs().max()))

    def test_only_the_unary_needs_a_gradient(self):
        unary, kernels, _ = _problem(torch.float64, "matrix")
        for k in kernels:
            k.weight = k.weight.detach()
            k.compatibility = None if k.compatibility is None else k.compatibility.detach()
        upstream = torch.randn(B, L, N, dtype=torch.float64)
        (gc,) = _grads(unary, kernels, [unary], True, upstream, num_iterations=3)[1]
        (gt,) = _grads(unary, kernels, [unary], False, upstream, num_iterations=3)[1]
        assert torch.allclose(gc, gt, atol=1e-12)

    def test_batch_equals_singles(self):
        unary, kernels, params = _problem(torch.float64, "matrix")
        upstream = torch.randn(B, L, N, dtype=torch.float64)
        out, grads = _grads(unary, kernels, params, True, upstream, num_iterations=3)
        for i in range(B):
            single = [
                Pairwise(
                    k.features if k.features.shape[0] == 1 else k.features[i : i + 1],
                    weight=k.weight,
                    compatibility=k.compatibility,
                )
                for k in kernels
            ]
            u = unary[i : i + 1]
            out_i = infer(u, single, num_iterations=3)
            assert torch.allclose(out_i.detach(), out[i : i + 1], atol=1e-13)
            (g_i,) = torch.autograd.grad((out_i * upstream[i : i + 1]).sum(), [unary])
            assert torch.allclose(g_i[i], grads[0][i], atol=1e-12)


class TestGradcheck:
    @pytest.mark.parametrize("form", ["vector", "matrix"])
    def test_float64(self, form):
        unary, kernels, params = _problem(torch.float64, form, "symmetric", True, shape=(3, 4))

        def fn(u, *ts):
            ks = [
                Pairwise(
                    k.features,
                    weight=w,
                    compatibility=None if k.compatibility is None else c,
                    normalization=k.normalization,
                    exclude_self=True,
                )
                for k, w, c in zip(kernels, ts[:2], (ts[2:] or [None]) * 2)
            ]
            return infer(u, ks, num_iterations=2)

        inputs = (unary, *params[1:])
        assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-7, rtol=1e-5)

    def test_gradcheck_can_fail(self):
        """A deliberately wrong backward (the gradient halved) is caught: the check above is not vacuous."""
        from crfrnn.crf import _compiled

        unary, kernels, params = _problem(torch.float64, "matrix", shape=(3, 4))
        original = _compiled._backward

        def wrong(ctx, grad):
            du, *rest = original(ctx, grad)
            return (du * 0.5, *rest)

        _compiled._backward = wrong
        try:
            with pytest.raises(RuntimeError, match="Jacobian mismatch"):
                torch.autograd.gradcheck(
                    lambda u: infer(u, kernels[:1], num_iterations=2), (unary,), eps=1e-6, atol=1e-7
                )
        finally:
            _compiled._backward = original


class TestPathChoice:
    def _fn_name(self, out: torch.Tensor) -> str:
        return type(out.grad_fn).__name__

    def test_gradient_on_the_cpu_takes_the_compiled_path(self):
        unary, kernels, _ = _problem(torch.float32, "matrix")
        assert "CompiledMeanField" in self._fn_name(infer(unary, kernels, num_iterations=2))

    def test_memory_efficient_keeps_less_and_gives_the_same_gradients(self):
        from crfrnn._utils.profiling import saved_activation_bytes

        unary, kernels, params = _problem(torch.float64, "matrix", exclude_self=True)
        upstream = torch.randn(B, L, N, dtype=torch.float64)
        out_d, grads_d = _grads(unary, kernels, params, True, upstream, num_iterations=3)
        out_m, grads_m = _grads(unary, kernels, params, True, upstream, num_iterations=3, memory_efficient=True)
        assert torch.equal(out_d, out_m)
        for a, b in zip(grads_d, grads_m):
            assert torch.allclose(a, b, atol=1e-12 * float(b.abs().max()))
        default = saved_activation_bytes(lambda: infer(unary, kernels, num_iterations=3))
        efficient = saved_activation_bytes(lambda: infer(unary, kernels, num_iterations=3, memory_efficient=True))
        # the marginals only; by default also the blurred vertex buffers of each lattice with fewer vertices than
        # points (rows rounded up by at most 1/8), never more than marginals and K messages would be
        assert efficient < default <= (1 + len(kernels)) * efficient * 1.125

    def test_feature_gradients_and_compiled_false_take_the_torch_path(self):
        unary, kernels, _ = _problem(torch.float32, "matrix")
        assert "CompiledMeanField" in self._fn_name(infer(unary, kernels, num_iterations=2, memory_efficient=True))
        feats = kernels[1].features.clone().requires_grad_(True)
        kernels[1].features = feats
        assert "CompiledMeanField" not in self._fn_name(infer(unary, kernels, num_iterations=2))
        assert "CompiledMeanField" not in self._fn_name(infer(unary, kernels, num_iterations=2, compiled=False))

    def test_crfrnn_training_uses_it_and_matches_the_torch_path(self, monkeypatch):
        torch.manual_seed(0)
        crf = CrfRnn(L, num_iterations=3).train()
        unary = torch.randn(2, L, H, W, requires_grad=True)
        image = torch.rand(2, 3, H, W) * 255
        out = crf(unary, image)
        assert "CompiledMeanField" in type(out.grad_fn).__name__ or any(
            "CompiledMeanField" in type(f[0]).__name__ for f in out.grad_fn.next_functions if f[0] is not None
        )
        out.square().sum().backward()
        compiled = [p.grad.clone() for p in crf.parameters()] + [unary.grad.clone()]
        crf.zero_grad()
        unary.grad = None
        import crfrnn.crf.functional as functional

        monkeypatch.setattr(functional, "infer", lambda *a, **k: infer(*a, compiled=False, **k))
        crf(unary, image).square().sum().backward()
        reference = [p.grad for p in crf.parameters()] + [unary.grad]
        for a, b in zip(compiled, reference):
            assert torch.allclose(a, b, rtol=1e-4, atol=1e-4 * float(b.abs().max()))

    def test_retain_graph_twice_gives_the_same_gradient(self):
        unary, kernels, params = _problem(torch.float64, "matrix")
        out = infer(unary, kernels, num_iterations=2, cache=KernelCache())
        first = torch.autograd.grad(out.sum(), params, retain_graph=True)
        second = torch.autograd.grad(out.sum(), params)
        for a, b in zip(first, second):
            assert torch.equal(a, b)

    def test_a_retained_graph_keeps_its_buffers_while_others_run(self):
        """Buffers are reused between calls, but never while a retained graph may still need them."""
        unary, kernels, params = _problem(torch.float64, "matrix")
        out = infer(unary, kernels, num_iterations=3)
        first = torch.autograd.grad(out.sum(), params, retain_graph=True)
        for seed in (1, 2):  # other calls of the same shape in between, their graphs released
            u2, k2, p2 = _problem(torch.float64, "matrix", seed=seed)
            torch.autograd.grad(infer(u2, k2, num_iterations=3).sum(), p2)
        again = torch.autograd.grad(out.sum(), params)
        for a, b in zip(first, again):
            assert torch.equal(a, b)

    def test_buffers_are_reused_once_backward_has_run(self):
        from crfrnn.crf import _compiled

        unary, kernels, params = _problem(torch.float32, "matrix")
        out = infer(unary, kernels, num_iterations=2)
        saved = {t.data_ptr() for t in out.grad_fn.saved_tensors if t.numel()}
        out.sum().backward()
        out2 = infer(unary, kernels, num_iterations=2)
        assert saved & {t.data_ptr() for t in out2.grad_fn.saved_tensors if t.numel()}
        _compiled.release_buffers()

    def test_non_finite_unary_is_refused(self):
        unary, kernels, _ = _problem(torch.float32, "matrix")
        bad = unary.detach().clone()
        bad[1, 2, 3] = float("inf")
        with pytest.raises(ValueError, match="NaN or infinite"):
            infer(bad.requires_grad_(True), kernels, num_iterations=2)
        probs = torch.softmax(unary.detach(), 1)
        probs[0, 0, 0] = -0.5
        with pytest.raises(ValueError, match="negative"):
            infer(probs.requires_grad_(True), kernels, num_iterations=2, from_probs=True)

    def test_double_backward_is_refused_clearly(self):
        unary, kernels, _ = _problem(torch.float64, "matrix")
        out = infer(unary, kernels, num_iterations=2)
        (g,) = torch.autograd.grad(out.square().sum(), [unary], create_graph=True)
        with pytest.raises(RuntimeError, match="once_differentiable|twice"):
            g.sum().backward()

    def test_mean_field_grad_matches_no_grad_forward(self):
        unary = torch.randn(1, L, H, W, requires_grad=True)
        image = torch.rand(1, 3, H, W) * 255
        with torch.no_grad():
            fused = mean_field(unary, image, num_iterations=4)
        assert torch.allclose(mean_field(unary, image, num_iterations=4).detach(), fused, atol=1e-5)


class TestReproducible:
    @pytest.mark.parametrize("exclude_self", [False, True])
    def test_gradients_do_not_depend_on_the_thread_count(self, exclude_self):
        """Bit for bit: a training run resumed on a busier machine (fewer threads) must continue the same way."""
        import numba

        torch.manual_seed(0)
        crf = CrfRnn(5, num_iterations=3, exclude_self=exclude_self).train()
        with torch.no_grad():
            crf.compatibility.add_(0.1 * torch.randn(5, 5))
        unary = torch.randn(2, 5, 40, 48, requires_grad=True)
        image = torch.rand(2, 3, 40, 48) * 255
        before = (torch.get_num_threads(), numba.get_num_threads())
        results = []
        try:
            for threads in (1, 2):
                torch.set_num_threads(threads)
                numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
                crf.zero_grad()
                unary.grad = None
                (crf(unary, image) ** 2).mean().backward()
                results.append([unary.grad.clone()] + [p.grad.clone() for p in crf.parameters() if p.grad is not None])
        finally:
            torch.set_num_threads(before[0])
            numba.set_num_threads(before[1])
        assert len(results[0]) == 4  # the unary, the two kernel weights and the compatibility
        for a, b in zip(*results):
            assert torch.equal(a, b)

    def test_gram_is_the_product(self):
        import numpy as np

        from crfrnn import _kernels

        rng = np.random.default_rng(0)
        a, b = rng.random((1001, 8), dtype=np.float32), rng.random((1001, 8), dtype=np.float32)
        w = rng.random(1001, dtype=np.float32)
        ref = (a[:, :5].astype(np.float64) * w[:, None]).T @ b[:, :5]
        assert np.allclose(_kernels.gram(a, b, 5, w), ref, rtol=1e-5)
        assert np.allclose(_kernels.gram(a, b, 5), a[:, :5].T.astype(np.float64) @ b[:, :5], rtol=1e-5)
        assert np.allclose(_kernels.gram(a, b, 5, diagonal=True), (a * b)[:, :5].sum(0), rtol=1e-5)


class TestHalfPrecision:
    """Under autocast, and with bfloat16/float16 unaries, the CRF computes in float32 and returns the caller's dtype."""

    def test_autocast_bfloat16_training_step(self):
        torch.manual_seed(0)
        crf = CrfRnn(L, num_iterations=3).train()
        unary = torch.randn(2, L, H, W, requires_grad=True)
        image = torch.rand(2, 3, H, W) * 255
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = crf(unary, image)
        assert out.dtype == torch.float32  # the caller's (the unary's) dtype, not autocast's
        out.square().mean().backward()
        reference = crf(unary.detach(), image)
        assert torch.allclose(out.detach(), reference.detach(), atol=1e-5)
        assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in crf.parameters())

    @pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
    def test_low_precision_unary(self, dtype):
        unary = torch.randn(1, L, H, W).to(dtype).requires_grad_(True)
        image = torch.rand(1, 3, H, W) * 255
        out = mean_field(unary, image, num_iterations=2)
        assert out.dtype == dtype
        (grad,) = torch.autograd.grad(out.float().sum(), [unary])
        assert grad.dtype == dtype
        expected = mean_field(unary.detach().float(), image, num_iterations=2)
        assert torch.allclose(out.float(), expected, atol=0.05 * float(expected.abs().max()))

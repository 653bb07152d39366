"""Mean-field inference and the CRF-RNN layer: references, gradients, invariants and bad input."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from tests.conftest import DEVICE, photo

from crfrnn import NORMALIZATIONS, CrfRnn, GaussianKernel, bilateral_features, gaussian_filter, mean_field
from crfrnn._utils.profiling import saved_activation_bytes

BACKENDS = ["torch", "numba"]


def smooth_image(b: int, h: int, w: int, seed: int = 0) -> torch.Tensor:
    """Piecewise-smooth colour images (dense in colour space, unlike white noise)."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(b, 3, 3, 3, generator=g, dtype=torch.float64) * 255
    return F.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=True)


def reference_mean_field(unary, image, *, theta_alpha, theta_beta, theta_gamma, ws, wb, mu, iters):
    """The mean-field iteration written out with dense N x N kernel matrices (no lattice, no shared code path)."""
    b, num_labels, h, w = unary.shape
    ys, xs = torch.meshgrid(torch.arange(h, dtype=unary.dtype), torch.arange(w, dtype=unary.dtype), indexing="ij")
    pos = torch.stack([xs, ys], -1).view(-1, 2)
    out = []
    for i in range(b):
        col = image[i].permute(1, 2, 0).reshape(-1, 3).to(unary.dtype)
        k_s = torch.exp(-(torch.cdist(pos, pos) ** 2) / (2 * theta_gamma**2))
        fb = torch.cat([pos / theta_alpha, col / theta_beta], 1)
        k_b = torch.exp(-(torch.cdist(fb, fb) ** 2) / 2)
        u = unary[i].reshape(num_labels, -1)  # (L, N)
        logits = u
        for _ in range(iters):
            q = torch.softmax(logits, 0)
            qs = (q @ k_s.t()) / k_s.sum(1)  # row normalisation: divide by K 1
            qb = (q @ k_b.t()) / k_b.sum(1)
            logits = u - mu @ (ws @ qs + wb @ qb)
        out.append(logits.view(num_labels, h, w))
    return torch.stack(out)


class TestMeanField:
    def test_smoke(self, device):
        out = mean_field(torch.randn(2, 3, 8, 9, device=device), torch.rand(2, 3, 8, 9, device=device) * 255)
        assert out.shape == (2, 3, 8, 9) and out.dtype == torch.float32 and torch.isfinite(out).all()
        assert out.device.type == device.type

    @pytest.mark.parametrize("shape", [(1, 2, 1, 1), (1, 2, 1, 7), (3, 5, 6, 4), (2, 21, 13, 11)])
    def test_cardinality(self, shape, device):
        b, num_labels, h, w = shape
        assert mean_field(torch.randn(shape, device=device), torch.rand(b, 3, h, w, device=device) * 255).shape == shape

    def test_zero_iterations_return_the_unary(self):
        u = torch.randn(1, 3, 5, 5)
        assert torch.equal(mean_field(u, torch.rand(1, 3, 5, 5) * 255, num_iterations=0), u)

    def test_exact_matches_dense_matrix_reference(self):
        """The exact-kernel path is the mean-field iteration to machine precision (dense N x N matrices)."""
        g = torch.Generator().manual_seed(0)
        u = torch.randn(2, 4, 7, 9, dtype=torch.float64, generator=g)
        img = smooth_image(2, 7, 9)
        ws, wb, mu = (torch.randn(4, 4, dtype=torch.float64, generator=g) for _ in range(3))
        kw = dict(theta_alpha=4.0, theta_beta=20.0, theta_gamma=1.5)
        ours = mean_field(
            u.to(DEVICE),
            img.to(DEVICE),
            **kw,
            spatial_weight=ws.to(DEVICE),
            bilateral_weight=wb.to(DEVICE),
            compatibility=mu.to(DEVICE),
            num_iterations=4,
            exact=True,
        ).cpu()
        ref = reference_mean_field(u, img, **kw, ws=ws, wb=wb, mu=mu, iters=4)
        assert torch.allclose(ours, ref, rtol=1e-10, atol=1e-10)

    @pytest.mark.parametrize("backend", BACKENDS)
    def test_lattice_close_to_exact_on_a_photo(self, backend):
        img = photo("coffee", (40, 56))
        g = torch.Generator().manual_seed(0)
        u = F.interpolate(torch.randn(1, 3, 5, 7, dtype=torch.float64, generator=g) * 2, size=(40, 56), mode="bilinear")
        kw = dict(theta_alpha=20.0, theta_beta=13.0, theta_gamma=3.0, num_iterations=5)
        exact = mean_field(u, img, **kw, exact=True).softmax(1)
        approx = mean_field(u, img, **kw, backend=backend).softmax(1)
        # the lattice's ~0.5-1.5% filtering error, carried through 5 iterations (docs/lattice.md)
        assert (approx - exact).abs().mean() < 0.025
        assert (approx.argmax(1) == exact.argmax(1)).double().mean() > 0.96
        # the comparison has teeth: a kernel twice as wide is much further from the exact result
        wide = mean_field(u, img, **{**kw, "theta_alpha": 40.0, "theta_gamma": 6.0}, backend=backend).softmax(1)
        assert (wide - exact).abs().mean() > 2 * (approx - exact).abs().mean()

    def test_gradcheck(self):
        g = torch.Generator().manual_seed(1)
        img = smooth_image(2, 4, 5).to(DEVICE)
        u = torch.randn(2, 3, 4, 5, dtype=torch.float64, generator=g).to(DEVICE).requires_grad_()
        ws, wb, mu = (torch.randn(3, 3, dtype=torch.float64, generator=g).to(DEVICE).requires_grad_() for _ in range(3))

        def fn(u, ws, wb, mu):
            return mean_field(
                u,
                img,
                theta_alpha=5.0,
                theta_beta=40.0,
                spatial_weight=ws,
                bilateral_weight=wb,
                compatibility=mu,
                num_iterations=3,
            )

        assert torch.autograd.gradcheck(fn, (u, ws, wb, mu))

    @pytest.mark.parametrize("normalization", NORMALIZATIONS)
    @pytest.mark.parametrize("exclude_self", [False, True])
    def test_gradcheck_options(self, normalization, exclude_self):
        img = smooth_image(1, 4, 4).to(DEVICE)
        u = torch.randn(1, 2, 4, 4, dtype=torch.float64, device=DEVICE, requires_grad=True)

        def fn(u):
            return mean_field(
                u,
                img,
                theta_alpha=5.0,
                theta_beta=40.0,
                normalization=normalization,
                exclude_self=exclude_self,
                num_iterations=2,
                memory_efficient=True,
            )

        assert torch.autograd.gradcheck(fn, (u,))

    @pytest.mark.parametrize("backend", BACKENDS)
    def test_batch_equals_singles(self, backend):
        g = torch.Generator().manual_seed(2)
        u = torch.randn(3, 4, 10, 12, dtype=torch.float64, generator=g)
        img = smooth_image(3, 10, 12, seed=1)
        batched = mean_field(u, img, backend=backend)
        for i in range(3):
            single = mean_field(u[i : i + 1], img[i : i + 1], backend=backend)
            assert torch.allclose(batched[i : i + 1], single, rtol=1e-10, atol=1e-10)

    @pytest.mark.parametrize("backend", BACKENDS)
    def test_float32_matches_float64(self, backend):
        u = torch.randn(2, 5, 12, 10, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
        img = smooth_image(2, 12, 10)
        a = mean_field(u, img, backend=backend).softmax(1)
        b = mean_field(u.float(), img.float(), backend=backend).softmax(1)
        assert b.dtype == torch.float32
        assert (a - b.double()).abs().max() < 5e-5 and (a - b.double()).abs().mean() < 2e-6

    @pytest.mark.parametrize("exact", [True, False])
    def test_shifted_image_gives_shifted_result(self, exact):
        """Translation equivariance: content shifted inside a uniform canvas gives shifted marginals.

        Exact kernels are equivariant up to their tails at the canvas border; the lattice only
        approximately (its vertices do not move with the image), so its bound is looser.
        """
        size, canvas_size = 10, 40
        m = (canvas_size - size) // 2
        content = smooth_image(1, size, size, seed=3)
        g = torch.Generator().manual_seed(3)
        logits = 2 * F.interpolate(
            torch.randn(1, 3, 3, 3, dtype=torch.float64, generator=g), size=(size, size), mode="bilinear"
        ) + 0.5 * torch.randn(1, 3, size, size, dtype=torch.float64, generator=g)

        def place(x, dy, dx, fill):
            canvas = torch.full((1, x.shape[1], canvas_size, canvas_size), fill, dtype=torch.float64)
            canvas[:, :, m + dy : m + size + dy, m + dx : m + size + dx] = x
            return canvas

        kw = (
            dict(theta_alpha=2.0, theta_beta=30.0, theta_gamma=1.0)
            if exact
            else dict(theta_alpha=6.0, theta_beta=13.0, theta_gamma=3.0)
        )
        a = mean_field(place(logits, 0, 0, 0.0), place(content, 0, 0, 128.0), **kw, exact=exact).softmax(1)
        b = mean_field(place(logits, 3, -2, 0.0), place(content, 3, -2, 128.0), **kw, exact=exact).softmax(1)
        a_in = a[..., m : m + size, m : m + size]
        b_in = b[..., m + 3 : m + size + 3, m - 2 : m + size - 2]
        unshifted = b[..., m : m + size, m : m + size]
        if exact:
            assert (a_in - b_in).abs().max() < 1e-5
            assert (a_in - unshifted).abs().max() > 0.2  # the check has teeth
        else:
            # mean field with strong weights flips the odd near-tied pixel on lattice-sized differences
            agree = (a_in.argmax(1) == b_in.argmax(1)).double().mean()
            assert agree >= 0.93 and (a_in - b_in).abs().mean() < 0.04
            assert (a_in.argmax(1) == unshifted.argmax(1)).double().mean() < agree - 0.05

    def test_crf_sharpens_a_blurred_noisy_unary(self):
        """On sharp colour edges, the refined labels agree with the truth better than the unary's argmax."""
        g = torch.Generator().manual_seed(4)
        h, w, num_labels = 48, 64, 3
        ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
        truth = torch.zeros(h, w, dtype=torch.long)
        truth[(xs - 20) ** 2 + (ys - 24) ** 2 < 12**2] = 1
        truth[(xs > 38) & (xs < 58) & (ys > 10) & (ys < 40)] = 2
        palette = torch.tensor([[40.0, 60, 50], [200, 80, 60], [70, 90, 210]])
        img = palette[truth].permute(2, 0, 1)[None] + 8 * torch.randn(1, 3, h, w, generator=g)
        onehot = F.one_hot(truth, num_labels).permute(2, 0, 1)[None].float()
        coarse = F.avg_pool2d(onehot, 8)  # blobby, like a stride-8 CNN
        unary = 2.0 * F.interpolate(coarse, size=(h, w), mode="bilinear") + 0.8 * torch.randn(
            1, num_labels, h, w, generator=g
        )
        before = (unary.argmax(1)[0] == truth).float().mean()
        refined = mean_field(
            unary, img, theta_alpha=20.0, theta_beta=13.0, spatial_weight=3.0, bilateral_weight=5.0, num_iterations=10
        )
        after = (refined.argmax(1)[0] == truth).float().mean()
        assert after > before + 0.05, f"accuracy {before:.3f} -> {after:.3f}"

    def test_potts_fast_path_equals_matrix_path(self):
        u = torch.randn(2, 4, 9, 8, dtype=torch.float64)
        img = smooth_image(2, 9, 8)
        fast = mean_field(u, img, spatial_weight=3.0, bilateral_weight=5.0)
        eye = torch.eye(4, dtype=torch.float64)
        slow = mean_field(u, img, spatial_weight=3.0 * eye, bilateral_weight=5.0 * eye, compatibility=1.0 - eye)
        assert torch.allclose(fast.softmax(1), slow.softmax(1), rtol=1e-10, atol=1e-12)
        # mu = -I (the released code's initialisation) is the same model as Potts under the softmax
        released = mean_field(u, img, spatial_weight=3.0 * eye, bilateral_weight=5.0 * eye, compatibility=-eye)
        assert torch.allclose(released.softmax(1), slow.softmax(1), rtol=1e-10, atol=1e-12)

    def test_memory_efficient_same_values_and_gradients(self):
        u = torch.randn(2, 3, 10, 10, dtype=torch.float64, requires_grad=True)
        img = smooth_image(2, 10, 10)
        mu = torch.randn(3, 3, dtype=torch.float64, requires_grad=True)
        grads = []
        for mode in (False, True):
            out = mean_field(u, img, compatibility=mu, memory_efficient=mode)
            grads.append((out.detach(), *torch.autograd.grad((out**2).sum(), (u, mu))))
        for a, b in zip(*grads):
            assert torch.allclose(a, b, rtol=1e-12, atol=1e-12)

    @pytest.mark.parametrize("memory_efficient", [False, True])
    def test_saved_activations_are_linear_in_iterations(self, memory_efficient):
        """Autograd keeps O(T B L N) floats (+ the lattices), and the checkpointed mode keeps fewer."""
        b, num_labels, h, w = 2, 6, 16, 16
        u = torch.randn(b, num_labels, h, w, requires_grad=True)
        img = smooth_image(b, h, w).float()
        unit = b * num_labels * h * w * 4  # bytes of one (B, L, N) float32 tensor

        def saved_bytes(iters: int) -> int:
            return saved_activation_bytes(
                lambda: mean_field(
                    u,
                    img,
                    compatibility=torch.eye(num_labels, requires_grad=True),
                    num_iterations=iters,
                    memory_efficient=memory_efficient,
                )
            )

        per_iteration = (saved_bytes(6) - saved_bytes(3)) / 3
        assert per_iteration <= (1.5 if memory_efficient else 6) * unit, per_iteration / unit

    def test_normalizations(self):
        """Each normalisation's defining property, checked on the operator itself."""
        img = photo("chelsea", (20, 24))
        f = bilateral_features(img, 10.0, 13.0)
        ones = torch.ones(1, f.shape[1], 1, dtype=torch.float64)
        x = torch.rand(1, f.shape[1], 1, dtype=torch.float64)
        y = torch.rand(1, f.shape[1], 1, dtype=torch.float64)
        # row: constants are preserved
        assert torch.allclose(GaussianKernel(f, normalization="row")(ones), ones, atol=1e-12)
        # column: the total mass is preserved
        col = GaussianKernel(f, normalization="column", exact=True)
        assert torch.allclose(col(x).sum(), x.sum(), rtol=1e-12)
        # symmetric: a symmetric operator for a symmetric kernel
        sym = GaussianKernel(f, normalization="symmetric", exact=True)
        assert torch.allclose((sym(x) * y).sum(), (x * sym(y)).sum(), rtol=1e-12)
        # none: the kernel itself, unnormalised
        raw = GaussianKernel(f, normalization="none", exact=True)
        assert torch.allclose(raw(x), gaussian_filter(x, f), rtol=1e-12)

    @pytest.mark.parametrize("backend", BACKENDS)
    def test_exclude_self(self, backend):
        img = smooth_image(1, 8, 8)
        f = bilateral_features(img, 3.0, 30.0)
        n = f.shape[1]
        impulses = torch.eye(n, dtype=torch.float64)[None]
        # exact: exactly the Gaussian with its diagonal removed
        k = torch.exp(-(torch.cdist(f[0], f[0]) ** 2) / 2)
        k.fill_diagonal_(0)
        exact = GaussianKernel(f, normalization="row", exclude_self=True, exact=True)
        assert torch.allclose(exact(impulses)[0], k / k.sum(1, keepdim=True), rtol=1e-10, atol=1e-12)
        # lattice: the operator's diagonal is exactly zero, off-diagonal entries are the lattice's
        lat = GaussianKernel(f, normalization="row", exclude_self=True, backend=backend)
        full = GaussianKernel(f, normalization="row", backend=backend)
        m, m_full = lat(impulses)[0], full(impulses)[0]
        assert m.diagonal().abs().max() < 1e-12
        # off the diagonal each row is the full operator's row rescaled by one constant (the new normaliser)
        rows = m_full.sum(1) - m_full.diagonal()
        expected = m_full * (m.sum(1) / rows).unsqueeze(1)
        expected.fill_diagonal_(0)
        assert torch.allclose(m, expected, rtol=1e-9, atol=1e-12)
        assert torch.allclose(m.sum(1), torch.ones(n, dtype=torch.float64))  # still row-normalised

    def test_non_contiguous_and_channels_last_inputs(self):
        u = torch.randn(2, 4, 10, 12)
        img = torch.rand(2, 3, 10, 12) * 255
        expected = mean_field(u, img)
        u_cl = u.contiguous(memory_format=torch.channels_last)
        img_cl = img.contiguous(memory_format=torch.channels_last)
        assert torch.allclose(mean_field(u_cl, img_cl), expected, atol=1e-6)
        u_t = u.transpose(2, 3).contiguous().transpose(2, 3)  # non-contiguous, same values
        assert not u_t.is_contiguous()
        assert torch.allclose(mean_field(u_t, img[..., ::1]), expected, atol=1e-6)
        # a uint8 image is accepted and means the same as its float version
        img8 = img.round().to(torch.uint8)
        assert torch.allclose(mean_field(u, img8), mean_field(u, img8.float()), atol=1e-6)

    def test_exception(self):
        u = torch.randn(1, 3, 5, 6)
        img = torch.rand(1, 3, 5, 6) * 255
        with pytest.raises(ValueError, match=r"unary\[None\]"):
            mean_field(u[0], img)
        with pytest.raises(ValueError, match=r"6-D tensor.*1, 2 or 3 spatial axes"):  # not a missing batch axis
            mean_field(torch.randn(1, 2, 3, 3, 3, 3), torch.rand(1, 1, 3, 3, 3, 3))
        with pytest.raises(ValueError, match="image.*does not match"):
            mean_field(u, img[..., :5])
        with pytest.raises(ValueError, match="channels-last"):
            mean_field(u, img.permute(0, 2, 3, 1))
        with pytest.raises(ValueError, match="NaN or infinite"):
            mean_field(torch.full_like(u, float("nan")), img)
        with pytest.raises(ValueError, match="NaN or infinite"):
            mean_field(u, torch.full_like(img, float("inf")))
        with pytest.raises(ValueError, match="L, L"):  # a binary map takes 2 x 2 matrices, not 1 x 1
            mean_field(u[:, :1], img, spatial_weight=torch.eye(1))
        with pytest.raises(ValueError, match="empty"):
            mean_field(torch.randn(1, 3, 0, 6), torch.rand(1, 3, 0, 6))
        with pytest.raises(TypeError, match="float32 or float64"):
            mean_field(u.long(), img)
        with pytest.raises(TypeError, match="torch.Tensor"):
            mean_field(u.numpy(), img)
        with pytest.raises(ValueError, match="theta_beta"):
            mean_field(u, img, theta_beta=0.0)
        with pytest.raises(ValueError, match="num_iterations"):
            mean_field(u, img, num_iterations=-1)
        with pytest.raises(ValueError, match="normalization"):
            mean_field(u, img, normalization="l2")
        with pytest.raises(ValueError, match=r"\(L, L\) = \(3, 3\)"):
            mean_field(u, img, compatibility=torch.eye(4))
        with pytest.raises(ValueError, match="spatial_weight"):
            mean_field(u, img, spatial_weight=torch.eye(2))
        with pytest.warns(UserWarning, match="multiply the image by 255"):
            mean_field(u, img / 255)


class TestCrfRnn:
    def test_smoke_and_parameters(self):
        crf = CrfRnn(5)
        names = {n for n, _ in crf.named_parameters()}
        assert names == {"spatial_weights", "bilateral_weights", "compatibility"}
        assert torch.equal(crf.spatial_weights.detach(), 3 * torch.eye(5))
        assert torch.equal(crf.bilateral_weights.detach(), 5 * torch.eye(5))
        assert torch.equal(crf.compatibility.detach(), 1 - torch.eye(5))
        assert {n for n, _ in crf.named_buffers()} == {"theta_alpha", "theta_beta", "theta_gamma"}
        assert "num_classes=5" in repr(crf)

    def test_module_equals_functional(self):
        crf = CrfRnn(4, theta_alpha=30.0, num_iterations=3, num_eval_iterations=7).double().to(DEVICE)
        with torch.no_grad():
            crf.compatibility.add_(0.1 * torch.randn(4, 4, dtype=torch.float64, device=DEVICE))
        u = torch.randn(2, 4, 9, 7, dtype=torch.float64, device=DEVICE)
        img = smooth_image(2, 9, 7).to(DEVICE)
        kw = dict(
            theta_alpha=30.0,
            spatial_weight=crf.spatial_weights,
            bilateral_weight=crf.bilateral_weights,
            compatibility=crf.compatibility,
        )
        assert torch.allclose(crf.train()(u, img), mean_field(u, img, **kw, num_iterations=3))
        assert torch.allclose(crf.eval()(u, img), mean_field(u, img, **kw, num_iterations=7))

    def test_gradcheck_through_module(self):
        crf = CrfRnn(3, theta_alpha=5.0, theta_beta=40.0, num_iterations=2).double().to(DEVICE)
        img = smooth_image(2, 4, 5).to(DEVICE)
        u = torch.randn(2, 3, 4, 5, dtype=torch.float64, device=DEVICE, requires_grad=True)
        params = dict(crf.named_parameters())

        def fn(u, ws, wb, mu):
            return torch.func.functional_call(
                crf, {"spatial_weights": ws, "bilateral_weights": wb, "compatibility": mu}, (u, img)
            )

        assert torch.autograd.gradcheck(
            fn, (u, params["spatial_weights"], params["bilateral_weights"], params["compatibility"])
        )

    def test_training_step_moves_parameters(self, device):
        crf = CrfRnn(3).to(device)
        u = torch.randn(2, 3, 12, 12, device=device)
        img = torch.rand(2, 3, 12, 12, device=device) * 255
        loss = F.cross_entropy(crf(u, img), torch.randint(0, 3, (2, 12, 12), device=device))
        loss.backward()
        for p in crf.parameters():
            assert p.grad is not None and p.grad.abs().sum() > 0

    def test_exception(self):
        with pytest.raises(ValueError, match="num_classes"):
            CrfRnn(0)
        with pytest.raises(ValueError, match="theta_alpha"):
            CrfRnn(3, theta_alpha=-1.0)
        with pytest.raises(ValueError, match="num_eval_iterations"):
            CrfRnn(3, num_eval_iterations=-2)
        with pytest.raises(ValueError, match="num_classes=3"):
            CrfRnn(3)(torch.randn(1, 4, 5, 5), torch.rand(1, 3, 5, 5))

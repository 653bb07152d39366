"""dense_crf (the post-processing API) and its unary helpers: behaviour, kinds, errors, fused path."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from crfrnn import dense_crf, unary_from_labels, unary_from_probs


def scene(h: int = 40, w: int = 56, num_labels: int = 3, seed: int = 0):
    """Sharp-edged colour regions, their labels, and blurred noisy probabilities (a coarse CNN's)."""
    g = torch.Generator().manual_seed(seed)
    ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    truth = torch.zeros(h, w, dtype=torch.long)
    truth[(xs - w // 3) ** 2 + (ys - h // 2) ** 2 < (h // 4) ** 2] = 1
    truth[(xs > 2 * w // 3) & (ys > h // 5) & (ys < 4 * h // 5)] = 2
    palette = torch.tensor([[40.0, 60, 50], [200, 80, 60], [70, 90, 210]])
    image = (palette[truth] + 6 * torch.randn(h, w, 3, generator=g)).clamp(0, 255).to(torch.uint8)
    coarse = F.avg_pool2d(F.one_hot(truth, num_labels).permute(2, 0, 1)[None].float(), 8)
    logits = 3 * F.interpolate(coarse, size=(h, w), mode="bilinear")[0] + torch.randn(num_labels, h, w, generator=g)
    return image.numpy(), torch.softmax(logits, 0).numpy(), truth.numpy()


class TestDenseCrf:
    def test_smoke_numpy(self):
        image, probs, _ = scene()
        q = dense_crf(image, probs)
        assert isinstance(q, np.ndarray) and q.dtype == np.float32 and q.shape == probs.shape
        assert np.allclose(q.sum(0), 1, atol=1e-5) and (q >= 0).all()

    def test_improves_labels(self):
        image, probs, truth = scene()
        before = (probs.argmax(0) == truth).mean()
        after = (dense_crf(image, probs, bilateral_sxy=20.0).argmax(0) == truth).mean()
        assert after > before + 0.03, (before, after)

    def test_zero_iterations_is_the_clipped_input(self):
        image, probs, _ = scene()
        assert np.allclose(dense_crf(image, probs, num_iterations=0), probs, atol=1e-5)

    def test_torch_and_batched(self):
        image, probs, _ = scene()
        expected = dense_crf(image, probs)
        single = dense_crf(torch.from_numpy(image), torch.from_numpy(probs))
        assert isinstance(single, torch.Tensor) and torch.allclose(single, torch.from_numpy(expected), atol=1e-6)
        image2, probs2, _ = scene(seed=1)
        img_b = torch.from_numpy(np.stack([image, image2])).permute(0, 3, 1, 2)
        batched = dense_crf(img_b, torch.from_numpy(np.stack([probs, probs2])))
        assert batched.shape == (2,) + probs.shape
        assert torch.allclose(batched[0], torch.from_numpy(expected), atol=1e-6)
        assert torch.allclose(batched[1], torch.from_numpy(dense_crf(image2, probs2)), atol=1e-6)

    def test_ambiguous_torch_layout_is_refused(self):
        # (C, H, W) image with (L, H, W) scores and C == L also reads as a batch of C one-dimensional signals
        image, probs, _ = scene()
        chw, lhw = torch.from_numpy(image).permute(2, 0, 1), torch.from_numpy(probs)
        with pytest.raises(ValueError, match=r"ambiguous.*\(C, H, W\).*batch of 3.*\(1, C, H, W\).*\(H, W, C\)"):
            dense_crf(chw, logits=lhw.log())  # logits: no sum to trip over, a silently wrong answer before
        with pytest.raises(ValueError, match="ambiguous"):  # S + (C,) with H == L and C == W: also a batch
            dense_crf(torch.zeros(3, 4, 4), torch.full((3, 3, 4), 1 / 3))
        # the unambiguous ways to say it give the NumPy answer
        expected = torch.from_numpy(dense_crf(image, probs))
        assert torch.allclose(dense_crf(chw[None], lhw[None])[0], expected, atol=1e-6)
        assert torch.allclose(dense_crf(chw.permute(1, 2, 0), lhw), expected, atol=1e-6)
        two = probs[:2] / probs[:2].sum(0)  # C != L: (C, H, W) is unambiguous and still read
        assert torch.allclose(dense_crf(chw, torch.from_numpy(two)), torch.from_numpy(dense_crf(image, two)), atol=1e-6)

    @pytest.mark.parametrize("normalization", ["symmetric", "row", "column", "none"])
    def test_fused_path_equals_generic_path(self, normalization):
        image, probs, _ = scene()
        fused = dense_crf(image, probs, num_iterations=6, normalization=normalization)  # numba: fused kernel
        generic = dense_crf(image, probs, num_iterations=6, normalization=normalization, backend="torch")
        assert np.abs(fused - generic).max() < 1e-5

    def test_differentiable_for_torch_input(self):
        image, probs, _ = scene(h=12, w=16)
        logits = torch.from_numpy(np.log(probs)).double().requires_grad_(True)
        img = torch.from_numpy(image)
        assert torch.autograd.gradcheck(lambda u: dense_crf(img, logits=u, num_iterations=2), (logits,))

    def test_unary_from_labels(self):
        labels = np.array([[0, 1], [2, 255]])
        u = unary_from_labels(labels, 3, gt_prob=0.7, unknown=255)
        p = np.exp(u)
        assert u.shape == (3, 2, 2) and u.dtype == np.float32
        assert np.allclose(p[:, 0, 0], [0.7, 0.15, 0.15]) and np.allclose(p[:, 1, 0], [0.15, 0.15, 0.7])
        assert np.allclose(p[:, 1, 1], 1 / 3)  # unknown: unconstrained
        t = unary_from_labels(torch.from_numpy(labels)[None], 3, gt_prob=0.7, unknown=255)
        assert isinstance(t, torch.Tensor) and t.shape == (1, 3, 2, 2) and np.allclose(t[0].numpy(), u)
        with pytest.raises(ValueError, match="outside 0..2"):
            unary_from_labels(labels, 3)
        with pytest.raises(ValueError, match="gt_prob"):
            unary_from_labels(labels, 3, gt_prob=1.0, unknown=255)
        with pytest.raises(TypeError, match="integer"):
            unary_from_labels(labels.astype(float), 3)

    def test_unary_from_probs(self):
        p = np.array([[[0.0]], [[1.0]]], dtype=np.float32)
        assert np.allclose(unary_from_probs(p), np.log([[[1e-5]], [[1.0]]]))
        assert np.allclose(np.exp(unary_from_probs(p, scale=0.5))[:, 0, 0], [0.25, 0.75])

    def test_label_map_refinement(self):
        image, probs, truth = scene()
        noisy = probs.argmax(0)
        q = dense_crf(image, logits=unary_from_labels(noisy, 3, gt_prob=0.6), bilateral_sxy=20.0)
        assert (q.argmax(0) == truth).mean() > (noisy == truth).mean() + 0.03

    @pytest.mark.parametrize("backend", ["auto", "torch"])  # the fused CPU path checks in its own kernel
    def test_exception(self, backend):
        image, probs, _ = scene()
        with pytest.raises(ValueError, match="exactly one"):
            dense_crf(image)
        with pytest.raises(ValueError, match="look like logits"):
            dense_crf(image, np.log(probs), backend=backend)
        with pytest.raises(ValueError, match="sum to 1"):
            dense_crf(image, probs * 2, backend=backend)
        with pytest.raises(ValueError, match="NaN or infinite"):
            dense_crf(image, logits=np.where(probs > 0.9, np.inf, probs), backend=backend)
        with pytest.raises(ValueError, match="clip"):
            dense_crf(image, probs, clip=0.0, backend=backend)
        with pytest.raises(ValueError, match="does not match"):
            dense_crf(image[:-1], probs, backend=backend)
        with pytest.raises(TypeError, match="floating point"):
            dense_crf(image, probs.argmax(0)[None].repeat(3, 0))
        with pytest.raises(ValueError, match="NaN"):
            dense_crf(image, np.full_like(probs, np.nan))
        with pytest.raises(ValueError, match="look like logits"):  # a binary map is a probability in [0, 1]
            dense_crf(image, -np.ones_like(probs[:1]))
        with pytest.raises(ValueError, match=r"foreground probability and must lie in \[0, 1\]; got values in 1.5"):
            dense_crf(image, np.full_like(probs[:1], 1.5))  # 1 - p would be negative: said as what it is
        with pytest.raises(ValueError, match="iterations"):
            dense_crf(image, probs, num_iterations=-1)
        with pytest.raises(TypeError, match="NumPy array or a torch tensor"):
            dense_crf(image, probs.tolist())


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_same_bits_on_one_and_two_threads(monkeypatch, dtype):
    """The thread count changes no bit: 19200 points take the parallel vertex hash (insert_runs) on 2 threads."""
    import numba

    import crfrnn._utils.threads as threads

    monkeypatch.setattr(threads, "free_cpus", lambda samples=3: 64)  # the threads asked for, however busy the CPU
    image, probs, _ = scene(120, 160, num_labels=5)
    probs = torch.from_numpy(probs.astype(dtype))  # a float64 tensor is refined in float64
    before = numba.get_num_threads(), torch.get_num_threads()
    out = []
    try:
        for n in (1, min(2, numba.config.NUMBA_NUM_THREADS)):
            numba.set_num_threads(n)
            torch.set_num_threads(n)
            out.append(dense_crf(image, probs, num_iterations=3))
    finally:
        numba.set_num_threads(before[0])
        torch.set_num_threads(before[1])
    assert out[0].dtype == probs.dtype and torch.equal(out[0], out[1])

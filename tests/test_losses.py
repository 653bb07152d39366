"""crfrnn.losses.dense_crf_loss against an O(N^2) reference written here, its gradient, and its input checks."""

import pytest
import torch

from crfrnn.crf.features import bilateral_features
from crfrnn.lattice import PermutohedralLattice
from crfrnn.losses import dense_crf_loss

F64 = torch.float64


def expected_fn(probs, image, ta, tb, tg, wb, ws, exclude_self, normalize=True):
    """R(S) = sum_k S_k^T W (1 - S_k) per image, W built pixel by pixel from its definition."""
    b, num_labels = probs.shape[:2]
    shape = probs.shape[2:]
    pos = torch.stack(torch.meshgrid(*[torch.arange(n, dtype=F64) for n in shape], indexing="ij"), -1).reshape(
        -1, len(shape)
    )
    out = []
    for i in range(b):
        col = image[i].reshape(image.shape[1], -1).t()
        d_pos = ((pos[:, None] - pos[None]) ** 2).sum(-1)
        d_col = ((col[:, None] - col[None]) ** 2).sum(-1)
        w = wb * torch.exp(-d_pos / (2 * ta**2) - d_col / (2 * tb**2))
        if ws:
            w = w + ws * torch.exp(-d_pos / (2 * tg**2))
        if exclude_self:
            w = w - torch.diag(torch.diagonal(w))
        s = probs[i].reshape(num_labels, -1)
        r = sum(s[k] @ w @ (1 - s[k]) for k in range(num_labels))
        out.append(r / s.shape[1] if normalize else r)
    return torch.stack(out), w


def _inputs(seed, shape=(6, 7), labels=3, channels=3, batch=2):
    g = torch.Generator().manual_seed(seed)
    probs = torch.softmax(2 * torch.randn(batch, labels, *shape, generator=g, dtype=F64), 1)
    image = torch.rand(batch, channels, *shape, generator=g, dtype=F64) * 60 + 100
    return probs, image


class TestDenseCrfLoss:
    def test_smoke(self):
        probs, image = _inputs(0)
        loss = dense_crf_loss(probs, image)
        assert loss.dim() == 0 and loss.dtype == F64 and float(loss) > 0

    @pytest.mark.parametrize("shape,channels", [((9,), 3), ((5, 6), 3), ((3, 4, 3), 1)])
    def test_cardinality(self, shape, channels):
        probs, image = _inputs(1, shape, channels=channels)
        assert dense_crf_loss(probs, image, reduction="none").shape == (2,)
        assert dense_crf_loss(probs, image, reduction="sum").shape == ()

    @pytest.mark.parametrize("exclude_self", [True, False])
    @pytest.mark.parametrize("shape,channels,spatial", [((6, 7), 3, 0.0), ((11,), 2, 0.5), ((3, 4, 3), 1, 2.0)])
    def test_reference(self, exclude_self, shape, channels, spatial):
        """The exact path equals the from-scratch value and gradient W (1 - S_k) - W^T S_k to 1e-10."""
        probs, image = _inputs(2, shape, channels=channels)
        probs.requires_grad_()
        kw = dict(theta_alpha=2.5, theta_beta=30.0, theta_gamma=1.5, bilateral_weight=1.3, spatial_weight=spatial)
        got = dense_crf_loss(probs, image, exclude_self=exclude_self, exact=True, reduction="none", **kw)
        want, _ = expected_fn(probs.detach(), image, 2.5, 30.0, 1.5, 1.3, spatial, exclude_self)
        torch.testing.assert_close(got, want, rtol=0, atol=1e-10)
        got.sum().backward()
        n = probs[0, 0].numel()
        for i in range(2):
            _, w = expected_fn(probs.detach()[i : i + 1], image[i : i + 1], 2.5, 30.0, 1.5, 1.3, spatial, exclude_self)
            s = probs.detach()[i].reshape(3, -1)
            grad = ((1 - s) @ w.t() - s @ w) / n  # rows: W (1 - S_k) - W^T S_k, W symmetric here
            torch.testing.assert_close(probs.grad[i].reshape(3, -1), grad, rtol=0, atol=1e-10)

    def test_self_term(self):
        """Keeping j = i adds exactly sum_i W_ii sum_k S_ik (1 - S_ik) (W_ii = bilateral_weight exactly)."""
        probs, image = _inputs(3)
        a = dense_crf_loss(
            probs, image, exact=True, exclude_self=False, normalize=False, bilateral_weight=2.0, reduction="none"
        )
        b = dense_crf_loss(probs, image, exact=True, normalize=False, bilateral_weight=2.0, reduction="none")
        torch.testing.assert_close(a - b, 2.0 * (probs * (1 - probs)).sum((1, 2, 3)), rtol=0, atol=1e-10)

    def test_lattice_gradient_is_adjoint(self):
        """On the lattice, autograd gives W (1 - S_k) - W^T S_k with W^T the reversed lattice, not W (1 - 2 S_k)."""
        probs, image = _inputs(4, (10, 12))
        probs.requires_grad_()
        dense_crf_loss(probs, image, theta_alpha=3.0, theta_beta=20.0, normalize=False, reduction="sum").backward()
        lat = PermutohedralLattice(bilateral_features(image, 3.0, 20.0))
        s = probs.detach().reshape(2, 3, -1).transpose(1, 2)
        selfw = lat.self_weights()[..., None]
        adjoint = (lat.filter(1 - s) - selfw * (1 - s)) - (lat.filter(s, reverse=True) - selfw * s)
        got = probs.grad.reshape(2, 3, -1).transpose(1, 2)
        torch.testing.assert_close(got, adjoint, rtol=0, atol=1e-12)
        symmetric = lat.filter(1 - 2 * s) - selfw * (1 - 2 * s)
        assert (got - symmetric).abs().max() > 1e-8  # the lattice is not exactly symmetric: the forms differ

    @pytest.mark.parametrize("shape,channels", [((24, 24), 3), ((30, 30), 1), ((400,), 3), ((8, 8, 8), 1)])
    def test_lattice_close(self, shape, channels):
        """The documented bound: lattice / exact in 0.5..0.9, gradients' cosine > 0.97."""
        g = torch.Generator().manual_seed(5)
        image = torch.rand(1, channels, *shape, generator=g, dtype=F64) * 40
        image[..., : shape[-1] // 2] += 100
        probs = torch.softmax(2 * torch.randn(1, 3, *shape, generator=g, dtype=F64), 1)
        grads = []
        values = []
        for exact in (True, False):
            p = probs.clone().requires_grad_()
            loss = dense_crf_loss(p, image, theta_alpha=5.0, theta_beta=20.0, exact=exact)
            loss.backward()
            values.append(float(loss.detach()))
            grads.append(p.grad.reshape(-1))
        assert 0.5 < values[1] / values[0] < 0.9
        assert torch.nn.functional.cosine_similarity(grads[0], grads[1], 0) > 0.97

    def test_gradcheck(self):
        probs, image = _inputs(6, (4, 5), labels=2, batch=1)
        logits = probs.log().requires_grad_()

        def fn(z):
            return dense_crf_loss(
                torch.softmax(z, 1),
                image,
                theta_alpha=2.0,
                theta_beta=30.0,
                theta_gamma=1.0,
                spatial_weight=0.5,
                exact=True,
            )

        assert torch.autograd.gradcheck(fn, (logits,))
        assert torch.autograd.gradcheck(lambda p: dense_crf_loss(p, image, exact=True), (probs.requires_grad_(),))

    def test_normalize_size_independent(self):
        """Stripes of a fixed period on a 16^2 and a 32^2 image: 4x the unnormalised loss, the same per point
        (up to the top and bottom borders, where pairs have fewer neighbours: 6% here)."""
        values = {}
        for size in (16, 32):
            probs = torch.zeros(1, 2, size, size, dtype=F64)
            probs[:, 0, :, ((torch.arange(size) + 2) // 4) % 2 == 0] = 1  # size / 4 boundaries
            probs[:, 1] = 1 - probs[:, 0]
            image = torch.full((1, 3, size, size), 128.0, dtype=F64)
            for normalize in (True, False):
                values[size, normalize] = float(
                    dense_crf_loss(probs, image, theta_alpha=1.5, normalize=normalize, exact=True)
                )
        assert abs(values[32, True] / values[16, True] - 1) < 0.1
        assert abs(values[32, False] / values[16, False] / 4 - 1) < 0.1

    def test_binary_map(self):
        probs, image = _inputs(7, labels=2)
        torch.testing.assert_close(
            dense_crf_loss(probs[:, 1:], image, exact=True), dense_crf_loss(probs, image, exact=True)
        )

    def test_exception(self):
        probs, image = _inputs(8)
        with pytest.raises(ValueError, match="probs must have shape"):
            dense_crf_loss(probs[0, 0], image)
        with pytest.raises(ValueError, match="image of shape .* does not match probs"):
            dense_crf_loss(probs, image[..., :-1])
        with pytest.raises(ValueError, match="probs must sum to 1"):
            dense_crf_loss(probs * 0.5, image)
        with pytest.raises(ValueError, match=r"probs must lie in \[0, 1\]"):
            dense_crf_loss(probs.log(), image)
        with pytest.raises(ValueError, match="probs contains NaN"):
            dense_crf_loss(probs * float("nan"), image)
        with pytest.raises(ValueError, match="image contains NaN"):
            dense_crf_loss(probs, image * float("nan"))
        with pytest.raises(TypeError, match="probs must be floating point"):
            dense_crf_loss(probs.argmax(1, keepdim=True), image)
        with pytest.raises(ValueError, match="theta_gamma is None"):
            dense_crf_loss(probs, image, spatial_weight=1.0)
        with pytest.raises(ValueError, match="theta_alpha must be positive"):
            dense_crf_loss(probs, image, theta_alpha=-1.0)
        with pytest.raises(ValueError, match="reduction must be one of"):
            dense_crf_loss(probs, image, reduction="avg")

"""CrfRnn's ablation parametrisations: ``kernel_weights`` (matrix, vector, scalar) and ``symmetric_compatibility``."""

import pytest
import torch

from crfrnn.crf.functional import mean_field
from crfrnn.crf.module import KERNEL_WEIGHTS, CrfRnn

F64 = torch.float64


def _data(seed=0, b=2, L=3, shape=(7, 8)):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(b, L, *shape, generator=g, dtype=F64), torch.rand(b, 3, *shape, generator=g, dtype=F64) * 255)


class TestKernelWeights:
    @pytest.mark.parametrize("kind", KERNEL_WEIGHTS)
    def test_initial_layer_equals_the_matrix_one(self, kind):
        """w I, w 1 and w give the same mean field: the same model, parametrised three ways."""
        unary, image = _data(1)
        ref = CrfRnn(3, num_iterations=3).double()(unary, image)
        layer = CrfRnn(3, num_iterations=3, kernel_weights=kind).double()
        shape = {"matrix": (3, 3), "vector": (3,), "scalar": ()}[kind]
        assert layer.spatial_weights.shape == shape and layer.bilateral_weights.shape == shape
        torch.testing.assert_close(layer(unary, image), ref, rtol=0, atol=1e-12)
        assert layer.kernel_weight_means() == pytest.approx({"spatial": 3.0, "bilateral": 5.0})

    def test_scalar_equals_functional_with_numbers(self):
        unary, image = _data(2)
        layer = CrfRnn(3, num_iterations=2, kernel_weights="scalar").double()
        with torch.no_grad():
            layer.spatial_weights.fill_(1.7)
            layer.bilateral_weights.fill_(4.2)
            layer.compatibility.add_(0.3 * torch.rand(3, 3, dtype=F64))
        expected = mean_field(
            unary,
            image,
            theta_alpha=160.0,
            theta_beta=3.0,
            theta_gamma=3.0,
            spatial_weight=1.7,
            bilateral_weight=4.2,
            compatibility=layer.compatibility.detach(),
            num_iterations=2,
        )
        torch.testing.assert_close(layer(unary, image), expected, rtol=0, atol=1e-12)

    @pytest.mark.parametrize("kind", ["vector", "scalar"])
    def test_gradcheck(self, kind):
        unary, image = _data(3, b=1, shape=(4, 5))
        layer = CrfRnn(3, num_iterations=2, kernel_weights=kind, theta_alpha=4.0, theta_beta=30.0).double()
        unary.requires_grad_(True)

        def f(u, ws, wb):
            layer.spatial_weights.data, layer.bilateral_weights.data = ws, wb
            return mean_field(
                u,
                image,
                theta_alpha=4.0,
                theta_beta=30.0,
                theta_gamma=3.0,
                spatial_weight=ws,
                bilateral_weight=wb,
                compatibility=layer.compatibility.detach(),
                num_iterations=2,
            )

        ws = layer.spatial_weights.detach().clone().requires_grad_(True)
        wb = layer.bilateral_weights.detach().clone().requires_grad_(True)
        assert torch.autograd.gradcheck(f, (unary, ws, wb), atol=1e-6)
        layer(unary, image).sum().backward()  # the module's own parameters get gradients of their shape
        assert layer.spatial_weights.grad.shape == layer.spatial_weights.shape

    def test_untied_and_state_dict(self):
        unary, image = _data(4)
        tied = CrfRnn(3, num_iterations=3, kernel_weights="scalar").double()
        ref = tied(unary, image)
        untied = CrfRnn(3, num_iterations=3, kernel_weights="scalar", num_untied=3).double()
        untied.load_state_dict(tied.state_dict())  # a tied scalar per kernel: one per set
        assert untied.spatial_weights.shape == (3,) and untied.compatibility.shape == (3, 3, 3)
        torch.testing.assert_close(untied(unary, image), ref, rtol=0, atol=1e-12)
        assert tied.untie().spatial_weights.shape == (3,)
        with pytest.raises(RuntimeError, match="size mismatch"):  # a scalar layer's weights do not fit a matrix one
            CrfRnn(3).double().load_state_dict(CrfRnn(3, kernel_weights="scalar").double().state_dict())
        assert "kernel_weights='scalar'" in repr(tied)

    def test_exception(self):
        with pytest.raises(ValueError, match="kernel_weights must be one of"):
            CrfRnn(3, kernel_weights="diagonal")
        with pytest.raises(TypeError, match="symmetric_compatibility must be True or False"):
            CrfRnn(3, symmetric_compatibility="yes")


class TestSymmetricCompatibility:
    def test_uses_the_symmetric_part(self):
        unary, image = _data(5)
        layer = CrfRnn(3, num_iterations=2, symmetric_compatibility=True).double()
        plain = CrfRnn(3, num_iterations=2).double()
        with torch.no_grad():
            skew = torch.tensor([[0.0, 0.4, -0.2], [-0.4, 0.0, 0.3], [0.2, -0.3, 0.0]], dtype=F64)
            layer.compatibility.add_(skew)  # an antisymmetric change: no effect on the symmetric part
            plain.compatibility.add_(skew)
        torch.testing.assert_close(
            layer(unary, image), CrfRnn(3, num_iterations=2).double()(unary, image), rtol=0, atol=1e-12
        )
        assert (plain(unary, image) - layer(unary, image)).abs().max() > 1e-3
        layer.train()
        layer(unary, image).square().sum().backward()
        g = layer.compatibility.grad
        torch.testing.assert_close(g, g.t(), rtol=0, atol=1e-12)  # the gradient is symmetric too
        assert "symmetric_compatibility=True" in repr(layer)

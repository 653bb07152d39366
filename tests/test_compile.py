"""torch.compile: the lattice as custom operators (crfrnn.lattice._custom_ops), so that CrfRnn's differentiable path
compiles into one graph, with the same values and gradients as eager mode and its input checks kept (on the device)."""

import logging

import pytest
import torch

from crfrnn import CrfRnn
from crfrnn.lattice import PermutohedralLattice
from crfrnn.lattice import _custom_ops as _ops

F64 = torch.float64


@pytest.fixture(autouse=True)
def _quiet_dynamo():
    logging.getLogger("torch._dynamo").setLevel(logging.ERROR)
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _lattice(seed=0, b=2, n=40, d=3):
    g = torch.Generator().manual_seed(seed)
    feats = torch.rand(b, n, d, generator=g, dtype=F64) * 4
    return feats, torch.randn(b, n, 5, generator=g, dtype=F64)


def _at_lattice_build(reason) -> bool:
    """Whether a graph break happened in the lattice build (the custom operator whose output shape depends on the
    data): its user stack passes through ``_custom_ops.build``; a torch without the stack names the operator.
    """
    frames = getattr(reason, "user_stack", None) or []
    if frames:
        return any(f.filename.endswith("_custom_ops.py") and f.name == "build" for f in frames)
    return "lattice_build" in str(reason.reason)


class TestOperators:
    @pytest.mark.parametrize("backend", ["torch", "numba"])
    @pytest.mark.parametrize("reverse", [False, True])
    def test_gather_filter_equals_the_lattice(self, backend, reverse):
        feats, values = _lattice()
        lat = PermutohedralLattice(feats, backend=backend)
        ref = lat.filter(values, reverse=reverse)
        offsets, weights, rank, neighbours = _ops.lattice_build(feats.reshape(-1, 3), 2)
        out = _ops.gather_filter(values.reshape(-1, 5), offsets, weights, neighbours, lat.alpha, reverse)
        torch.testing.assert_close(out.view_as(ref), ref, rtol=0, atol=1e-12)
        torch.testing.assert_close(
            _ops.lattice_self_weights(offsets, weights, rank, neighbours, lat.alpha).view(2, -1),
            lat.self_weights(),
            rtol=0,
            atol=1e-12,
        )

    def test_filter_gradient_is_the_adjoint(self):
        feats, values = _lattice(1, b=1, n=12, d=2)
        offsets, weights, _, neighbours = _ops.lattice_build(feats.reshape(-1, 2), 1)
        x = values.reshape(-1, 5).requires_grad_(True)
        assert torch.autograd.gradcheck(
            lambda v: _ops.lattice_filter(v, offsets, weights, neighbours, 0.8, False), (x,)
        )
        assert torch.autograd.gradgradcheck(
            lambda v: _ops.lattice_filter(v, offsets, weights, neighbours, 0.8, True), (x,)
        )

    def test_opcheck(self):
        feats, values = _lattice(2, b=1, n=16, d=2)
        offsets, weights, rank, neighbours = _ops.lattice_build(feats.reshape(-1, 2), 1)
        torch.library.opcheck(
            _ops.lattice_filter, (values.reshape(-1, 5).requires_grad_(True), offsets, weights, neighbours, 0.8, False)
        )
        torch.library.opcheck(_ops.lattice_self_weights, (offsets, weights, rank, neighbours, 0.8))


def _inputs(seed=0, b=2, shape=(12, 10)):
    g = torch.Generator().manual_seed(seed)
    return (
        torch.randn(b, 3, *shape, generator=g, dtype=F64).requires_grad_(True),
        torch.rand(b, 3, *shape, generator=g, dtype=F64) * 255,
    )


class TestCompile:
    def test_no_graph_break(self):
        crf = CrfRnn(3, num_iterations=2).train()
        unary, image = _inputs()
        with torch._dynamo.config.patch(capture_dynamic_output_shape_ops=True):
            explained = torch._dynamo.explain(crf)(unary.float(), image.float())
        assert explained.graph_break_count == 0 and explained.graph_count == 1
        torch._dynamo.reset()
        without = torch._dynamo.explain(crf)(unary.float(), image.float())  # breaks only at the lattice builds
        assert 0 < without.graph_break_count <= 12
        # where it breaks, not the wording of the reason (which changes between torch releases)
        assert all(_at_lattice_build(b) for b in without.break_reasons)

    @pytest.mark.parametrize("normalization,exclude_self", [("row", False), ("symmetric", True)])
    def test_values_and_gradients_equal_eager(self, normalization, exclude_self):
        crf = CrfRnn(3, num_iterations=3, normalization=normalization, exclude_self=exclude_self).double().train()
        with torch.no_grad():
            crf.compatibility.add_(0.1 * torch.randn(3, 3, dtype=F64))
        unary, image = _inputs(1)
        ref = crf(unary, image)
        grads_ref = torch.autograd.grad((ref**2).sum(), (unary, crf.compatibility, crf.bilateral_weights))
        with torch._dynamo.config.patch(capture_dynamic_output_shape_ops=True):
            compiled = torch.compile(crf, backend="aot_eager", fullgraph=True)
            out = compiled(unary, image)
            grads = torch.autograd.grad((out**2).sum(), (unary, crf.compatibility, crf.bilateral_weights))
            other, other_image = _inputs(2, b=1, shape=(9, 14))  # another size: traced again, still right
            torch.testing.assert_close(compiled(other, other_image), crf(other, other_image), rtol=0, atol=1e-10)
        torch.testing.assert_close(out, ref, rtol=0, atol=1e-10)
        for g, r in zip(grads, grads_ref):
            torch.testing.assert_close(g, r, rtol=0, atol=1e-9)

    def test_learned_widths_compile_whole(self):
        """Learned widths: one graph, and the widths' gradients (the moment-channel filterings) equal eager mode's."""
        crf = CrfRnn(3, num_iterations=2, learn_widths=True).double().train()
        unary, image = _inputs(5)
        with torch._dynamo.config.patch(capture_dynamic_output_shape_ops=True):
            explained = torch._dynamo.explain(crf)(unary, image)
        assert explained.graph_break_count == 0 and explained.graph_count == 1
        torch._dynamo.reset()
        params = [p for n, p in crf.named_parameters() if n.startswith("log_theta")]
        assert len(params) == 3
        ref = crf(unary, image)
        grads_ref = torch.autograd.grad((ref**2).sum(), (unary, *params))
        with torch._dynamo.config.patch(capture_dynamic_output_shape_ops=True):
            out = torch.compile(crf, backend="aot_eager", fullgraph=True)(unary, image)
            grads = torch.autograd.grad((out**2).sum(), (unary, *params))
        torch.testing.assert_close(out, ref, rtol=0, atol=1e-10)
        for g, r in zip(grads, grads_ref):
            assert r.abs().max() > 0
            torch.testing.assert_close(g, r, rtol=1e-9, atol=1e-9)

    def test_traced_widths_are_still_checked(self):
        from crfrnn._utils.validation import check_widths

        def f(w):
            return torch.stack(check_widths("theta_alpha", w, 2, "spatial axis")) * 2

        compiled = torch.compile(f, backend="aot_eager", fullgraph=True)
        torch.testing.assert_close(compiled(torch.tensor([3.0, 4.0])), torch.tensor([6.0, 8.0]))
        torch.testing.assert_close(compiled(torch.tensor([5.0])), torch.tensor([10.0, 10.0]))
        with pytest.raises(RuntimeError, match="theta_alpha must be positive finite"):
            compiled(torch.tensor([3.0, -1.0]))

    def test_eval_mode_compiles_the_torch_path(self):
        crf = CrfRnn(3, num_iterations=2, num_eval_iterations=4).eval()
        unary, image = _inputs(3)
        unary = unary.detach().float()
        with torch.no_grad(), torch._dynamo.config.patch(capture_dynamic_output_shape_ops=True):
            out = torch.compile(crf, backend="aot_eager", fullgraph=True)(unary, image.float())
            ref = crf(unary, image.float())  # eager: the compiled fused kernels
        torch.testing.assert_close(out, ref, rtol=0, atol=2e-5)

    def test_bad_input_is_still_refused(self):
        crf = CrfRnn(3, num_iterations=2).train()
        unary, image = _inputs(4)
        unary = unary.detach().float().clone()
        unary[0, 1, 2, 3] = float("nan")
        with torch._dynamo.config.patch(capture_dynamic_output_shape_ops=True):
            compiled = torch.compile(crf, backend="aot_eager", fullgraph=True)
            with pytest.raises(RuntimeError, match="unary contains NaN"):
                compiled(unary, image.float())

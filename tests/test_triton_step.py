"""The fused mean-field step of the Triton backend (crfrnn.crf._step, crfrnn._kernels.triton_meanfield) against the
torch path: values, gradients (learned widths included), the fallback and the operator's checks.

Under triton's interpreter on the CPU (``TRITON_INTERPRET=1``, set before triton is imported), so every input is tiny;
``CRFRNN_TEST_DEVICE=cuda`` runs the compiled kernel on a GPU.
"""

from __future__ import annotations

import os

from tests.conftest import DEVICE

if DEVICE.type != "cuda":
    os.environ["TRITON_INTERPRET"] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402

pytest.importorskip("triton", reason="the 'triton' backend needs the triton package")

from crfrnn import CrfRnn, mean_field  # noqa: E402
from crfrnn._kernels import triton_meanfield  # noqa: E402
from crfrnn.crf import _step  # noqa: E402

F64 = torch.float64
TOL = {torch.float64: 1e-10, torch.float32: 1e-5}


def _inputs(dtype=F64, b=2, labels=3, shape=(6, 5), seed=0):
    g = torch.Generator().manual_seed(seed)
    unary = torch.randn(b, labels, *shape, generator=g, dtype=F64).to(dtype).to(DEVICE)
    image = (torch.rand(b, 3, *shape, generator=g, dtype=F64) * 255).to(dtype).to(DEVICE)
    return unary, image


@pytest.fixture
def launches(monkeypatch):
    """How many times the Triton step kernel ran."""
    count = [0]
    real = triton_meanfield.message_step

    def counted(*args):
        count[0] += 1
        return real(*args)

    monkeypatch.setattr(triton_meanfield, "message_step", counted)
    return count


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize(
    "kw",
    [
        {},
        {"normalization": "symmetric", "exclude_self": True},
        {"normalization": "column", "exclude_self": True, "spatial_weight": torch.tensor([1.0, 2.0, 0.5])},
        {"compatibility": torch.tensor([[0.0, 1.0, 2.0], [1.5, 0.0, 0.3], [0.2, 0.7, 0.0]]), "bilateral_weight": 2.0},
        {"spatial_weight": [1.0, 2.5], "bilateral_weight": [3.0, 0.5]},  # untied iterations
    ],
)
def test_forward_equals_torch(dtype, kw, launches):
    kw = {k: v.to(dtype).to(DEVICE) if isinstance(v, torch.Tensor) else v for k, v in kw.items()}
    unary, image = _inputs(dtype)
    want = mean_field(unary, image, num_iterations=2, backend="torch", **kw)
    got = mean_field(unary.requires_grad_(True), image, num_iterations=2, backend="triton", **kw)
    assert launches[0] == 2
    torch.testing.assert_close(got, want, rtol=TOL[dtype], atol=TOL[dtype])


def test_gradcheck_every_input():
    """The operator's backward (torch ops on the saved inputs) against finite differences, every input."""
    g = torch.Generator().manual_seed(3)
    k, p, labels = 2, 7, 3

    def r(*shape, scale=1.0):
        return (torch.rand(*shape, generator=g, dtype=F64) * scale + 0.1).to(DEVICE).requires_grad_(True)

    messages = [r(p, labels), r(p, labels)]
    q = torch.softmax(torch.randn(p, labels, generator=g, dtype=F64), -1).to(DEVICE).requires_grad_(True)
    unary = torch.randn(p, labels, generator=g, dtype=F64).to(DEVICE).requires_grad_(True)
    pre, post, selfw = r(k, p), r(k, p), r(k, p)
    mix = torch.randn(k, labels, labels, generator=g, dtype=F64).to(DEVICE).requires_grad_(True)

    def f(m0, m1, q, unary, pre, post, selfw, mix):
        logits, out = _step.message_step([m0, m1], q, unary, pre, post, selfw, mix, False)
        return logits, out

    assert torch.autograd.gradcheck(f, (*messages, q, unary, pre, post, selfw, mix))


@pytest.mark.parametrize("kw", [{}, {"normalization": "symmetric", "exclude_self": True}])
def test_crfrnn_gradients_equal_torch(kw, launches):
    unary, image = _inputs(F64, b=2)
    grads = {}
    for backend in ("torch", "triton"):
        crf = CrfRnn(3, num_iterations=2, backend=backend, **kw).double().train()
        with torch.no_grad():
            crf.compatibility.add_(0.1 * torch.randn(3, 3, generator=torch.Generator().manual_seed(1), dtype=F64))
        x = unary.clone().requires_grad_(True)
        out = crf.to(DEVICE)(x, image)
        params = [x, *crf.parameters()]
        grads[backend] = (out, torch.autograd.grad((out**2).sum(), params, allow_unused=True))
    assert launches[0] == 2
    torch.testing.assert_close(grads["triton"][0], grads["torch"][0], rtol=0, atol=1e-10)
    for a, b in zip(grads["triton"][1], grads["torch"][1]):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10)


def test_learned_widths_and_memory_efficient(launches):
    unary, image = _inputs(F64, b=1, shape=(5, 4))
    results = []
    for backend, efficient in (("torch", False), ("triton", False), ("triton", True)):
        crf = CrfRnn(3, num_iterations=2, backend=backend, learn_widths=True, memory_efficient=efficient).double()
        out = crf.to(DEVICE)(unary, image)
        widths = [p for n, p in crf.named_parameters() if n.startswith("log_theta")]
        results.append((out, torch.autograd.grad(out.square().sum(), widths)))
    assert launches[0] >= 4
    scale = max(float(g.abs()) for g in results[0][1])  # a width whose gradient is ~0 is compared to the others'
    assert scale > 1e-6
    for out, grads in results[1:]:
        torch.testing.assert_close(out, results[0][0], rtol=0, atol=1e-10)
        for a, b in zip(grads, results[0][1]):
            torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-8 * scale)


def test_guarded_failure_falls_back(monkeypatch):
    monkeypatch.setattr(_step, "_FAILED", [])

    def broken(*args):
        raise RuntimeError("ptxas failed")

    monkeypatch.setattr(triton_meanfield, "message_step", broken)
    p, labels = 4, 2
    args = (
        [torch.rand(p, labels, dtype=F64, device=DEVICE)],
        torch.full((p, labels), 0.5, dtype=F64, device=DEVICE),
        torch.randn(p, labels, dtype=F64, device=DEVICE),
        torch.ones(1, p, dtype=F64, device=DEVICE),
        torch.ones(1, p, dtype=F64, device=DEVICE),
        torch.zeros(1, p, dtype=F64, device=DEVICE),
        torch.eye(labels, dtype=F64, device=DEVICE)[None],
    )
    with pytest.raises(RuntimeError, match="ptxas failed"):
        _step.message_step(*args, False)
    with pytest.warns(RuntimeWarning, match="ptxas failed"):
        logits, q = _step.message_step(*args, True)
    want = _step.torch_step(*args)
    torch.testing.assert_close(logits, want[0])
    torch.testing.assert_close(q, want[1])


def test_opcheck_and_too_many_labels():
    g = torch.Generator().manual_seed(4)
    p, labels = 5, 3
    args = (
        [torch.rand(p, labels, generator=g, dtype=F64).to(DEVICE).requires_grad_(True)],
        torch.softmax(torch.randn(p, labels, generator=g, dtype=F64), -1).to(DEVICE),
        torch.randn(p, labels, generator=g, dtype=F64).to(DEVICE).requires_grad_(True),
        torch.rand(1, p, generator=g, dtype=F64).to(DEVICE),
        torch.rand(1, p, generator=g, dtype=F64).to(DEVICE),
        torch.rand(1, p, generator=g, dtype=F64).to(DEVICE),
        torch.randn(1, labels, labels, generator=g, dtype=F64).to(DEVICE).requires_grad_(True),
        False,
    )
    torch.library.opcheck(_step.message_step, args)
    big = torch.zeros(1, 2, triton_meanfield.MAX_LABELS + 1, dtype=F64, device=DEVICE)
    with pytest.raises(ValueError, match="at most 64 labels"):
        triton_meanfield.message_step(big, big[0], big[0], big[:, :, 0], big[:, :, 0], big[:, :, 0], big)


@pytest.mark.parametrize("learn_widths", [False, True])
def test_compiles_whole_with_the_triton_kernels(learn_widths, launches, monkeypatch):
    """torch.compile(fullgraph=True) over backend "triton": one graph, the Triton filter and step as custom operators
    (their kernels run), values and gradients equal to eager mode's."""
    import logging

    from crfrnn._kernels import triton_lattice

    logging.getLogger("torch._dynamo").setLevel(logging.ERROR)
    filters = [0]
    real = triton_lattice.lattice_filter

    def counted(*args):
        filters[0] += 1
        return real(*args)

    monkeypatch.setattr(triton_lattice, "lattice_filter", counted)
    crf = CrfRnn(3, num_iterations=2, backend="triton", learn_widths=learn_widths).double().train().to(DEVICE)
    unary, image = _inputs(F64, b=2)
    unary.requires_grad_(True)
    params = [unary, *(p for p in crf.parameters() if p.requires_grad)]
    torch._dynamo.reset()
    try:
        with torch._dynamo.config.patch(capture_dynamic_output_shape_ops=True):
            explained = torch._dynamo.explain(crf)(unary, image)
            assert explained.graph_break_count == 0 and explained.graph_count == 1
            torch._dynamo.reset()
            ref = crf(unary, image)
            grads_ref = torch.autograd.grad(ref.square().sum(), params, allow_unused=True)
            launches[0] = filters[0] = 0
            out = torch.compile(crf, backend="aot_eager", fullgraph=True)(unary, image)
            grads = torch.autograd.grad(out.square().sum(), params, allow_unused=True)
    finally:
        torch._dynamo.reset()
    assert launches[0] == 2 and filters[0] > 0  # the compiled graph ran the Triton kernels
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-10)
    # a width whose gradient is ~0 (cancelling sums; the compiled graph's lattice is numbered by another build) is
    # compared at the scale of the largest gradient
    scale = max(float(b.abs().max()) for b in grads_ref if b is not None)
    for a, b in zip(grads, grads_ref):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(a, b, rtol=1e-7, atol=1e-9 * scale)

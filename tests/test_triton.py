"""The Triton lattice backend against the PyTorch reference: the filter, its adjoint, its gradient, the CRF.

On the CPU the kernels run under triton's interpreter (``TRITON_INTERPRET=1``, set here before triton is imported;
the library reads it at every call), so every input is tiny. With ``CRFRNN_TEST_DEVICE=cuda`` the variable is left
alone and the compiled kernels run on the GPU.
"""

from __future__ import annotations

import os

from tests.conftest import DEVICE, photo

if DEVICE.type != "cuda":
    os.environ["TRITON_INTERPRET"] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402

pytest.importorskip("triton", reason="the 'triton' backend needs the triton package")

from crfrnn import PermutohedralLattice, dense_crf, gaussian_filter, lattice_filter, mean_field  # noqa: E402
from crfrnn.lattice import _triton  # noqa: E402
from crfrnn.lattice._backends import eager_operator, resolve_backend  # noqa: E402
from crfrnn.lattice._reference import ReferenceOperator  # noqa: E402

TOL = {torch.float64: 1e-12, torch.float32: 1e-5}


def features(b: int, n: int, d: int, dtype: torch.dtype, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(b, n, d, generator=g, dtype=torch.float64) * 4).to(dtype).to(DEVICE)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize(("n", "d", "c"), [(50, 2, 1), (300, 2, 3), (120, 5, 3), (80, 5, 1)])
def test_filter_matches_torch(n, d, c, dtype):
    f = features(2, n, d, dtype)
    values = torch.randn(2, n, c, generator=torch.Generator().manual_seed(1), dtype=torch.float64).to(dtype)
    values = values.to(DEVICE)
    ref = PermutohedralLattice(f, backend="torch")
    lat = PermutohedralLattice(f, backend="triton")
    assert lat.backend == "triton" and lat.num_vertices == ref.num_vertices
    for reverse in (False, True):
        want = ref.filter(values, reverse=reverse)
        got = lat.filter(values, reverse=reverse)
        assert got.dtype == dtype and got.shape == (2, n, c)
        torch.testing.assert_close(got, want, rtol=TOL[dtype], atol=TOL[dtype])
    torch.testing.assert_close(lat.self_weights(), ref.self_weights())


def test_gradcheck():
    f = features(1, 8, 2, torch.float64)
    values = torch.randn(1, 8, 1, dtype=torch.float64, device=DEVICE, requires_grad=True)
    assert torch.autograd.gradcheck(lambda v: lattice_filter(v, f, backend="triton"), (values,))


def test_gaussian_filter_and_crf_match_torch():
    f = features(2, 60, 3, torch.float64)
    values = torch.randn(2, 60, 2, dtype=torch.float64, device=DEVICE)
    torch.testing.assert_close(
        gaussian_filter(values, f, False, backend="triton"), gaussian_filter(values, f, False, backend="torch")
    )
    image = photo(size=(8, 10)).to(DEVICE)
    unary = torch.randn(1, 3, 8, 10, generator=torch.Generator().manual_seed(2), dtype=torch.float64).to(DEVICE)
    kw = {"num_iterations": 2}
    torch.testing.assert_close(
        mean_field(unary, image, **kw, backend="triton"), mean_field(unary, image, **kw, backend="torch")
    )
    probs = unary.softmax(1)
    torch.testing.assert_close(
        dense_crf(image, probs, **kw, backend="triton"), dense_crf(image, probs, **kw, backend="torch")
    )


def test_backend_errors(monkeypatch):
    assert resolve_backend("auto", torch.device("cpu")) == "numba"  # the CPU is unchanged
    assert resolve_backend("triton", DEVICE) == "triton"
    if DEVICE.type == "cpu":
        monkeypatch.setenv("TRITON_INTERPRET", "0")  # read at call time
        with pytest.raises(ValueError, match="TRITON_INTERPRET=1"):
            PermutohedralLattice(torch.rand(1, 5, 2), backend="triton")
    monkeypatch.setattr("crfrnn._kernels.triton_lattice.available", lambda: False)
    with pytest.raises(RuntimeError, match="needs the triton package"):
        resolve_backend("triton", DEVICE)


def test_auto_chooses_triton_on_cuda_only(monkeypatch):
    cuda = torch.device("cuda")  # resolving needs no GPU
    monkeypatch.setattr(_triton, "_FAILURE", [])
    assert resolve_backend("auto", torch.device("cpu")) == "numba"
    assert resolve_backend("auto", cuda) == "triton" and eager_operator("auto", cuda) is _triton.AutoTritonOperator
    assert (
        eager_operator("torch", cuda) is ReferenceOperator and eager_operator("triton", cuda) is _triton.TritonOperator
    )
    monkeypatch.setenv("CRFRNN_AUTO_TRITON", "0")  # read at every call
    assert resolve_backend("auto", cuda) == "torch"
    monkeypatch.delenv("CRFRNN_AUTO_TRITON")
    monkeypatch.setattr("crfrnn._kernels.triton_lattice.available", lambda: False)
    assert resolve_backend("auto", cuda) == "torch"


def test_auto_falls_back_to_torch_once_triton_fails(monkeypatch):
    monkeypatch.setattr(_triton, "_FAILURE", [])
    f = features(1, 40, 3, torch.float64).view(40, 3)
    values = torch.randn(40, 2, dtype=torch.float64, device=DEVICE)
    want = ReferenceOperator.build(f, 1, 0.5).apply(values, False)
    lattice = _triton.AutoTritonOperator.build(f, 1, 0.5)  # triton works: its own build
    assert isinstance(lattice, _triton.AutoTritonOperator)

    def broken(*args, **kwargs):
        raise RuntimeError("ptxas failed")  # as a kernel that does not compile

    monkeypatch.setattr("crfrnn._kernels.triton_lattice.lattice_filter", broken)
    with pytest.warns(RuntimeWarning, match="ptxas failed"):
        got = lattice.apply(values, False)  # this lattice's filter falls back at once
    torch.testing.assert_close(got, want)
    assert "ptxas failed" in str(_triton.triton_failed())
    assert resolve_backend("auto", torch.device("cuda")) == "torch"  # and "auto" stops choosing triton
    assert isinstance(_triton.AutoTritonOperator.build(f, 1, 0.5), ReferenceOperator)
    monkeypatch.setattr(_triton, "_FAILURE", [])
    monkeypatch.setattr("crfrnn._kernels.triton_build.build_lattice", broken)
    with pytest.warns(RuntimeWarning, match="ptxas failed"):
        built = _triton.AutoTritonOperator.build(f, 1, 0.5)
    assert isinstance(built, ReferenceOperator)
    torch.testing.assert_close(built.apply(values, False), want)

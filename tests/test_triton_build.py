"""The Triton lattice build (:mod:`crfrnn._kernels.triton_build`) against the reference build.

The same vertex set (count, and every point's corners and every vertex's neighbours up to a renumbering), the same
barycentric weights and ranks bit for bit. On the CPU the kernels run under triton's interpreter
(``TRITON_INTERPRET=1``, set here before triton is imported), so every input is tiny.
"""

from __future__ import annotations

import os

from tests.conftest import DEVICE

if DEVICE.type != "cuda":
    os.environ["TRITON_INTERPRET"] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402

pytest.importorskip("triton", reason="the Triton build needs the triton package")

from crfrnn import PermutohedralLattice  # noqa: E402
from crfrnn._kernels.triton_build import build_lattice, self_weights  # noqa: E402
from crfrnn.lattice._construction import blur_paths  # noqa: E402
from crfrnn.lattice._construction import build_lattice as reference_build  # noqa: E402
from crfrnn.lattice._reference import walk_self_weights  # noqa: E402


def same_lattice(features: torch.Tensor, batch_size: int) -> int:
    """Assert that both builds give the same lattice up to the vertices' numbering; return the vertex count."""
    offsets, weights, rank, neighbours, m = build_lattice(features, batch_size)
    ref_offsets, ref_weights, ref_rank, ref_neighbours, ref_m = reference_build(features, batch_size)
    assert m == ref_m
    assert weights.dtype == features.dtype and torch.equal(weights, ref_weights)
    assert torch.equal(rank, ref_rank)
    assert offsets.shape == ref_offsets.shape and neighbours.shape == ref_neighbours.shape
    # the renumbering: one reference vertex for every vertex, the same for every corner that names it
    to_ref = torch.full((m + 1,), -1, dtype=torch.int64, device=features.device)
    to_ref[offsets.reshape(-1)] = ref_offsets.reshape(-1)
    to_ref[m] = ref_m  # "absent" stays absent
    assert torch.equal(to_ref[offsets], ref_offsets)
    assert bool((to_ref[:m] >= 0).all()) and to_ref[:m].unique().numel() == m
    assert torch.equal(to_ref[neighbours], ref_neighbours[:, :, to_ref[:m]])
    return m


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize(("b", "n", "d"), [(1, 60, 1), (2, 150, 2), (1, 100, 3), (3, 40, 4), (2, 120, 5), (1, 80, 6)])
def test_build_matches_reference(b, n, d, dtype):
    g = torch.Generator().manual_seed(10 * d + b)
    features = (torch.rand(b * n, d, generator=g, dtype=torch.float64) * 5 - 2).to(dtype).to(DEVICE)
    same_lattice(features, b)


def test_ties_and_duplicates():
    # grid points land exactly on rounding ties and on equal residuals (the tie-breaking of the ranks)
    grid = torch.stack(torch.meshgrid(torch.arange(8.0), torch.arange(6.0), indexing="ij"), -1).reshape(-1, 2)
    features = torch.cat([grid / 2, grid / 2 + 0.25, grid * 1.5], 1).to(DEVICE)
    same_lattice(features, 2)
    # identical points in one block race for the same empty slots: one vertex per corner, not one per point
    same = torch.full((200, 3), 0.3, dtype=torch.float64, device=DEVICE)
    assert same_lattice(same, 1) == 4


def test_filter_through_the_built_lattice():  # the gradient: tests/test_triton.py::test_gradcheck
    g = torch.Generator().manual_seed(3)
    features = (torch.rand(2, 70, 5, generator=g, dtype=torch.float64) * 4).to(DEVICE)
    values = torch.randn(2, 70, 2, generator=g, dtype=torch.float64).to(DEVICE)
    lattice = PermutohedralLattice(features, backend="triton")
    reference = PermutohedralLattice(features, backend="torch")
    assert lattice.num_vertices == reference.num_vertices
    for reverse in (False, True):
        torch.testing.assert_close(lattice.filter(values, reverse=reverse), reference.filter(values, reverse=reverse))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize(("b", "n", "d"), [(1, 50, 1), (2, 60, 3), (1, 40, 6)])
def test_self_weights_match_the_walk(b, n, d, dtype):
    g = torch.Generator().manual_seed(d)
    features = (torch.rand(b * n, d, generator=g, dtype=torch.float64) * 3).to(dtype).to(DEVICE)
    offsets, weights, rank, neighbours, _ = build_lattice(features, b)
    steps, path_weights = blur_paths(d, features.device)
    got = self_weights(offsets, weights, rank, neighbours, steps, path_weights, 0.9)
    want = walk_self_weights(offsets, weights, rank, neighbours, 0.9)
    assert got.dtype == dtype
    tol = 1e-12 if dtype == torch.float64 else 1e-6
    torch.testing.assert_close(got, want, rtol=tol, atol=tol)

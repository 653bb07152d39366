"""The permutohedral lattice as ``torch.library`` custom operators, so that ``torch.compile`` sees no graph break.

Under ``torch.compile`` the lattice's construction (data-dependent vertex count, hashing) and its filter (sparse
products, or compiled CPU kernels) cannot be traced. :class:`crfrnn.lattice.PermutohedralLattice` then goes
through these opaque operators instead (:class:`CompiledOperator`, backend ``"ops"``), which the compiler treats as
single nodes with known output shapes:

- ``crfrnn::lattice_build(features (P, D), batch_size) -> offsets (P, D+1) int64, weights (P, D+1), rank
  (P, D+1) int64, neighbours (D+1, 2, M) int64``: the lattice, with ``M`` vertices (a size known only when it
  runs: an unbacked symbolic size for the compiler);
- ``crfrnn::lattice_filter(values (P, C), offsets, weights, neighbours, alpha, reverse) -> (P, C)``: splat,
  blur (directions in reverse order for the adjoint), slice, written with gathers and one ``index_add`` so that
  it runs on any device; its gradient is the same operator with ``reverse`` flipped (so double backward works);
- ``crfrnn::lattice_self_weights(offsets, weights, rank, neighbours, alpha) -> (P,)``: each point's own weight
  (see :meth:`PermutohedralLattice.self_weights`);
- ``crfrnn::triton_filter(values, offsets, weights, neighbours, alpha, reverse) -> (P, C)``: the same filter with
  the Triton kernels (:mod:`crfrnn._kernels.triton_lattice`), for backend ``"triton"``
  (:class:`CompiledTritonOperator`); its gradient is the same operator with ``reverse`` flipped.

Without the compiler nothing here runs: eager code keeps its faster paths (CSR products, compiled kernels), and
the operators' own bodies run the eager lattice chosen for ``"auto"`` on the data's device.
"""

from __future__ import annotations

import torch
from torch import Tensor

from crfrnn._kernels import triton_lattice
from crfrnn.lattice._backends import eager_operator
from crfrnn.lattice._construction import check_features
from crfrnn.lattice._operators import LatticeOperator

__all__ = [
    "CompiledOperator",
    "CompiledTritonOperator",
    "gather_filter",
    "lattice_build",
    "lattice_filter",
    "lattice_self_weights",
    "triton_filter",
]


def gather_filter(
    values: Tensor, offsets: Tensor, weights: Tensor, neighbours: Tensor, alpha: float, reverse: bool
) -> Tensor:
    """``K values`` (``K^T`` with ``reverse``) of one lattice with plain tensor ops (any device).

    Args:
        values: ``(P, C)``.
        offsets: ``(P, D+1)`` int64, the vertex of each point's simplex corner.
        weights: ``(P, D+1)`` barycentric weights.
        neighbours: ``(D+1, 2, M)`` int64, each vertex's two neighbours along every direction (``M``: absent).
        alpha: the slice's scale.
        reverse: blur the directions in reverse order (the adjoint).
    """
    p, c = values.shape
    d1 = offsets.shape[1]
    m = neighbours.shape[-1]
    w = weights.to(values.dtype)
    grid = values.new_zeros((m + 1, c))  # row m: the absent vertex, always zero
    grid = grid.index_add(0, offsets.reshape(-1), (w.unsqueeze(-1) * values.unsqueeze(1)).reshape(-1, c))
    sentinel = neighbours.new_full((d1, 2, 1), m)
    nb = torch.cat([neighbours, sentinel], 2)  # the absent vertex's neighbours are absent: its row stays 0
    for j in range(d1 - 1, -1, -1) if reverse else range(d1):
        grid = grid + 0.5 * (grid[nb[j, 0]] + grid[nb[j, 1]])
    return alpha * (w.unsqueeze(-1) * grid[offsets]).sum(1)


@torch.library.custom_op("crfrnn::lattice_build", mutates_args=())
def lattice_build(features: Tensor, batch_size: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The lattice of ``(P, D)`` features (``P = batch_size * N``, images contiguous); see the module docstring."""
    check_features(features.reshape(batch_size, -1, features.shape[1]))
    alpha = 1.0 / (1.0 + 2.0 ** (-features.shape[1]))
    lattice = eager_operator("auto", features.device).build(features.detach(), batch_size, alpha)
    return (
        lattice.offsets.to(torch.int64),
        lattice.weights.to(features.dtype).clone(),
        lattice.rank.to(torch.int64),
        lattice.neighbours.to(torch.int64),
    )


@lattice_build.register_fake
def _(features: Tensor, batch_size: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    p, d = features.shape
    m = torch.library.get_ctx().new_dynamic_size(min=1)  # the vertex count: known when it runs
    return (
        features.new_empty((p, d + 1), dtype=torch.int64),
        features.new_empty((p, d + 1)),
        features.new_empty((p, d + 1), dtype=torch.int64),
        features.new_empty((d + 1, 2, m), dtype=torch.int64),
    )


@torch.library.custom_op("crfrnn::lattice_filter", mutates_args=())
def lattice_filter(
    values: Tensor, offsets: Tensor, weights: Tensor, neighbours: Tensor, alpha: float, reverse: bool
) -> Tensor:
    """:func:`gather_filter` as one operator."""
    return gather_filter(values, offsets, weights, neighbours, alpha, reverse)


@lattice_filter.register_fake
def _(values: Tensor, offsets: Tensor, weights: Tensor, neighbours: Tensor, alpha: float, reverse: bool) -> Tensor:
    return torch.empty_like(values)


def _filter_setup(ctx, inputs, output) -> None:
    _, offsets, weights, neighbours, alpha, reverse = inputs
    ctx.save_for_backward(offsets, weights, neighbours)
    ctx.alpha, ctx.reverse = alpha, reverse


def _filter_backward(ctx, grad: Tensor):
    offsets, weights, neighbours = ctx.saved_tensors  # K is linear: its adjoint is K^T on the same lattice
    return lattice_filter(grad.contiguous(), offsets, weights, neighbours, ctx.alpha, not ctx.reverse), *[None] * 5


torch.library.register_autograd("crfrnn::lattice_filter", _filter_backward, setup_context=_filter_setup)


@torch.library.custom_op("crfrnn::lattice_self_weights", mutates_args=())
def lattice_self_weights(offsets: Tensor, weights: Tensor, rank: Tensor, neighbours: Tensor, alpha: float) -> Tensor:
    """``(P,)`` the lattice operator's diagonal (see :meth:`crfrnn.lattice.PermutohedralLattice.self_weights`):
    compiled on the CPU where numba is installed (the same sums), the PyTorch walk elsewhere.
    """
    lattice = eager_operator("auto", offsets.device)(offsets, weights, rank, neighbours, neighbours.shape[-1], alpha)
    return lattice.self_weights()


@lattice_self_weights.register_fake
def _(offsets: Tensor, weights: Tensor, rank: Tensor, neighbours: Tensor, alpha: float) -> Tensor:
    return weights.new_empty((offsets.shape[0],))


class CompiledOperator(LatticeOperator):
    """The lattice under torch.compile: built by ``crfrnn::lattice_build``, filtered with plain tensor ops
    (:func:`gather_filter`; ``crfrnn::lattice_filter`` where autograd differentiates it), self weights by
    ``crfrnn::lattice_self_weights``. ``num_vertices`` is a symbolic size.
    """

    name = "ops"

    @classmethod
    def build(cls, features: Tensor, batch_size: int, alpha: float) -> CompiledOperator:
        offsets, weights, rank, neighbours = lattice_build(features, batch_size)
        return cls(offsets, weights, rank, neighbours, neighbours.shape[-1], alpha)

    def apply(self, values: Tensor, reverse: bool) -> Tensor:
        return gather_filter(values, self.offsets, self.weights, self.neighbours, self.alpha, reverse)

    def filter(self, values: Tensor, reverse: bool) -> Tensor:
        # differentiable through the operator's own autograd formula
        return lattice_filter(values.contiguous(), self.offsets, self.weights, self.neighbours, self.alpha, reverse)

    def self_weights(self) -> Tensor:
        return lattice_self_weights(self.offsets, self.weights, self.rank, self.neighbours, self.alpha)


@torch.library.custom_op("crfrnn::triton_filter", mutates_args=())
def triton_filter(
    values: Tensor, offsets: Tensor, weights: Tensor, neighbours: Tensor, alpha: float, reverse: bool
) -> Tensor:
    """:func:`gather_filter`'s ``K values`` with the Triton kernels (CUDA, or the interpreter)."""
    w = weights.to(values.dtype).contiguous()
    return triton_lattice.lattice_filter(
        values.contiguous(),
        offsets.contiguous(),
        w,
        (w * alpha).contiguous(),
        neighbours.contiguous(),
        neighbours.shape[-1],
        reverse,
    )


@triton_filter.register_fake
def _(values: Tensor, offsets: Tensor, weights: Tensor, neighbours: Tensor, alpha: float, reverse: bool) -> Tensor:
    return torch.empty_like(values)


def _triton_backward(ctx, grad: Tensor):
    offsets, weights, neighbours = ctx.saved_tensors  # the adjoint on the same lattice, as for lattice_filter
    return triton_filter(grad.contiguous(), offsets, weights, neighbours, ctx.alpha, not ctx.reverse), *[None] * 5


torch.library.register_autograd("crfrnn::triton_filter", _triton_backward, setup_context=_filter_setup)


class CompiledTritonOperator(CompiledOperator):
    """:class:`CompiledOperator` for backend ``"triton"``: the filter is ``crfrnn::triton_filter``."""

    name = "ops"

    def apply(self, values: Tensor, reverse: bool) -> Tensor:
        return triton_filter(values.contiguous(), self.offsets, self.weights, self.neighbours, self.alpha, reverse)

    def filter(self, values: Tensor, reverse: bool) -> Tensor:
        return self.apply(values, reverse)

"""The lattice operator interface: one built lattice's splat, blur and slice, its adjoint and its self weights.

A :class:`LatticeOperator` holds a lattice's geometry (each point's simplex corners, barycentric weights and
simplex orientation, each vertex's neighbours) and filters values on it. Its implementations:

- :class:`crfrnn.lattice._reference.ReferenceOperator` (``"torch"``): sparse CSR products, every device;
- :class:`crfrnn.lattice._cpu.CpuOperator` (``"numba"``): the compiled CPU kernels of :mod:`crfrnn._kernels`;
- :class:`crfrnn.lattice._triton.TritonOperator` (``"triton"``): the Triton filter kernels of
  :mod:`crfrnn._kernels.triton_lattice` (CUDA, or the CPU under ``TRITON_INTERPRET=1``), ``"auto"`` on CUDA;
- :class:`crfrnn.lattice._custom_ops.CompiledOperator` (``"ops"``): ``torch.library`` custom operators, which
  ``torch.compile`` sees as single nodes (no graph break).

:func:`crfrnn.lattice._permutohedral.select_operator` chooses one, once per lattice.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar

import torch
from torch import Tensor

from crfrnn.lattice._autograd import LatticeFilter

__all__ = ["LatticeOperator"]


class LatticeOperator(ABC):
    """One lattice and its filter ``K``: splat onto the vertices, blur along every lattice direction, slice back.

    Args:
        offsets: ``(P, D + 1)`` integer, the vertex of each point's simplex corner (``P = B N`` points).
        weights: ``(P, D + 1)`` barycentric weights.
        rank: ``(P, D + 1)`` integer, each simplex's orientation (for the self weights).
        neighbours: ``(D + 1, 2, M)`` integer, each vertex's two neighbours along every direction (``M``: absent).
        num_vertices: ``M``.
        alpha: the scale applied when slicing (densecrf's ``alpha``).
    """

    #: the backend's name, shown as :attr:`crfrnn.lattice.PermutohedralLattice.backend`
    name: ClassVar[str]

    def __init__(
        self, offsets: Tensor, weights: Tensor, rank: Tensor, neighbours: Tensor, num_vertices: int, alpha: float
    ) -> None:
        self.offsets = offsets
        self.weights = weights
        self.rank = rank
        self.neighbours = neighbours
        self.num_vertices = num_vertices
        self.alpha = alpha
        self._by_dtype: dict[torch.dtype, Any] = {}

    @classmethod
    @abstractmethod
    def build(cls, features: Tensor, batch_size: int, alpha: float) -> LatticeOperator:
        """The lattice of ``(P, D)`` features (``P = batch_size * N``, images contiguous, no gradient needed)."""

    @abstractmethod
    def apply(self, values: Tensor, reverse: bool) -> Tensor:
        """``K values`` of ``(P, C)`` contiguous values without autograd: splat, blur, slice.

        With ``reverse`` the adjoint ``K^T``: the blur directions in reverse order.
        """

    def filter(self, values: Tensor, reverse: bool) -> Tensor:
        """:meth:`apply`, differentiable with respect to the ``(P, C)`` values (its backward is the adjoint)."""
        return LatticeFilter.apply(values, self, reverse)

    @abstractmethod
    def self_weights(self) -> Tensor:
        """``(P,)`` the diagonal of ``K``, in the weights' dtype, without gradient."""

    def padded_channels(self, channels: int, dtype: torch.dtype) -> int:
        """The channel count :meth:`apply` filters for ``channels`` channels of ``dtype`` (no padding here)."""
        return channels

    def operators(self, dtype: torch.dtype) -> Any:
        """The backend's splat/blur/slice object for ``dtype``, built on first use and reused by every call."""
        ops = self._by_dtype.get(dtype)
        if ops is None:
            ops = self._by_dtype[dtype] = self.make_operators(dtype)
        return ops

    def make_operators(self, dtype: torch.dtype) -> Any:
        """A new splat/blur/slice object for ``dtype`` (see :meth:`operators`)."""
        raise TypeError(f"the {self.name!r} lattice operator has no per-dtype splat/blur/slice object.")

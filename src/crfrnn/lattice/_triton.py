"""The Triton lattice operator (backend ``"triton"``): :mod:`crfrnn._kernels.triton_lattice`'s kernels behind the
interface.

The lattice is built on the device by :mod:`crfrnn._kernels.triton_build` (simplices, a hash table filled with
atomic compare-and-swap, neighbours: the reference build's vertex set, numbered differently, with one host
synchronisation) and filtered by :mod:`crfrnn._kernels.triton_lattice` (splat, blur, slice and the adjoint); the
self weights are still the reference walk. ``"auto"`` does not choose this backend yet: no GPU measurement of it
exists.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from crfrnn.lattice._operators import LatticeOperator
from crfrnn.lattice._reference import walk_self_weights

__all__ = ["TritonOperator"]


class TritonOperator(LatticeOperator):
    """The lattice with the Triton filter kernels (CUDA tensors, or CPU tensors under ``TRITON_INTERPRET=1``)."""

    name = "triton"

    @classmethod
    def build(cls, features: Tensor, batch_size: int, alpha: float) -> TritonOperator:
        from crfrnn._kernels.triton_build import build_lattice

        return cls(*build_lattice(features, batch_size), alpha)

    def make_operators(self, dtype: torch.dtype) -> Any:
        from crfrnn._kernels.triton_lattice import TritonOperators

        return TritonOperators(self.offsets, self.weights.to(dtype), self.neighbours, self.num_vertices, self.alpha)

    def apply(self, values: Tensor, reverse: bool) -> Tensor:
        return self.operators(values.dtype)(values, reverse)

    def self_weights(self) -> Tensor:
        with torch.no_grad():
            return walk_self_weights(self.offsets, self.weights, self.rank, self.neighbours, self.alpha)

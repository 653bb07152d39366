"""The compiled CPU lattice operator (backend ``"numba"``): :mod:`crfrnn._kernels`'s kernels behind the interface.

They compute what :class:`crfrnn.lattice._reference.ReferenceOperator` computes with fewer passes over memory. The
build falls back to the reference construction when the vertex keys do not fit one int64 code.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

import crfrnn.lattice._construction as construction
from crfrnn import _kernels
from crfrnn.lattice._construction import build_lattice, canonical_paths
from crfrnn.lattice._operators import LatticeOperator

__all__ = ["CpuOperator"]


class CpuOperator(LatticeOperator):
    """The lattice on the CPU with the compiled kernels (CPU tensors only)."""

    name = "numba"

    @classmethod
    def build(cls, features: Tensor, batch_size: int, alpha: float) -> CpuOperator:
        # the code width is read here, at build time (the tests narrow it to exercise the fallback)
        built = _kernels.build(features, batch_size, construction.MAX_CODE_BITS)
        if built is None:  # the keys do not fit one int64 code: the reference deduplicates whole key rows
            built = build_lattice(features, batch_size)
        return cls(*built, alpha)

    def make_operators(self, dtype: torch.dtype) -> _kernels.NumbaOperators:
        return _kernels.NumbaOperators(
            self.offsets, self.weights.to(dtype), self.neighbours, self.num_vertices, self.alpha
        )

    def apply(self, values: Tensor, reverse: bool) -> Tensor:
        return self.operators(values.dtype)(values, reverse)

    def self_weights(self) -> Tensor:
        steps, path_w = canonical_paths(self.offsets.shape[1] - 1)
        return _kernels.self_weights(self.offsets, self.weights, self.rank, self.neighbours, self.alpha, steps, path_w)

    def padded_channels(self, channels: int, dtype: torch.dtype) -> int:
        return _kernels.padded_channels(channels, np.float64 if dtype == torch.float64 else np.float32)

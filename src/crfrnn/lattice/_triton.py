"""The Triton lattice operator (backend ``"triton"``): :mod:`crfrnn._kernels.triton_lattice`'s kernels behind the
interface.

The lattice is built on the device by :mod:`crfrnn._kernels.triton_build` (simplices, a hash table filled with
atomic compare-and-swap, neighbours: the reference build's vertex set, numbered differently, with one host
synchronisation) and filtered by :mod:`crfrnn._kernels.triton_lattice` (splat, blur, slice and the adjoint); the
self weights walk every blur path in one kernel.

``"auto"`` chooses it for CUDA tensors (:func:`crfrnn.lattice._backends.resolve_backend`) as
:class:`AutoTritonOperator`, which is guarded because no GPU measurement of these kernels exists yet: the first
time triton fails (a kernel that does not compile, a driver or toolchain that triton cannot use) it warns once and
every lattice, that one included, uses the PyTorch reference from then on (:func:`triton_failed`).
"""

from __future__ import annotations

import warnings
from typing import Any, Optional

import torch
from torch import Tensor

from crfrnn.lattice._construction import blur_paths
from crfrnn.lattice._operators import LatticeOperator
from crfrnn.lattice._reference import ReferenceOperator

__all__ = ["AutoTritonOperator", "TritonOperator", "triton_failed"]

# why triton failed in this process, once it has (then "auto" stops choosing it)
_FAILURE: list[str] = []


def triton_failed() -> Optional[str]:
    """Why the Triton kernels failed in this process (``None`` while they have not)."""
    return _FAILURE[0] if _FAILURE else None


def _give_up(error: Exception) -> None:
    if not _FAILURE:
        _FAILURE.append(f"{type(error).__name__}: {error}")
        warnings.warn(
            f"crfrnn: the Triton lattice kernels failed ({_FAILURE[0]}); backend='auto' uses the PyTorch reference "
            "('torch') from now on in this process. Pass backend='torch' to skip triton, or set "
            "CRFRNN_AUTO_TRITON=0.",
            RuntimeWarning,
            stacklevel=3,
        )


class TritonOperator(LatticeOperator):
    """The lattice with the Triton filter kernels (CUDA tensors, or CPU tensors under ``TRITON_INTERPRET=1``)."""

    name = "triton"

    @classmethod
    def build(cls, features: Tensor, batch_size: int, alpha: float) -> LatticeOperator:
        from crfrnn._kernels.triton_build import build_lattice

        return cls(*build_lattice(features, batch_size), alpha)

    def make_operators(self, dtype: torch.dtype) -> Any:
        from crfrnn._kernels.triton_lattice import TritonOperators

        return TritonOperators(self.offsets, self.weights.to(dtype), self.neighbours, self.num_vertices, self.alpha)

    def apply(self, values: Tensor, reverse: bool) -> Tensor:
        return self.operators(values.dtype)(values, reverse)

    def self_weights(self) -> Tensor:
        from crfrnn._kernels.triton_build import self_weights

        steps, path_weights = blur_paths(self.offsets.shape[1] - 1, self.offsets.device)
        with torch.no_grad():
            return self_weights(self.offsets, self.weights, self.rank, self.neighbours, steps, path_weights, self.alpha)


class AutoTritonOperator(TritonOperator):
    """:class:`TritonOperator` as ``"auto"`` chooses it: the PyTorch reference once triton has failed.

    A failure of the build, a filter or the self weights (anything but running out of memory) is reported once
    (:class:`RuntimeWarning`) and answered by the reference on the same lattice geometry.
    """

    _reference: Optional[ReferenceOperator] = None

    @classmethod
    def build(cls, features: Tensor, batch_size: int, alpha: float) -> LatticeOperator:
        if triton_failed() is None:
            try:
                return super().build(features, batch_size, alpha)
            except torch.OutOfMemoryError:
                raise
            except Exception as error:  # any failure of triton's compiler or runtime: fall back, once
                _give_up(error)
        return ReferenceOperator.build(features, batch_size, alpha)

    def apply(self, values: Tensor, reverse: bool) -> Tensor:
        if triton_failed() is None:
            try:
                return super().apply(values, reverse)
            except torch.OutOfMemoryError:
                raise
            except Exception as error:  # as in build
                _give_up(error)
        return self._fallback().apply(values, reverse)

    def self_weights(self) -> Tensor:
        if triton_failed() is None:
            try:
                return super().self_weights()
            except torch.OutOfMemoryError:
                raise
            except Exception as error:  # as in build
                _give_up(error)
        return self._fallback().self_weights()

    def _fallback(self) -> ReferenceOperator:
        if self._reference is None:
            self._reference = ReferenceOperator(
                self.offsets, self.weights, self.rank, self.neighbours, self.num_vertices, self.alpha
            )
        return self._reference

"""Backend names: which eager lattice operator runs for a backend name on a device."""

from __future__ import annotations

import torch

from crfrnn.lattice._cpu import CpuOperator
from crfrnn.lattice._operators import LatticeOperator
from crfrnn.lattice._reference import ReferenceOperator

__all__ = ["BACKENDS", "eager_operator", "resolve_backend"]

#: the backend names a lattice accepts
BACKENDS = ("auto", "torch", "numba")

_EAGER: dict[str, type[LatticeOperator]] = {"torch": ReferenceOperator, "numba": CpuOperator}


def resolve_backend(backend: str, device: torch.device) -> str:
    """The backend that runs for ``backend`` on ``device``: ``"auto"`` becomes ``"numba"`` (the compiled kernels) on
    the CPU and ``"torch"`` elsewhere; an unknown name, or ``"numba"`` off the CPU, is an error.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}.")
    if backend == "numba" and device.type != "cpu":
        raise ValueError(
            f"backend='numba' runs on the CPU only, but the data are on {device}; use backend='torch' (or 'auto') "
            "for other devices."
        )
    if backend == "auto":
        return "numba" if device.type == "cpu" else "torch"
    return backend


def eager_operator(backend: str, device: torch.device) -> type[LatticeOperator]:
    """The lattice operator (outside torch.compile) for ``backend`` on ``device`` (see :func:`resolve_backend`)."""
    return _EAGER[resolve_backend(backend, device)]

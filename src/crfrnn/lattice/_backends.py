"""Backend names: which eager lattice operator runs for a backend name on a device."""

from __future__ import annotations

import torch

from crfrnn._kernels import triton_lattice
from crfrnn.lattice._cpu import CpuOperator
from crfrnn.lattice._operators import LatticeOperator
from crfrnn.lattice._reference import ReferenceOperator
from crfrnn.lattice._triton import TritonOperator

__all__ = ["BACKENDS", "check_triton", "eager_operator", "resolve_backend"]

#: the backend names a lattice accepts
BACKENDS = ("auto", "torch", "numba", "triton")

_EAGER: dict[str, type[LatticeOperator]] = {"torch": ReferenceOperator, "numba": CpuOperator, "triton": TritonOperator}


def resolve_backend(backend: str, device: torch.device) -> str:
    """The backend that runs for ``backend`` on ``device``: ``"auto"`` becomes ``"numba"`` (the compiled kernels) on
    the CPU and ``"torch"`` elsewhere (never ``"triton"``: it is chosen by name only until it is measured on a GPU);
    an unknown name, ``"numba"`` off the CPU, or ``"triton"`` without triton or on the CPU without
    ``TRITON_INTERPRET=1`` (read at every call) is an error.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}.")
    if backend == "numba" and device.type != "cpu":
        raise ValueError(
            f"backend='numba' runs on the CPU only, but the data are on {device}; use backend='torch' (or 'auto') "
            "for other devices."
        )
    if backend == "triton":
        check_triton(device)
    if backend == "auto":
        return "numba" if device.type == "cpu" else "torch"
    return backend


def eager_operator(backend: str, device: torch.device) -> type[LatticeOperator]:
    """The lattice operator (outside torch.compile) for ``backend`` on ``device`` (see :func:`resolve_backend`)."""
    return _EAGER[resolve_backend(backend, device)]


def check_triton(device: torch.device) -> None:
    """Raise unless the Triton kernels can run on ``device``: triton importable, and a CUDA device or the
    interpreter (``TRITON_INTERPRET=1``, read now).
    """
    if not triton_lattice.available():
        raise RuntimeError(
            "backend='triton' needs the triton package, which cannot be imported here; install it "
            "(pip install triton) or use backend='torch' (any device) or 'auto'."
        )
    if device.type != "cuda" and not triton_lattice.interpreting():
        raise ValueError(
            f"backend='triton' runs on CUDA tensors, but the data are on {device}; move them to a GPU, set "
            "TRITON_INTERPRET=1 to run the kernels under triton's interpreter (slow, for tests), or use "
            "backend='auto'."
        )

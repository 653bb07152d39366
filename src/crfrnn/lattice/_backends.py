"""Backend names: which eager lattice operator runs for a backend name on a device."""

from __future__ import annotations

import os

import torch

from crfrnn._kernels import triton_lattice
from crfrnn.lattice._cpu import CpuOperator
from crfrnn.lattice._operators import LatticeOperator
from crfrnn.lattice._reference import ReferenceOperator
from crfrnn.lattice._triton import AutoTritonOperator, TritonOperator, triton_failed

__all__ = ["AUTO_TRITON_VARIABLE", "BACKENDS", "auto_triton", "check_triton", "eager_operator", "resolve_backend"]

#: the backend names a lattice accepts
BACKENDS = ("auto", "torch", "numba", "triton")

#: the environment variable that keeps ``"auto"`` off triton on CUDA when set to 0 (read at every call)
AUTO_TRITON_VARIABLE = "CRFRNN_AUTO_TRITON"

_EAGER: dict[str, type[LatticeOperator]] = {"torch": ReferenceOperator, "numba": CpuOperator, "triton": TritonOperator}


def resolve_backend(backend: str, device: torch.device) -> str:
    """The backend that runs for ``backend`` on ``device``: ``"auto"`` becomes ``"numba"`` (the compiled kernels) on
    the CPU, ``"triton"`` on CUDA where :func:`auto_triton` allows it, and ``"torch"`` elsewhere; an unknown name,
    ``"numba"`` off the CPU, or ``"triton"`` without triton or on the CPU without
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
        if device.type == "cpu":
            return "numba"
        return "triton" if device.type == "cuda" and auto_triton() else "torch"
    return backend


def auto_triton() -> bool:
    """Whether ``"auto"`` chooses triton for CUDA tensors: triton importable, :data:`AUTO_TRITON_VARIABLE` not set
    to 0 (read now), and no failure of the Triton kernels yet in this process
    (:func:`crfrnn.lattice._triton.triton_failed`).
    """
    setting = os.environ.get(AUTO_TRITON_VARIABLE, "1").strip().lower()
    if setting in ("0", "false", "off", "no"):
        return False
    return triton_failed() is None and triton_lattice.available()


def eager_operator(backend: str, device: torch.device) -> type[LatticeOperator]:
    """The lattice operator (outside torch.compile) for ``backend`` on ``device`` (see :func:`resolve_backend`);
    triton chosen by ``"auto"`` is the guarded :class:`~crfrnn.lattice._triton.AutoTritonOperator`.
    """
    name = resolve_backend(backend, device)
    if name == "triton" and backend == "auto":
        return AutoTritonOperator
    return _EAGER[name]


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

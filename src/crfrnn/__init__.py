"""crfrnn: CRF-RNN and dense CRFs in PyTorch (batched, differentiable, any device, fast on the CPU).

``import crfrnn`` is cheap: the public names below are loaded from their modules on first use (PEP 562), so
``crfrnn --help`` and ``import crfrnn`` do not import PyTorch. ``from crfrnn import dense_crf`` and
``crfrnn.dense_crf`` work as before.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from crfrnn import _deprecated

if TYPE_CHECKING:  # what type checkers and editors see; at run time __getattr__ loads them
    from crfrnn.crf import (
        NORMALIZATIONS,
        CrfRnn,
        GaussianKernel,
        KernelCache,
        Pairwise,
        bilateral_features,
        infer,
        mean_field,
        position_features,
        spatial_features,
    )
    from crfrnn.dense import dense_crf, unary_from_labels, unary_from_probs
    from crfrnn.energy import crf_energy, kl_divergence
    from crfrnn.fit import FitResult, fit_crf
    from crfrnn.lattice import PermutohedralLattice, gaussian_filter, lattice_filter
    from crfrnn.losses import dense_crf_loss
    from crfrnn.params import load_params, save_params

#: public name -> the module that defines it (imported on first access)
_LAZY = {
    "CrfRnn": "crfrnn.crf",
    "FitResult": "crfrnn.fit",
    "GaussianKernel": "crfrnn.crf",
    "KernelCache": "crfrnn.crf",
    "NORMALIZATIONS": "crfrnn.crf",
    "Pairwise": "crfrnn.crf",
    "PermutohedralLattice": "crfrnn.lattice",
    "bilateral_features": "crfrnn.crf",
    "crf_energy": "crfrnn.energy",
    "dense_crf": "crfrnn.dense",
    "dense_crf_loss": "crfrnn.losses",
    "fit_crf": "crfrnn.fit",
    "gaussian_filter": "crfrnn.lattice",
    "infer": "crfrnn.crf",
    "kl_divergence": "crfrnn.energy",
    "lattice_filter": "crfrnn.lattice",
    "load_params": "crfrnn.params",
    "mean_field": "crfrnn.crf",
    "position_features": "crfrnn.crf",
    "save_params": "crfrnn.params",
    "spatial_features": "crfrnn.crf",
    "unary_from_labels": "crfrnn.dense",
    "unary_from_probs": "crfrnn.dense",
}

__all__ = [
    "CrfRnn",
    "FitResult",
    "GaussianKernel",
    "KernelCache",
    "NORMALIZATIONS",
    "Pairwise",
    "PermutohedralLattice",
    "bilateral_features",
    "crf_energy",
    "dense_crf",
    "dense_crf_loss",
    "fit_crf",
    "gaussian_filter",
    "infer",
    "kl_divergence",
    "lattice_filter",
    "load_params",
    "mean_field",
    "position_features",
    "save_params",
    "spatial_features",
    "unary_from_labels",
    "unary_from_probs",
]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    """Load a public name from its module on first access (then it is an ordinary module attribute)."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'crfrnn' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    """The module's names, the public ones included before they are loaded."""
    return sorted(set(globals()) | set(__all__))


_deprecated.install()

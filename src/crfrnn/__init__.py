"""crfrnn: CRF-RNN and dense CRFs in PyTorch (batched, differentiable, any device, fast on the CPU)."""

from crfrnn import _deprecated
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

_deprecated.install()

"""crfrnn: CRF-RNN and dense CRFs in PyTorch (batched, differentiable, any device, fast on the CPU)."""

from crfrnn.crf import NORMALIZATIONS, CrfRnn, GaussianKernel, bilateral_features, mean_field, spatial_features
from crfrnn.filters import gaussian_filter
from crfrnn.lattice import PermutohedralLattice, lattice_filter

__all__ = [
    "CrfRnn",
    "GaussianKernel",
    "NORMALIZATIONS",
    "PermutohedralLattice",
    "bilateral_features",
    "gaussian_filter",
    "lattice_filter",
    "mean_field",
    "spatial_features",
]
__version__ = "0.1.0"

"""The dense CRF: features, kernels and their cache, the one mean-field engine, the functional API, the layer.

- :mod:`crfrnn.crf.features`: position (any number of axes, voxel spacing) and guide features.
- :mod:`crfrnn.crf.kernels`: :class:`GaussianKernel` (lattice + normaliser, built once) and :class:`KernelCache`.
- :mod:`crfrnn.crf.engine`: :func:`infer`, the mean field that every entry point calls, with its fused
  compiled path and its differentiable path, over any number of :class:`Pairwise` kernels.
- :mod:`crfrnn.crf.functional`: :func:`mean_field`, CRF-RNN's two kernels.
- :mod:`crfrnn.crf.module`: :class:`CrfRnn`, the trainable layer.
"""

from crfrnn.crf.engine import infer
from crfrnn.crf.features import bilateral_features, guide_features, position_features, spatial_features
from crfrnn.crf.functional import mean_field
from crfrnn.crf.kernels import NORMALIZATIONS, GaussianKernel, KernelCache
from crfrnn.crf.module import CrfRnn
from crfrnn.crf.pairwise import Pairwise, label_transform

__all__ = [
    "CrfRnn",
    "GaussianKernel",
    "KernelCache",
    "NORMALIZATIONS",
    "Pairwise",
    "bilateral_features",
    "guide_features",
    "infer",
    "label_transform",
    "mean_field",
    "position_features",
    "spatial_features",
]

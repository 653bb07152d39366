"""The permutohedral lattice (Adams, Baek & Davis 2010) for fast Gaussian filtering, and the exact reference.

- :mod:`crfrnn.lattice._construction`: features to the lattice (offsets, weights, ranks, neighbours);
- :mod:`crfrnn.lattice._operators`: the operator interface, implemented by :mod:`crfrnn.lattice._reference`
  (PyTorch, every device), :mod:`crfrnn.lattice._cpu` (compiled CPU kernels) and :mod:`crfrnn.lattice._custom_ops`
  (``torch.library`` operators for ``torch.compile``); :mod:`crfrnn.lattice._backends` maps backend names to them;
- :mod:`crfrnn.lattice._autograd`: the filter's gradients (values, features, kernel widths);
- :mod:`crfrnn.lattice._permutohedral`: :class:`PermutohedralLattice` and :func:`lattice_filter`;
- :mod:`crfrnn.lattice.exact`: the exact O(N^2) Gaussian filter;
- :mod:`crfrnn.lattice.filters`: :func:`gaussian_filter`, exact or by the lattice.
"""

from crfrnn.lattice._permutohedral import PermutohedralLattice, lattice_filter
from crfrnn.lattice.filters import gaussian_filter

__all__ = ["PermutohedralLattice", "gaussian_filter", "lattice_filter"]

"""Compiled CPU kernels for the permutohedral lattice and the mean field (numba), used automatically on the CPU.

They compute exactly what the pure PyTorch path in :mod:`crfrnn.lattice` computes (which stays the reference on
every device), but with fewer passes over memory. A leaf package: it imports only NumPy, PyTorch and numba, and
every limit comes in as an argument. Kernels are compiled on first use and cached on disk (``cache=True``), so
later processes start warm; :mod:`~crfrnn._kernels._first_use` chooses the cache folder (a per-user one where the
package is read-only) and says once on stderr when the kernels compile.

Modules, lowest first:

- :mod:`~crfrnn._kernels.simd`: hand-written LLVM vector code (the row updates :func:`~.simd.axpy`, the vector
  softmax of a few rows) and the vectorised float32 :func:`exp_inplace` and :func:`log_inplace`;
- :mod:`~crfrnn._kernels.layout`: the padded channels-last layout (:func:`padded_channels`, the block size) and
  the conversions into and out of it (:func:`unary_from_scores`, :func:`channels_last`, :func:`channels_first`);
- :mod:`~crfrnn._kernels.softmax`: the row softmax over padded channels (:func:`softmax_rows`);
- :mod:`~crfrnn._kernels.construct`: the lattice's construction (:func:`build`: simplices, the vertex hash,
  neighbours);
- :mod:`~crfrnn._kernels.filtering`: splat, blur and slice (:class:`NumbaOperators`, :func:`splat`,
  :func:`blur`, :func:`splat_runs`, :func:`splat_parts`);
- :mod:`~crfrnn._kernels.selfw`: each point's self weight (:func:`self_weights`);
- :mod:`~crfrnn._kernels.taking`: atomic operations with which the threads of a parallel loop take work from each
  other;
- :mod:`~crfrnn._kernels.block`: one block of points of a fused mean-field iteration;
- :mod:`~crfrnn._kernels.meanfield`: the fused mean-field loop (:func:`mean_field`, :func:`prepare`,
  :class:`Prepared`);
- :mod:`~crfrnn._kernels.sums`: densecrf's free-energy sums of marginals in one pass (:func:`free_energy_sums`);
- :mod:`~crfrnn._kernels.adjoint`: the backward pass's kernels (:func:`softmax_backward`, :func:`adjoint_slice`,
  :func:`gram`).
"""

# First, before the modules below decorate their kernels (numba picks each one's cache folder then).
from crfrnn._kernels import _first_use  # noqa: F401  # configures the cache and the compile message
from crfrnn._kernels.adjoint import adjoint_slice, gram, softmax_backward
from crfrnn._kernels.construct import build
from crfrnn._kernels.filtering import (
    NumbaOperators,
    blur,
    blur_result,
    splat,
    splat_parts,
    splat_parts_shapes,
    splat_runs,
)
from crfrnn._kernels.layout import (
    argmax_labels,
    channels_first,
    channels_last,
    padded_channels,
    unary_from_scores,
)
from crfrnn._kernels.meanfield import Prepared, mean_field, prepare
from crfrnn._kernels.selfw import self_weights
from crfrnn._kernels.simd import exp_inplace, log_inplace
from crfrnn._kernels.softmax import softmax_rows
from crfrnn._kernels.sums import free_energy_sums

__all__ = [
    "NumbaOperators",
    "Prepared",
    "adjoint_slice",
    "argmax_labels",
    "blur",
    "blur_result",
    "build",
    "channels_first",
    "channels_last",
    "exp_inplace",
    "free_energy_sums",
    "gram",
    "log_inplace",
    "mean_field",
    "padded_channels",
    "prepare",
    "self_weights",
    "softmax_backward",
    "softmax_rows",
    "splat",
    "splat_parts",
    "splat_parts_shapes",
    "splat_runs",
    "unary_from_scores",
]

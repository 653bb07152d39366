"""A drop-in for pydensecrf, so that switching is an import change and nothing else.

Replace::

    import pydensecrf.densecrf as dcrf
    from pydensecrf.utils import unary_from_softmax, create_pairwise_bilateral, create_pairwise_gaussian

with::

    import crfrnn.compat.densecrf as dcrf      # or: import crfrnn.compat as dcrf
    from crfrnn.compat.utils import unary_from_softmax, create_pairwise_bilateral, create_pairwise_gaussian

and keep the rest of the script (``import pydensecrf.utils as utils`` becomes ``import crfrnn.compat.utils as
utils``). Everything runs through the same engine as :func:`crfrnn.dense_crf` (the compiled fused mean field
on the CPU), for 2-D images and for any number of ``addPairwiseEnergy`` kernels on volumes; stepping through
inference (``startInference``/``stepInference``/``klDivergence``) runs the same compiled iteration one at a time.

Code you do not edit (a library, helpers that ``import pydensecrf``) switches as a whole with one call, early in
the program (see :func:`install_as_pydensecrf`)::

    import crfrnn.compat
    crfrnn.compat.install_as_pydensecrf()   # from here on, "import pydensecrf.densecrf" gives crfrnn's shim

It raises if the real pydensecrf was imported first (``force=True`` switches later imports anyway, with a
warning).
"""

from crfrnn.compat.densecrf import (
    CONST_KERNEL,
    DIAG_KERNEL,
    FULL_KERNEL,
    NO_NORMALIZATION,
    NORMALIZE_AFTER,
    NORMALIZE_BEFORE,
    NORMALIZE_SYMMETRIC,
    DenseCRF,
    DenseCRF2D,
    KernelType,
    NormalizationType,
)
from crfrnn.compat.install import install_as_pydensecrf
from crfrnn.compat.utils import (
    compute_unary,
    create_pairwise_bilateral,
    create_pairwise_gaussian,
    softmax_to_unary,
    unary_from_labels,
    unary_from_softmax,
)

__all__ = [
    "CONST_KERNEL",
    "DIAG_KERNEL",
    "DenseCRF",
    "DenseCRF2D",
    "FULL_KERNEL",
    "KernelType",
    "NORMALIZE_AFTER",
    "NORMALIZE_BEFORE",
    "NORMALIZE_SYMMETRIC",
    "NO_NORMALIZATION",
    "NormalizationType",
    "compute_unary",
    "create_pairwise_bilateral",
    "create_pairwise_gaussian",
    "install_as_pydensecrf",
    "softmax_to_unary",
    "unary_from_labels",
    "unary_from_softmax",
]

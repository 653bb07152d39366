"""A drop-in for pydensecrf's ``DenseCRF`` / ``DenseCRF2D``, so that switching is a one-line import change.

Replace::

    import pydensecrf.densecrf as dcrf

with::

    import crfrnn.compat as dcrf

and keep the rest of the script: ``DenseCRF2D(W, H, L)``, ``setUnaryEnergy``, ``addPairwiseGaussian``,
``addPairwiseBilateral``, ``addPairwiseEnergy``, ``inference``, ``startInference``/``stepInference``,
``klDivergence`` and the ``*_KERNEL`` / ``*NORMALIZ*`` constants behave as in pydensecrf (same model,
same lattice; results agree to about 1e-7 in the marginals). ``unary_from_softmax``,
``unary_from_labels``, ``create_pairwise_gaussian`` and ``create_pairwise_bilateral`` from
``pydensecrf.utils`` are here too.

Supported: Potts (a number), diagonal (1-D array) and full matrix (2-D array) label compatibilities
with densecrf's sign conventions; the four normalisations. Not supported (they raise
``NotImplementedError`` with an explanation): learning (``setKernelParameters``, gradients of the
parameters, ``LogisticUnary``); ``FULL_KERNEL``/``CONST_KERNEL`` only matter for learning, and for
inference they are accepted and behave like ``DIAG_KERNEL``. For learning, use :class:`crfrnn.CrfRnn`.
"""

from __future__ import annotations

from numbers import Number
from typing import Any, Optional

import numpy as np
import torch

from crfrnn.crf import GaussianKernel, _iterate, bilateral_features, spatial_features

__all__ = [
    "CONST_KERNEL",
    "DIAG_KERNEL",
    "DenseCRF",
    "DenseCRF2D",
    "FULL_KERNEL",
    "NORMALIZE_AFTER",
    "NORMALIZE_BEFORE",
    "NORMALIZE_SYMMETRIC",
    "NO_NORMALIZATION",
    "create_pairwise_bilateral",
    "create_pairwise_gaussian",
    "unary_from_labels",
    "unary_from_softmax",
]

# pydensecrf's enum values
CONST_KERNEL, DIAG_KERNEL, FULL_KERNEL = 0, 1, 2
NO_NORMALIZATION, NORMALIZE_BEFORE, NORMALIZE_AFTER, NORMALIZE_SYMMETRIC = 0, 1, 2, 3
_NORMALIZATION = {
    NO_NORMALIZATION: "none",
    NORMALIZE_BEFORE: "column",
    NORMALIZE_AFTER: "row",
    NORMALIZE_SYMMETRIC: "symmetric",
}


def _compatibility(compat: Any, num_labels: int) -> torch.Tensor | float:
    """densecrf's label compatibility: a Potts weight ``w`` or the matrix ``C`` of the pairwise energy ``C K(Q)``.

    ``PottsCompatibility(w)`` is the energy ``-w K(Q)`` (kept as the number ``w`` for the fast path),
    ``DiagonalCompatibility(v)`` is ``diag(v) K(Q)`` and ``MatrixCompatibility(M)`` is ``(M + M^T) / 2 K(Q)``
    (densecrf symmetrises the matrix; :class:`crfrnn.CrfRnn` allows asymmetric ones).
    """
    if isinstance(compat, Number):
        return float(compat)
    arr = torch.as_tensor(np.asarray(compat, dtype=np.float32))
    if arr.dim() == 1:
        if arr.shape[0] != num_labels:
            raise ValueError(f"a diagonal compatibility needs {num_labels} entries, got {arr.shape[0]}.")
        return torch.diag(arr)
    if arr.dim() == 2:
        if tuple(arr.shape) != (num_labels, num_labels):
            raise ValueError(f"a matrix compatibility must be {num_labels} x {num_labels}, got {tuple(arr.shape)}.")
        return 0.5 * (arr + arr.t())
    raise ValueError("LabelCompatibility of dimension > 2 not meaningful.")


def _energy(compat: torch.Tensor | float, message: torch.Tensor) -> torch.Tensor:
    """Pairwise energy ``C K(Q)`` of one kernel's message ``(B, N, L)``."""
    if isinstance(compat, torch.Tensor):
        return message @ compat.to(message.dtype).t()
    return -compat * message


class DenseCRF:
    """pydensecrf's ``DenseCRF(N, L)``: a fully connected CRF over ``N`` variables with ``L`` labels."""

    def __init__(self, nvar: int, nlabels: int) -> None:
        if nvar < 1 or nlabels < 2:
            raise ValueError(f"need nvar >= 1 and nlabels >= 2, got {nvar} and {nlabels}.")
        self._nvar = int(nvar)
        self._nlabel = int(nlabels)
        self._unary: Optional[torch.Tensor] = None  # (N, L) logits = -energy
        self._pairwise: list[tuple[torch.Tensor, Any, str]] = []  # (features (N, D), compat, normalization)
        self._kernels: Optional[list[GaussianKernel]] = None

    def setUnaryEnergy(self, u: np.ndarray, f: Optional[np.ndarray] = None) -> None:  # noqa: N802 (pydensecrf name)
        """Unary energies ``(L, N)`` float32 (``-log p``)."""
        if f is not None:
            raise NotImplementedError("learned (logistic) unaries are not supported; pass energies (L, N).")
        u = np.asarray(u)
        if u.shape != (self._nlabel, self._nvar):
            raise ValueError(f"Bad shape for unary energy (Need {(self._nlabel, self._nvar)}, got {u.shape})")
        self._unary = -torch.from_numpy(np.ascontiguousarray(u, dtype=np.float32)).t().contiguous()

    def addPairwiseEnergy(  # noqa: N802
        self, features: np.ndarray, compat: Any, kernel: int = DIAG_KERNEL, normalization: int = NORMALIZE_SYMMETRIC
    ) -> None:
        """A Gaussian kernel on arbitrary ``(D, N)`` features (already divided by the kernel widths)."""
        features = np.asarray(features, dtype=np.float32)
        if features.ndim != 2 or features.shape[1] != self._nvar:
            raise ValueError(
                f"Bad shape for pairwise energy (Need (?, {self._nvar}), got {features.shape})"
            )
        self._add(torch.from_numpy(np.ascontiguousarray(features.T)), compat, kernel, normalization)

    def _add(self, features: torch.Tensor, compat: Any, kernel: int, normalization: int) -> None:
        if kernel not in (CONST_KERNEL, DIAG_KERNEL, FULL_KERNEL):
            raise ValueError(f"unknown kernel type {kernel!r}.")
        if normalization not in _NORMALIZATION:
            raise ValueError(f"unknown normalization {normalization!r}; use one of the NORMALIZE_* constants.")
        self._pairwise.append((features, _compatibility(compat, self._nlabel), _NORMALIZATION[normalization]))
        self._kernels = None

    def _build(self) -> list[GaussianKernel]:
        if self._kernels is None:
            self._kernels = [GaussianKernel(f[None], normalization=norm) for f, _, norm in self._pairwise]
        return self._kernels

    def _logits(self) -> torch.Tensor:
        if self._unary is None:
            return torch.zeros(1, self._nvar, self._nlabel)
        return self._unary[None]

    def inference(self, niter: int) -> np.ndarray:
        """Marginals ``(L, N)`` float32 after ``niter`` mean-field iterations (``np.array(Q)`` works)."""
        kernels = self._build()
        compat = [c for _, c, _ in self._pairwise]
        if all(isinstance(c, float) for c in compat):  # Potts only: logits += w K(Q)
            weights, mu = compat, None
        else:  # logits -= C K(Q), with C = -w I for the Potts ones
            eye = torch.eye(self._nlabel)
            weights, mu = [c if isinstance(c, torch.Tensor) else -c * eye for c in compat], eye
        logits = _iterate(self._logits(), kernels, weights, mu, int(niter))
        return torch.softmax(logits, -1)[0].t().contiguous().numpy()

    def startInference(self):  # noqa: N802
        """``(Q, tmp1, tmp2)`` to step through inference with :meth:`stepInference`, as in pydensecrf."""
        q = torch.softmax(self._logits(), -1)[0].t().contiguous().numpy()
        return q, np.empty(0, np.float32), np.empty(0, np.float32)

    def _pairwise_energy(self, q: torch.Tensor) -> torch.Tensor:
        return sum(_energy(c, k(q)) for k, (_, c, _) in zip(self._build(), self._pairwise))

    def stepInference(self, Q: np.ndarray, tmp1: Any = None, tmp2: Any = None) -> None:  # noqa: N802, N803
        """One mean-field iteration, updating ``Q (L, N)`` in place."""
        q = torch.from_numpy(np.ascontiguousarray(Q, dtype=np.float32)).t()[None]
        Q[...] = torch.softmax(self._logits() - self._pairwise_energy(q), -1)[0].t().numpy()

    def klDivergence(self, Q: np.ndarray) -> float:  # noqa: N802, N803
        """densecrf's KL divergence of the marginals ``Q (L, N)`` (up to the log-partition constant)."""
        q = torch.from_numpy(np.ascontiguousarray(Q, dtype=np.float32)).t()[None]
        entropy = (q * q.clamp_min(1e-20).log()).sum()
        return float(entropy - (q * self._logits()).sum() + (q * self._pairwise_energy(q)).sum())

    def setKernelParameters(self, *args: Any, **kwargs: Any) -> None:  # noqa: N802
        raise NotImplementedError("learning the CRF's parameters is not supported here; use crfrnn.CrfRnn.")


class DenseCRF2D(DenseCRF):
    """pydensecrf's ``DenseCRF2D(W, H, L)`` for an image of width ``W`` and height ``H``."""

    def __init__(self, w: int, h: int, nlabels: int) -> None:
        super().__init__(int(w) * int(h), nlabels)
        self._w = int(w)
        self._h = int(h)

    def addPairwiseGaussian(  # noqa: N802
        self, sxy: Any, compat: Any, kernel: int = DIAG_KERNEL, normalization: int = NORMALIZE_SYMMETRIC
    ) -> None:
        """Smoothness kernel on positions divided by ``sxy`` (a number or ``(sx, sy)``)."""
        sxy = (sxy, sxy) if isinstance(sxy, Number) else tuple(sxy)
        feats = spatial_features(1, self._h, self._w, sxy)[0]
        self._add(feats, compat, kernel, normalization)

    def addPairwiseBilateral(  # noqa: N802
        self, sxy: Any, srgb: Any, rgbim: np.ndarray, compat: Any, kernel: int = DIAG_KERNEL,
        normalization: int = NORMALIZE_SYMMETRIC,
    ) -> None:
        """Appearance kernel on positions divided by ``sxy`` and colours of ``rgbim (H, W, 3)`` uint8 by ``srgb``."""
        rgbim = np.asarray(rgbim)
        if rgbim.shape[:2] != (self._h, self._w):
            raise ValueError(f"Bad shape for pairwise bilateral (Need {(self._h, self._w, 3)}, got {rgbim.shape})")
        if rgbim.ndim != 3 or rgbim.shape[2] != 3:
            raise ValueError(
                "addPairwiseBilateral only works for RGB images. For other types, use "
                "`create_pairwise_bilateral` to construct your own pairwise energy and add it through "
                "`addPairwiseEnergy`."
            )
        sxy = (sxy, sxy) if isinstance(sxy, Number) else tuple(sxy)
        srgb = (srgb,) * 3 if isinstance(srgb, Number) else tuple(srgb)
        img = torch.from_numpy(np.ascontiguousarray(rgbim)).permute(2, 0, 1)[None].float()
        self._add(bilateral_features(img, sxy, srgb)[0], compat, kernel, normalization)


def unary_from_softmax(sm: np.ndarray, scale: Optional[float] = None, clip: Optional[float] = 1e-5) -> np.ndarray:
    """pydensecrf.utils.unary_from_softmax: energies ``(L, N)`` float32 ``-log(p)`` from ``(L, ...)`` probabilities."""
    p = np.asarray(sm, dtype=np.float64).reshape(sm.shape[0], -1)
    if scale is not None:
        if not 0 < scale <= 1:
            raise ValueError("`scale` needs to be in (0,1]")
        p = scale * p + (1.0 - scale) / p.shape[0]
    if clip is not None:
        p = np.clip(p, clip, 1.0)
    return (-np.log(p)).astype(np.float32)


def unary_from_labels(labels: np.ndarray, n_labels: int, gt_prob: float, zero_unsure: bool = True) -> np.ndarray:
    """pydensecrf.utils.unary_from_labels: energies ``(n_labels, N)`` from a label map.

    With ``zero_unsure`` (the default), label 0 means "unsure" (uniform) and labels ``1..n`` map to
    ``0..n-1``. The same as ``-crfrnn.unary_from_labels(labels - 1, n_labels, gt_prob=gt_prob,
    unknown=-1)``.
    """
    from crfrnn.dense import unary_from_labels as logits_from_labels

    lab = np.asarray(labels).reshape(-1).astype(np.int64)
    logits = logits_from_labels(lab[None] - 1 if zero_unsure else lab[None], n_labels, gt_prob=gt_prob,
                                unknown=-1 if zero_unsure else None)
    return np.ascontiguousarray(-logits.reshape(n_labels, -1), dtype=np.float32)


def create_pairwise_gaussian(sdims: Any, shape: Any) -> np.ndarray:
    """pydensecrf.utils.create_pairwise_gaussian: ``(len(shape), N)`` grid coordinates (``ij`` order) / ``sdims``."""
    grids = np.meshgrid(*[np.arange(n, dtype=np.float32) for n in shape], indexing="ij")
    return np.stack([g / s for g, s in zip(grids, sdims)]).reshape(len(sdims), -1)


def create_pairwise_bilateral(sdims: Any, schan: Any, img: np.ndarray, chdim: int = -1) -> np.ndarray:
    """pydensecrf.utils.create_pairwise_bilateral: grid coordinates / ``sdims`` then channels / ``schan``.

    ``chdim`` is the channel axis of ``img`` (``-1``: a single-channel image without one).
    """
    chans = np.asarray(img, dtype=np.float32)[None] if chdim == -1 else np.moveaxis(img, chdim, 0).astype(np.float32)
    chans = chans / (np.float32(schan) if isinstance(schan, Number) else np.asarray(schan, np.float32)[:, None, None])
    pos = create_pairwise_gaussian(sdims, chans.shape[1:])
    return np.concatenate([pos, chans.reshape(chans.shape[0], -1)])

"""pydensecrf.densecrf, importable in its place: ``import crfrnn.compat.densecrf as dcrf``.

``DenseCRF2D(W, H, L)``, ``DenseCRF(N, L)``, ``setUnaryEnergy``, ``addPairwiseGaussian``,
``addPairwiseBilateral``, ``addPairwiseEnergy`` (any number of kernels, any feature dimension: volumes too),
``inference``, ``map``, ``startInference``/``stepInference``, ``klDivergence`` and the ``KernelType`` /
``NormalizationType`` constants behave as in pydensecrf (same model, same lattice; the marginals agree to
about 1e-7). Inference runs through :func:`crfrnn.crf.engine.infer`, the engine behind
:func:`crfrnn.dense_crf`; ``startInference``/``stepInference``/``klDivergence`` run the same compiled iteration
one at a time. Each object builds its kernels once and keeps them until it is dropped.

Supported: Potts (a number), diagonal (1-D array) and full matrix (2-D array) label compatibilities with
densecrf's sign conventions; the four normalisations. Not supported (they raise ``NotImplementedError``
with an explanation): learning (``setKernelParameters``, gradients of the parameters, ``LogisticUnary``);
``FULL_KERNEL``/``CONST_KERNEL`` only matter for learning, and for inference they are accepted and behave
like ``DIAG_KERNEL``. For learning, use :class:`crfrnn.CrfRnn`.

Unlike pydensecrf, bad arguments are refused rather than silently changed: ``inference(-1)`` and
``inference(2.7)`` raise, as do negative sizes and NaN energies or features.
"""

from __future__ import annotations

import enum
from numbers import Integral, Number
from typing import Any, Optional, cast

import numpy as np
import torch

from crfrnn._utils.validation import check_iterations, check_widths
from crfrnn.crf._stepper import Stepper
from crfrnn.crf.engine import infer
from crfrnn.crf.features import bilateral_features, position_features
from crfrnn.crf.kernels import KernelCache
from crfrnn.crf.pairwise import Pairwise

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
]


class KernelType(enum.IntEnum):
    """pydensecrf's kernel types (only ``DIAG_KERNEL`` matters for inference)."""

    CONST_KERNEL = 0
    DIAG_KERNEL = 1
    FULL_KERNEL = 2


class NormalizationType(enum.IntEnum):
    """pydensecrf's normalisations, with crfrnn's names in :data:`crfrnn.NORMALIZATIONS`."""

    NO_NORMALIZATION = 0
    NORMALIZE_BEFORE = 1
    NORMALIZE_AFTER = 2
    NORMALIZE_SYMMETRIC = 3


CONST_KERNEL, DIAG_KERNEL, FULL_KERNEL = KernelType
NO_NORMALIZATION, NORMALIZE_BEFORE, NORMALIZE_AFTER, NORMALIZE_SYMMETRIC = NormalizationType
_NORMALIZATION: dict[int, str] = {
    NO_NORMALIZATION: "none",
    NORMALIZE_BEFORE: "column",
    NORMALIZE_AFTER: "row",
    NORMALIZE_SYMMETRIC: "symmetric",
}


def _count(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, Integral) or int(value) < minimum:
        raise ValueError(f"{name} must be a whole number >= {minimum}, got {value!r}.")
    return int(value)


def _compatibility(compat: Any, num_labels: int) -> tuple[Any, Any]:
    """Densecrf's label compatibility as ``(weight, compatibility)`` of a :class:`Pairwise`.

    ``PottsCompatibility(w)`` adds ``w K(Q)`` to the logits (weight ``w``, Potts), ``DiagonalCompatibility(v)``
    subtracts ``diag(v) K(Q)`` and ``MatrixCompatibility(M)`` subtracts ``(M + M^T) / 2 K(Q)`` (densecrf
    symmetrises the matrix; :class:`crfrnn.CrfRnn` allows asymmetric ones).
    """
    if isinstance(compat, Number) and not isinstance(compat, bool):
        value = float(cast(float, compat))  # a numbers.Number: float() takes the real ones, as intended
        if not np.isfinite(value):
            raise ValueError(f"compat must be finite, got {value!r}.")
        return value, None
    arr = torch.as_tensor(np.asarray(compat, dtype=np.float32))
    if not bool(torch.isfinite(arr).all()):
        raise ValueError("compat contains NaN or infinite values.")
    if arr.dim() == 1:
        if arr.shape[0] != num_labels:
            raise ValueError(f"a diagonal compatibility needs {num_labels} entries, got {arr.shape[0]}.")
        return 1.0, arr
    if arr.dim() == 2:
        if tuple(arr.shape) != (num_labels, num_labels):
            raise ValueError(f"a matrix compatibility must be {num_labels} x {num_labels}, got {tuple(arr.shape)}.")
        return 1.0, 0.5 * (arr + arr.t())
    raise ValueError("LabelCompatibility of dimension > 2 not meaningful.")


class DenseCRF:
    """pydensecrf's ``DenseCRF(N, L)``: a fully connected CRF over ``N`` variables with ``L`` labels."""

    def __init__(self, nvar: int, nlabels: int) -> None:
        self._nvar = _count("nvar", nvar, 1)
        self._nlabel = _count("nlabels", nlabels, 2)
        self._unary: Optional[torch.Tensor] = None  # (1, L, N) logits = -energy
        self._pairwise: list[Pairwise] = []
        self._cache = KernelCache(maxsize=1 << 16)  # this object's kernels, built once each
        self._stepper: Optional[Stepper] = None  # startInference / stepInference / klDivergence's compiled state

    def __getstate__(self) -> dict:
        """Copies and pickles leave the stepping state behind (it holds a lock; it is rebuilt on the next step)."""
        state = self.__dict__.copy()
        state["_stepper"] = None
        return state

    def setUnaryEnergy(self, u: np.ndarray, f: Optional[np.ndarray] = None) -> None:  # noqa: N802 (pydensecrf name)
        """Unary energies ``(L, N)`` float32 (``-log p``); ``+inf`` (an impossible label) is allowed."""
        if f is not None:
            raise NotImplementedError("learned (logistic) unaries are not supported; pass energies (L, N).")
        u = np.asarray(u)
        if u.shape != (self._nlabel, self._nvar):
            raise ValueError(f"Bad shape for unary energy (Need {(self._nlabel, self._nvar)}, got {u.shape})")
        logits = np.negative(u, dtype=np.float32)  # a copy of our own, in one pass
        bad = ~np.isfinite(logits)
        if bad.any():
            if np.isnan(logits[bad]).any() or np.isposinf(logits[bad]).any():
                raise ValueError("unary energy contains NaN or -inf values; energies are -log(p) >= any finite bound.")
            logits[bad] = -1e30  # energy +inf (probability 0): exp(-1e30) underflows to 0 as exp(-inf) does
        self._unary = torch.from_numpy(logits)[None]
        self._stepper = None

    def addPairwiseEnergy(  # noqa: N802
        self, features: np.ndarray, compat: Any, kernel: int = DIAG_KERNEL, normalization: int = NORMALIZE_SYMMETRIC
    ) -> None:
        """A Gaussian kernel on arbitrary ``(D, N)`` features (already divided by the kernel widths)."""
        features = np.asarray(features, dtype=np.float32)
        if features.ndim != 2 or features.shape[1] != self._nvar or features.shape[0] < 1:
            raise ValueError(f"Bad shape for pairwise energy (Need (?, {self._nvar}), got {features.shape})")
        if not np.isfinite(features).all():
            raise ValueError("pairwise features contain NaN or infinite values.")
        self._add(torch.from_numpy(np.ascontiguousarray(features.T))[None], compat, kernel, normalization)

    def _add(self, features: torch.Tensor, compat: Any, kernel: int, normalization: int) -> None:
        if kernel not in (CONST_KERNEL, DIAG_KERNEL, FULL_KERNEL):
            raise ValueError(f"unknown kernel type {kernel!r}; use one of the *_KERNEL constants.")
        if normalization not in _NORMALIZATION:
            raise ValueError(f"unknown normalization {normalization!r}; use one of the NORMALIZE_* constants.")
        weight, mu = _compatibility(compat, self._nlabel)
        self._stepper = None
        self._pairwise.append(
            Pairwise(
                features,
                weight=weight,
                compatibility=mu,
                normalization=_NORMALIZATION[normalization],
                cache_key=("term", len(self._pairwise)),
            )
        )

    def _logits(self) -> torch.Tensor:
        return torch.zeros(1, self._nlabel, self._nvar) if self._unary is None else self._unary

    def inference(self, niter: int) -> np.ndarray:
        """Marginals ``(L, N)`` float32 after ``niter`` mean-field iterations (``np.array(Q)`` works)."""
        niter = check_iterations("niter", niter)
        q = infer(self._logits(), self._pairwise, num_iterations=niter, cache=self._cache, name="unary energy")
        return q[0].numpy()

    def _step(self) -> Stepper:
        """This object's stepper (padded unary, lattices, label transforms), made once and dropped when a unary or
        a pairwise term is added.
        """
        if self._stepper is None:
            self._stepper = Stepper(self._logits(), self._pairwise, self._cache, name="unary energy")
        return self._stepper

    def map(self, n_iterations: int = 5) -> np.ndarray:
        """The ``map`` of densecrf: the most probable label ``(N,)`` (int64) after ``n_iterations`` iterations."""
        return np.argmax(self.inference(n_iterations), axis=0)

    def startInference(self):  # noqa: N802
        """``(Q, tmp1, tmp2)`` to step through inference with :meth:`stepInference`, as in pydensecrf: ``Q (L, N)``
        float32 is ``softmax(-unary)``; ``tmp1`` and ``tmp2`` are unused placeholders.
        """
        return self._step().start(), np.empty(0, np.float32), np.empty(0, np.float32)

    def _check_q(self, Q: Any) -> np.ndarray:  # noqa: N803
        Q = np.asarray(Q)
        if Q.shape != (self._nlabel, self._nvar):
            raise ValueError(f"Q must have shape {(self._nlabel, self._nvar)}, got {Q.shape}.")
        return Q

    def stepInference(self, Q: np.ndarray, tmp1: Any = None, tmp2: Any = None) -> None:  # noqa: N802, N803
        """One mean-field iteration, updating ``Q (L, N)`` in place (one compiled iteration of the engine behind
        :meth:`inference`; ``tmp1`` and ``tmp2`` are accepted and unused).
        """
        q = self._check_q(Q)
        direct = q is Q and q.dtype == np.float32 and q.flags.c_contiguous and q.flags.writeable
        if direct:
            self._step().step(q, q)
        else:
            Q[...] = self._step().step(q, np.empty((self._nlabel, self._nvar), np.float32))

    def klDivergence(self, Q: np.ndarray) -> float:  # noqa: N802, N803
        """Densecrf's KL divergence of the marginals ``Q (L, N)`` (up to the log-partition constant).

        :func:`crfrnn.energy.kl_divergence` with ``convention="densecrf"`` (no ``1/2`` on the pairwise term, each
        point's own value included, see ``docs/losses.md``), computed with one compiled filtering pass of ``Q``.
        """
        entropy, energy, deviation = self._step().free_energy_terms(self._check_q(Q))
        if deviation > 1e-3:
            raise ValueError(
                f"Q must be marginals: non-negative and summing to 1 over labels (axis 0); its sums are off by up to "
                f"{deviation:.3g}. Pass the Q of startInference / stepInference, or normalise it."
            )
        return entropy - energy

    def setKernelParameters(self, *args: Any, **kwargs: Any) -> None:  # noqa: N802
        """Not supported (densecrf's parameter learning): raises; learn with :class:`crfrnn.CrfRnn`."""
        raise NotImplementedError("learning the CRF's parameters is not supported here; use crfrnn.CrfRnn.")


class DenseCRF2D(DenseCRF):
    """pydensecrf's ``DenseCRF2D(W, H, L)`` for an image of width ``W`` and height ``H``."""

    def __init__(self, w: int, h: int, nlabels: int) -> None:
        self._w = _count("w", w, 1)
        self._h = _count("h", h, 1)
        super().__init__(self._w * self._h, nlabels)

    def addPairwiseGaussian(  # noqa: N802
        self, sxy: Any, compat: Any, kernel: int = DIAG_KERNEL, normalization: int = NORMALIZE_SYMMETRIC
    ) -> None:
        """Smoothness kernel on positions divided by ``sxy`` (a number or ``(sx, sy)``)."""
        sx, sy = check_widths("sxy", sxy, 2, "axis (sx, sy)")
        self._add(position_features((self._h, self._w), (sy, sx), name="sxy"), compat, kernel, normalization)

    def addPairwiseBilateral(  # noqa: N802
        self,
        sxy: Any,
        srgb: Any,
        rgbim: np.ndarray,
        compat: Any,
        kernel: int = DIAG_KERNEL,
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
        sx, sy = check_widths("sxy", sxy, 2, "axis (sx, sy)")
        if rgbim.dtype.kind not in "biu" and not np.isfinite(rgbim).all():  # whole numbers (uint8) always are
            raise ValueError("rgbim contains NaN or infinite values.")
        img = torch.from_numpy(np.ascontiguousarray(rgbim)).permute(2, 0, 1)[None].float()
        feats = bilateral_features(img, (sy, sx), srgb, names=("sxy", "srgb"))
        self._add(feats, compat, kernel, normalization)

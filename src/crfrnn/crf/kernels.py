"""Built Gaussian kernels (lattice plus normaliser) and the cache that keeps them for reuse.

A :class:`GaussianKernel` is everything about one kernel that depends only on its features: the
permutohedral lattice, the normalisation factors and the self-weights. It is built once per call (or kept
in a :class:`KernelCache` when the features depend only on the image size, as the spatial kernel's do) and
then used read-only by every label, iteration and the backward pass, from any number of threads.

Features that require a gradient (learned widths, a learned guide) keep their graph: every filtering, the
normaliser ``K 1`` included, is then differentiable with respect to them (the exact Gaussian's derivative in
lattice filterings of moment channels, ``docs/widths.md``); the lattice's self-weight (``exclude_self``) is held
constant. Such kernels are never kept in a :class:`KernelCache` (they would hold the caller's graph).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Callable, Hashable, Optional

import torch
from torch import Tensor

from crfrnn.crf.features import width_factors
from crfrnn.lattice import PermutohedralLattice, gaussian_filter

__all__ = ["GaussianKernel", "KernelCache", "NORMALIZATIONS"]

#: Normalisations of the filtered messages, with their names in Krähenbühl's densecrf:
#: ``"row"`` divides by the filtered all-ones image (``NORMALIZE_AFTER``; the released CRF-RNN code),
#: ``"symmetric"`` is ``n^-1/2 K n^-1/2`` (``NORMALIZE_SYMMETRIC``; densecrf's default), ``"column"``
#: is ``K n^-1`` (``NORMALIZE_BEFORE``) and ``"none"`` is the unnormalised kernel ``K``
#: (``NO_NORMALIZATION``; with the lattice, K carries the lattice's amplitude, see docs/lattice.md).
NORMALIZATIONS = ("row", "symmetric", "column", "none")


def check_normalization(normalization: str) -> str:
    if normalization not in NORMALIZATIONS:
        raise ValueError(f"normalization must be one of {NORMALIZATIONS}, got {normalization!r}.")
    return normalization


class GaussianKernel:
    """One normalised Gaussian message-passing operator ``Q -> normalised K Q``, built once, reused.

    The message of marginals ``q`` is ``post * (K (pre * q) - self * pre * q)``, with ``pre``/``post`` set by
    the normalisation and ``self`` the self-weight when the point's own value is excluded.

    Args:
        features: ``(B, N, D)`` features already divided by the kernel widths; when they require a gradient the
            kernel is differentiable with respect to them (and to the widths and guide they were built from with
            :mod:`crfrnn.crf.features`).
        normalization: one of :data:`NORMALIZATIONS`.
        exclude_self: leave each point's own value out of its message (the paper's ``j != i``); with the
            lattice this subtracts the lattice's exact self-weight (see
            :meth:`PermutohedralLattice.self_weights`), with ``exact=True`` it subtracts ``exp(0) = 1``.
        exact: use the O(N^2) exact Gaussian instead of the lattice (small inputs, for tests).
        backend: lattice backend, see :class:`PermutohedralLattice`.

    Example:
        >>> f = torch.rand(1, 50, 3) * 4
        >>> GaussianKernel(f)(torch.ones(1, 50, 2)).shape
        torch.Size([1, 50, 2])
    """

    def __init__(
        self,
        features: Tensor,
        *,
        normalization: str = "row",
        exclude_self: bool = False,
        exact: bool = False,
        backend: str = "auto",
    ) -> None:
        self.normalization = check_normalization(normalization)
        self.exact = exact
        grad = features.requires_grad and torch.is_grad_enabled()
        self.features = features if grad else features.detach()
        #: ``(base, widths)`` with features ``base / widths`` (or ``(features, None)``) when they need a gradient
        self.grad_features: Optional[tuple[Tensor, Optional[Tensor]]] = None
        if grad and not exact:
            factors = width_factors(features)
            if factors is not None and not factors[0].requires_grad:
                self.grad_features = (factors[0].detach(), factors[1])  # the widths' gradient alone: cheaper
            else:
                self.grad_features = (features, None)
        self.batch_size, self.num_points = features.shape[:2]
        lattice = None if exact else PermutohedralLattice(features.detach(), backend=backend)
        self.lattice = lattice
        b, n, _ = features.shape
        self.self_weight: Optional[Tensor] = None
        if exclude_self:
            self.self_weight = features.new_ones(b, n, 1) if lattice is None else lattice.self_weights().unsqueeze(-1)
        ones = features.new_ones(b, n, 1)
        norm = self._filter(ones)
        if exclude_self:
            # A point with no neighbour but itself has K 1 - self = 0 up to rounding: it gets no message
            # (rather than rounding noise divided by zero).
            assert self.self_weight is not None  # set above
            tol = 1e3 * torch.finfo(features.dtype).eps * (norm + self.self_weight)
            alone = norm <= tol
            norm = torch.where(alone, torch.ones_like(norm), norm)
        self.pre: Optional[Tensor] = None
        self.post: Optional[Tensor] = None
        if normalization == "row":
            self.post = 1.0 / norm
        elif normalization == "column":
            self.pre = 1.0 / norm
        elif normalization == "symmetric":
            self.pre = self.post = norm.rsqrt()
        if exclude_self and normalization != "none":  # no message for a point alone in feature space
            if self.post is not None:
                self.post = self.post.masked_fill(alone, 0.0)
            else:
                assert self.pre is not None  # column normalisation
                self.pre = self.pre.masked_fill(alone, 0.0)

    def _filter(self, q: Tensor) -> Tensor:
        out = self._raw(q)
        if self.self_weight is not None:
            out = out - self.self_weight.to(q.dtype) * q
        return out

    def _raw(self, q: Tensor) -> Tensor:
        if self.exact or self.lattice is None:  # no lattice exactly when exact
            out = gaussian_filter(q, self.features.to(q.dtype), exact=True)
        elif self.grad_features is not None:
            base, widths = self.grad_features
            out = self.lattice.filter(q, features=base.to(q.dtype).view(*q.shape[:2], -1), widths=widths)
        else:
            out = self.lattice.filter(q)
        return out

    def factors(self, dtype: torch.dtype) -> tuple[Tensor, Tensor, Tensor]:
        """``(pre, post, self)``, each ``(B, N)`` in ``dtype`` (ones, ones and zeros where unused)."""
        shape = (self.batch_size, self.num_points)
        dev = self.features.device
        one = torch.ones(shape, dtype=dtype, device=dev)
        pre = one if self.pre is None else self.pre.detach().reshape(shape).to(dtype)
        post = one if self.post is None else self.post.detach().reshape(shape).to(dtype)
        selfw = (
            torch.zeros(shape, dtype=dtype, device=dev)
            if self.self_weight is None
            else self.self_weight.reshape(shape).to(dtype)
        )
        return pre, post, selfw

    def filtered(self, q: Tensor) -> Tensor:
        """``K (pre * q)`` ``(B, N, C)`` for ``q (B, N, C)``: the message before self-exclusion and ``post`` (which
        the fused step of :mod:`crfrnn.crf._step` applies); a kernel with ``B = 1`` serves a batch as
        :meth:`__call__` does.
        """
        b, n, c = q.shape
        if self.batch_size == 1 and b > 1:
            out = self.filtered(q.transpose(0, 1).reshape(1, n, b * c))
            return out.view(n, b, c).transpose(0, 1)
        return self._raw(q if self.pre is None else q * self.pre.to(q.dtype))

    def __call__(self, q: Tensor) -> Tensor:
        """Normalised message ``(B, N, C)`` for marginals ``q (B, N, C)``.

        A kernel built for one image (``B = 1``) applied to a batch serves every image of it (the batch is
        folded into the channels): this is how one spatial kernel serves a whole batch.
        """
        b, n, c = q.shape
        if self.batch_size == 1 and b > 1:
            out = self(q.transpose(0, 1).reshape(1, n, b * c))
            return out.view(n, b, c).transpose(0, 1)
        if self.pre is not None:
            q = q * self.pre.to(q.dtype)
        out = self._filter(q)
        return out if self.post is None else out * self.post.to(q.dtype)


class KernelCache:
    """Kernels kept between calls, for features that depend only on the grid (the spatial kernel).

    Give one to :func:`crfrnn.dense_crf` or :func:`crfrnn.mean_field` (``cache=``) when refining many images of
    the same size; :class:`crfrnn.CrfRnn` owns one. Safe to share between threads: kernels are immutable once
    built (two threads missing the same key at once may both build it; one result is kept). Without a cache
    nothing outlives the call. A kernel whose features require a gradient is built and returned but never
    kept (it would hold the caller's autograd graph, and its widths change with every step).

    Args:
        maxsize: kernels kept, least recently used dropped first.

    Example:
        >>> cache = KernelCache()
        >>> len(cache)
        0
    """

    def __init__(self, maxsize: int = 8) -> None:
        if not isinstance(maxsize, int) or maxsize < 1:
            raise ValueError(f"maxsize must be an integer >= 1, got {maxsize!r}.")
        self.maxsize = maxsize
        self._items: "OrderedDict[Hashable, GaussianKernel]" = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._items)

    def __repr__(self) -> str:
        return f"KernelCache({len(self)} of {self.maxsize} kernels)"

    def __getstate__(self) -> dict:  # a module holding a cache stays deep-copyable and picklable (empty cache)
        return {"maxsize": self.maxsize}

    def __setstate__(self, state: dict) -> None:
        KernelCache.__init__(self, state["maxsize"])

    def clear(self) -> None:
        """Drop every kernel (and the memory of its lattice)."""
        with self._lock:
            self._items.clear()

    def get(self, key: Hashable, build: Callable[[], GaussianKernel]) -> GaussianKernel:
        """The kernel stored under ``key``, built with ``build()`` (outside the lock) if missing."""
        with self._lock:
            kernel = self._items.get(key)
            if kernel is not None:
                self._items.move_to_end(key)
                return kernel
        kernel = build()
        if kernel.features.requires_grad:
            return kernel
        with self._lock:
            kernel = self._items.setdefault(key, kernel)
            self._items.move_to_end(key)
            while len(self._items) > self.maxsize:
                self._items.popitem(last=False)
        return kernel

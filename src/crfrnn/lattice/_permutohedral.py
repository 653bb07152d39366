"""The permutohedral lattice (Adams, Baek & Davis 2010) for fast Gaussian filtering.

A :class:`PermutohedralLattice` is built once from the features of a batch of point sets and then filters
any number of value channels, any number of times, in ``O(N (D + 1) C)`` per call:

1. *splat*: each point's value is scattered onto the ``D + 1`` vertices of the lattice simplex that
   encloses it, with barycentric weights;
2. *blur*: values are convolved with ``[1/2, 1, 1/2]`` between neighbouring vertices along each of the
   ``D + 1`` lattice directions in turn;
3. *slice*: each point gathers its value back from its simplex vertices with the same weights.

The construction and every scale constant follow Krähenbühl's ``densecrf`` (the code behind pydensecrf
and the Caffe CRF-RNN layer), so the filter matches that tool. It approximates

    out_i = sum_j exp(-|f_i - f_j|^2 / 2) v_j

for features ``f`` already divided by the kernel widths; ``docs/lattice.md`` measures how close the
approximation is (its effective width and amplitude against the exact Gaussian).

The blur directions are applied in a fixed order, so the lattice operator ``K`` is not exactly
symmetric; its adjoint ``K^T`` is the same splat/blur/slice with the directions in reverse order, and
that is what the backward pass runs (on the lattice built in the forward pass).

Batches are handled by giving every vertex key a batch index, so all images of a batch share one
block-diagonal lattice and one splat/blur/slice call, while no image ever sees another image's points.
"""

from __future__ import annotations

from typing import Any, Optional

import torch
from torch import Tensor

from crfrnn.lattice._autograd import FeatureFilter
from crfrnn.lattice._backends import eager_operator, resolve_backend
from crfrnn.lattice._construction import check_features
from crfrnn.lattice._custom_ops import CompiledOperator, CompiledTritonOperator
from crfrnn.lattice._operators import LatticeOperator

__all__ = ["PermutohedralLattice", "lattice_filter", "select_operator"]


def select_operator(backend: str, device: torch.device) -> type[LatticeOperator]:
    """The lattice operator for ``backend`` on ``device``: the custom operators while torch.compile traces (with the
    Triton filter kernels where ``backend`` resolves to ``"triton"``; other names are not looked at then), else the
    eager one (:func:`crfrnn.lattice._backends.resolve_backend`).
    """
    if torch.compiler.is_compiling():
        triton = backend == "triton" or (backend == "auto" and device.type == "cuda")
        return CompiledTritonOperator if triton and resolve_backend(backend, device) == "triton" else CompiledOperator
    return eager_operator(backend, device)


class PermutohedralLattice:
    """A permutohedral lattice built once from features and reused for any number of filterings.

    Filtering approximates the Gaussian ``out_i = sum_j exp(-|f_i - f_j|^2 / 2) v_j`` for every image of
    the batch separately (divide the features by the kernel widths first). The filter is linear in the
    values and differentiable with respect to them (the backward pass is the adjoint filter on the same
    lattice); gradients flow to the features only when they are passed to :meth:`filter` (``features=``), by
    the exact Gaussian's derivative in moment channels (``docs/widths.md``).

    Args:
        features: ``(B, N, D)`` float32 or float64, ``B >= 1`` point sets of ``N >= 1`` points with
            ``D >= 1`` features each, already divided by the kernel widths.
        backend: ``"auto"`` (compiled CPU kernels when the features are on the CPU and numba is
            installed, the Triton kernels on CUDA when triton is installed, falling back to pure PyTorch with a
            warning if they fail, and pure PyTorch otherwise; ``CRFRNN_AUTO_TRITON=0`` keeps it off triton),
            ``"torch"`` (pure PyTorch sparse matrices, any device), ``"numba"`` (CPU only) or ``"triton"`` (the
            Triton build and filter kernels: CUDA tensors, or CPU tensors under ``TRITON_INTERPRET=1``).

    Example:
        >>> feats = torch.rand(2, 100, 3) * 5
        >>> lattice = PermutohedralLattice(feats)
        >>> lattice.filter(torch.ones(2, 100, 4)).shape
        torch.Size([2, 100, 4])
    """

    def __init__(self, features: Tensor, *, backend: str = "auto") -> None:
        check_features(features, torch.compiler.is_compiling())
        operator = select_operator(backend, features.device)
        self.batch_size, self.num_points, self.dim = features.shape
        self.device = features.device
        self.dtype = features.dtype
        d = self.dim
        #: the scale constant applied when slicing (densecrf's ``alpha``)
        self.alpha = 1.0 / (1.0 + 2.0 ** (-d))
        self._operator = operator.build(features.detach().reshape(-1, d), self.batch_size, self.alpha)
        #: the backend that runs: ``"torch"``, ``"numba"``, ``"triton"``, or ``"ops"`` (the custom operators under
        #: torch.compile)
        self.backend = self._operator.name
        #: number of lattice vertices (all images of the batch together)
        self.num_vertices = self._operator.num_vertices
        self._self_weights: Optional[Tensor] = None

    def __repr__(self) -> str:
        return (
            f"PermutohedralLattice(batch_size={self.batch_size}, num_points={self.num_points}, "
            f"dim={self.dim}, num_vertices={self.num_vertices}, backend={self.backend!r})"
        )

    def self_weights(self) -> Tensor:
        """The diagonal of the lattice operator: how much of its own value each point gets back.

        For the exact Gaussian this is ``exp(0) = 1``; the lattice's value depends on where the point sits
        in its simplex (about 0.75 to 1.0 for ``D = 2``, 0.45 to 0.75 for ``D = 5``), so excluding the
        self-connection must subtract this, not 1. Computed exactly from the lattice (every blur path that
        leaves a corner of the point's simplex and ends on another), cached after the first call.

        Returns:
            ``(B, N)`` in the lattice's dtype.
        """
        if self._self_weights is None:
            self._self_weights = self._operator.self_weights().view(self.batch_size, self.num_points)
        return self._self_weights

    @property
    def offsets(self) -> Tensor:
        """``(B * N, D + 1)`` integer: the vertex of each point's simplex corner."""
        return self._operator.offsets

    @property
    def weights(self) -> Tensor:
        """``(B * N, D + 1)`` the barycentric weights of each point in its simplex."""
        return self._operator.weights

    @property
    def rank(self) -> Tensor:
        """``(B * N, D + 1)`` integer: each simplex's orientation (the rank of each elevated coordinate)."""
        return self._operator.rank

    @property
    def neighbours(self) -> Tensor:
        """``(D + 1, 2, M)`` integer: each vertex's two neighbours along every lattice direction (``M`` if absent)."""
        return self._operator.neighbours

    def operators(self, dtype: torch.dtype) -> Any:
        """The backend's splat/blur/slice object for ``dtype`` (for ``"numba"`` the compiled kernels'
        :class:`crfrnn._kernels.NumbaOperators`, which the fused mean field takes), built once and reused.
        """
        return self._operator.operators(dtype)

    def filter(
        self,
        values: Tensor,
        *,
        reverse: bool = False,
        features: Optional[Tensor] = None,
        widths: Optional[Tensor] = None,
        width_probes: int = 0,
    ) -> Tensor:
        """Gaussian-filter values with this lattice.

        Args:
            values: ``(B, N, C)`` float32 or float64, on the lattice's device.
            reverse: apply the adjoint ``K^T`` (blur directions in reverse order) instead of ``K``.
            features: the ``(B, N, D)`` features this lattice was built from, when they need a gradient: the
                result is then differentiable with respect to them too, by the exact Gaussian's derivative
                written as lattice filterings of moment channels (``docs/widths.md``; not with ``reverse``).
            widths: ``(D,)``, when ``features`` are given undivided: the lattice's features are
                ``features / widths``, and the result is differentiable with respect to both (when the
                undivided features need no gradient, the widths' gradient costs about half of theirs).
            width_probes: estimate the widths' gradient (when the undivided features need none) with this
                many random sign probes over the value channels instead of exactly: unbiased and much cheaper
                (``D`` moment channels per probe instead of ``D C``), but noisy (with many channels, several
                times the gradient per probe: ``docs/widths.md``); 0 (default) is exact.

        Returns:
            ``(B, N, C)`` filtered values, differentiable with respect to ``values``.
        """
        self._check_values(values)
        b, n, c = values.shape
        if features is None:
            if widths is not None:
                raise ValueError("widths are the divisors of features: pass features= with them.")
            return self._operator.filter(values.reshape(b * n, c), reverse).view(b, n, c)
        if reverse:
            raise ValueError("gradients with respect to the features are available for the forward filter only.")
        if features.shape != (b, n, self.dim):
            raise ValueError(
                f"features must have the lattice's shape (B, N, D) = ({b}, {n}, {self.dim}), got "
                f"{tuple(features.shape)}."
            )
        if widths is not None and widths.shape != (self.dim,):
            raise ValueError(f"widths must have shape (D,) = ({self.dim},), got {tuple(widths.shape)}.")
        dtype = values.dtype
        w = None if widths is None else widths.to(dtype)
        if isinstance(width_probes, bool) or not isinstance(width_probes, int) or width_probes < 0:
            raise ValueError(f"width_probes must be an integer >= 0, got {width_probes!r}.")
        out = FeatureFilter.apply(
            values.reshape(b * n, c),
            features.reshape(b * n, self.dim).to(dtype),
            w,
            self._operator,
            self.batch_size,
            width_probes,
        )
        return out.view(b, n, c)

    def _check_values(self, values: Tensor) -> None:
        if not isinstance(values, Tensor):
            raise TypeError(f"values must be a torch.Tensor of shape (B, N, C), got {type(values).__name__}.")
        if values.dim() != 3:
            raise ValueError(
                f"values must have shape (B, N, C) = ({self.batch_size}, {self.num_points}, C), got a "
                f"{values.dim()}-D tensor of shape {tuple(values.shape)}; add the missing dimensions with "
                "unsqueeze/reshape."
            )
        if values.shape[0] != self.batch_size or values.shape[1] != self.num_points:
            raise ValueError(
                f"values of shape {tuple(values.shape)} do not match the lattice, built for "
                f"(B, N) = ({self.batch_size}, {self.num_points}); pass values of shape "
                f"({self.batch_size}, {self.num_points}, C)."
            )
        if values.dtype not in (torch.float32, torch.float64):
            raise TypeError(f"values must be float32 or float64, got {values.dtype}; convert with values.float().")
        if values.device != self.device:
            raise ValueError(
                f"values are on {values.device} but the lattice was built on {self.device}; move them "
                f"with values.to({str(self.device)!r})."
            )


def lattice_filter(values: Tensor, features: Tensor, *, backend: str = "auto") -> Tensor:
    """Approximate Gaussian filtering with a permutohedral lattice built for this one call.

    Args:
        values: ``(B, N, C)`` values to filter.
        features: ``(B, N, D)`` features, already divided by the kernel widths.
        backend: see :class:`PermutohedralLattice`.

    Returns:
        ``(B, N, C)`` approximately ``sum_j exp(-|f_i - f_j|^2 / 2) v_j``, differentiable with respect to the
        values and (when they require a gradient) the features.
    """
    lattice = PermutohedralLattice(features, backend=backend)
    return lattice.filter(values, features=features if features.requires_grad else None)

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

import functools
import math
import warnings
from typing import Optional

import torch
from torch import Tensor

from crfrnn import _kernels

__all__ = ["PermutohedralLattice", "lattice_filter"]

_BACKENDS = ("auto", "torch", "numba")
# Vertex keys are packed into one int64 code when the key ranges allow it (almost always); beyond this
# many bits the lattice falls back to deduplicating whole key rows, which is slower but has no limit.
_MAX_CODE_BITS = 62
# Largest |feature| accepted (crfrnn._utils.validation.MAX_FEATURE): keys stay far inside int64 and float64's exact integers.
_MAX_FEATURE = 2.0**40


def _csr(crow: Tensor, col: Tensor, val: Tensor, size: tuple[int, int]) -> Tensor:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*[Ss]parse CSR tensor support is in beta.*")
        return torch.sparse_csr_tensor(crow, col, val, size=size, check_invariants=False)


def _canonical_simplex(d: int, device: torch.device) -> Tensor:
    """``canonical[r, k]``: coordinate offset of the remainder-``r`` vertex for a coordinate of rank ``k``."""
    r = torch.arange(d + 1, device=device).view(-1, 1)
    k = torch.arange(d + 1, device=device).view(1, -1)
    return torch.where(k <= d - r, r, r - (d + 1))


def _simplex_coordinates(features: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Enclosing simplex of every point: vertex keys and barycentric weights.

    Args:
        features: ``(P, D)`` floating point, already divided by the kernel widths.

    Returns:
        keys: ``(P, D + 1, D)`` int64, the first ``D`` lattice coordinates of each of the ``D + 1``
        enclosing vertices (the last coordinate is implied: keys sum to zero).
        weights: ``(P, D + 1)`` barycentric weights (non-negative, summing to one), features' dtype
        (computed in float64).
        rank: ``(P, D + 1)`` int64, the rank of each elevated coordinate's residual (the simplex's
        orientation; used to compute the lattice's self-weights).
    """
    num_points, d = features.shape
    d1 = d + 1
    out_dtype = features.dtype
    # Coordinates in float64 (except where the device has none): with float32, features of a few hundred
    # units lose ~1e-5 of their barycentric weights to rounding.
    device, dtype = features.device, (torch.float64 if features.device.type != "mps" else features.dtype)
    features = features.to(dtype)
    # Elevate onto the hyperplane x . 1 = 0 of R^(d+1) (p. 5 of Adams et al.), scaled so that the
    # lattice blur has the expected standard deviation (p. 6).
    inv_std_dev = math.sqrt(2.0 / 3.0) * d1
    i = torch.arange(d, device=device, dtype=torch.float64)
    scale = (inv_std_dev / torch.sqrt((i + 1.0) * (i + 2.0))).to(dtype)
    cf = features * scale
    suffix = cf.flip(1).cumsum(1).flip(1)  # suffix[:, k] = sum_{m >= k} cf[:, m]
    later = torch.cat([suffix[:, 1:], cf.new_zeros(num_points, 1)], dim=1)
    j = torch.arange(1, d1, device=device, dtype=dtype)
    elevated = torch.cat([suffix[:, :1], later - j * cf], dim=1)  # (P, d + 1)

    # Nearest remainder-0 lattice point, then sort the residual to find the simplex.
    rem0 = torch.round(elevated / d1) * d1
    total = torch.round(rem0.sum(1) / d1).to(torch.int64)
    resid = elevated - rem0
    # rank[k] = #{j > k: r_j > r_k} + #{j < k: r_j >= r_k}  (densecrf's tie-breaking)
    r_k = resid.unsqueeze(2)
    r_j = resid.unsqueeze(1)
    idx = torch.arange(d1, device=device)
    after = idx.view(1, -1) > idx.view(-1, 1)  # [k, j]: j > k
    before = idx.view(1, -1) < idx.view(-1, 1)  # [k, j]: j < k
    rank = ((after & (r_j > r_k)) | (before & (r_j >= r_k))).sum(2)
    rank = rank + total.view(-1, 1)
    low = rank < 0
    high = rank > d
    rank = rank + d1 * low - d1 * high
    rem0 = rem0 + d1 * low.to(dtype) - d1 * high.to(dtype)

    # Barycentric coordinates (p. 10).
    v = (elevated - rem0) / d1
    bary = features.new_zeros(num_points, d + 2)
    bary.scatter_add_(1, d - rank, v)
    bary.scatter_add_(1, d - rank + 1, -v)
    bary[:, 0] += 1.0 + bary[:, d + 1]
    weights = bary[:, :d1]

    canonical = _canonical_simplex(d, device)  # (d + 1 remainders, d + 1 ranks)
    # keys[p, r, i] = rem0[p, i] + canonical[r, rank[p, i]]
    offsets = canonical[:, rank].permute(1, 0, 2)  # (P, r, i)
    keys = rem0.to(torch.int64).unsqueeze(1) + offsets
    return keys[:, :, :d].contiguous(), weights.to(out_dtype).contiguous(), rank


class _KeyIndex:
    """Maps integer key rows to vertex ids: one int64 code per row when it fits, rows otherwise."""

    def __init__(self, keys: Tensor, margin: int) -> None:
        # keys: (K, c) int64. Codes leave ``margin`` spare values on each side of every coordinate so
        # that neighbour keys (at most ``margin`` away) encode without clashing with real keys.
        lo = keys.min(0).values - margin
        span = keys.max(0).values + margin - lo + 1
        bits = torch.log2(span.to(torch.float64)).sum().item()
        self.lo = lo
        self.span = span
        if bits < _MAX_CODE_BITS:
            strides = torch.cumprod(torch.cat([span.new_ones(1), span[:-1]]), 0)
            self.strides: Optional[Tensor] = strides
            self.codes, self.inverse = torch.unique(self._encode(keys), sorted=True, return_inverse=True)
            self.vertex_keys: Optional[Tensor] = None
        else:
            self.strides = None
            self.vertex_keys, self.inverse = torch.unique(keys, dim=0, sorted=True, return_inverse=True)

    @property
    def num_vertices(self) -> int:
        return int(self.codes.numel() if self.strides is not None else self.vertex_keys.shape[0])

    def _encode(self, keys: Tensor) -> Tensor:
        return ((keys - self.lo) * self.strides).sum(1)

    def keys(self) -> Tensor:
        """``(M, c)`` the key of every vertex, in vertex-id order."""
        if self.strides is None:
            return self.vertex_keys
        rel = (self.codes.unsqueeze(1) // self.strides) % self.span
        return rel + self.lo

    def lookup(self, queries: Tensor) -> Tensor:
        """Vertex id of every query key row ``(Q, c)``, or ``M`` where the key is not a vertex."""
        m = self.num_vertices
        if self.strides is not None:
            inside = ((queries >= self.lo) & (queries < self.lo + self.span)).all(1)
            codes = self._encode(queries)
            pos = torch.searchsorted(self.codes, codes).clamp_(max=m - 1)
            found = inside & (self.codes[pos] == codes)
            return torch.where(found, pos, torch.full_like(pos, m))
        both = torch.cat([self.vertex_keys, queries], 0)
        _, inv = torch.unique(both, dim=0, return_inverse=True)
        table = torch.full((int(inv.max()) + 1,), m, dtype=torch.int64, device=queries.device)
        table[inv[:m]] = torch.arange(m, device=queries.device)
        return table[inv[m:]]


def _neighbours(index: _KeyIndex, d: int) -> Tensor:
    """``(D + 1, 2, M)`` int64: each vertex's two neighbours along every lattice direction (``M`` if absent).

    Along direction ``j`` the neighbours of key ``k`` are ``k - 1 + (D + 1) e_j`` and ``k + 1 - (D + 1) e_j``
    (on the first ``D`` coordinates; the batch index, stored last, never changes).
    """
    keys = index.keys()  # (M, d + 1): d lattice coordinates then the batch index
    m = keys.shape[0]
    step = torch.ones(d + 1, d + 1, dtype=torch.int64, device=keys.device)
    step[:, :d] -= (d + 1) * torch.eye(d + 1, d, dtype=torch.int64, device=keys.device)
    step[:, d] = 0  # batch column
    # step[j] = -(k - 1 + (d+1) e_j) + k on the lattice coordinates, i.e. minus the n1 offset
    queries = torch.stack([keys.unsqueeze(0) - step.unsqueeze(1), keys.unsqueeze(0) + step.unsqueeze(1)], 1)
    return index.lookup(queries.reshape(-1, d + 1)).view(d + 1, 2, m)


def _grouped_csr(rows: int, cols: int, col: Tensor, val: Tensor) -> Tensor:
    """CSR matrix whose row ``r`` holds ``col[r]``/``val[r]`` (``(rows, k)``), entries with col == cols dropped."""
    col, order = torch.sort(col, dim=1)
    val = torch.gather(val, 1, order)
    keep = col < cols
    crow = torch.zeros(rows + 1, dtype=torch.int64, device=col.device)
    crow[1:] = keep.sum(1).cumsum(0)
    return _csr(crow, col[keep], val[keep], (rows, cols))


class _TorchOperators:
    """Splat, blur and slice of one lattice as sparse CSR matrices in one dtype (the pure PyTorch path)."""

    def __init__(self, offsets: Tensor, weights: Tensor, neighbours: Tensor, num_vertices: int, alpha: float):
        num_points, d1 = offsets.shape
        m = num_vertices
        dev = offsets.device
        flat = offsets.reshape(-1)
        order = torch.argsort(flat, stable=True)
        crow = torch.zeros(m + 1, dtype=torch.int64, device=dev)
        crow[1:] = torch.bincount(flat, minlength=m).cumsum(0)
        point = torch.div(order, d1, rounding_mode="floor")
        self.splat = _csr(crow, point, weights.reshape(-1)[order], (m, num_points))
        self.slice = _grouped_csr(num_points, m, offsets, weights * alpha)
        self_col = torch.arange(m, device=dev).view(-1, 1)
        blur_val = weights.new_tensor([1.0, 0.5, 0.5]).expand(m, 3)
        self.blur = [
            _grouped_csr(m, m, torch.cat([self_col, neighbours[j].t()], 1), blur_val) for j in range(d1)
        ]

    def __call__(self, values: Tensor, reverse: bool) -> Tensor:
        x = torch.sparse.mm(self.splat, values)
        for b in reversed(self.blur) if reverse else self.blur:
            x = torch.sparse.mm(b, x)
        return torch.sparse.mm(self.slice, x)


def _blur_paths(d: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """:func:`_canonical_paths` on ``device``."""
    steps, weight = _canonical_paths(d)
    return steps.to(device), weight.to(device)


@functools.lru_cache(maxsize=None)
def _canonical_paths(d: int) -> tuple[Tensor, Tensor]:
    """Every way the blur moves mass between two corners of one simplex, for the canonical simplex.

    Along direction ``j`` the blur keeps a vertex's value (weight 1) or moves it to a neighbour at
    ``+-((D + 1) e_j - 1)`` (weight 1/2). Going from corner ``q`` to corner ``r`` takes steps
    ``s in {-1, 0, 1}^(D+1)`` with ``(D + 1) s - sum(s) 1 = key_r - key_q``; there are at most three.

    Returns:
        steps: ``(D + 1, D + 1, 3, D + 1)`` int64, ``steps[r, q, c]`` (zeros where unused);
        weight: ``(D + 1, D + 1, 3)``, ``0.5 ** nnz(steps)`` for valid paths and 0 otherwise.
    """
    d1 = d + 1
    canonical = _canonical_simplex(d, torch.device("cpu"))
    steps = torch.zeros(d1, d1, 3, d1, dtype=torch.int64)
    weight = torch.zeros(d1, d1, 3, dtype=torch.float64)
    for r in range(d1):
        for q in range(d1):
            delta = canonical[r] - canonical[q]
            c = 0
            for t in range(-d1, d1 + 1):
                x = delta + t
                if bool((x % d1 != 0).any()):
                    continue
                st = torch.div(x, d1, rounding_mode="floor")
                if bool((st.abs() > 1).any()) or int(st.sum()) != t:
                    continue
                steps[r, q, c] = st
                weight[r, q, c] = 0.5 ** int((st != 0).sum())
                c += 1
    return steps, weight  # computed once per dimension (about 10 ms each in Python) and never written to


def _diagonal(offsets: Tensor, weights: Tensor, rank: Tensor, neighbours: Tensor, alpha: float, *,
              compiled: bool) -> Tensor:
    """:func:`_self_weights`, by the compiled kernel (:func:`crfrnn._kernels.self_weights`: CPU tensors) when
    ``compiled``, else by the PyTorch walk; no gradient either way."""
    if compiled:
        steps, path_w = _canonical_paths(offsets.shape[1] - 1)
        return _kernels.self_weights(offsets, weights, rank, neighbours, alpha, steps, path_w)
    with torch.no_grad():
        return _self_weights(offsets, weights, rank, neighbours, alpha)


def _self_weights(offsets: Tensor, weights: Tensor, rank: Tensor, neighbours: Tensor, alpha: float) -> Tensor:
    """``K_ii = alpha sum_{r,q} w_ir w_iq B[o_ir, o_iq]`` for every point, following every blur path."""
    num_points, d1 = offsets.shape
    m = neighbours.shape[-1]
    device = offsets.device
    offsets, rank, neighbours = offsets.long(), rank.long(), neighbours.long()
    steps, path_w = _blur_paths(d1 - 1, device)
    # a sentinel column: from an absent vertex the path stays absent
    nb = torch.cat([neighbours, torch.full((d1, 2, 1), m, dtype=neighbours.dtype, device=device)], 2)
    out = []
    for start in range(0, num_points, 16384):
        off = offsets[start : start + 16384]
        w = weights[start : start + 16384].to(torch.float64)
        rk = rank[start : start + 16384]
        p = off.shape[0]
        # steps of this point's simplex: coordinate i moves like the canonical coordinate of rank rk[i]
        st = steps[:, :, :, rk].permute(3, 0, 1, 2, 4)  # (P, r, q, c, i)
        cur = off.view(p, 1, d1, 1).expand(p, d1, d1, 3).clone()  # start at corner q
        for j in range(d1):
            sj = st[..., j]
            cur = torch.where(sj == 1, nb[j, 0][cur], torch.where(sj == -1, nb[j, 1][cur], cur))
        hit = cur == off.view(p, d1, 1, 1)  # ended at corner r
        b = (hit.to(torch.float64) * path_w).sum(3)  # (P, r, q)
        out.append(alpha * torch.einsum("pr,prq,pq->p", w, b, w))
    return torch.cat(out).to(weights.dtype)


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
        backend: ``"auto"`` (compiled CPU kernels when the features are on the CPU, pure PyTorch
            otherwise), ``"torch"`` (pure PyTorch sparse matrices, any device) or
            ``"numba"`` (CPU only).

    Example:
        >>> feats = torch.rand(2, 100, 3) * 5
        >>> lattice = PermutohedralLattice(feats)
        >>> lattice.filter(torch.ones(2, 100, 4)).shape
        torch.Size([2, 100, 4])
    """

    def __init__(self, features: Tensor, *, backend: str = "auto") -> None:
        compiling = _compiling()
        _check_features(features, compiling)
        backend = "ops" if compiling else resolve_backend(backend, features.device)
        self.backend = backend
        self.batch_size, self.num_points, self.dim = features.shape
        self.device = features.device
        self.dtype = features.dtype
        d = self.dim
        #: the scale constant applied when slicing (densecrf's ``alpha``)
        self.alpha = 1.0 / (1.0 + 2.0 ** (-d))
        feats = features.detach().reshape(-1, d)
        built = None
        if compiling:  # under torch.compile: one opaque operator (crfrnn._ops), no graph break
            from crfrnn import _ops

            offsets, weights, rank, neighbours = _ops.lattice_build(feats, self.batch_size)
            built = (offsets, weights, rank, neighbours, neighbours.shape[-1])
        elif backend == "numba":
            built = _kernels.build(feats, self.batch_size, _MAX_CODE_BITS)
        if built is not None:
            offsets, weights, rank, neighbours, m = built
        else:  # pure PyTorch (also the fallback when int64 key codes would overflow)
            with torch.no_grad():
                keys, weights, rank = _simplex_coordinates(feats)
                batch = torch.arange(self.batch_size, device=self.device)
                batch = batch.repeat_interleave(self.num_points * (d + 1)).view(-1, 1)
                index = _KeyIndex(torch.cat([keys.view(-1, d), batch], 1), margin=d)
                m = index.num_vertices
                offsets = index.inverse.view(-1, d + 1)
                neighbours = _neighbours(index, d)
        #: number of lattice vertices (all images of the batch together)
        self.num_vertices = m
        self._offsets = offsets  # (B * N, D + 1) vertex of each point's simplex corner
        self._weights = weights  # (B * N, D + 1) barycentric weights
        self._rank = rank  # (B * N, D + 1) simplex orientation
        self._neighbours = neighbours  # (D + 1, 2, M) neighbours along each direction, M if absent
        self._ops: dict[torch.dtype, object] = {}

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
        cached = getattr(self, "_self_weights", None)
        if cached is None:
            if self.backend == "ops":
                from crfrnn import _ops

                cached = _ops.lattice_self_weights(self._offsets, self._weights, self._rank, self._neighbours,
                                                   self.alpha)  # fmt: skip
            else:
                cached = _diagonal(self._offsets, self._weights, self._rank, self._neighbours, self.alpha,
                                   compiled=self.backend == "numba")  # fmt: skip
            self._self_weights = cached.view(self.batch_size, self.num_points)
        return self._self_weights

    def _operators(self, dtype: torch.dtype):
        """The backend's splat/blur/slice for ``dtype``, built on first use and reused by every call."""
        ops = self._ops.get(dtype)
        if ops is None:
            if self.backend == "numba":
                make = _kernels.NumbaOperators
            else:
                make = _TorchOperators
            ops = make(self._offsets, self._weights.to(dtype), self._neighbours, self.num_vertices, self.alpha)
            self._ops[dtype] = ops
        return ops

    def _apply(self, values: Tensor, reverse: bool) -> Tensor:
        """Filter ``(B * N, C)`` values without autograd: splat, blur (directions reversed for ``K^T``), slice."""
        if self.backend == "ops":
            from crfrnn import _ops

            return _ops.gather_filter(values, self._offsets, self._weights, self._neighbours, self.alpha, reverse)
        return self._operators(values.dtype)(values, reverse)

    def filter(self, values: Tensor, *, reverse: bool = False, features: Optional[Tensor] = None,
               widths: Optional[Tensor] = None, width_probes: int = 0) -> Tensor:
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
            if self.backend == "ops":  # differentiable through the operator's own autograd formula
                from crfrnn import _ops

                out = _ops.lattice_filter(values.reshape(b * n, c).contiguous(), self._offsets, self._weights,
                                          self._neighbours, self.alpha, reverse)  # fmt: skip
            else:
                out = _LatticeFilter.apply(values.reshape(b * n, c), self, reverse)
            return out.view(b, n, c)
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
        out = _FeatureFilter.apply(values.reshape(b * n, c), features.reshape(b * n, self.dim).to(dtype), w, self,
                                   width_probes)  # fmt: skip
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
            raise TypeError(
                f"values must be float32 or float64, got {values.dtype}; convert with values.float()."
            )
        if values.device != self.device:
            raise ValueError(
                f"values are on {values.device} but the lattice was built on {self.device}; move them "
                f"with values.to({str(self.device)!r})."
            )


class _LatticeFilter(torch.autograd.Function):
    """``out = K values`` on a fixed lattice; backward applies ``K^T`` on the same lattice."""

    @staticmethod
    def forward(ctx, values: Tensor, lattice: PermutohedralLattice, reverse: bool) -> Tensor:  # type: ignore[override]
        ctx.lattice = lattice
        ctx.reverse = reverse
        return lattice._apply(values.contiguous(), reverse)

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        # K is linear, so its backward is again a lattice filter (differentiable: double backward works).
        return _LatticeFilter.apply(grad.contiguous(), ctx.lattice, not ctx.reverse), None, None


def _moments(x: Tensor, f: Tensor, lead: Optional[Tensor], pad) -> Tensor:
    """``[lead, f_1 x, .., f_D x]`` as one ``(P, pad(C'))`` buffer (zero columns after), written in place."""
    p, c = x.shape
    d = f.shape[1]
    first = 0 if lead is None else lead.shape[1]
    width = first + d * c
    if _compiling():  # no out= into a strided view under torch.compile (a graph break): one concatenation
        parts = ([] if lead is None else [lead]) + [(f.unsqueeze(2) * x.unsqueeze(1)).reshape(p, d * c)]
        if pad(width) > width:
            parts.append(x.new_zeros(p, pad(width) - width))
        return torch.cat(parts, 1)
    buf = x.new_empty(p, pad(width))
    if lead is not None:
        buf[:, :first] = lead
    torch.mul(f.unsqueeze(2), x.unsqueeze(1), out=buf[:, first:width].view(p, d, c))
    buf[:, width:] = 0
    return buf


def _feature_backward(
    filt, values: Tensor, out: Tensor, grad: Tensor, base: Tensor, widths: Optional[Tensor], batch: int,
    need: tuple[bool, bool, bool], pad=lambda channels: channels, probes: int = 0,
) -> tuple[Optional[Tensor], Optional[Tensor], Optional[Tensor]]:
    """Gradients of ``L`` through ``out = K v`` with respect to ``v``, the undivided features and the widths.

    ``K`` is a Gaussian filter ``k_ij = exp(-|f_i - f_j|^2 / 2)`` with ``f = base / widths`` (``widths`` None:
    ``f = base``), given as ``filt(x, reverse)`` (``K x`` or ``K^T x`` of ``(P, C')`` values). With
    ``g = dL/dout`` and every label channel ``c`` summed, the exact Gaussian's derivative is

        dL/dv = K^T g,
        dL/df_id = -sum_c g_ic (f_id (K v)_ic - (K (f_d v))_ic) - sum_c v_ic (f_id (K^T g)_ic - (K^T (f_d g))_ic),

    whatever ``K`` approximates it (the lattice): moment channels ``f_d v`` and ``f_d g`` filtered by ``K``
    and ``K^T``. When only the widths need a gradient, ``dL/dw_d = -S_d / w_d`` needs just
    ``S_d = sum_i f_id dL/df_id``, which by ``<f_d v, K^T (f_d g)> = <K (f_d v), f_d g>`` and
    ``<f_d^2 v, K^T g> = <K (f_d^2 v), g>`` is

        S_d = 2 <f_d v, K^T (f_d g)> - <f_d^2 (g . K v + v . K^T g), 1>,

    one ``K^T`` call on ``[g, f_1 g, .., f_D g]``, half the channels of the per-point gradient.

    With ``probes = R > 0`` (widths only) the ``D C`` moment channels are replaced by ``D R``: ``K`` acts on
    every channel alike, so for random signs ``s_c`` (Rademacher, ``R`` independent draws, averaged) ``S_d``
    of the single channels ``v s`` and ``g s`` has the expectation ``S_d`` of all channels: an unbiased, noisy
    estimate (both of its terms from the same probe, so that they cancel as the exact ones do). The features
    are centred per image first: the Gaussian depends only on ``f_i - f_j`` and ``sum_i dL/df_i = 0`` (for
    any linear ``K`` and its exact adjoint), so this changes nothing but rounding.

    Args:
        filt: ``filt(x (P, C'), reverse) -> (P, C')``.
        values, out, grad: ``(P, C)`` with ``P = batch * N``.
        base: ``(P, D)`` undivided features; widths: ``(D,)`` or None.
        batch: images in ``P`` (each centred on its own).
        need: which of ``(values, base, widths)`` need a gradient.
        pad: the channel count to filter for ``C'`` channels (the compiled kernels' SIMD padding).
        probes: random sign probes over the label channels for the widths' gradient (0: exact).

    Returns:
        ``(dL/dv (P, C), dL/dbase (P, D), dL/dwidths (D,))``, None where not needed.
    """
    p, c = values.shape
    d = base.shape[1]
    if not (need[1] or need[2]):
        return filt(grad, True), None, None
    f = base if widths is None else base / widths
    f = f.detach().reshape(batch, -1, d)
    f = (f - f.mean(1, keepdim=True)).view(p, d)
    sampled = probes > 0 and not need[1]
    if sampled:  # random signs per probe and channel, shared by every point (and image)
        signs = torch.randint(0, 2, (c, probes), device=values.device).to(values.dtype).mul_(2).sub_(1)
        probe_g, probe_v = grad @ signs, values @ signs  # (P, R)
    else:
        probe_g, probe_v = grad, values
    r = probe_g.shape[1]
    back = filt(_moments(probe_g, f, grad, pad), True)  # K^T [g, f_1 g, .., f_D g]
    grad_v, kt_fg = back[:, :c], back[:, c : c + d * r].view(p, d, r)
    v_kt_fg = torch.einsum("pdc,pc->pd", kt_fg, probe_v)  # sum_c v_ic (K^T (f_d g))_ic
    if sampled:  # the local term with the same probes (K acts per channel: (K v) s = K (v s)), so that each
        # probe's two large terms cancel as the exact ones do and only small cross terms are left as noise
        local = (torch.einsum("pr,pr->p", probe_g, out @ signs) + torch.einsum("pr,pr->p", probe_v, grad_v @ signs))
        local, v_kt_fg = local / probes, v_kt_fg / probes
    else:
        local = torch.einsum("pc,pc->p", grad, out) + torch.einsum("pc,pc->p", values, grad_v)  # g.Kv + v.K^T g
    acc = torch.float64
    grad_base = grad_w = None
    if need[1]:
        k_fv = filt(_moments(values, f, None, pad), False)[:, : d * c].view(p, d, c)  # K [f_1 v, .., f_D v]
        df = torch.einsum("pdc,pc->pd", k_fv, grad) + v_kt_fg - f * local.unsqueeze(1)
        grad_base = df if widths is None else df / widths.detach()
        s = (f.to(acc) * df.to(acc)).sum(0)
    else:
        f64 = f.to(acc)
        s = 2.0 * (f64 * v_kt_fg.to(acc)).sum(0) - (f64 * f64 * local.to(acc).unsqueeze(1)).sum(0)
    if need[2]:
        grad_w = (-s / widths.detach().to(acc)).to(values.dtype)
    # a copy, so that the (P, (1 + D) C) buffer is freed with this call
    return (grad_v.contiguous() if need[0] else None), grad_base, grad_w


class _FeatureFilter(torch.autograd.Function):
    """``out = K values`` on a fixed lattice built from ``base / widths``, differentiable w.r.t. all three
    (:func:`_feature_backward`); the backward is not itself differentiable."""

    @staticmethod
    def forward(ctx, values: Tensor, base: Tensor, widths: Optional[Tensor], lattice: PermutohedralLattice,  # type: ignore[override]
                probes: int = 0) -> Tensor:
        out = lattice._apply(values.contiguous(), False)
        ctx.lattice = lattice
        ctx.probes = probes
        ctx.save_for_backward(values, base, widths, out)
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        values, base, widths, out = ctx.saved_tensors
        lattice = ctx.lattice
        need = (ctx.needs_input_grad[0], ctx.needs_input_grad[1], widths is not None and ctx.needs_input_grad[2])

        def filt(x: Tensor, reverse: bool) -> Tensor:
            return lattice._apply(x.contiguous(), reverse)

        pad = (lambda channels: channels)
        if lattice.backend == "numba":  # hand the compiled kernels the channel count they pad to: no copy
            import numpy as np

            np_dtype = np.float64 if values.dtype == torch.float64 else np.float32
            pad = (lambda channels: _kernels.padded_channels(channels, np_dtype))
        gv, gb, gw = _feature_backward(filt, values, out, grad.contiguous(), base, widths, lattice.batch_size, need,
                                       pad, ctx.probes)  # fmt: skip
        return gv, gb, gw, None, None


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


def resolve_backend(backend: str, device: torch.device) -> str:
    """The backend that runs for ``backend`` on ``device``: ``"auto"`` becomes ``"numba"`` on the CPU and
    ``"torch"`` otherwise; an unknown name, or ``"numba"`` off the CPU, is an error."""
    if backend not in _BACKENDS:
        raise ValueError(f"backend must be one of {_BACKENDS}, got {backend!r}.")
    if backend == "numba" and device.type != "cpu":
        raise ValueError(
            f"backend='numba' runs on the CPU only, but the data are on {device}; use backend='torch' (or 'auto') "
            "for other devices."
        )
    if backend == "auto":
        return "numba" if device.type == "cpu" else "torch"
    return backend


def _compiling() -> bool:
    """Whether torch.compile is tracing this call (then the lattice goes through :mod:`crfrnn._ops`)."""
    return torch.compiler.is_compiling()


def _check_features(features: Tensor, compiling: bool = False) -> None:
    if not isinstance(features, Tensor):
        raise TypeError(f"features must be a torch.Tensor of shape (B, N, D), got {type(features).__name__}.")
    if features.dim() != 3:
        raise ValueError(
            f"features must have shape (B, N, D), got a {features.dim()}-D tensor of shape "
            f"{tuple(features.shape)}; for a single point set use features.unsqueeze(0)."
        )
    b, n, d = features.shape
    if b < 1 or n < 1 or d < 1:
        raise ValueError(
            f"features must have B >= 1 point sets of N >= 1 points with D >= 1 features, got shape "
            f"{tuple(features.shape)}."
        )
    if features.dtype not in (torch.float32, torch.float64):
        raise TypeError(
            f"features must be float32 or float64, got {features.dtype}; convert with features.float()."
        )
    lo, hi = torch.aminmax(features.detach())  # one pass: NaN and inf show in the extremes
    if compiling:  # checked on the device, without reading the values back (no graph break, no host sync)
        torch._assert_async(torch.isfinite(lo) & torch.isfinite(hi) & (torch.maximum(-lo, hi) <= _MAX_FEATURE),
                            "crfrnn: lattice features are NaN, infinite, or beyond the lattice's limit (a kernel "
                            "width far too small for the data)")  # fmt: skip
        return
    lo, hi = float(lo), float(hi)
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise ValueError(
            "features contain NaN or infinite values; the lattice needs finite coordinates (check the "
            "image and the kernel widths, which must be positive)."
        )
    largest = max(-lo, hi)
    if largest > _MAX_FEATURE:
        raise ValueError(
            f"features reach {largest:.3g} after dividing by the kernel widths, beyond the lattice's limit of "
            f"{_MAX_FEATURE:.3g} (its integer vertex keys would overflow); a kernel width is far too small for "
            "the extent of the data: use larger widths."
        )

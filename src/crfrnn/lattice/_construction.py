"""The lattice's construction: features to vertex offsets, barycentric weights, simplex ranks and neighbours.

This is the pure PyTorch reference build (every device; the compiled CPU kernels in :mod:`crfrnn._kernels` compute
the same arithmetic). It follows Krähenbühl's ``densecrf`` (the code behind pydensecrf and the Caffe CRF-RNN
layer): each point is elevated onto the hyperplane ``x . 1 = 0`` of ``R^(D+1)``, its enclosing simplex found by
sorting, and the simplex's ``D + 1`` vertex keys deduplicated into vertex ids (all images of a batch in one
block-diagonal lattice: every key carries its image's index). Also here: the input check of the features and the
blur paths between the corners of the canonical simplex (for the self weights).
"""

from __future__ import annotations

import functools
import math
from typing import Optional

import torch
from torch import Tensor

from crfrnn._utils.validation import MAX_FEATURE

__all__ = [
    "KeyIndex",
    "MAX_CODE_BITS",
    "blur_paths",
    "build_lattice",
    "canonical_paths",
    "canonical_simplex",
    "check_features",
    "simplex_coordinates",
    "vertex_neighbours",
]

# Vertex keys are packed into one int64 code when the key ranges allow it (almost always); beyond this
# many bits the lattice falls back to deduplicating whole key rows, which is slower but has no limit.
MAX_CODE_BITS = 62


def canonical_simplex(d: int, device: torch.device) -> Tensor:
    """``canonical[r, k]``: coordinate offset of the remainder-``r`` vertex for a coordinate of rank ``k``."""
    r = torch.arange(d + 1, device=device).view(-1, 1)
    k = torch.arange(d + 1, device=device).view(1, -1)
    return torch.where(k <= d - r, r, r - (d + 1))


def simplex_coordinates(features: Tensor) -> tuple[Tensor, Tensor, Tensor]:
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

    canonical = canonical_simplex(d, device)  # (d + 1 remainders, d + 1 ranks)
    # keys[p, r, i] = rem0[p, i] + canonical[r, rank[p, i]]
    offsets = canonical[:, rank].permute(1, 0, 2)  # (P, r, i)
    keys = rem0.to(torch.int64).unsqueeze(1) + offsets
    return keys[:, :, :d].contiguous(), weights.to(out_dtype).contiguous(), rank


class KeyIndex:
    """Maps integer key rows to vertex ids: one int64 code per row when it fits, rows otherwise."""

    def __init__(self, keys: Tensor, margin: int) -> None:
        # keys: (K, c) int64. Codes leave ``margin`` spare values on each side of every coordinate so
        # that neighbour keys (at most ``margin`` away) encode without clashing with real keys.
        lo = keys.min(0).values - margin
        span = keys.max(0).values + margin - lo + 1
        bits = torch.log2(span.to(torch.float64)).sum().item()
        self.lo = lo
        self.span = span
        if bits < MAX_CODE_BITS:
            strides = torch.cumprod(torch.cat([span.new_ones(1), span[:-1]]), 0)
            self.strides: Optional[Tensor] = strides
            self.codes, self.inverse = torch.unique(self._encode(keys), sorted=True, return_inverse=True)
            self.vertex_keys: Optional[Tensor] = None
        else:
            self.strides = None
            self.vertex_keys, self.inverse = torch.unique(keys, dim=0, sorted=True, return_inverse=True)

    @property
    def num_vertices(self) -> int:
        if self.strides is not None:
            return int(self.codes.numel())
        assert self.vertex_keys is not None  # the keys are kept when they are not encoded
        return int(self.vertex_keys.shape[0])

    def _encode(self, keys: Tensor) -> Tensor:
        assert self.strides is not None  # only called for encoded keys
        return ((keys - self.lo) * self.strides).sum(1)

    def keys(self) -> Tensor:
        """``(M, c)`` the key of every vertex, in vertex-id order."""
        if self.strides is None:
            assert self.vertex_keys is not None  # the keys are kept when they are not encoded
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
        assert self.vertex_keys is not None  # the keys are kept when they are not encoded
        both = torch.cat([self.vertex_keys, queries], 0)
        _, inv = torch.unique(both, dim=0, return_inverse=True)
        table = torch.full((int(inv.max()) + 1,), m, dtype=torch.int64, device=queries.device)
        table[inv[:m]] = torch.arange(m, device=queries.device)
        return table[inv[m:]]


def vertex_neighbours(index: KeyIndex, d: int) -> Tensor:
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


def blur_paths(d: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """:func:`canonical_paths` on ``device``."""
    steps, weight = canonical_paths(d)
    return steps.to(device), weight.to(device)


@functools.lru_cache(maxsize=None)
def canonical_paths(d: int) -> tuple[Tensor, Tensor]:
    """Every way the blur moves mass between two corners of one simplex, for the canonical simplex.

    Along direction ``j`` the blur keeps a vertex's value (weight 1) or moves it to a neighbour at
    ``+-((D + 1) e_j - 1)`` (weight 1/2). Going from corner ``q`` to corner ``r`` takes steps
    ``s in {-1, 0, 1}^(D+1)`` with ``(D + 1) s - sum(s) 1 = key_r - key_q``; there are at most three.

    Returns:
        steps: ``(D + 1, D + 1, 3, D + 1)`` int64, ``steps[r, q, c]`` (zeros where unused);
        weight: ``(D + 1, D + 1, 3)``, ``0.5 ** nnz(steps)`` for valid paths and 0 otherwise.
    """
    d1 = d + 1
    canonical = canonical_simplex(d, torch.device("cpu"))
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
    return steps, weight  # computed once per dimension (cached) and never written to


def build_lattice(features: Tensor, batch_size: int) -> tuple[Tensor, Tensor, Tensor, Tensor, int]:
    """The lattice of ``(P, D)`` features (``P = batch_size * N``, images contiguous), without gradient.

    Returns:
        offsets: ``(P, D + 1)`` int64, the vertex of each point's simplex corner;
        weights: ``(P, D + 1)`` barycentric weights, features' dtype;
        rank: ``(P, D + 1)`` int64, the simplex's orientation;
        neighbours: ``(D + 1, 2, M)`` int64, each vertex's neighbours along every direction (``M`` if absent);
        and ``M``, the number of vertices (all images together).
    """
    num_points, d = features.shape
    with torch.no_grad():
        keys, weights, rank = simplex_coordinates(features)
        batch = torch.arange(batch_size, device=features.device)
        batch = batch.repeat_interleave(num_points // batch_size * (d + 1)).view(-1, 1)
        index = KeyIndex(torch.cat([keys.view(-1, d), batch], 1), margin=d)
        offsets = index.inverse.view(-1, d + 1)
        neighbours = vertex_neighbours(index, d)
    return offsets, weights, rank, neighbours, index.num_vertices


def check_features(features: Tensor, compiling: bool = False) -> None:
    """Refuse features that are not ``(B, N, D)`` float32/float64, finite and within :data:`MAX_FEATURE`.

    With ``compiling`` (under torch.compile) the values are checked on the device by an asynchronous assertion.
    """
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
        raise TypeError(f"features must be float32 or float64, got {features.dtype}; convert with features.float().")
    lo_t, hi_t = torch.aminmax(features.detach())  # one pass: NaN and inf show in the extremes
    if compiling:  # checked on the device, without reading the values back (no graph break, no host sync)
        torch._assert_async(
            torch.isfinite(lo_t) & torch.isfinite(hi_t) & (torch.maximum(-lo_t, hi_t) <= MAX_FEATURE),
            "crfrnn: lattice features are NaN, infinite, or beyond the lattice's limit (a kernel "
            "width far too small for the data)",
        )
        return
    lo, hi = float(lo_t), float(hi_t)
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise ValueError(
            "features contain NaN or infinite values; the lattice needs finite coordinates (check the "
            "image and the kernel widths, which must be positive)."
        )
    largest = max(-lo, hi)
    if largest > MAX_FEATURE:
        raise ValueError(
            f"features reach {largest:.3g} after dividing by the kernel widths, beyond the lattice's limit of "
            f"{MAX_FEATURE:.3g} (its integer vertex keys would overflow); a kernel width is far too small for "
            "the extent of the data: use larger widths."
        )

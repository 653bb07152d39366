"""The PyTorch reference lattice operator (backend ``"torch"``, every device): splat, blur and slice as sparse CSR
matrices, and the self weights by walking every blur path point by point.
"""

from __future__ import annotations

import warnings

import torch
from torch import Tensor

from crfrnn.lattice._construction import blur_paths, build_lattice
from crfrnn.lattice._operators import LatticeOperator

__all__ = ["CsrOperators", "ReferenceOperator", "walk_self_weights"]


def csr(crow: Tensor, col: Tensor, val: Tensor, size: tuple[int, int]) -> Tensor:
    """A sparse CSR tensor, unchecked, without PyTorch's beta warning."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*[Ss]parse CSR tensor support is in beta.*")
        return torch.sparse_csr_tensor(crow, col, val, size=size, check_invariants=False)


def grouped_csr(rows: int, cols: int, col: Tensor, val: Tensor) -> Tensor:
    """CSR matrix whose row ``r`` holds ``col[r]``/``val[r]`` (``(rows, k)``), entries with col == cols dropped."""
    col, order = torch.sort(col, dim=1)
    val = torch.gather(val, 1, order)
    keep = col < cols
    crow = torch.zeros(rows + 1, dtype=torch.int64, device=col.device)
    crow[1:] = keep.sum(1).cumsum(0)
    return csr(crow, col[keep], val[keep], (rows, cols))


class CsrOperators:
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
        self.splat = csr(crow, point, weights.reshape(-1)[order], (m, num_points))
        self.slice = grouped_csr(num_points, m, offsets, weights * alpha)
        self_col = torch.arange(m, device=dev).view(-1, 1)
        blur_val = weights.new_tensor([1.0, 0.5, 0.5]).expand(m, 3)
        self.blur = [grouped_csr(m, m, torch.cat([self_col, neighbours[j].t()], 1), blur_val) for j in range(d1)]

    def __call__(self, values: Tensor, reverse: bool) -> Tensor:
        x = torch.sparse.mm(self.splat, values)
        for b in reversed(self.blur) if reverse else self.blur:
            x = torch.sparse.mm(b, x)
        return torch.sparse.mm(self.slice, x)


def walk_self_weights(offsets: Tensor, weights: Tensor, rank: Tensor, neighbours: Tensor, alpha: float) -> Tensor:
    """``K_ii = alpha sum_{r,q} w_ir w_iq B[o_ir, o_iq]`` for every point, following every blur path."""
    num_points, d1 = offsets.shape
    m = neighbours.shape[-1]
    device = offsets.device
    offsets, rank, neighbours = offsets.long(), rank.long(), neighbours.long()
    steps, path_w = blur_paths(d1 - 1, device)
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


class ReferenceOperator(LatticeOperator):
    """The pure PyTorch lattice: the reference build and CSR products, on any device."""

    name = "torch"

    @classmethod
    def build(cls, features: Tensor, batch_size: int, alpha: float) -> ReferenceOperator:
        return cls(*build_lattice(features, batch_size), alpha)

    def make_operators(self, dtype: torch.dtype) -> CsrOperators:
        return CsrOperators(self.offsets, self.weights.to(dtype), self.neighbours, self.num_vertices, self.alpha)

    def apply(self, values: Tensor, reverse: bool) -> Tensor:
        return self.operators(values.dtype)(values, reverse)

    def self_weights(self) -> Tensor:
        with torch.no_grad():
            return walk_self_weights(self.offsets, self.weights, self.rank, self.neighbours, self.alpha)

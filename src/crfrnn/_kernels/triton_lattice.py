"""Triton kernels for the permutohedral lattice's filter: splat, blur and slice (and so the adjoint).

They compute what the PyTorch reference (``crfrnn.lattice._reference.CsrOperators``) computes, in the values'
dtype, up to the order of the sums (the splat adds with ``tl.atomic_add``, so its order is not fixed):

- splat: ``x[o_pk] += w_pk v_p`` for every point ``p`` and simplex corner ``k``;
- blur along direction ``j``: ``y[m] = x[m] + 0.5 x[n_j0(m)] + 0.5 x[n_j1(m)]``, an absent neighbour (index ``M``)
  adding nothing; the directions in order, or in reverse order for the adjoint;
- slice: ``out_p = sum_k (alpha w_pk) x[o_pk]``.

A leaf module: it imports nothing from the package, and triton only when a kernel is first asked for
(:func:`available` says whether it can be). The kernels are decorated with ``triton.jit`` at that time, once per
value of ``TRITON_INTERPRET`` (read at every call), so setting the variable before the first filter is enough to
run them on CPU tensors under triton's interpreter.
"""

import os
from types import SimpleNamespace
from typing import Any

import torch
from torch import Tensor

__all__ = ["TritonOperators", "available", "interpreting", "lattice_filter"]

_JITTED: dict[bool, Any] = {}


def available() -> bool:
    """Whether triton can be imported."""
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def interpreting() -> bool:
    """Whether ``TRITON_INTERPRET`` asks for triton's interpreter (read now, not at import)."""
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "on", "yes")


def _kernels() -> Any:
    """The three kernels, ``triton.jit``-decorated for the current ``TRITON_INTERPRET`` (built once for each)."""
    mode = interpreting()
    found = _JITTED.get(mode)
    if found is None:
        import triton
        import triton.language as tl

        @triton.jit
        def splat_kernel(
            values, offsets, weights, out, num_entries, d1, channels, BLOCK_E: tl.constexpr, BLOCK_C: tl.constexpr
        ):
            # one row of entries (point p, corner k) by one block of channels: out[o_pk, c] += w_pk v[p, c]
            e = tl.program_id(0) * BLOCK_E + tl.arange(0, BLOCK_E)
            c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
            e_ok = e < num_entries
            c_ok = c < channels
            vertex = tl.load(offsets + e, mask=e_ok, other=0).to(tl.int64)
            w = tl.load(weights + e, mask=e_ok, other=0.0)
            point = (e // d1).to(tl.int64)
            ok = e_ok[:, None] & c_ok[None, :]
            v = tl.load(values + point[:, None] * channels + c[None, :], mask=ok, other=0.0)
            tl.atomic_add(out + vertex[:, None] * channels + c[None, :], w[:, None] * v, mask=ok)

        @triton.jit
        def blur_kernel(src, dst, left, right, num_vertices, channels, BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr):
            # dst[m] = src[m] + 0.5 src[left[m]] + 0.5 src[right[m]], a neighbour == M being absent
            m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
            c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
            m_ok = m < num_vertices
            c_ok = c < channels
            ok = m_ok[:, None] & c_ok[None, :]
            a = tl.load(left + m, mask=m_ok, other=num_vertices).to(tl.int64)
            b = tl.load(right + m, mask=m_ok, other=num_vertices).to(tl.int64)
            cc = c[None, :]
            x = tl.load(src + m.to(tl.int64)[:, None] * channels + cc, mask=ok, other=0.0)
            xa = tl.load(src + a[:, None] * channels + cc, mask=ok & (a < num_vertices)[:, None], other=0.0)
            xb = tl.load(src + b[:, None] * channels + cc, mask=ok & (b < num_vertices)[:, None], other=0.0)
            tl.store(dst + m.to(tl.int64)[:, None] * channels + cc, x + 0.5 * xa + 0.5 * xb, mask=ok)

        @triton.jit
        def slice_kernel(
            src,
            offsets,
            weights,
            out,
            num_points,
            num_vertices,
            d1,
            channels,
            BLOCK_P: tl.constexpr,
            BLOCK_C: tl.constexpr,
        ):
            # out[p, c] = sum_k sw_pk src[o_pk, c] (sw = alpha w, computed by the caller in the values' dtype)
            p = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)
            c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
            p_ok = p < num_points
            c_ok = c < channels
            ok = p_ok[:, None] & c_ok[None, :]
            p64 = p.to(tl.int64)
            acc = tl.zeros((BLOCK_P, BLOCK_C), dtype=out.dtype.element_ty)
            for k in range(d1):
                vertex = tl.load(offsets + p64 * d1 + k, mask=p_ok, other=num_vertices).to(tl.int64)
                w = tl.load(weights + p64 * d1 + k, mask=p_ok, other=0.0)
                hit = ok & (vertex < num_vertices)[:, None]
                x = tl.load(src + vertex[:, None] * channels + c[None, :], mask=hit, other=0.0)
                acc += w[:, None] * x
            tl.store(out + p64[:, None] * channels + c[None, :], acc, mask=ok)

        found = _JITTED[mode] = SimpleNamespace(
            splat=splat_kernel, blur=blur_kernel, slice=slice_kernel, next_power_of_2=triton.next_power_of_2
        )
    return found


def _blocks(channels: int, next_power_of_2: Any) -> int:
    return int(min(max(next_power_of_2(channels), 1), 64))


def lattice_filter(
    values: Tensor,
    offsets: Tensor,
    weights: Tensor,
    slice_weights: Tensor,
    neighbours: Tensor,
    num_vertices: int,
    reverse: bool,
) -> Tensor:
    """Splat, blur along every direction (reversed for the adjoint) and slice, with the Triton kernels.

    Args:
        values: ``(P, C)`` contiguous float32 or float64.
        offsets: ``(P, D + 1)`` contiguous integer, each point's simplex corners (vertex indices below ``M``).
        weights: ``(P, D + 1)`` contiguous barycentric weights in the values' dtype.
        slice_weights: ``(P, D + 1)`` contiguous, ``alpha * weights`` in the values' dtype.
        neighbours: ``(D + 1, 2, M)`` contiguous integer, each vertex's two neighbours (``M``: absent).
        num_vertices: ``M``.
        reverse: blur the directions in reverse order (the adjoint).

    Returns:
        ``(P, C)`` in the values' dtype, on their device.
    """
    k = _kernels()
    num_points, channels = values.shape
    d1 = offsets.shape[1]
    m = num_vertices
    block_c = _blocks(channels, k.next_power_of_2)
    grid_c = -(-channels // block_c)
    x = torch.zeros(m, channels, dtype=values.dtype, device=values.device)
    entries = num_points * d1
    block_e = block_m = block_p = 1024 if interpreting() else 64  # the interpreter's cost is per operation
    k.splat[(-(-entries // block_e), grid_c)](
        values, offsets, weights, x, entries, d1, channels, BLOCK_E=block_e, BLOCK_C=block_c
    )
    y = torch.empty_like(x)
    for j in reversed(range(d1)) if reverse else range(d1):
        k.blur[(-(-m // block_m), grid_c)](
            x, y, neighbours[j, 0], neighbours[j, 1], m, channels, BLOCK_M=block_m, BLOCK_C=block_c
        )
        x, y = y, x
    out = torch.empty(num_points, channels, dtype=values.dtype, device=values.device)
    k.slice[(-(-num_points // block_p), grid_c)](
        x, offsets, slice_weights, out, num_points, m, d1, channels, BLOCK_P=block_p, BLOCK_C=block_c
    )
    return out


class TritonOperators:
    """The Triton splat/blur/slice of one lattice in one dtype (the weights converted once).

    Args:
        offsets: ``(P, D + 1)`` integer simplex corners.
        weights: ``(P, D + 1)`` barycentric weights in the dtype to filter.
        neighbours: ``(D + 1, 2, M)`` integer neighbours (``M``: absent).
        num_vertices: ``M``.
        alpha: the slice's scale.
    """

    def __init__(self, offsets: Tensor, weights: Tensor, neighbours: Tensor, num_vertices: int, alpha: float):
        self.offsets = offsets.contiguous()
        self.weights = weights.contiguous()
        self.slice_weights = (weights * alpha).contiguous()  # as the reference's slice matrix holds them
        self.neighbours = neighbours.contiguous()
        self.num_vertices = num_vertices

    def __call__(self, values: Tensor, reverse: bool) -> Tensor:
        """``K values`` (``K^T values`` with ``reverse``) of ``(P, C)`` values; see :func:`lattice_filter`."""
        return lattice_filter(
            values.contiguous(),
            self.offsets,
            self.weights,
            self.slice_weights,
            self.neighbours,
            self.num_vertices,
            reverse,
        )

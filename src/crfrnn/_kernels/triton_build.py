"""Triton kernels for the permutohedral lattice's construction: simplices, a vertex hash table, neighbours.

The same lattice as the PyTorch reference build (``crfrnn.lattice._construction.build_lattice``): the same vertex
set (the embedding, the rounding and the simplex ranks are computed with the same float64 operations in the same
order, so the keys agree bit for bit), the same barycentric weights and ranks; only the vertices' numbering
differs (hash-table order instead of sorted keys), which no filtered value depends on. Three kernels and one host
synchronisation (the vertex count):

- ``simplex``: each point's elevated coordinates, enclosing simplex (rank), barycentric weights and the ``D + 1``
  vertex keys of its simplex (``D`` lattice coordinates then the image's index, as int64);
- ``insert``: every (point, corner) entry's key into an open-addressing table with linear probing; a slot holds
  the index of the entry that claimed it (``tl.atomic_cas`` from -1), so a key is compared with the claiming
  entry's key, written by the previous kernel (no slot is ever read half written);
- ``neighbours``: each vertex's two neighbours along every lattice direction, looked up in the table.

A leaf module like :mod:`~crfrnn._kernels.triton_lattice`: triton is imported when a kernel is first asked for,
once per value of ``TRITON_INTERPRET`` (read at every call). On a GPU the kernels are compiled without fused
multiply-adds (``enable_fp_fusion=False``) so that their float64 arithmetic rounds as PyTorch's does.
"""

import math
from types import SimpleNamespace
from typing import Any

import torch
from torch import Tensor

from crfrnn._kernels.triton_lattice import interpreting

__all__ = ["build_lattice", "self_weights"]

_JITTED: dict[bool, Any] = {}
_EMPTY = -1  # a free slot of the hash table


def _kernels() -> Any:
    """The construction kernels, ``triton.jit``-decorated for the current ``TRITON_INTERPRET`` (built once each)."""
    mode = interpreting()
    found = _JITTED.get(mode)
    if found is None:
        import triton
        import triton.language as tl

        @triton.jit
        def simplex_kernel(
            features,
            scale,
            keys,
            weights,
            ranks,
            num_points,
            points_per_image,
            D: tl.constexpr,
            DP: tl.constexpr,
            BLOCK_P: tl.constexpr,
        ):
            D1: tl.constexpr = D + 1
            p = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)
            p_ok = p < num_points
            p64 = p.to(tl.int64)
            col = tl.arange(0, DP)[None, :]
            valid = p_ok[:, None] & (col < D1)
            # cf = features * scale in float64; prev[:, k] = cf[:, k - 1] (0 for k = 0)
            here = p_ok[:, None] & (col < D)
            cf = tl.load(features + p64[:, None] * D + col, mask=here, other=0.0).to(tl.float64)
            cf = cf * tl.load(scale + col, mask=col < D, other=0.0)
            back = p_ok[:, None] & (col >= 1) & (col <= D)
            prev = tl.load(features + p64[:, None] * D + col - 1, mask=back, other=0.0).to(tl.float64)
            prev = prev * tl.load(scale + col - 1, mask=(col >= 1) & (col <= D), other=0.0)
            # suffix[:, k] = cf[:, D-1] + ... + cf[:, k], summed in that order (as flip-cumsum-flip does)
            acc = tl.zeros([BLOCK_P], dtype=tl.float64)
            suffix = tl.zeros([BLOCK_P, DP], dtype=tl.float64)
            for m in tl.static_range(D):
                acc = acc + tl.sum(tl.where(col == D - 1 - m, cf, 0), axis=1)
                suffix = tl.where(col == D - 1 - m, acc[:, None], suffix)
            elevated = suffix - col.to(tl.float64) * prev
            # nearest remainder-0 point: round half to even, exactly (as torch.round)
            y = elevated / D1
            low_int = tl.floor(y)
            frac = y - low_int
            whole = low_int.to(tl.int64)
            up = (frac > 0.5) | ((frac == 0.5) & ((whole & 1) == 1))
            whole = tl.where(valid, whole + up.to(tl.int64), 0)
            total = tl.sum(whole, axis=1)
            rem0 = whole * D1
            resid = elevated - rem0.to(tl.float64)
            rank = tl.zeros([BLOCK_P, DP], dtype=tl.int64)
            for j in tl.static_range(D1):
                rj = tl.sum(tl.where(col == j, resid, 0), axis=1)[:, None]
                rank += (((col < j) & (rj > resid)) | ((col > j) & (rj >= resid))).to(tl.int64)
            rank = rank + total[:, None]
            below = (rank < 0).to(tl.int64)
            above = (rank > D).to(tl.int64)
            rank = rank + D1 * below - D1 * above
            rem0 = rem0 + D1 * below - D1 * above
            v = (elevated - rem0.to(tl.float64)) / D1
            v = tl.where(valid, v, 0.0)
            rank = tl.where(valid, rank, -D1 - 1)  # padding columns match no rank below
            tl.store(ranks + p64[:, None] * D1 + col, rank, mask=valid)
            for s in tl.static_range(D1):
                plus = tl.sum(tl.where(rank == D - s, v, 0.0), axis=1)
                minus = tl.sum(tl.where(rank == (D - s + 1) % D1, v, 0.0), axis=1)  # bary[D + 1] for s = 0
                if s == 0:
                    w = plus + (1.0 + (-minus))
                else:
                    w = plus + (-minus)
                tl.store(weights + p64 * D1 + s, w.to(weights.dtype.element_ty), mask=p_ok)
            image = (p // points_per_image).to(tl.int64)
            for r in tl.static_range(D1):
                key = rem0 + tl.where(rank <= D - r, r, r - D1)
                key = tl.where(col == D, image[:, None], key)
                tl.store(keys + (p64[:, None] * D1 + r) * D1 + col, key, mask=valid)

        @triton.jit
        def insert_kernel(
            keys, state, slots, num_entries, capacity, D1: tl.constexpr, DP: tl.constexpr, BLOCK: tl.constexpr
        ):
            e = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
            pending = e < num_entries
            e64 = e.to(tl.int64)
            col = tl.arange(0, DP)[None, :]
            cvalid = col < D1
            mine = tl.load(keys + e64[:, None] * D1 + col, mask=pending[:, None] & cvalid, other=0)
            # the key's hash: a weighted sum of its columns (odd weights below 2**28, no overflow), then mixed
            h = tl.sum(((mine & 0x7FFFFFFF) * (((col * 0x9E3779B) & 0xFFFFFFF) | 1)), axis=1)
            h = (h ^ (h >> 29)) & 0x7FFFFFFF
            h = ((h ^ (h >> 16)) * 0x45D9F3B) & 0x7FFFFFFF
            slot = (h ^ (h >> 16)) & (capacity - 1)
            found = tl.zeros([BLOCK], dtype=tl.int64)
            while tl.max(pending.to(tl.int32), axis=0) > 0:
                # lanes already placed compare with -2, which no slot holds: their CAS changes nothing
                expect = tl.where(pending, -1, -2).to(tl.int64)
                old = tl.atomic_cas(state + tl.where(pending, slot, 0), expect, e64)
                taken = pending & (old >= 0)
                other = tl.load(
                    keys + tl.where(taken, old, 0)[:, None] * D1 + col, mask=taken[:, None] & cvalid, other=0
                )
                differs = tl.sum((cvalid & (other != mine)).to(tl.int32), axis=1)
                done = (pending & (old == -1)) | (taken & (differs == 0))
                found = tl.where(done, slot, found)
                pending = pending & ~done
                slot = tl.where(pending, (slot + 1) & (capacity - 1), slot)
            tl.store(slots + e64, found, mask=e < num_entries)

        @triton.jit
        def neighbours_kernel(
            keys,
            state,
            vertex_of_slot,
            first_entry,
            out,
            num_vertices,
            capacity,
            D: tl.constexpr,
            DP: tl.constexpr,
            BLOCK: tl.constexpr,
        ):
            D1: tl.constexpr = D + 1
            # one lane per (vertex m, direction j, side): its neighbour k - step_j (side 0) or k + step_j (side 1)
            q = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
            q_ok = q < num_vertices * (2 * D1)
            q64 = q.to(tl.int64)
            m = q64 // (2 * D1)
            j = (q64 // 2) % D1
            side = q64 % 2
            col = tl.arange(0, DP)[None, :]
            cvalid = col < D1
            entry = tl.load(first_entry + m, mask=q_ok, other=0)
            own = tl.load(keys + entry[:, None] * D1 + col, mask=q_ok[:, None] & cvalid, other=0)
            step = tl.where(col < D, 1 - D1 * (col == j[:, None]).to(tl.int64), 0)
            query = own + (2 * side - 1)[:, None] * step
            # the key's hash: a weighted sum of its columns (odd weights below 2**28, no overflow), then mixed
            h = tl.sum(((query & 0x7FFFFFFF) * (((col * 0x9E3779B) & 0xFFFFFFF) | 1)), axis=1)
            h = (h ^ (h >> 29)) & 0x7FFFFFFF
            h = ((h ^ (h >> 16)) * 0x45D9F3B) & 0x7FFFFFFF
            slot = (h ^ (h >> 16)) & (capacity - 1)
            pending = q_ok
            result = tl.zeros([BLOCK], dtype=tl.int64) + num_vertices
            while tl.max(pending.to(tl.int32), axis=0) > 0:
                held = tl.load(state + slot, mask=pending, other=-1)
                hit = pending & (held >= 0)
                other = tl.load(keys + tl.where(hit, held, 0)[:, None] * D1 + col, mask=hit[:, None] & cvalid, other=0)
                same = hit & (tl.sum((cvalid & (other != query)).to(tl.int32), axis=1) == 0)
                result = tl.where(same, tl.load(vertex_of_slot + slot, mask=same, other=0), result)
                pending = hit & ~same
                slot = tl.where(pending, (slot + 1) & (capacity - 1), slot)
            tl.store(out + (j * 2 + side) * num_vertices + m, result, mask=q_ok)

        @triton.jit
        def self_weights_kernel(
            offsets,
            weights,
            ranks,
            neighbours,
            steps,
            path_weights,
            out,
            num_points,
            num_vertices,
            alpha,
            D1: tl.constexpr,
            RQC: tl.constexpr,
            BLOCK_P: tl.constexpr,
        ):
            # one row per point, one column per (corner r, corner q, path c): walk the path from q, hit r or not
            p = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)
            p_ok = p < num_points
            row = p.to(tl.int64)[:, None] * D1
            t = tl.arange(0, RQC)[None, :]
            t_ok = t < D1 * D1 * 3
            r = t // (D1 * 3)
            q = (t // 3) % D1
            path = (r * D1 + q) * 3 + t % 3
            ok = p_ok[:, None] & t_ok
            cur = tl.load(offsets + row + q, mask=ok, other=num_vertices).to(tl.int64)
            for j in tl.static_range(D1):
                # coordinate j moves as the canonical coordinate of its rank
                rank_j = tl.load(ranks + row + j, mask=p_ok[:, None], other=0).to(tl.int64)
                s = tl.load(steps + path * D1 + rank_j, mask=ok, other=0)
                live = ok & (cur < num_vertices)
                up = tl.load(neighbours + (2 * j) * num_vertices + cur, mask=live & (s == 1), other=num_vertices)
                down = tl.load(neighbours + (2 * j + 1) * num_vertices + cur, mask=live & (s == -1), other=num_vertices)
                cur = tl.where(s == 1, up, tl.where(s == -1, down, cur))
            target = tl.load(offsets + row + r, mask=ok, other=-1).to(tl.int64)
            w_r = tl.load(weights + row + r, mask=ok, other=0.0).to(tl.float64)
            w_q = tl.load(weights + row + q, mask=ok, other=0.0).to(tl.float64)
            w_path = tl.load(path_weights + path, mask=t_ok, other=0.0)
            terms = tl.where(ok & (cur == target), w_r * w_path * w_q, 0.0)
            tl.store(out + p.to(tl.int64), alpha * tl.sum(terms, axis=1), mask=p_ok)

        found = _JITTED[mode] = SimpleNamespace(
            simplex=simplex_kernel,
            insert=insert_kernel,
            neighbours=neighbours_kernel,
            self_weights=self_weights_kernel,
            next_power_of_2=triton.next_power_of_2,
        )
    return found


def _launch_options() -> dict[str, Any]:
    # compiled kernels: no fused multiply-adds (the float64 embedding must round as PyTorch's does)
    return {} if interpreting() else {"enable_fp_fusion": False}


def build_lattice(features: Tensor, batch_size: int) -> tuple[Tensor, Tensor, Tensor, Tensor, int]:
    """The lattice of ``(P, D)`` features (``P = batch_size * N``, images contiguous), built by the Triton kernels.

    Args:
        features: ``(P, D)`` float32 or float64, already divided by the kernel widths (CUDA, or any device under
            ``TRITON_INTERPRET=1``).
        batch_size: ``B``, the number of images (each of ``N = P / B`` points).

    Returns:
        offsets: ``(P, D + 1)`` int64, the vertex of each point's simplex corner;
        weights: ``(P, D + 1)`` barycentric weights, features' dtype;
        rank: ``(P, D + 1)`` int64, the simplex's orientation;
        neighbours: ``(D + 1, 2, M)`` int64, each vertex's neighbours along every direction (``M`` if absent);
        and ``M``, the number of vertices (all images together; the one host synchronisation).
    """
    k = _kernels()
    options = _launch_options()
    num_points, d = features.shape
    d1 = d + 1
    dp = int(k.next_power_of_2(d1))
    device = features.device
    features = features.detach().contiguous()
    # the embedding's scale, computed as the reference computes it (float64)
    i = torch.arange(d, device=device, dtype=torch.float64)
    scale = (math.sqrt(2.0 / 3.0) * d1 / torch.sqrt((i + 1.0) * (i + 2.0))).contiguous()
    entries = num_points * d1
    keys = torch.empty(entries, d1, dtype=torch.int64, device=device)
    weights = torch.empty(num_points, d1, dtype=features.dtype, device=device)
    rank = torch.empty(num_points, d1, dtype=torch.int64, device=device)
    block_p = 512 if interpreting() else 64  # the interpreter's cost is per operation, not per lane
    k.simplex[(-(-num_points // block_p),)](
        features,
        scale,
        keys,
        weights,
        rank,
        num_points,
        num_points // batch_size,
        D=d,
        DP=dp,
        BLOCK_P=block_p,
        **options,
    )
    capacity = max(int(k.next_power_of_2(2 * entries)), 16)  # at most half full: probing always ends
    state = torch.full((capacity,), _EMPTY, dtype=torch.int64, device=device)
    slots = torch.empty(entries, dtype=torch.int64, device=device)
    block = 4096 if interpreting() else 128
    k.insert[(-(-entries // block),)](keys, state, slots, entries, capacity, D1=d1, DP=dp, BLOCK=block, **options)
    occupied = torch.nonzero(state >= 0).squeeze(1)  # the vertex count: the one host synchronisation
    m = int(occupied.numel())
    vertex_of_slot = torch.full((capacity,), m, dtype=torch.int64, device=device)
    vertex_of_slot[occupied] = torch.arange(m, dtype=torch.int64, device=device)
    first_entry = state[occupied].contiguous()
    offsets = vertex_of_slot[slots].view(num_points, d1)
    neighbours = torch.empty(d1, 2, m, dtype=torch.int64, device=device)
    k.neighbours[(max(-(-m * 2 * d1 // block), 1),)](
        keys, state, vertex_of_slot, first_entry, neighbours, m, capacity, D=d, DP=dp, BLOCK=block, **options
    )
    return offsets, weights, rank, neighbours, m


def self_weights(
    offsets: Tensor,
    weights: Tensor,
    rank: Tensor,
    neighbours: Tensor,
    steps: Tensor,
    path_weights: Tensor,
    alpha: float,
) -> Tensor:
    """``(P,)`` the lattice filter's diagonal, ``K_ii = alpha sum_{r,q} w_ir w_iq B[o_ir, o_iq]``, on the device.

    Every blur path between two corners of a point's simplex is walked through the neighbours (the reference's
    ``walk_self_weights``, one kernel; its sums in another order).

    Args:
        offsets: ``(P, D + 1)`` integer simplex corners.
        weights: ``(P, D + 1)`` barycentric weights.
        rank: ``(P, D + 1)`` integer, the simplex's orientation.
        neighbours: ``(D + 1, 2, M)`` integer, each vertex's neighbours (``M``: absent).
        steps: ``(D + 1, D + 1, 3, D + 1)`` int64, the canonical simplex's paths (``canonical_paths``), on the device.
        path_weights: ``(D + 1, D + 1, 3)`` float64, each path's weight (0 where unused), on the device.
        alpha: the slice's scale.

    Returns:
        ``(P,)`` in the weights' dtype.
    """
    k = _kernels()
    num_points, d1 = offsets.shape
    m = neighbours.shape[-1]
    out = torch.empty(num_points, dtype=torch.float64, device=offsets.device)
    block_p = 256 if interpreting() else 16
    k.self_weights[(max(-(-num_points // block_p), 1),)](
        offsets.contiguous(),
        weights.contiguous(),
        rank.contiguous(),
        neighbours.contiguous(),
        steps.contiguous(),
        path_weights.to(torch.float64).contiguous(),
        out,
        num_points,
        m,
        float(alpha),
        D1=d1,
        RQC=int(k.next_power_of_2(d1 * d1 * 3)),
        BLOCK_P=block_p,
    )
    return out.to(weights.dtype)

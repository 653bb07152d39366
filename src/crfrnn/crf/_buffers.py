"""Work buffers the CPU paths hand from one call to the next instead of freeing them and faulting fresh ones in.

A call at 1000x750 with 21 labels works in a few hundred megabytes of scratch (the padded unary and first
marginals, each lattice's vertex buffers and partial splat sums). Fresh, every page of them is faulted in on
first touch, by the parallel loops that first write them; on virtual machines, where a fault may also have to
reach the host, several threads faulting at once made 2-thread calls uneven where 1-thread ones were not
(``python benchmarks/bench_threads.py --spread 15`` prints each call's faults). Kept, the next call of similar
size touches memory it already has. One :class:`~crfrnn._utils.memory.Workspace` serves the fused path
(:mod:`crfrnn.crf._fused`) and the differentiable one (:mod:`crfrnn.crf._compiled`); it keeps at most 2 GiB
(and at most 16 buffers of one shape), and :func:`release_buffers` frees it.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from crfrnn._utils.memory import Workspace

__all__ = ["WORKSPACE", "flat_buffer", "release_buffers", "rounded", "vertex_buffers", "views"]

#: Up to 16 of one shape: a batch keeps vertex buffers of one shape for every image.
WORKSPACE = Workspace(per_key=16)


def release_buffers() -> None:
    """Free the buffers kept for reuse between calls (those of the fused path and of training steps)."""
    WORKSPACE.clear()


def rounded(rows: int) -> int:
    """``rows`` rounded up to within 1/8: kept buffers then fit lattices of similar size (lattices vary in size)."""
    step = 1 << max(0, rows.bit_length() - 4)
    return -(-rows // step) * step


def vertex_buffers(ops, channels: int, dtype: torch.dtype, count: int = 2) -> list:
    """``count`` ``(M + 1, C)`` vertex buffers per kernel, kept buffers with their rows rounded up."""
    return [
        tuple(WORKSPACE.take((rounded(o.num_vertices + 1), channels), dtype) for _ in range(count)) for o, *_ in ops
    ]


def views(bufs: list, ops) -> list:
    """The ``(M + 1, C)`` NumPy views of :func:`vertex_buffers`' buffers (contiguous: their first rows)."""
    return [tuple(x[: o.num_vertices + 1].numpy() for x in pair) for pair, (o, *_) in zip(bufs, ops)]


def flat_buffer(shape: tuple[int, ...], dtype: torch.dtype) -> tuple[torch.Tensor, np.ndarray]:
    """A kept buffer of at least ``prod(shape)`` elements (rounded up) and its first ones as a C-contiguous
    ``shape`` NumPy array; give the first back to :data:`WORKSPACE` when done.
    """
    buf = WORKSPACE.take((rounded(max(1, math.prod(shape))),), dtype)
    return buf, buf[: math.prod(shape)].numpy().reshape(shape)

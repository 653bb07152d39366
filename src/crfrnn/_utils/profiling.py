"""Measuring what autograd keeps for the backward pass (used by the tests and the benchmarks)."""

from __future__ import annotations

from typing import Callable

import torch

__all__ = ["saved_activation_bytes"]


def saved_activation_bytes(forward: Callable[[], object]) -> int:
    """Bytes of the distinct strided tensors that autograd saves while ``forward()`` runs.

    Tensors sharing a storage are counted once (by the storage's size), so views do not inflate the count.
    """
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        if t.layout == torch.strided:
            seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        forward()
    return sum(seen.values())

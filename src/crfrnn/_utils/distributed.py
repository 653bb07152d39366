"""The process-group helpers that every layer may use: who this process is, and the in-place sum over processes.

Both do nothing without an initialised :mod:`torch.distributed` process group, so the code that calls them is the
same in one process or many. Starting the group, devices and the other collectives are
:mod:`crfrnn.workflow._distributed`'s.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["all_reduce_sum_", "rank_and_world"]


def rank_and_world() -> tuple[int, int]:
    """``(rank, world_size)`` of the initialised process group, ``(0, 1)`` without one."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def all_reduce_sum_(tensor: Tensor) -> Tensor:
    """Sum ``tensor`` over the processes of the initialised group, in place (no-op without one)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.all_reduce(tensor, op=torch.distributed.ReduceOp.SUM)
    return tensor

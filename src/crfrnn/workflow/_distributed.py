"""Processes, devices and threads: everything :mod:`torch.distributed` in one place.

A run is launched with ``torchrun`` (``WORLD_SIZE``/``RANK``/``LOCAL_RANK`` in the environment) or as one
process. :func:`init_distributed` joins (or starts) the process group and describes this process as a
:class:`DistInfo`; :func:`rank_and_world` reads the same from an initialised group (it and
:func:`all_reduce_sum_` live in :mod:`crfrnn._utils.distributed`, for the layers below this one). The collectives
(:func:`gather`, :func:`sum_across`, :func:`all_reduce_sum_`, :func:`broadcast_buffers`) do nothing in a single
process, so the code that calls them is the same either way.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from typing import Any, Optional, Sequence, Union

import torch
from torch import nn

from crfrnn._utils.distributed import all_reduce_sum_, rank_and_world

__all__ = [
    "DistInfo",
    "all_reduce_sum_",
    "broadcast_buffers",
    "env_int",
    "gather",
    "init_distributed",
    "is_main_process",
    "rank_and_world",
    "resolve_device",
    "set_threads",
    "state_hash",
    "sum_across",
    "thread_ceiling",
    "threads_for_now",
]


@dataclass
class DistInfo:
    """This process in a run: its rank, the number of processes, its local rank, and whether :func:`train`
    started the process group (and so must destroy it).
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    owns_group: bool = False

    @property
    def enabled(self) -> bool:
        """Whether more than one process takes part."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Whether this is the process of rank 0."""
        return self.rank == 0


def env_int(name: str) -> Optional[int]:
    """An integer environment variable (``None`` when unset or empty)."""
    value = os.environ.get(name)
    if value is None or value == "":
        return None
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name}={value!r} is not an integer.") from None


def is_main_process() -> bool:
    """Rank 0 (or no distribution), from the process group if there is one, else from torchrun's RANK."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank() == 0
    return (env_int("RANK") or 0) == 0


def init_distributed(device_kind: str) -> DistInfo:
    """Join the initialised process group, or start one (gloo, nccl for ``device_kind="cuda"``) under torchrun."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size(), env_int("LOCAL_RANK") or 0, owns_group=False)
    world = env_int("WORLD_SIZE") or 1
    if world <= 1:
        return DistInfo()
    rank, local = env_int("RANK"), env_int("LOCAL_RANK")
    if rank is None:
        raise ValueError("WORLD_SIZE is set but RANK is not; launch with torchrun, which sets both.")
    if not dist.is_available():
        raise RuntimeError("WORLD_SIZE > 1 but this torch build has no torch.distributed.")
    backend = "nccl" if device_kind == "cuda" else "gloo"
    dist.init_process_group(backend=backend)
    return DistInfo(rank, world, local if local is not None else rank, owns_group=True)


def resolve_device(spec: Union[str, torch.device], *, local_rank: Optional[int] = None) -> torch.device:
    """The torch device named by ``spec``: ``"auto"`` (CUDA if available), ``"cpu"``, ``"cuda"``, ``"cuda:N"``.

    ``"cuda"`` without an index is the ``local_rank``-th GPU when given (one GPU per process), else the current
    one. Nothing global is changed.

    Raises:
        ValueError: for a string that is not a device, or CUDA asked for where it is not available.

    Example:
        >>> resolve_device("cpu")
        device(type='cpu')
    """
    if spec == "auto":
        spec = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(spec)
    except (RuntimeError, TypeError) as err:
        raise ValueError(
            f"device {spec!r} is not a valid torch device (use 'auto', 'cpu', 'cuda' or 'cuda:N')."
        ) from err
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {spec!r} was asked for but CUDA is not available; use device 'cpu' or 'auto'.")
        if device.index is None:
            device = torch.device("cuda", local_rank if local_rank is not None else torch.cuda.current_device())
    return device


def set_threads(threads: Optional[int], dist_info: Optional[DistInfo]) -> None:
    """Set torch's and numba's CPU threads (``None``: leave them, except under torchrun: ``OMP_NUM_THREADS``)."""
    if threads is None and dist_info is not None and dist_info.enabled:
        threads = torch.get_num_threads()  # torchrun sets OMP_NUM_THREADS (1 by default) for every process
    if threads is None:
        return
    torch.set_num_threads(threads)
    try:
        import numba
    except ImportError:  # pragma: no cover - numba is a dependency
        return
    numba.set_num_threads(max(1, min(threads, numba.config.NUMBA_NUM_THREADS)))  # type: ignore[attr-defined]


def thread_ceiling(threads: Optional[int], dist_info: Optional[DistInfo]) -> Optional[int]:
    """The most CPU threads the network may take when :func:`threads_for_now` chooses them, or ``None`` when the
    count is fixed: ``threads`` given, or several processes under torchrun (``OMP_NUM_THREADS``).
    """
    if threads is not None or (dist_info is not None and dist_info.enabled):
        return None
    return max(1, min(torch.get_num_threads(), os.cpu_count() or 1))


def threads_for_now(ceiling: Optional[int]) -> int:
    """Set torch's intra-op threads to the CPUs free now (the CRF calls' rule, :func:`crfrnn._utils.threads.free_cpus`),
    at most ``ceiling``; ``None`` leaves them. Cheap (a few reads of ``/proc``): called at the start of each epoch.

    A parallel region waits for its slowest thread: on a machine whose cores are busy, two threads of the CNN
    ran epochs 20 times slower than one (``benchmarks/bench_contended_train.py``).

    Returns:
        The threads torch now uses.
    """
    if ceiling is not None:
        from crfrnn._utils.threads import free_cpus

        wanted = max(1, min(free_cpus(), ceiling))
        if wanted != torch.get_num_threads():
            torch.set_num_threads(wanted)
    return torch.get_num_threads()


def gather(obj: Any, dist_info: DistInfo) -> list[Any]:
    """``obj`` of every process, in rank order (``[obj]`` in a single process)."""
    if not dist_info.enabled:
        return [obj]
    import torch.distributed as dist

    out: list[Any] = [None] * dist_info.world_size
    dist.all_gather_object(out, obj)
    return out


def sum_across(values: Sequence[float], dist_info: DistInfo, device: torch.device) -> list[float]:
    """The element-wise sums of ``values`` over the processes (float64)."""
    t = torch.tensor(list(values), dtype=torch.float64, device=device)
    if dist_info.enabled:
        import torch.distributed as dist

        dist.all_reduce(t)
    return t.tolist()


def broadcast_buffers(model: nn.Module, dist_info: DistInfo) -> None:
    """Copy rank 0's buffers (BatchNorm running statistics) to every process."""
    if dist_info.enabled:
        import torch.distributed as dist

        for buf in model.buffers():
            dist.broadcast(buf, 0)


def state_hash(model: nn.Module) -> str:
    """SHA-256 of the model's state (parameters and buffers), to check that processes agree."""
    h = hashlib.sha256()
    for key, value in sorted(model.state_dict().items()):
        h.update(key.encode())
        h.update(value.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()

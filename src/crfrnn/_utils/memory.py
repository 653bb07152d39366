"""Large work buffers backed by transparent huge pages where the system offers them.

A fresh buffer costs a page fault per 4 KiB page on first touch: for the few hundred megabytes that mean field
keeps for its backward pass that is a noticeable part of a call (filling a fresh tensor is much slower than
filling a reused one, and huge pages take most of the difference back). Linux's default
``transparent_hugepage=madvise`` only gives 2 MiB pages to memory that asks for them, which :func:`empty` does.
Elsewhere, and for small buffers, it is ``torch.empty``.
"""

from __future__ import annotations

import math
import mmap
import threading
import weakref

import numpy as np
import torch

__all__ = ["Workspace", "empty"]

_MIN_BYTES = 8 << 20  # smaller buffers come from the ordinary allocator
_HUGE_PAGE = 2 << 20
_HUGE = getattr(mmap, "MADV_HUGEPAGE", None)
_NUMPY = {torch.float32: np.float32, torch.float64: np.float64, torch.int32: np.int32, torch.int64: np.int64}


def empty(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """An uninitialised CPU tensor; one of at least 8 MiB is mapped with ``MADV_HUGEPAGE`` where available."""
    count = math.prod(shape)
    np_dtype = _NUMPY.get(dtype)
    nbytes = count * np.dtype(np_dtype).itemsize if np_dtype is not None else 0
    if _HUGE is None or np_dtype is None or nbytes < _MIN_BYTES:
        return torch.empty(shape, dtype=dtype)
    try:
        # a whole number of huge pages: Linux aligns such a mapping to one, so every page of it can be huge (a
        # mapping of another length is filled mostly with small pages, a fault each)
        size = -(-nbytes // _HUGE_PAGE) * _HUGE_PAGE
        region = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        region.madvise(_HUGE)
    except (OSError, ValueError):
        return torch.empty(shape, dtype=dtype)
    # the array holds the mapping (a buffer export) and the tensor holds the array: unmapped when both are gone
    return torch.from_numpy(np.frombuffer(region, dtype=np_dtype, count=count).reshape(shape))


class Workspace:
    """Large buffers handed from one call to the next instead of being freed and faulted in again.

    A buffer is taken for the caller's exclusive use (:meth:`take`) and given back when the caller is done
    (:meth:`give`), or, for buffers an autograd node saved for its backward pass, when that node no longer needs
    them (:meth:`give_after`): after its backward has run without ``retain_graph`` (its saved tensors are then
    released) or once the node is gone. Until then they are never handed out again, so a retained graph keeps
    its own values. Safe to share between threads.

    At most ``per_key`` free buffers of one shape are kept, and at most ``max_bytes`` in all: a buffer given back
    when the workspace is full frees the ones given back longest ago (buffers of sizes no longer in use, e.g. of
    the previous images of a folder), or itself if it alone is larger. :meth:`clear` frees them all.
    """

    def __init__(self, per_key: int = 2, max_bytes: int = 2 << 30) -> None:
        self.per_key = per_key
        self.max_bytes = max_bytes
        self._free: dict[tuple, list[torch.Tensor]] = {}
        self._kept_bytes = 0
        self._pending: list[tuple[list[torch.Tensor], "weakref.ref"]] = []
        self._lock = threading.Lock()

    def take(self, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        """An uninitialised buffer of ``shape`` for the caller alone (a kept one if any is free)."""
        key = (tuple(shape), dtype)
        with self._lock:
            self._collect()
            free = self._free.get(key)
            if free:
                buf = free.pop()
                self._kept_bytes -= _nbytes(buf)
                if not free:
                    del self._free[key]
                return buf
        return empty(tuple(shape), dtype)

    def give(self, *buffers: torch.Tensor) -> None:
        """Buffers the caller will not touch again."""
        with self._lock:
            for buf in buffers:
                self._keep(buf)

    def give_after(self, buffers: list[torch.Tensor], ctx) -> None:
        """Buffers that autograd node ``ctx`` saved: free for others once its saved tensors are released."""
        with self._lock:
            self._pending.append((list(buffers), weakref.ref(ctx)))
            del self._pending[:-8]  # nodes never run backward (a forward under grad, then dropped): forget the oldest

    def clear(self) -> None:
        """Free every kept buffer."""
        with self._lock:
            self._free.clear()
            self._kept_bytes = 0
            self._pending.clear()

    def _collect(self) -> None:
        still = []
        for buffers, ref in self._pending:
            if _released(ref):
                for buf in buffers:
                    self._keep(buf)
            else:
                still.append((buffers, ref))
        self._pending = still

    def _keep(self, buf: torch.Tensor) -> None:
        size = _nbytes(buf)
        if size == 0 or size > self.max_bytes:
            return
        key = (tuple(buf.shape), buf.dtype)
        if len(self._free.get(key, ())) >= self.per_key:
            return
        while self._kept_bytes + size > self.max_bytes:  # free the buffers given back longest ago
            oldest = next(iter(self._free))  # dicts keep insertion order: a key re-enters at the end when refilled
            self._kept_bytes -= _nbytes(self._free[oldest].pop(0))
            if not self._free[oldest]:
                del self._free[oldest]
        self._free.setdefault(key, []).append(buf)
        self._kept_bytes += size


def _nbytes(buf: torch.Tensor) -> int:
    return buf.numel() * buf.element_size()


def _released(ref: "weakref.ref") -> bool:
    ctx = ref()
    if ctx is None:
        return True
    try:
        _ = ctx.saved_tensors  # raises once backward has freed them
    except RuntimeError:  # "Trying to backward through the graph a second time": released after backward
        return True
    return False

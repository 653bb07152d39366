"""Large work buffers (``crfrnn._utils.memory.empty``): shape, dtype, writable, and mapped in whole huge pages."""

from __future__ import annotations

import mmap

import numpy as np
import torch

from crfrnn._utils import memory


def _spy(monkeypatch) -> list:
    sizes: list = []
    real = mmap.mmap

    def spy(fileno, length, *args, **kwargs):
        sizes.append(length)
        return real(fileno, length, *args, **kwargs)

    monkeypatch.setattr(memory.mmap, "mmap", spy)
    return sizes


def test_small_buffers_come_from_the_ordinary_allocator(monkeypatch):
    sizes = _spy(monkeypatch)
    t = memory.empty((3, 5), torch.float32)
    assert t.shape == (3, 5) and t.dtype == torch.float32 and sizes == []


def test_large_buffers_are_writable_and_mapped_in_whole_huge_pages(monkeypatch):
    sizes = _spy(monkeypatch)
    shape = (21, 375 * 500)  # 15.75 MB of float32: not a whole number of 2 MiB pages
    for dtype in (torch.float32, torch.float64, torch.int64):
        t = memory.empty(shape, dtype)
        assert t.shape == shape and t.dtype == dtype and t.is_contiguous()
        t.fill_(7)
        assert bool((t == 7).all())  # every element written (a float32 sum would round)
        if hasattr(mmap, "MADV_HUGEPAGE"):  # Linux: an anonymous mapping advised for huge pages
            assert sizes[-1] % (2 << 20) == 0 and 0 <= sizes[-1] - t.numel() * t.element_size() < 2 << 20
    np.testing.assert_array_equal(memory.empty((0,), torch.float32).numpy(), np.empty(0, np.float32))


def test_the_workspace_hands_back_kept_buffers_and_frees_the_oldest_when_full():
    ws = memory.Workspace(per_key=2, max_bytes=3 * 4096)
    a = ws.take((1024,), torch.float32)  # 4 KiB each
    b = ws.take((1024,), torch.float32)
    ws.give(a, b)
    assert ws.take((1024,), torch.float32) is b and ws.take((1024,), torch.float32) is a  # reused, last in first out
    ws.give(a, b)
    c = ws.take((512, 2), torch.float32)  # another shape
    ws.give(c)
    d = ws.take((1024, 1), torch.float32)  # full: giving d back frees the buffer given back longest ago (a)
    ws.give(d)
    assert ws.take((1024,), torch.float32) is b
    assert ws.take((1024,), torch.float32) is not a  # freed, a fresh one
    assert ws.take((512, 2), torch.float32) is c and ws.take((1024, 1), torch.float32) is d
    ws.give(memory.empty((4097,), torch.float32))  # larger than the whole workspace: not kept
    assert not ws._free and ws._kept_bytes == 0
    ws.give(c, d)
    assert ws.take((4096,), torch.float32) is not c  # nothing of that shape kept
    ws.clear()
    assert not ws._free and ws._kept_bytes == 0
    assert ws.take((512, 2), torch.float32) is not c

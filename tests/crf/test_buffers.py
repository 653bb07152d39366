"""The kept work buffers of the CPU paths: reused by the next call, given back when a call fails, never shared."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from crfrnn import CrfRnn, dense_crf
from crfrnn.crf import _buffers


def _inputs(seed: int, h: int = 40, w: int = 56, labels: int = 5):
    g = torch.Generator().manual_seed(seed)
    image = (torch.rand(h, w, 3, generator=g) * 255).to(torch.uint8).numpy()
    probs = torch.softmax(3 * torch.randn(labels, h, w, generator=g), 0).numpy()
    return image, probs


def _taken(monkeypatch) -> list:
    """Record the storage of every buffer the workspace hands out."""
    seen: list = []
    take = _buffers.WORKSPACE.take

    def spy(shape, dtype):
        buf = take(shape, dtype)
        seen.append(buf.data_ptr())
        return buf

    monkeypatch.setattr(_buffers.WORKSPACE, "take", spy)
    return seen


def test_a_second_call_reuses_the_first_calls_scratch(monkeypatch):
    _buffers.release_buffers()
    image, probs = _inputs(0)
    seen = _taken(monkeypatch)
    first = dense_crf(image, probs, num_iterations=3)
    n = len(seen)
    assert n >= 4  # the unary, the first marginals and each kernel's vertex buffers at least
    second = dense_crf(image, probs, num_iterations=3)
    assert sorted(seen[n:]) == sorted(seen[:n])  # the same memory, no fresh buffer
    torch.testing.assert_close(second, first, rtol=0, atol=0)


def test_logits_reuse_their_first_marginals_too(monkeypatch):
    _buffers.release_buffers()
    image, probs = _inputs(4)
    logits = np.log(probs)
    first = dense_crf(image, logits=logits, num_iterations=3)
    seen = _taken(monkeypatch)
    dense_crf(image, probs, num_iterations=3)
    from_probs = len(seen)  # the unary and the first marginals, then each image's vertex buffers and partial sums
    dense_crf(image, logits=logits, num_iterations=3)
    n = len(seen)
    assert n - from_probs == from_probs  # logits take as many: their first marginals are kept as well
    second = dense_crf(image, logits=logits, num_iterations=3)
    assert sorted(seen[n:]) == sorted(seen[from_probs:n])
    torch.testing.assert_close(second, first, rtol=0, atol=0)


def test_untied_iterations_reuse_and_agree_with_a_fresh_workspace(monkeypatch):
    image, probs = _inputs(1)
    torch.manual_seed(0)
    crf = CrfRnn(5, num_iterations=3, num_untied=3)
    unary = torch.from_numpy(probs).log()[None]
    guide = torch.from_numpy(image).permute(2, 0, 1)[None].float()
    with torch.no_grad():
        _buffers.release_buffers()
        fresh = crf(unary, guide)
        seen = _taken(monkeypatch)
        again = crf(unary, guide)
        n = len(seen)
        crf(unary, guide)
    assert n >= 4 and sorted(seen[n:]) == sorted(seen[:n])
    torch.testing.assert_close(again, fresh, rtol=0, atol=0)


def test_a_failing_call_gives_its_buffers_back():
    _buffers.release_buffers()
    image, probs = _inputs(2)
    dense_crf(image, probs, num_iterations=2)
    kept = sum(len(v) for v in _buffers.WORKSPACE._free.values())
    bad = probs.copy()
    bad[0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="finite"):
        dense_crf(image, bad, num_iterations=2)
    assert sum(len(v) for v in _buffers.WORKSPACE._free.values()) == kept


def test_concurrent_calls_never_share_a_buffer():
    inputs = [_inputs(s) for s in range(4)]
    expected = [dense_crf(i, p, num_iterations=3) for i, p in inputs]
    results: dict = {}
    barrier = threading.Barrier(4)

    def run(k: int) -> None:
        barrier.wait()
        for _ in range(3):
            results[k] = dense_crf(*inputs[k], num_iterations=3)

    threads = [threading.Thread(target=run, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for k in range(4):
        torch.testing.assert_close(results[k], expected[k], rtol=0, atol=0)


def test_release_buffers_frees_what_is_kept():
    image, probs = _inputs(3)
    dense_crf(image, probs, num_iterations=2)
    assert _buffers.WORKSPACE._free
    _buffers.release_buffers()
    assert not _buffers.WORKSPACE._free

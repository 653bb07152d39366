"""What autograd keeps for a CrfRnn step's backward pass: O(T B L N) with the constant of docs/engine.md ("What the
backward pass keeps"), and less with memory_efficient=True. Counted with torch.autograd.graph.saved_tensors_hooks,
each storage once (a view of a kept tensor costs nothing more). The torch path on the CPU, and the Triton path
(crfrnn::message_step) under triton's interpreter; tiny inputs.
"""

from __future__ import annotations

import os

from tests.conftest import DEVICE

if DEVICE.type != "cuda":
    os.environ["TRITON_INTERPRET"] = "1"

import importlib.util  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

from crfrnn import CrfRnn  # noqa: E402

B, L, H, W = 2, 4, 8, 6
KERNELS = 2
NEEDS_TRITON = pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="the triton package")


def saved_numbers(backend: str, iterations: int, memory_efficient: bool, **kw) -> float:
    """Numbers (elements of the CRF's dtype) autograd keeps for one forward, over ``B L N``."""
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        storages[storage.data_ptr()] = max(storages.get(storage.data_ptr(), 0), storage.nbytes())
        return t

    crf = CrfRnn(L, num_iterations=iterations, backend=backend, memory_efficient=memory_efficient, **kw)
    crf = crf.double().train().to(DEVICE)
    g = torch.Generator().manual_seed(0)
    unary = torch.randn(B, L, H, W, generator=g, dtype=torch.float64).to(DEVICE).requires_grad_(True)
    image = (torch.rand(B, 3, H, W, generator=g, dtype=torch.float64) * 255).to(DEVICE)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        crf(unary, image)
    return sum(storages.values()) / 8 / (B * L * H * W)


@pytest.mark.parametrize(
    ("backend", "kw"),
    [
        ("torch", {}),
        ("torch", {"normalization": "symmetric", "exclude_self": True}),
        pytest.param("triton", {}, marks=NEEDS_TRITON),
        pytest.param(
            "triton",
            {"normalization": "symmetric", "exclude_self": True},
            marks=NEEDS_TRITON,
        ),
    ],
)
def test_saved_is_k_plus_one_per_iteration(backend, kw):
    one, three = (saved_numbers(backend, t, False, **kw) for t in (1, 3))
    per_iteration = (three - one) / 2
    # each iteration keeps the K messages and its marginals: (K + 1) B L N numbers (+ rounding of small parts)
    assert per_iteration <= (KERNELS + 1) * 1.05
    # and once per call: the first marginals, the last output, the factors (3 K B N) and the transforms
    assert three <= (KERNELS + 1) * 3 + 2 + 3 * KERNELS / L + 0.5
    efficient = saved_numbers(backend, 3, True, **kw)
    # memory_efficient keeps each iteration's input marginals only (B L N) and recomputes the rest
    assert efficient < three and efficient <= 3 * 1.05 + 2 + 3 * KERNELS / L + 0.5

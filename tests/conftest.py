"""Shared fixtures: real photos from scikit-image's bundled samples, dense random features, the test device.

``CRFRNN_TEST_DEVICE`` (default ``cpu``) chooses where the torch-path tests build their tensors, e.g.
``CRFRNN_TEST_DEVICE=cuda python -m pytest`` runs them unchanged on a GPU. Tests of CPU-only things (the
compiled fused path, NumPy APIs) stay on the CPU and say so.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

#: The device of the torch-path tests: ``$CRFRNN_TEST_DEVICE``, or the CPU.
DEVICE = torch.device(os.environ.get("CRFRNN_TEST_DEVICE", "cpu"))
if DEVICE.type == "cuda" and not torch.cuda.is_available():
    raise pytest.UsageError(f"CRFRNN_TEST_DEVICE={DEVICE} but torch sees no CUDA device; unset it to test on the CPU.")


@pytest.fixture
def device() -> torch.device:
    """The device of the torch-path tests (:data:`DEVICE`)."""
    return DEVICE


def photo(name: str = "astronaut", size: tuple[int, int] = (48, 64)) -> torch.Tensor:
    """A real photo shipped inside the scikit-image wheel, resized: ``(1, 3, H, W)`` float64 on 0..255."""
    data = pytest.importorskip("skimage.data", reason="scikit-image provides the sample photos")
    from skimage.transform import resize

    img = resize(getattr(data, name)(), size, anti_aliasing=True) * 255.0
    return torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1)[None].to(torch.float64)


@pytest.fixture
def generator() -> torch.Generator:
    return torch.Generator().manual_seed(0)


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())

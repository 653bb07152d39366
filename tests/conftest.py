"""Shared fixtures: real photos from scikit-image's bundled samples and dense random features."""

from __future__ import annotations

import numpy as np
import pytest
import torch


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

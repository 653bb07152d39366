"""The kernel features against their definition: a float64 grid of positions divided by the widths, rounded to the
dtype once, the last axis first, then the guide divided by its widths (bit for bit: the lattice, and so every
result, depends on these bits).
"""

from __future__ import annotations

import pytest
import torch

from crfrnn.crf.features import bilateral_features, position_features, spatial_features


def reference_positions(shape, widths, steps, dtype):
    """``(1, N, len(S))``: the float64 meshgrid, stacked last axis first, then rounded."""
    axes = [(torch.arange(n, dtype=torch.float64) * s) / w for n, s, w in zip(shape, steps, widths)]
    grids = torch.meshgrid(*axes, indexing="ij")
    return torch.stack(grids[::-1], -1).reshape(1, -1, len(shape)).to(dtype)


CASES = [
    ((7,), (2.0,), None),
    ((5, 6), (3.0, 1.5), None),
    ((37, 53), (80.0, 80.0), None),
    ((4, 5, 6), (2.0, 3.0, 0.7), (2.5, 1.0, 0.3)),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape, widths, spacing", CASES)
def test_positions_are_the_rounded_float64_grid(shape, widths, spacing, dtype):
    steps = spacing or (1.0,) * len(shape)
    got = position_features(shape, widths, spacing=spacing, dtype=dtype)
    assert got.dtype == dtype and got.shape == (1, torch.Size(shape).numel(), len(shape))
    assert torch.equal(got, reference_positions(shape, widths, steps, dtype))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape, widths, spacing", CASES)
def test_bilateral_is_positions_then_divided_guide(shape, widths, spacing, dtype):
    steps = spacing or (1.0,) * len(shape)
    gen = torch.Generator().manual_seed(len(shape))
    image = (torch.rand(2, 3, *shape, generator=gen) * 255).to(dtype)
    guide_widths = (13.0, 7.0, 30.0)
    got = bilateral_features(image, widths, guide_widths, spacing=spacing)
    pos = reference_positions(shape, widths, steps, dtype).expand(2, -1, -1)
    guide = (image.reshape(2, 3, -1) / torch.tensor(guide_widths, dtype=dtype).view(1, 3, 1)).transpose(1, 2)
    assert got.dtype == dtype and got.is_contiguous()
    assert torch.equal(got, torch.cat([pos, guide], -1))


def test_bilateral_of_a_uint8_photo_and_a_non_contiguous_image():
    gen = torch.Generator().manual_seed(0)
    photo = torch.randint(0, 256, (1, 9, 11, 3), dtype=torch.uint8, generator=gen).permute(0, 3, 1, 2)
    got = bilateral_features(photo, 5.0, 13.0)
    image = photo.to(torch.get_default_dtype())
    pos = reference_positions((9, 11), (5.0, 5.0), (1.0, 1.0), image.dtype)
    assert torch.equal(got, torch.cat([pos, image.reshape(1, 3, -1).transpose(1, 2) / 13.0], -1))


def test_spatial_features_are_x_then_y_for_every_image():
    got = spatial_features(3, 4, 5, (2.0, 0.5))  # (theta_x, theta_y)
    assert got.shape == (3, 20, 2)
    assert torch.equal(got[1, 7], torch.tensor([2 / 2.0, 1 / 0.5]))  # pixel 7: row 1, column 2
    assert torch.equal(got[0], reference_positions((4, 5), (0.5, 2.0), (1.0, 1.0), torch.float32)[0])

"""What the fuzz suite found (issue 25), each mended at its entry point, pinned by a plain example: a clear
ValueError/TypeError naming the parameter instead of a RuntimeError, IndexError, ZeroDivisionError or NaN."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import crfrnn
import crfrnn.compat as dcrf
from crfrnn import io
from crfrnn.crf import guide_features


def test_mean_field_float16_logits_out_of_range_are_refused():
    unary = torch.tensor([[[[-0.8711]]]], dtype=torch.float16)
    image = torch.tensor([-647976.0, 32344.0, 965086.0, -1675500.0]).reshape(1, 4, 1, 1)
    with pytest.raises(ValueError, match=r"beyond torch.float16's range.*unary.float\(\)"):
        crfrnn.mean_field(unary, image, theta_alpha=1.0, bilateral_weight=347725.0, num_iterations=3)
    out = crfrnn.mean_field(unary.float(), image, theta_alpha=1.0, bilateral_weight=347725.0, num_iterations=3)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize(
    "call,error,match",
    [
        (lambda: crfrnn.spatial_features(-1, 4, 4, 3.0), ValueError, r"sizes >= 1, got \(-1, 4, 4\)"),
        (lambda: crfrnn.spatial_features(1, 0, 4, 3.0), ValueError, r"sizes >= 1"),
        (lambda: crfrnn.position_features((0, 3), 1.0), ValueError, r"shape must hold sizes >= 1, got \(0, 3\)"),
        (lambda: crfrnn.position_features((2.5, 3), 1.0), TypeError, r"shape must hold integers"),
    ],
    ids=["batch", "height", "shape", "float-size"],
)
def test_feature_sizes_are_checked(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_integer_guides_give_float_features():
    guide = torch.zeros(1, 1, 1, 1, dtype=torch.int64)
    assert torch.isfinite(guide_features(guide, 1e-30)).all()  # was 0 / 0 = NaN: the width truncated to 0
    feats = crfrnn.bilateral_features(torch.full((1, 3, 2, 2), 200, dtype=torch.uint8), 1.0, 1e-3)
    assert feats.dtype == torch.float32 and torch.isfinite(feats).all()  # was an int64 overflow


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(gaussian_sxy=0.0), "gaussian_sxy must be finite widths > 0"),
        (dict(bilateral_srgb=float("nan")), "bilateral_srgb must be finite widths > 0"),
        (dict(guide_ranges=[float("nan")]), "guide_ranges must be finite"),
        (dict(shape=(0, 4)), "shape must hold sizes >= 1"),
    ],
)
def test_kernel_spans_checks_its_numbers(kwargs, match):
    args = dict(shape=(4, 4), guide_ranges=[255.0, 255.0, 255.0]) | kwargs
    with pytest.raises(ValueError, match=match):
        io.kernel_spans(**args)


def test_compat_label_counts_and_shapes_are_checked():
    with pytest.raises(ValueError, match="n_labels must be an integer >= 1"):
        dcrf.unary_from_labels(np.array([[1]]), 0, 0.5, zero_unsure=True)
    with pytest.raises(ValueError, match=r"shape must hold 2 or more sizes >= 1.*image.shape\[:2\]"):
        dcrf.create_pairwise_gaussian((3, 3), ())


def test_non_finite_guides_are_refused_by_the_feature_builders():
    image = torch.tensor([[[[float("nan")]]]])
    with pytest.raises(ValueError, match=r"holds NaN or infinite values.*torch.nan_to_num"):
        guide_features(image, 1.0)
    with pytest.raises(ValueError, match=r"holds NaN or infinite values"):
        crfrnn.bilateral_features(image, 1.0, 1.0)


def test_kernel_spans_refuses_widths_too_small_to_divide_by():
    with pytest.raises(ValueError, match="kernel widths are too small"):
        io.kernel_spans((2, 2), [1.0], bilateral_srgb=2.2250738585e-313)

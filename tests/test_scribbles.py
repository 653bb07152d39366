"""Scribbles from ground-truth masks (crfrnn.data.scribbles) and the weak-supervision example's smoke test."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import ndimage

from crfrnn.data import ScribbleDataset, SyntheticShapes, scribbles_from_mask

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def masks() -> list:
    ds = SyntheticShapes(12, size=64, seed=3)
    return [ds[i][1] for i in range(len(ds))]


def _regions(mask: np.ndarray, min_area: int):
    for label in np.unique(mask):
        if label == 255:
            continue
        regions, n = ndimage.label(mask == label, structure=np.ones((3, 3), bool))
        for r in range(1, n + 1):
            region = regions == r
            if region.sum() >= min_area:
                yield int(label), region


@pytest.mark.parametrize("fraction, width", [(0.01, 1), (0.03, 1), (0.08, 3)])
def test_labelled_fraction_in_range(masks, fraction, width):
    # (one-pixel strokes cannot exceed a region's skeleton: about 3 % of the pixels at 64 px, so 8 % needs width 3)
    got = [
        float((scribbles_from_mask(m, fraction=fraction, width=width, rng=i) != 255).float().mean())
        for i, m in enumerate(masks)
    ]
    mean = float(np.mean(got))
    # a region's budget is fraction * area; small regions round up to >= 1 point, short skeletons fall short
    assert 0.6 * fraction <= mean <= 1.5 * fraction, (fraction, got)
    assert max(got) <= 2.5 * fraction


def test_every_region_gets_a_stroke_with_its_own_label(masks):
    for i, m in enumerate(masks):
        s = scribbles_from_mask(m, rng=i).numpy()
        mask = m.numpy()
        labelled = s != 255
        assert np.array_equal(s[labelled], mask[labelled])  # strokes carry the ground truth's labels
        for label, region in _regions(mask, 10):
            assert (s[region] == label).any(), f"image {i}: a region of label {label} ({region.sum()} px) got no stroke"


def test_strokes_are_thin_and_inside(masks):
    m = masks[0].numpy()
    s = scribbles_from_mask(m, fraction=0.05, width=1, margin=2, rng=0)
    # one-pixel skeleton walks: almost no labelled pixel has a full labelled 3x3 neighbourhood
    labelled = s != 255
    full = ndimage.binary_erosion(labelled, structure=np.ones((3, 3), bool))
    assert full.sum() <= 0.05 * labelled.sum()
    # preferred distance from the outline: most stroke pixels are more than 2 px from another label
    dist = np.zeros(m.shape)
    for label in np.unique(m):
        inside = m == label
        dist[inside] = ndimage.distance_transform_edt(inside)[inside]
    assert np.mean(dist[labelled] > 2) > 0.8


def test_width_widens_within_the_region(masks):
    m = masks[1]
    thin = scribbles_from_mask(m, fraction=0.03, width=1, rng=5)
    wide = scribbles_from_mask(m, fraction=0.03, width=3, rng=5)
    assert (wide != 255).sum() > (thin != 255).sum()
    keep = wide != 255
    assert torch.equal(wide[keep], m[keep])


def test_deterministic_and_seed_dependent(masks):
    m = masks[2]
    a = scribbles_from_mask(m, rng=7)
    b = scribbles_from_mask(m, rng=np.random.default_rng(7))
    c = scribbles_from_mask(m, rng=8)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_input_kinds_and_void():
    mask = np.zeros((30, 30), dtype=np.uint8)
    mask[5:25, 5:25] = 2
    mask[0, :] = 255  # void stays unlabelled
    s = scribbles_from_mask(mask, rng=0)
    assert isinstance(s, np.ndarray) and s.dtype == np.int64 and s.shape == (30, 30)
    assert set(np.unique(s)) <= {0, 2, 255} and (s == 2).any() and (s == 0).any()
    assert (s[0] == 255).all()
    t = scribbles_from_mask(torch.from_numpy(mask.astype(np.int64)), rng=0)
    assert isinstance(t, torch.Tensor) and t.dtype == torch.int64
    assert np.array_equal(t.numpy(), s)


def test_small_fragments_are_left_out():
    mask = np.zeros((30, 30), dtype=np.int64)
    mask[2:4, 2:4] = 1  # 4 px
    mask[10:25, 10:25] = 2
    s = scribbles_from_mask(mask, min_area=10, rng=0)
    assert not (s == 1).any() and (s == 2).any()
    s = scribbles_from_mask(mask, min_area=1, rng=0)
    assert (s == 1).any()


@pytest.mark.parametrize(
    "mask, kwargs, error, match",
    [
        (np.zeros((2, 8, 8), np.int64), {}, ValueError, r"one \(H, W\) label map"),
        (np.zeros((0, 8), np.int64), {}, ValueError, "empty"),
        (np.zeros((8, 8), np.float32), {}, TypeError, "integer class indices"),
        (np.zeros((8, 8), bool), {}, TypeError, "integer class indices"),
        (np.full((8, 8), -1, np.int64), {}, ValueError, "negative"),
        (np.zeros((8, 8), np.int64), {"fraction": 0}, ValueError, r"fraction must be a number in \(0, 1\]"),
        (np.zeros((8, 8), np.int64), {"fraction": 1.5}, ValueError, "fraction"),
        (np.zeros((8, 8), np.int64), {"width": 0}, ValueError, "width must be an int >= 1"),
        (np.zeros((8, 8), np.int64), {"max_strokes": 0}, ValueError, "max_strokes"),
        (np.zeros((8, 8), np.int64), {"rng": "seed"}, TypeError, "rng must be an int seed or a numpy Generator"),
        (np.zeros((8, 8), np.int64), {"rng": -1}, ValueError, "rng seed must be >= 0"),
    ],
)
def test_bad_inputs_refused(mask, kwargs, error, match):
    with pytest.raises(error, match=match):
        scribbles_from_mask(mask, **kwargs)


def test_scribble_dataset():
    base = SyntheticShapes(3, size=48, seed=1)
    ds = ScribbleDataset(base, seed=4, fraction=0.05)
    assert len(ds) == 3 and ds.num_classes == base.num_classes and ds.ignore_index == 255
    image, s = ds[1]
    image0, mask = base[1]
    assert torch.equal(image, image0)
    keep = s != 255
    assert keep.any() and torch.equal(s[keep], mask[keep])
    assert torch.equal(ds[1][1], s)  # same sample, same strokes
    assert not torch.equal(ScribbleDataset(base, seed=5, fraction=0.05)[1][1], s)
    with pytest.raises(TypeError, match="rng is derived"):
        ScribbleDataset(base, rng=0)
    with pytest.raises(ValueError, match="seed"):
        ScribbleDataset(base, seed=-1)


def test_weak_supervision_quick(tmp_path, monkeypatch):
    """``examples/weak_supervision.py --quick``: trains the three settings, writes results.json and a figure."""
    spec = importlib.util.spec_from_file_location("weak_supervision", ROOT / "examples" / "weak_supervision.py")
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "weak_supervision", module)
    spec.loader.exec_module(module)
    threads = torch.get_num_threads()
    try:
        result = module.main(["--quick", "--out", str(tmp_path), "--figure", str(tmp_path / "fig.png")])
    finally:
        torch.set_num_threads(threads)
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["config"]["quick"] is True
    assert [r["seed"] for r in saved["per_seed"]] == [0]
    for name in ("full", "pce", "pce+crf"):
        assert 0.0 <= saved["summary"][name]["mean"] <= 1.0
        assert saved["summary"][name]["mean"] == pytest.approx(result["summary"][name]["mean"])
    assert 0.005 < saved["labelled_fraction"] < 0.06
    assert saved["chosen"]["lambda"] in saved["config"]["lambdas"]
    assert [r["lambda"] for r in saved["tuning"]][0] == 0.0
    assert (tmp_path / "fig.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

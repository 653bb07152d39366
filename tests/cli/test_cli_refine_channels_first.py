"""``crfrnn refine`` on NumPy guides stored channels first, ``(C, *S)`` (issue 25 item 10).

Four MRI modalities are often saved as ``(4, D, H, W)``; the guide reader took channels last only. The scores'
shape tells the layouts apart; a guide that fits the scores both ways is refused with how to save it.
"""

from __future__ import annotations

import numpy as np
import pytest

from crfrnn import dense_crf
from crfrnn.cli import main
from crfrnn.io import MAX_GUIDE_CHANNELS, read_volume


def save(tmp_path, guide, probs):
    np.save(tmp_path / "g.npy", guide)
    np.save(tmp_path / "p.npy", probs)
    return [str(tmp_path / "g.npy"), str(tmp_path / "p.npy")]


def problem(spatial, channels=4, labels=3, seed=0):
    rng = np.random.default_rng(seed)
    guide = rng.uniform(0, 100, (*spatial, channels)).astype(np.float32)  # channels last
    guide[..., spatial[-1] // 2 :, channels - 1] += 200
    probs = rng.dirichlet(np.ones(labels), spatial)
    return guide, np.moveaxis(probs, -1, 0).astype(np.float32)


@pytest.mark.parametrize("spatial", [(4, 6, 8), (6, 8)])
def test_channels_first_end_to_end(tmp_path, capsys, spatial):
    guide, probs = problem(spatial)
    paths = save(tmp_path, np.moveaxis(guide, -1, 0), probs)  # (4, *S)
    out = tmp_path / "lab.npy"
    flags = ["-o", str(out), "--save-probs", str(tmp_path / "q.npy"), "--bilateral-srgb", "20,20,20,30"]
    code = main(["refine", *paths, *flags])
    assert code == 0, capsys.readouterr().err
    assert "read channels first: 4 channels" in capsys.readouterr().err
    want = dense_crf(guide, probs, bilateral_srgb=[20.0, 20.0, 20.0, 30.0])  # the same guide, channels last
    np.testing.assert_allclose(np.load(tmp_path / "q.npy"), want, atol=1e-5)
    assert np.array_equal(np.load(out), want.argmax(0))


def test_labels_as_many_as_modalities(tmp_path):
    # (4, D, H, W) scores also fit the guide read channels last with W = 10 channels: too many to be modalities
    guide, probs = problem((5, 6, 10), labels=4)
    paths = save(tmp_path, np.moveaxis(guide, -1, 0), probs)
    loaded, scores, shape, _ = read_volume(*paths)
    assert shape == (5, 6, 10) and loaded.data.shape == (5, 6, 10, 4) and np.array_equal(loaded.data, guide)
    assert np.array_equal(scores, probs)


@pytest.mark.parametrize(
    "guide_shape, probs_shape, hint",
    [
        ((4, 4, 4, 4), (3, 4, 4, 4), "numpy.moveaxis(guide, 0, -1)"),  # 4 modalities first, or last
        ((3, 8, 8), (3, 8, 8), "give the scores a labels axis: shape (1, *(3, 8, 8))"),  # a volume, or 3 channels
    ],
)
def test_ambiguous_layout_refused_with_how_to_pass_it(tmp_path, capsys, guide_shape, probs_shape, hint):
    rng = np.random.default_rng(1)
    probs = rng.uniform(0.1, 1, probs_shape).astype(np.float32)
    paths = save(tmp_path, rng.uniform(0, 255, guide_shape).astype(np.float32), probs)
    assert main(["refine", *paths, "-o", str(tmp_path / "lab.npy")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "ambiguous" in err[0] and hint in err[0], err
    assert not (tmp_path / "lab.npy").exists()


def test_channels_last_and_single_channel_unchanged(tmp_path):
    guide, probs = problem((4, 6, 8))
    paths = save(tmp_path, guide, probs)
    assert read_volume(*paths)[0].data.shape == (4, 6, 8, 4)
    paths = save(tmp_path, guide[..., 0], probs)
    assert read_volume(*paths)[2] == (4, 6, 8)
    # too many channels to be read first: refused as before, with the expected shapes
    paths = save(tmp_path, np.zeros((MAX_GUIDE_CHANNELS + 1, 6, 8), np.float32), probs[:, 0])
    with pytest.raises(ValueError, match="does not fit the guide"):
        read_volume(*paths)

"""``crfrnn refine`` on multi-channel guides: one --bilateral-srgb width per channel (issue 25 item 10).

A four-modality volume (T1, T1c, T2, FLAIR as the last axis) was refused with an RGBA hint that the command
line could not follow, because --bilateral-srgb took one number.
"""

from __future__ import annotations

import numpy as np
import pytest

from crfrnn import dense_crf
from crfrnn.cli import main


def four_modalities(tmp_path):
    rng = np.random.default_rng(0)
    guide = rng.uniform(0, 100, (4, 6, 8, 4)).astype(np.float32)  # (D, H, W, C): channels last
    guide[:, :, 4:, 2] += 200  # the T2-like channel carries the edge
    probs = rng.dirichlet(np.ones(3), (4, 6, 8)).transpose(3, 0, 1, 2).astype(np.float32)
    np.save(tmp_path / "mri.npy", guide)
    np.save(tmp_path / "p.npy", probs)
    return guide, probs


def refine(tmp_path, *flags):
    out = tmp_path / "lab.npy"
    args = ["refine", str(tmp_path / "mri.npy"), str(tmp_path / "p.npy"), "-o", str(out)]
    return main(args + ["--save-probs", str(tmp_path / "q.npy"), *flags]), out


class TestPerChannelWidths:
    @pytest.mark.parametrize("given", [["20", "20", "30", "30"], ["20,20,30,30"], ["20,20", "30", "30"]])
    def test_one_width_per_channel_end_to_end(self, tmp_path, capsys, given):
        guide, probs = four_modalities(tmp_path)
        code, out = refine(tmp_path, "--bilateral-srgb", *given)
        assert code == 0, capsys.readouterr().err
        want = dense_crf(guide, probs, bilateral_srgb=[20.0, 20.0, 30.0, 30.0])
        np.testing.assert_allclose(np.load(tmp_path / "q.npy"), want, atol=1e-5)
        assert np.load(out).shape == (4, 6, 8)

    def test_one_number_is_every_channel(self, tmp_path, capsys):
        guide, probs = four_modalities(tmp_path)
        code, _ = refine(tmp_path, "--bilateral-srgb", "25")
        err = capsys.readouterr().err
        assert code == 0 and "RGBA" not in err
        want = dense_crf(guide, probs, bilateral_srgb=[25.0] * 4)
        np.testing.assert_allclose(np.load(tmp_path / "q.npy"), want, atol=1e-5)

    def test_count_mismatch_names_both_counts(self, tmp_path, capsys):
        four_modalities(tmp_path)
        code, out = refine(tmp_path, "--bilateral-srgb", "20", "20", "30")
        err = capsys.readouterr().err
        assert code == 2 and "3 widths" in err and "4 channels" in err and "Traceback" not in err
        assert not out.exists()

    def test_bad_width_refused_by_the_parser(self, tmp_path, capsys):
        four_modalities(tmp_path)
        with pytest.raises(SystemExit) as exc:
            refine(tmp_path, "--bilateral-srgb", "20,-1")
        assert exc.value.code == 2 and "must be > 0" in capsys.readouterr().err

    def test_library_hint_can_be_followed(self):
        guide = np.random.default_rng(0).uniform(0, 255, (6, 8, 4)).astype(np.float32)
        probs = np.full((2, 6, 8), 0.5, np.float32)
        with pytest.raises(ValueError, match=r"bilateral_srgb=\[13\] \* 4"):
            dense_crf(guide, probs, bilateral_srgb=13)
        dense_crf(guide, probs, bilateral_srgb=[13] * 4)  # what the hint says works

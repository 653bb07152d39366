"""``crfrnn refine`` on volumes: NumPy and NIfTI in, labels out with the same affine; spacing; bad input."""

from __future__ import annotations

import numpy as np
import pytest

from crfrnn import dense_crf
from crfrnn.cli import main
from crfrnn.io.volumes import read_guide, read_volume_scores

nib = pytest.importorskip("nibabel", reason="NIfTI support is the 'nifti' extra")


def volume_problem(seed: int = 0):
    """A two-region volume whose input probabilities put the boundary 2 voxels off the intensity edge."""
    rng = np.random.default_rng(seed)
    vol = np.zeros((10, 16, 20), np.float32)
    vol[:, :, 10:] = 300
    vol += rng.normal(0, 10, vol.shape).astype(np.float32)
    p = np.where(np.arange(20) < 12, 0.7, 0.3).astype(np.float32)
    probs = np.broadcast_to(np.stack([p, 1 - p])[:, None, None, :], (2, 10, 16, 20)).copy()
    probs = np.clip(probs + rng.normal(0, 0.05, probs.shape).astype(np.float32), 0.01, 1)
    return vol, probs / probs.sum(0)


AFFINE = np.array([[0.0, 0.0, 2.5, 10.0], [0.0, 1.2, 0.0, -5.0], [1.2, 0.0, 0.0, 3.0], [0.0, 0.0, 0.0, 1.0]])


class TestRefineVolume:
    def test_nifti_in_nifti_out_same_affine(self, tmp_path, capsys):
        vol, probs = volume_problem()
        nib.save(nib.Nifti1Image(vol, AFFINE), tmp_path / "t1.nii.gz")
        nib.save(nib.Nifti1Image(np.moveaxis(probs, 0, -1), AFFINE), tmp_path / "p.nii.gz")  # labels last
        out = tmp_path / "lab.nii.gz"
        code = main(
            [
                "refine",
                str(tmp_path / "t1.nii.gz"),
                str(tmp_path / "p.nii.gz"),
                "-o",
                str(out),
                "--bilateral-srgb",
                "50",
                "--bilateral-sxy",
                "6",
            ]
        )
        assert code == 0
        img = nib.load(out)
        labels = np.asarray(img.dataobj)
        assert np.allclose(img.affine, AFFINE) and labels.shape == vol.shape and labels.dtype == np.uint8
        truth = np.broadcast_to(np.arange(20) >= 10, vol.shape)
        assert (labels == truth).mean() == 1.0  # the boundary moved to the intensity edge
        assert (probs.argmax(0) == truth).mean() < 0.95
        err = capsys.readouterr().err
        assert "spacing (1.2, 1.2, 2.5)" in err  # from the header (column norms of the affine): widths in mm
        # the same as the library call with the header's spacing
        q = dense_crf(vol, probs, bilateral_srgb=50.0, bilateral_sxy=6.0, spacing=(1.2, 1.2, 2.5))
        assert np.array_equal(q.argmax(0), labels)

    def test_numpy_with_spacing_and_marginals(self, tmp_path):
        vol, probs = volume_problem(1)
        np.save(tmp_path / "v.npy", vol)
        np.save(tmp_path / "p.npy", probs)
        code = main(
            [
                "refine",
                str(tmp_path / "v.npy"),
                str(tmp_path / "p.npy"),
                "-o",
                str(tmp_path / "l.npy"),
                "--spacing",
                "2",
                "1",
                "1",
                "--save-probs",
                str(tmp_path / "q.npy"),
            ]
        )
        assert code == 0
        q = np.load(tmp_path / "q.npy")
        assert q.shape == probs.shape and np.allclose(q.sum(0), 1, atol=1e-5)
        assert np.array_equal(np.load(tmp_path / "l.npy"), q.argmax(0))
        assert np.allclose(q, dense_crf(vol, probs, spacing=(2.0, 1.0, 1.0)), atol=1e-6)

    def test_binary_map_of_the_guide_shape(self, tmp_path, capsys):
        """A binary network's single foreground map (the guide's own shape) is the two-label problem: labels 0 and
        1 as the library's two-label refinement gives them (before, every voxel came out 0: argmax of one map)."""
        vol, probs = volume_problem(3)
        fg = np.ascontiguousarray(probs[1])
        np.save(tmp_path / "v.npy", vol)
        np.save(tmp_path / "fg.npy", fg)
        code = main(
            [
                "refine",
                str(tmp_path / "v.npy"),
                str(tmp_path / "fg.npy"),
                "-o",
                str(tmp_path / "l.npy"),
                "--bilateral-srgb",
                "50",
                "--save-probs",
                str(tmp_path / "q.npy"),
            ]
        )
        assert code == 0
        assert "one map of the guide's shape" in capsys.readouterr().err
        two = dense_crf(vol, np.stack([1 - fg, fg]), bilateral_srgb=50.0)
        labels = np.load(tmp_path / "l.npy")
        assert np.array_equal(labels, two.argmax(0)) and set(np.unique(labels)) == {0, 1}
        q = np.load(tmp_path / "q.npy")
        assert q.shape == (1,) + vol.shape and np.allclose(q[0], two[1], atol=1e-6)
        np.save(tmp_path / "bad.npy", fg * 3)  # not a probability
        assert main(["refine", str(tmp_path / "v.npy"), str(tmp_path / "bad.npy"), "-o", str(tmp_path / "x.npy")]) == 2
        err = capsys.readouterr().err
        assert "[0, 1]" in err and "logits" in err

    def test_modalities_channels_last(self, tmp_path):
        vol, probs = volume_problem(2)
        two = np.stack([vol, 300 - vol], -1)
        np.save(tmp_path / "v.npy", two)
        np.save(tmp_path / "p.npy", probs)
        assert main(["refine", str(tmp_path / "v.npy"), str(tmp_path / "p.npy"), "-o", str(tmp_path / "l.nii")]) == 0
        assert nib.load(tmp_path / "l.nii").shape == vol.shape

    def test_bad_inputs(self, tmp_path, capsys):
        vol, probs = volume_problem()
        np.save(tmp_path / "v.npy", vol)
        np.save(tmp_path / "p.npy", probs[:, :5])
        args = ["refine", str(tmp_path / "v.npy"), str(tmp_path / "p.npy")]
        assert main(args + ["-o", str(tmp_path / "l.npy")]) == 2
        assert "does not fit the guide" in capsys.readouterr().err
        np.save(tmp_path / "p.npy", probs)
        assert main(args + ["-o", str(tmp_path / "l.jpg")]) == 2
        assert ".nii" in capsys.readouterr().err
        assert main(args + ["-o", str(tmp_path / "l.npy"), "--spacing", "1", "1"]) == 2
        assert "--spacing needs 3" in capsys.readouterr().err
        np.save(tmp_path / "o.npy", np.array([object()], dtype=object), allow_pickle=True)
        assert main(["refine", str(tmp_path / "o.npy"), str(tmp_path / "p.npy"), "-o", str(tmp_path / "l.npy")]) == 2
        assert "pickle" in capsys.readouterr().err
        (tmp_path / "cut.nii.gz").write_bytes(b"\x1f\x8b\x08\x00" + b"\x00" * 20)
        assert (
            main(["refine", str(tmp_path / "cut.nii.gz"), str(tmp_path / "p.npy"), "-o", str(tmp_path / "l.npy")]) == 2
        )
        assert "NIfTI" in capsys.readouterr().err
        assert not (tmp_path / "l.npy").exists()


class TestVolumeReaders:
    def test_labels_axis_found_from_the_guide(self, tmp_path):
        vol, probs = volume_problem()
        np.save(tmp_path / "first.npy", probs)
        np.save(tmp_path / "last.npy", np.moveaxis(probs, 0, -1))
        for name in ("first.npy", "last.npy"):
            scores, shape, _ = read_volume_scores(tmp_path / name, vol.shape)
            assert shape == vol.shape and np.array_equal(scores, probs)
        assert read_guide(tmp_path / "first.npy").data.shape == probs.shape

    def test_header_claiming_a_huge_volume_is_refused_before_reading(self, tmp_path):
        img = nib.Nifti1Image(np.zeros((4, 4, 4), np.float32), np.eye(4))
        img.header.set_data_shape((30000, 30000, 30000))
        data = img.header.binaryblock + b"\x00" * 4 + b"\x00" * 256
        (tmp_path / "big.nii").write_bytes(data)
        with pytest.raises((MemoryError, OSError)):
            read_guide(tmp_path / "big.nii", max_bytes=2**30)


class TestTinyWidths:
    """Issue: `crfrnn refine img.png probs.npy -o o.png --gaussian-sxy 1e-18` segfaulted (lattice keys overflowed)."""

    @pytest.mark.parametrize("flag", ["--gaussian-sxy", "--bilateral-sxy", "--bilateral-srgb"])
    def test_refused_with_the_width_named(self, tmp_path, capsys, flag):
        from PIL import Image

        rng = np.random.default_rng(0)
        Image.fromarray(rng.integers(0, 255, (12, 16, 3), dtype=np.uint8)).save(tmp_path / "img.png")
        np.save(tmp_path / "p.npy", rng.dirichlet(np.ones(3), (12, 16)).transpose(2, 0, 1).astype(np.float32))
        code = main(
            ["refine", str(tmp_path / "img.png"), str(tmp_path / "p.npy"), "-o", str(tmp_path / "o.png"), flag, "1e-18"]
        )
        err = capsys.readouterr().err
        assert code == 2 and "too small" in err and flag.lstrip("-").replace("-", "_") in err
        assert not (tmp_path / "o.png").exists()

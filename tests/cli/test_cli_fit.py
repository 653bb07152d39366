"""``crfrnn fit`` end to end, and ``crfrnn refine --params`` with the file it writes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from crfrnn import dense_crf, load_params, save_params
from crfrnn.cli import main
from crfrnn.data import SyntheticShapes, load_label_png, save_label_png
from crfrnn.fit import degraded_probs

COUNT, SIZE = 5, 40


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> Path:
    """``images/``, ``probs/`` (.npy probabilities) and ``masks/`` (palette PNGs, some void) of 5 scenes."""
    root = tmp_path_factory.mktemp("fit")
    for name in ("images", "probs", "masks"):
        (root / name).mkdir()
    ds = SyntheticShapes(COUNT, size=SIZE, seed=2, void_band=1)
    for i in range(COUNT):
        image, mask = ds[i]
        Image.fromarray(image.permute(1, 2, 0).numpy().astype(np.uint8)).save(root / "images" / f"s{i}.png")
        np.save(root / "probs" / f"s{i}.npy", degraded_probs(mask.numpy(), ds.num_classes, seed=i))
        save_label_png(root / "masks" / f"s{i}.png", mask.numpy())
    return root


def fit(root: Path, *args: object) -> int:
    return main(
        ["fit", str(root / "images"), str(root / "probs"), str(root / "masks"), "--no-progress", *map(str, args)]
    )


@pytest.fixture(scope="module")
def fitted(folders, tmp_path_factory):
    out = tmp_path_factory.mktemp("fitted")
    code = fit(
        folders,
        "--epochs",
        2,
        "--fixed-widths",
        "--val-fraction",
        0.4,
        "-o",
        out / "crf.yaml",
        "--report",
        out / "fit.json",
    )
    return code, out / "crf.yaml", out / "fit.json"


def test_fit_writes_a_parameter_file_and_a_report(fitted, capsys):
    code, params_path, report_path = fitted
    assert code == 0
    params = load_params(params_path)
    assert set(params) == {
        "num_iterations",
        "gaussian_sxy",
        "gaussian_compat",
        "bilateral_sxy",
        "bilateral_srgb",
        "bilateral_compat",
        "normalization",
    }
    assert params["bilateral_compat"] != 10.0 and params["bilateral_sxy"] == 80.0  # weights fitted, widths fixed
    assert "# fitted by crfrnn fit on 3 images" in params_path.read_text()
    report = json.loads(report_path.read_text())
    assert report["params"] == params and len(report["validation"]) == 2 and len(report["train"]) == 3
    assert set(report["metrics"]) == {"network", "initial", "fitted"}
    assert report["metrics"]["fitted"]["loss"] <= report["metrics"]["initial"]["loss"]


def test_fit_prints_before_and_after(folders, tmp_path, capsys):
    assert fit(folders, "--epochs", 1, "-o", tmp_path / "p.yaml") == 0  # widths fitted too (if available)
    out = capsys.readouterr().out
    for row in ("network alone", "initial CRF", "fitted CRF", "mean IoU", "boundary acc"):
        assert row in out
    assert f"wrote '{tmp_path / 'p.yaml'}'" in out


def test_refine_with_params_matches_dense_crf(folders, fitted, tmp_path):
    _, params_path, _ = fitted
    image = np.array(Image.open(folders / "images" / "s0.png"))
    probs = np.load(folders / "probs" / "s0.npy")
    params = load_params(params_path)
    args = [folders / "images" / "s0.png", folders / "probs" / "s0.npy", "--params", params_path]
    assert main(["refine", *map(str, args), "-o", str(tmp_path / "a.png")]) == 0
    np.testing.assert_array_equal(load_label_png(tmp_path / "a.png"), dense_crf(image, probs, **params).argmax(0))
    # a flag given on the command line overrides the file
    assert (
        main(["refine", *map(str, args), "--bilateral-compat", "0", "--iterations", "2", "-o", str(tmp_path / "b.png")])
        == 0
    )
    expected = dense_crf(image, probs, **{**params, "bilateral_compat": 0.0, "num_iterations": 2}).argmax(0)
    np.testing.assert_array_equal(load_label_png(tmp_path / "b.png"), expected)


def test_refine_folder_with_params_file_holding_clip(folders, tmp_path):
    path = save_params({"bilateral_compat": 4.0, "clip": 1e-3}, tmp_path / "p.yaml")
    assert (
        main(
            [
                "refine",
                "--images",
                str(folders / "images"),
                "--probs",
                str(folders / "probs"),
                "--params",
                str(path),
                "-o",
                str(tmp_path / "out"),
            ]
        )
        == 0
    )
    image = np.array(Image.open(folders / "images" / "s1.png"))
    expected = dense_crf(image, np.load(folders / "probs" / "s1.npy"), bilateral_compat=4.0, clip=1e-3).argmax(0)
    np.testing.assert_array_equal(load_label_png(tmp_path / "out" / "s1.png"), expected)


def test_refine_reads_a_params_file_of_the_previous_release(folders, tmp_path):
    # 'iterations' was the key before 'num_iterations': such files keep working for one release, with a warning
    old = tmp_path / "old.yaml"
    old.write_text("iterations: 2\nbilateral_compat: 4.0\n")
    args = [str(folders / "images" / "s0.png"), str(folders / "probs" / "s0.npy"), "--params", str(old)]
    with pytest.warns(FutureWarning, match="iterations= is now num_iterations="):
        assert main(["refine", *args, "-o", str(tmp_path / "a.png")]) == 0
    image = np.array(Image.open(folders / "images" / "s0.png"))
    expected = dense_crf(image, np.load(folders / "probs" / "s0.npy"), num_iterations=2, bilateral_compat=4.0)
    np.testing.assert_array_equal(load_label_png(tmp_path / "a.png"), expected.argmax(0))


def test_refine_refuses_a_bad_params_file(folders, tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("bilateral_srgb: -2\n")
    args = [
        "refine",
        str(folders / "images" / "s0.png"),
        str(folders / "probs" / "s0.npy"),
        "-o",
        str(tmp_path / "x.png"),
    ]
    assert main([*args, "--params", str(bad)]) == 2
    assert "bilateral_srgb must be a positive finite width" in capsys.readouterr().err
    bad.write_text("!!python/object/apply:os.system ['echo pwned']\n")
    assert main([*args, "--params", str(bad)]) == 2
    assert "not a valid YAML" in capsys.readouterr().err
    assert main([*args, "--params", str(tmp_path / "missing.yaml")]) == 2
    assert not (tmp_path / "x.png").exists()


def test_fit_errors(folders, tmp_path, capsys):
    assert fit(folders, "-o", tmp_path / "p.txt") == 2
    assert "must name a .yaml file" in capsys.readouterr().err
    assert (
        main(
            [
                "fit",
                str(folders / "images"),
                str(folders / "probs"),
                str(tmp_path / "none"),
                "-o",
                str(tmp_path / "p.yaml"),
            ]
        )
        == 2
    )
    assert "LABELS must be a folder" in capsys.readouterr().err
    bad_init = tmp_path / "init.yaml"
    bad_init.write_text("theta_alpha: 80\n")
    assert fit(folders, "--init", bad_init, "-o", tmp_path / "p.yaml") == 2
    assert "unknown parameter" in capsys.readouterr().err
    assert not (tmp_path / "p.yaml").exists()


def test_fit_needs_two_complete_triples_and_reports_skips(folders, tmp_path, capsys):
    for name in ("images", "probs", "masks"):
        (tmp_path / name).mkdir()
    for f in ("images/s0.png", "probs/s0.npy", "masks/s0.png", "images/s1.png", "probs/s1.npy"):
        (tmp_path / f).write_bytes((folders / f).read_bytes())
    assert fit(tmp_path, "-o", tmp_path / "p.yaml") == 2
    err = capsys.readouterr().err
    assert "no mask of that stem" in err and "fitting needs at least 2" in err


def test_fit_refuses_unreadable_files(folders, tmp_path, capsys):
    for name in ("images", "probs", "masks"):
        (tmp_path / name).mkdir()
        for i in range(2):
            src = next((folders / name).glob(f"s{i}.*"))
            (tmp_path / name / src.name).write_bytes(src.read_bytes())
    (tmp_path / "probs" / "s1.npy").write_bytes(b"\x80\x04pickled")
    assert fit(tmp_path, "-o", tmp_path / "p.yaml") == 2
    assert "never unpickled" in capsys.readouterr().err
    np.save(tmp_path / "probs" / "s1.npy", np.full((3, SIZE, SIZE), 1 / 3, np.float32))
    assert fit(tmp_path, "-o", tmp_path / "p.yaml") == 2
    assert "3 labels but the first file" in capsys.readouterr().err

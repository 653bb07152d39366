"""Tests of ``crfrnn segment`` (released CRF-RNN weights -> VOC palette PNGs, overlays, probabilities)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from crfrnn.cli import main
from crfrnn.models import load_pretrained, segment_images

# the weight-file writers of the loader's tests (small FCN-8s with the released layer names and layouts)
_spec = importlib.util.spec_from_file_location(
    "_pretrained_writers", Path(__file__).resolve().parents[1] / "models" / "test_pretrained.py"
)
W = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(W)


@pytest.fixture(scope="module")
def weight_files(tmp_path_factory):
    fcn, crf = W.reference_weights()
    d = tmp_path_factory.mktemp("weights")
    return {
        "caffe": W.write_caffemodel(d / "TVG_CRFRNN_COCO_VOC.caffemodel", W.caffe_layers(fcn, crf)),
        "fcn_only": W.write_caffemodel(d / "fcn.caffemodel", W.caffe_layers(fcn, crf, crf_layer=False)),
        "pytorch": W.write_pth(d / "crfasrnn_weights.pth", fcn, crf),
    }


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    d = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(0)
    folder = d / "folder"
    folder.mkdir()
    for name, (h, w) in (("a", (40, 52)), ("b", (31, 20))):
        Image.fromarray((rng.random((h, w, 3)) * 255).astype(np.uint8)).save(folder / f"{name}.png")
    (folder / "notes.txt").write_text("not an image")
    single = d / "c.jpg"
    Image.fromarray((rng.random((24, 36, 3)) * 255).astype(np.uint8)).save(single, quality=95)
    return folder, single


def _run(*argv: str) -> int:
    return main(["segment", *argv, "--no-progress", "--iterations", "2"])


def test_registered(capsys):
    with pytest.raises(SystemExit):
        main(["segment", "--help"])
    assert "--weights" in capsys.readouterr().out


def test_folder_and_file(weight_files, photos, tmp_path, capsys):
    folder, single = photos
    out = tmp_path / "out"
    code = _run(
        str(folder),
        str(single),
        "--weights",
        str(weight_files["caffe"]),
        "-o",
        str(out),
        "--batch-size",
        "2",
        "--overlay",
        "--probs",
    )
    assert code == 0, capsys.readouterr().err
    assert "segmented 3 of 3 images" in capsys.readouterr().out
    names = sorted(p.name for p in out.iterdir())
    expected = [f"{s}{x}" for s in "abc" for x in (".png", "_overlay.png", "_probs.npy")]
    assert names == sorted([*expected, "summary.json"])  # no temp files
    model = load_pretrained(weight_files["caffe"], num_iterations=2)
    for stem, path in (("a", folder / "a.png"), ("b", folder / "b.png"), ("c", single)):
        photo = np.asarray(Image.open(path).convert("RGB"))
        with Image.open(out / f"{stem}.png") as png:
            assert png.mode == "P"
            labels = np.asarray(png)
            assert png.getpalette()[3:6] == [128, 0, 0]  # VOC palette
        assert labels.shape == photo.shape[:2]
        (expected,) = segment_images(model, [photo], return_probs=True)
        assert (labels == expected.labels).mean() > 0.99
        probs = np.load(out / f"{stem}_probs.npy")
        assert probs.shape == (21, *photo.shape[:2]) and probs.dtype == np.float32
        np.testing.assert_allclose(probs, expected.probs, rtol=1e-3, atol=1e-3)
        with Image.open(out / f"{stem}_overlay.png") as overlay:
            assert overlay.size[1] >= photo.shape[0] and overlay.size[0] > photo.shape[1]  # photo + legend


def test_no_crf(weight_files, photos, tmp_path, capsys):
    _, single = photos
    code = _run(str(single), "--weights", str(weight_files["fcn_only"]), "-o", str(tmp_path / "x"))
    assert code == 2
    assert "--no-crf" in capsys.readouterr().err
    code = _run(str(single), "--weights", str(weight_files["fcn_only"]), "-o", str(tmp_path / "y"), "--no-crf")
    assert code == 0
    model = load_pretrained(weight_files["caffe"], crf=False)
    (expected,) = segment_images(model, [np.asarray(Image.open(single).convert("RGB"))], use_crf=False)
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "y" / "c.png")), expected.labels)


def test_resize_conventions(weight_files, tmp_path, capsys):
    big = tmp_path / "big.png"
    Image.fromarray(np.zeros((30, 520, 3), np.uint8)).save(big)
    # Caffe demo: shrink to 500 wide, labels at the network's size (no restore)
    assert _run(str(big), "--weights", str(weight_files["caffe"]), "-o", str(tmp_path / "c")) == 0
    assert Image.open(tmp_path / "c" / "big.png").size == (500, int(30 * 500 / 520))
    # PyTorch port: fit to 500 and restore the photo's size
    assert _run(str(big), "--weights", str(weight_files["pytorch"]), "-o", str(tmp_path / "p")) == 0
    assert Image.open(tmp_path / "p" / "big.png").size == (520, 30)
    # Keras port: the image fails with an error that says how to fix it (and the others would go on)
    code = _run(str(big), "--weights", str(weight_files["caffe"]), "-o", str(tmp_path / "k"), "--resize", "none")
    assert code == 1
    assert "big.png" in capsys.readouterr().err


def test_bad_inputs(weight_files, photos, tmp_path, capsys):
    folder, single = photos
    bad = tmp_path / "broken.caffemodel"
    bad.write_bytes(weight_files["caffe"].read_bytes()[:1000])
    assert _run(str(single), "--weights", str(bad), "-o", str(tmp_path / "o")) == 2
    assert "broken.caffemodel" in capsys.readouterr().err
    assert _run(str(tmp_path / "missing.jpg"), "--weights", str(weight_files["caffe"]), "-o", str(tmp_path)) == 2
    assert "no such image" in capsys.readouterr().err
    twin = tmp_path / "twin"
    twin.mkdir()
    Image.open(folder / "a.png").save(twin / "a.jpg")
    assert _run(str(folder), str(twin), "--weights", str(weight_files["caffe"]), "-o", str(tmp_path / "t")) == 2
    err = capsys.readouterr().err
    assert "would both be written to the same file" in err and "a.png" in err and "a.jpg" in err
    unreadable = tmp_path / "junk"
    unreadable.mkdir()
    (unreadable / "x.png").write_bytes(b"not a png")
    assert _run(str(unreadable), "--weights", str(weight_files["caffe"]), "-o", str(tmp_path / "j")) == 1
    assert "x.png" in capsys.readouterr().err


def test_outputs_never_overwrite_inputs_or_each_other(weight_files, tmp_path, capsys):
    folder = tmp_path / "photos"
    folder.mkdir()
    rng = np.random.default_rng(1)
    for name in ("a", "a_overlay"):
        Image.fromarray((rng.random((20, 24, 3)) * 255).astype(np.uint8)).save(folder / f"{name}.png")
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    weights = str(weight_files["caffe"])
    # -o the photos' folder: the labels would replace the photos
    assert _run(str(folder), "--weights", weights, "-o", str(folder)) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "refusing to overwrite an input" in err and "a.png" in err
    # the overlay of a and the labels of a_overlay: both a_overlay.png
    out = tmp_path / "out"
    assert _run(str(folder), "--weights", weights, "-o", str(out), "--overlay") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "would both be written to the same file" in err
    assert "the overlay of" in err and "the labels of" in err and "a_overlay.png" in err
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before and not out.exists()
    # without --overlay there is no clash
    assert _run(str(folder), "--weights", weights, "-o", str(out)) == 0
    assert sorted(p.name for p in out.iterdir()) == ["a.png", "a_overlay.png", "summary.json"]


def test_evaluate_with_released_weights(weight_files, tmp_path, capsys):
    import json

    from crfrnn.data.palette import save_label_png

    images, masks = tmp_path / "images", tmp_path / "masks"
    images.mkdir()
    masks.mkdir()
    rng = np.random.default_rng(3)
    for name in ("2007_000001", "2007_000002"):
        Image.fromarray((rng.random((30, 40, 3)) * 255).astype(np.uint8)).save(images / f"{name}.jpg", quality=95)
        save_label_png(masks / f"{name}.png", rng.integers(0, 21, (30, 40)))
    out = tmp_path / "report"
    code = main(
        [
            "evaluate",
            "--weights",
            str(weight_files["caffe"]),
            "--dataset",
            "folder",
            "--images",
            str(images),
            "--masks",
            str(masks),
            "--out",
            str(out),
            "--grid",
            "0",
            "--no-progress",
        ]
    )
    assert code == 0, capsys.readouterr().err
    results = json.loads((out / "results.json").read_text())
    assert set(results["methods"]) == {"cnn", "crfrnn"} and results["num_images"] == 2
    assert results["checkpoint"] == str(weight_files["caffe"])
    assert main(["evaluate", "--out", str(out)]) == 2  # neither a checkpoint nor --weights


def test_progress_lines_off_a_terminal(weight_files, photos, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("CRFRNN_PROGRESS_SECONDS", "0")
    folder, _ = photos
    assert main(["segment", str(folder), "--weights", str(weight_files["caffe"]), "-o", str(tmp_path / "o")]) == 0
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("crfrnn segment: ")]
    assert [line.split(",")[0] for line in lines] == ["crfrnn segment: 1/2 images", "crfrnn segment: 2/2 images"]
    assert "images/s" in lines[0] or "s/image" in lines[0]
    assert "left" in lines[0] and "in all" in lines[1], lines


def test_under_torchrun_rank_0_writes_one_summary_naming_the_ranks(weight_files, photos, tmp_path, monkeypatch):
    """Rank 0 of 2 in a gloo group of one process (so the barrier passes): it segments its share (a.png of a, b)
    and lists rank 1's photo as failed, since rank 1 never reported."""
    import json

    import torch.distributed as dist

    if not (dist.is_available() and dist.is_gloo_available()):
        pytest.skip("torch.distributed with gloo is not available")
    dist.init_process_group("gloo", store=dist.FileStore(str(tmp_path / "store"), 1), rank=0, world_size=1)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    try:
        folder, _ = photos
        assert _run(str(folder), "--weights", str(weight_files["caffe"]), "-o", str(tmp_path / "o")) == 1
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    summary = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert summary["ranks"] == 2 and summary["missing_ranks"] == [1]
    assert [(Path(r["input"]).name, r["rank"], r["status"]) for r in summary["records"]] == [
        ("a.png", 0, "done"),
        ("b.png", 1, "failed"),
    ]
    assert (tmp_path / "o" / "a.png").exists() and not (tmp_path / "o" / "b.png").exists()

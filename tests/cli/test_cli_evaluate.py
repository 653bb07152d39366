"""End-to-end tests of ``crfrnn evaluate`` on tiny checkpoints and data sets written to tmp_path."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from crfrnn.cli import main
from crfrnn.data import save_label_png
from crfrnn.io.checkpoint import save_checkpoint
from crfrnn.models import create

FAST = ["--no-progress", "--image-size", "48", "--num-images", "2"]


def write_checkpoint(path: Path, name: str = "small_fcn_crfrnn", num_classes: int = 7, **extra) -> Path:
    torch.manual_seed(0)
    if name.endswith("crfrnn"):
        kwargs = {"num_classes": num_classes, "backbone_kwargs": {"width": 8}}
    else:
        kwargs = {"num_classes": num_classes, "width": 8}
    model = create(name, **kwargs)
    return save_checkpoint(path, model, model_name=name, model_kwargs=kwargs, num_classes=num_classes, **extra)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return write_checkpoint(tmp_path_factory.mktemp("ckpt") / "model.pt")


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    code = main(["evaluate", *map(str, argv)])
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code: int, err: str, expected_code: int, *fragments: str) -> None:
    assert code == expected_code
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("crfrnn evaluate: error: "), err
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


def grid_size(rows: int, cols: int, tile: int) -> tuple[int, int]:
    from crfrnn.visualize import picture_grid

    tiles = [[np.zeros((tile, tile, 3), np.uint8)] * cols] * rows
    return picture_grid(tiles, titles=["t"] * cols).size


class TestEvaluateCommand:
    def test_synthetic_end_to_end(self, tmp_path, capsys, checkpoint):
        out = tmp_path / "report"
        code, stdout, err = run_cli(
            capsys, checkpoint, "--out", out, "--dense-crf", "--grid", 2, "--split", "test", *FAST
        )
        assert code == 0, err
        assert {p.name for p in out.iterdir()} == {"results.json", "metrics.md", "boundary.png", "grid.png"}
        results = json.loads((out / "results.json").read_text())
        assert list(results["methods"]) == ["cnn", "cnn+densecrf", "crfrnn"]
        assert results["num_images"] == 2 and results["num_classes"] == 7
        assert results["class_names"][:2] == ["background", "pan"]  # from the data set
        assert results["dense_crf_params"]["bilateral_sxy"] == 80.0
        assert results["dataset"]["split"] == "test"
        md = (out / "metrics.md").read_text()
        assert all(f"| {t} |" in md for t in ("CNN", "CNN + dense CRF", "CRF-RNN"))
        with Image.open(out / "grid.png") as im:  # 2 images x (image, ground truth, 3 methods), 48 px scaled 3x
            width, height = grid_size(2, 5, 3 * 48)
            assert im.size[0] == width and im.size[1] > height  # the grid, and the class-colour legend below it
        with Image.open(out / "boundary.png") as im:
            assert im.size == (1000, 400)
        assert "CRF-RNN" in stdout and "mIoU" in stdout and "grid.png" in stdout

    def test_plain_cnn_with_search(self, tmp_path, capsys):
        ckpt = write_checkpoint(tmp_path / "cnn.pt", name="small_fcn")
        out = tmp_path / "report"
        code, _, err = run_cli(
            capsys,
            ckpt,
            "--out",
            out,
            "--dense-crf-search",
            "--search-split",
            "val",
            "--split",
            "test",
            "--search-images",
            1,
            "--search-grid",
            '{"bilateral_srgb": [5, 13]}',
            "--dense-crf-param",
            "num_iterations=2",
            "--grid",
            0,
            *FAST,
        )
        assert code == 0, err
        assert "warning" not in err
        assert not (out / "grid.png").exists()
        results = json.loads((out / "results.json").read_text())
        assert list(results["methods"]) == ["cnn", "cnn+densecrf"]  # no CRF-RNN head in this checkpoint
        search = results["dense_crf_search"]
        assert len(search["table"]) == 2 and search["num_images"] == 1
        assert results["dense_crf_params"] == search["best_params"]
        assert results["dense_crf_params"]["num_iterations"] == 2
        assert "Dense CRF parameter search" in (out / "metrics.md").read_text()

    def test_search_on_the_evaluated_split_warns(self, tmp_path, capsys, checkpoint):
        code, _, err = run_cli(
            capsys,
            checkpoint,
            "--out",
            tmp_path,
            "--dense-crf-search",
            "--search-images",
            1,
            "--search-grid",
            '{"bilateral_srgb": [13]}',
            "--grid",
            0,
            *FAST,
        )
        assert code == 0 and "warning" in err and "--search-split" in err

    def test_folder_dataset(self, tmp_path, capsys):
        (tmp_path / "img").mkdir()
        (tmp_path / "msk").mkdir()
        for k, (h, w) in enumerate([(20, 28), (24, 16)]):
            rng = np.random.default_rng(k)
            Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(tmp_path / "img" / f"s{k}.png")
            mask = rng.integers(0, 3, (h, w))
            mask[0] = 255
            save_label_png(tmp_path / "msk" / f"s{k}.png", mask)
        ckpt = write_checkpoint(tmp_path / "m.pt", num_classes=3, class_names=["a", "b", "c"])
        code, _, err = run_cli(
            capsys,
            ckpt,
            "--out",
            tmp_path / "out",
            "--dataset",
            "folder",
            "--images",
            tmp_path / "img",
            "--masks",
            tmp_path / "msk",
            "--grid",
            2,
            "--no-progress",
        )
        assert code == 0, err
        results = json.loads((tmp_path / "out" / "results.json").read_text())
        assert results["num_images"] == 2 and results["class_names"] == ["a", "b", "c"]
        assert results["methods"]["cnn"]["num_pixels"] == 20 * 28 + 24 * 16 - 28 - 16
        assert "| 2: c |" in (tmp_path / "out" / "metrics.md").read_text()
        with Image.open(tmp_path / "out" / "grid.png") as im:  # images of different sizes: cells of the largest
            assert im.size[0] == grid_size(2, 4, 28 * 4)[0]  # widest tile 28 px, scaled 4x to reach 100 px

    def test_voc_ids_file(self, tmp_path, capsys):
        voc = tmp_path / "VOCdevkit" / "VOC2012"
        for d in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
            (voc / d).mkdir(parents=True)
        ids = ["2007_000001", "2007_000002", "2007_000003"]
        for k, i in enumerate(ids):
            rng = np.random.default_rng(k)
            Image.fromarray(rng.integers(0, 255, (18, 22, 3), dtype=np.uint8)).save(voc / "JPEGImages" / f"{i}.jpg")
            mask = np.zeros((18, 22), np.int64)
            mask[4:12, 5:15] = 15
            mask[3, 5:15] = 255
            save_label_png(voc / "SegmentationClass" / f"{i}.png", mask)
        (voc / "ImageSets" / "Segmentation" / "val.txt").write_text("\n".join(ids) + "\n")
        id_file = tmp_path / "reduced_val.txt"
        id_file.write_text(ids[1] + "\n")
        ckpt = write_checkpoint(tmp_path / "voc.pt", num_classes=21)
        code, _, err = run_cli(
            capsys,
            ckpt,
            "--out",
            tmp_path / "out",
            "--dataset",
            "voc",
            "--voc-root",
            tmp_path,
            "--ids",
            id_file,
            "--include-void-edges",
            "--grid",
            1,
            "--no-progress",
        )
        assert code == 0, err
        results = json.loads((tmp_path / "out" / "results.json").read_text())
        assert results["num_images"] == 1 and results["include_void_edges"] is True
        assert results["class_names"][15] == "person"

    def test_synthetic_options_from_the_training_config(self, tmp_path, capsys):
        config = {
            "dataset": "synthetic",
            "image_size": 40,
            "data_seed": 3,
            "synthetic_kwargs": {"shapes": ["pan", "box"]},
        }
        ckpt = write_checkpoint(
            tmp_path / "m.pt", num_classes=3, class_names=["background", "pan", "box"], config=config
        )
        code, _, err = run_cli(capsys, ckpt, "--out", tmp_path / "out", "--num-images", 2, "--grid", 0, "--no-progress")
        assert code == 0, err
        results = json.loads((tmp_path / "out" / "results.json").read_text())
        assert results["num_classes"] == 3 and results["methods"]["cnn"]["num_pixels"] == 2 * 40 * 40
        assert "seed=3" in results["dataset"]["repr"]
        code, _, err = run_cli(
            capsys, ckpt, "--out", tmp_path / "o2", "--num-images", 1, "--image-size", 24, "--grid", 0, "--no-progress"
        )
        assert code == 0, err  # flags override the config
        assert json.loads((tmp_path / "o2" / "results.json").read_text())["methods"]["cnn"]["num_pixels"] == 24 * 24

    def test_max_images(self, tmp_path, capsys, checkpoint):
        code, _, err = run_cli(capsys, checkpoint, "--out", tmp_path, "--max-images", 1, "--grid", 0, *FAST)
        assert code == 0, err
        assert json.loads((tmp_path / "results.json").read_text())["num_images"] == 1


class TestEvaluateErrors:
    def test_missing_checkpoint(self, tmp_path, capsys):
        code, _, err = run_cli(capsys, tmp_path / "nope.pt", "--out", tmp_path / "out")
        assert_one_line_error(code, err, 2, "checkpoint not found", "nope.pt")
        assert not (tmp_path / "out").exists()

    def test_not_a_checkpoint(self, tmp_path, capsys):
        (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
        code, _, err = run_cli(capsys, tmp_path / "junk.pt", "--out", tmp_path / "out")
        assert_one_line_error(code, err, 2, "junk.pt")

    def test_missing_dataset_paths(self, tmp_path, capsys, checkpoint):
        code, _, err = run_cli(
            capsys, checkpoint, "--out", tmp_path / "o", "--dataset", "voc", "--root", tmp_path / "x"
        )
        assert_one_line_error(code, err, 2, "voc", str(tmp_path / "x"))
        code, _, err = run_cli(capsys, checkpoint, "--out", tmp_path / "o", "--dataset", "voc")
        assert_one_line_error(code, err, 2, "--voc-root")
        code, _, err = run_cli(
            capsys,
            checkpoint,
            "--out",
            tmp_path / "o",
            "--dataset",
            "folder",
            "--images",
            tmp_path / "missing",
            "--masks",
            tmp_path,
        )
        assert_one_line_error(code, err, 2, "missing")
        code, _, err = run_cli(capsys, checkpoint, "--out", tmp_path / "o", "--dataset", "folder")
        assert_one_line_error(code, err, 2, "--images")

    def test_class_count_mismatch(self, tmp_path, capsys):
        ckpt = write_checkpoint(tmp_path / "five.pt", num_classes=5)
        code, _, err = run_cli(capsys, ckpt, "--out", tmp_path / "out", *FAST)
        assert_one_line_error(code, err, 2, "5 classes", "has 7")

    def test_labels_outside_the_checkpoint_classes(self, tmp_path, capsys):
        (tmp_path / "img").mkdir()
        (tmp_path / "msk").mkdir()
        Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(tmp_path / "img" / "a.png")
        save_label_png(tmp_path / "msk" / "a.png", np.full((16, 16), 9))
        ckpt = write_checkpoint(tmp_path / "three.pt", num_classes=3)
        code, _, err = run_cli(
            capsys,
            ckpt,
            "--out",
            tmp_path / "out",
            "--dataset",
            "folder",
            "--images",
            tmp_path / "img",
            "--masks",
            tmp_path / "msk",
            "--no-progress",
        )
        assert_one_line_error(code, err, 1, "evaluation failed", "a.png", "[9]", "0..2")

    def test_cuda_without_cuda(self, tmp_path, capsys, checkpoint):
        import torch

        if torch.cuda.is_available():
            pytest.skip("this machine has CUDA")
        code, _, err = run_cli(capsys, checkpoint, "--out", tmp_path / "o", "--device", "cuda")
        assert_one_line_error(code, err, 2, "CUDA is not available", "--device cpu")
        assert "cannot read checkpoint" not in err

    def test_bad_options(self, tmp_path, capsys, checkpoint):
        code, _, err = run_cli(capsys, checkpoint, "--out", tmp_path, "--dense-crf-param", "srgb=3")
        assert_one_line_error(code, err, 2, "srgb=3", "bilateral_srgb")
        code, _, err = run_cli(capsys, checkpoint, "--out", tmp_path, "--dense-crf-search", "--search-grid", "{bad")
        assert_one_line_error(code, err, 2, "--search-grid")
        code, _, err = run_cli(capsys, checkpoint, "--out", tmp_path, "--split", "nope", *FAST)
        assert_one_line_error(code, err, 2, "nope", "train")
        code, _, err = run_cli(capsys, checkpoint, "--out", tmp_path, "--max-images", 0)
        assert_one_line_error(code, err, 2, "--max-images")
        code, _, err = run_cli(
            capsys,
            checkpoint,
            "--out",
            tmp_path,
            "--dense-crf",
            "--dense-crf-param",
            "normalization=bogus",
            "--grid",
            0,
            *FAST,
        )
        assert_one_line_error(code, err, 1, "evaluation failed")

    def test_out_is_a_file(self, tmp_path, capsys, checkpoint):
        (tmp_path / "file").write_text("x")
        code, _, err = run_cli(capsys, checkpoint, "--out", tmp_path / "file", "--grid", 0, *FAST)
        assert_one_line_error(code, err, 1, "cannot write the report")

    def test_help_lists_the_options(self, capsys):
        with pytest.raises(SystemExit) as exc:
            main(["evaluate", "--help"])
        assert exc.value.code == 0
        out = capsys.readouterr().out
        for flag in (
            "--dataset",
            "--split",
            "--ids",
            "--dense-crf",
            "--dense-crf-search",
            "--max-images",
            "--grid",
            "--out",
        ):
            assert flag in out

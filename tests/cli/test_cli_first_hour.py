"""A new user's first hour: ``--device`` on every command, and the messages that used to mislead."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from crfrnn.cli import main

CUDA = torch.cuda.is_available()


def _pair(folder: Path, stem: str = "a") -> tuple[Path, Path]:
    """A 12 x 16 image and (2, 12, 16) probabilities in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (12, 16, 3), dtype=np.uint8)).save(folder / f"{stem}.png")
    p = rng.random((2, 12, 16)).astype(np.float32)
    np.save(folder / f"{stem}.npy", p / p.sum(0))
    return folder / f"{stem}.png", folder / f"{stem}.npy"


def _error(capsys: pytest.CaptureFixture, command: str) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"crfrnn {command}: error: "), err
    return err[0]


COMMANDS_WITH_DEVICE = ("refine", "fit", "segment", "evaluate", "train", "reproduce")


@pytest.mark.parametrize("command", COMMANDS_WITH_DEVICE)
def test_device_flag_is_shared_and_shows_its_default(command, capsys):
    with pytest.raises(SystemExit):
        main([command, "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--device DEV" in text and "auto is CUDA when PyTorch sees a GPU, else the CPU (default: auto)" in text


@pytest.mark.skipif(CUDA, reason="needs a machine without CUDA")
@pytest.mark.parametrize(
    "argv",
    (
        ["refine", "{img}", "{probs}", "-o", "{tmp}/o.png"],
        ["segment", "{img}", "--weights", "{tmp}/w.pth", "-o", "{tmp}/seg"],
        ["evaluate", "{tmp}/ck.pt", "--out", "{tmp}/ev"],
        ["fit", "{tmp}", "{tmp}", "{tmp}", "-o", "{tmp}/crf.yaml"],
        ["train", "--out", "{tmp}/run", "--epochs", "1"],
        ["reproduce", "--quick", "--out", "{tmp}/rep"],
    ),
)
def test_cuda_without_cuda_is_one_line_naming_the_flag_and_the_fix(argv, tmp_path, capsys):
    img, probs = _pair(tmp_path)
    values = {"img": img, "probs": probs, "tmp": tmp_path}
    args = [a.format(**values) for a in argv] + ["--device", "cuda"]
    assert main(args) == 2
    line = _error(capsys, argv[0])
    assert "--device cuda" in line and "--device cpu" in line and "CUDA is not available" in line
    assert not (tmp_path / "run").exists() and not (tmp_path / "rep").exists()


def test_a_bad_device_is_named(tmp_path, capsys):
    img, probs = _pair(tmp_path)
    assert main(["refine", str(img), str(probs), "-o", str(tmp_path / "o.png"), "--device", "gpu0"]) == 2
    assert "--device 'gpu0' is not a device; use --device auto, cpu, cuda or cuda:N" in _error(capsys, "refine")


def test_refine_auto_on_the_cpu_matches_cpu(tmp_path, capsys):
    img, probs = _pair(tmp_path)
    assert main(["refine", str(img), str(probs), "-o", str(tmp_path / "auto.png")]) == 0
    assert main(["refine", str(img), str(probs), "-o", str(tmp_path / "cpu.png"), "--device", "cpu"]) == 0
    if not CUDA:
        assert "running on" not in capsys.readouterr().err  # the CPU is not announced
        assert np.array_equal(np.array(Image.open(tmp_path / "auto.png")), np.array(Image.open(tmp_path / "cpu.png")))


@pytest.mark.skipif(not CUDA, reason="needs CUDA")
def test_refine_on_cuda_agrees_with_the_cpu(tmp_path, capsys):
    img, probs = _pair(tmp_path)
    assert main(["refine", str(img), str(probs), "-o", str(tmp_path / "gpu.png"), "--device", "cuda"]) == 0
    assert "crfrnn refine: running on cuda:" in capsys.readouterr().err
    assert main(["refine", str(img), str(probs), "-o", str(tmp_path / "cpu.png"), "--device", "cpu"]) == 0
    gpu, cpu = (np.array(Image.open(tmp_path / f"{n}.png")) for n in ("gpu", "cpu"))
    assert (gpu == cpu).mean() > 0.97  # the lattices of the two paths differ a little


def test_refine_folders_without_images_flags_say_how(tmp_path, capsys):
    _pair(tmp_path / "imgs")
    _pair(tmp_path / "probs")
    assert main(["refine", str(tmp_path / "imgs"), str(tmp_path / "probs"), "-o", str(tmp_path / "out")]) == 2
    line = _error(capsys, "refine")
    assert "is a folder" in line and "--images DIR --probs DIR" in line and "must name" not in line


def test_refine_folder_output_named_like_a_file_is_refused(tmp_path, capsys):
    img, probs = _pair(tmp_path / "in")
    (tmp_path / "p").mkdir()
    probs.rename(tmp_path / "p" / probs.name)
    argv = ["refine", "--images", str(tmp_path / "in"), "--probs", str(tmp_path / "p")]
    assert main([*argv, "-o", str(tmp_path / "f.png")]) == 2
    assert "looks like a file name (.png)" in _error(capsys, "refine")
    assert not (tmp_path / "f.png").exists()
    (tmp_path / "g.png").mkdir()  # an existing directory of that name is used
    assert main([*argv, "-o", str(tmp_path / "g.png")]) == 0
    assert (tmp_path / "g.png" / "a.png").is_file()


def test_evaluate_a_png_for_a_checkpoint_says_what_it_is(tmp_path, capsys):
    img, _ = _pair(tmp_path)
    assert main(["evaluate", str(img), "--out", str(tmp_path / "ev"), "--device", "cpu"]) == 2
    line = _error(capsys, "evaluate")
    assert "is a PNG image, not a checkpoint" in line and "crfrnn train" in line and "weights_only" not in line


def test_evaluate_help_has_examples_and_train_help_shows_defaults(capsys):
    with pytest.raises(SystemExit):
        main(["evaluate", "--help"])
    assert "examples:\n  crfrnn evaluate runs/crf/best.pt" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "CRF kernel weights (10)" in text and "CRF compatibility (1)" in text
    assert "--threads N CPU threads for torch and numba (default: the CPUs free" in text


def test_train_prints_miou_in_percent(tmp_path, capsys):
    argv = ["train", "--out", str(tmp_path / "run"), "--epochs", "1", "--num-train", "4", "--num-val", "2"]
    argv += ["--image-size", "32", "--crop-size", "32", "--batch-size", "4", "--model-kwargs", "{width: 4}"]
    assert main(argv) == 0
    out = capsys.readouterr()
    text = out.out + out.err
    assert re.search(r"best val mIoU \d+\.\d\d% \(epoch 1\)", text), text
    assert re.search(r"val mIoU \d+\.\d\d%,", text), text


def test_the_reproduce_line_keeps_every_flag_that_changes_results_or_speed(tmp_path):
    from crfrnn.workflow import ReproduceConfig
    from crfrnn.workflow._claims import reproduce_command

    full = ReproduceConfig(str(tmp_path), seeds=(0, 1), threads=2, workers=1, device="cpu", ablations=("crf_alone",))
    assert reproduce_command(full) == (
        f"crfrnn reproduce --seeds 0,1 --ablations crf_alone --workers 1 --threads 2 --device cpu --out {tmp_path}"
    )
    assert reproduce_command(ReproduceConfig.quick(str(tmp_path))) == f"crfrnn reproduce --quick --out {tmp_path}"


def test_a_resumed_run_counts_the_epochs_saved_before(tmp_path):
    from crfrnn.workflow._stages import saved_seconds

    (tmp_path / "metrics.jsonl").write_text('{"epoch": 1, "seconds": 30.5}\n{"epoch": 2, "seconds": 12}\n')
    assert saved_seconds(str(tmp_path)) == 42.5
    assert saved_seconds(str(tmp_path / "missing")) == 0.0


def test_overlay_legend_shows_the_labels_present():
    from crfrnn.data import color_palette
    from crfrnn.visualize import make_overlay

    image = np.zeros((20, 30, 3), np.uint8)
    before = np.zeros((20, 30), np.int64)
    before[:, 15:] = 255  # unknown
    after = np.zeros((20, 30), np.int64)
    after[5:, :] = 7
    plain = make_overlay(image, before, after, titles=None)
    picture = make_overlay(image, before, after, titles=None, legend=True)
    assert picture.shape[1] == plain.shape[1] and picture.shape[0] > plain.shape[0]
    strip = picture[plain.shape[0] :].reshape(-1, 3)
    colours = {tuple(int(c) for c in color_palette(256)[k]) for k in (7, 255)}
    assert colours <= {tuple(int(c) for c in p) for p in strip}  # label 7's swatch and void's
    absent = tuple(int(c) for c in color_palette(256)[3])
    assert absent not in {tuple(int(c) for c in p) for p in strip}


def test_refine_overlay_has_a_legend(tmp_path):
    img, probs = _pair(tmp_path)
    assert (
        main(["refine", str(img), str(probs), "-o", str(tmp_path / "o.png"), "--overlay", str(tmp_path / "c.png")]) == 0
    )
    with Image.open(tmp_path / "c.png") as picture:
        assert picture.height > 12 + 20  # the title strip and the legend


def test_fit_on_a_device_gives_the_fit_of_the_inputs_device():
    from crfrnn.data import SyntheticShapes
    from crfrnn.fit import degraded_probs, fit_crf

    ds = SyntheticShapes(3, size=24, seed=0)
    images = [ds[i][0].permute(1, 2, 0).numpy() for i in range(3)]
    masks = [ds[i][1].numpy() for i in range(3)]
    probs = [degraded_probs(m, 7, seed=i) for i, m in enumerate(masks)]
    kw = dict(epochs=1, fit_widths=False, progress=False)
    here = fit_crf(images, probs, masks, **kw)
    there = fit_crf(images, probs, masks, device="cuda" if CUDA else "cpu", **kw)
    for key, value in here.params.items():
        assert there.params[key] == (pytest.approx(value, rel=1e-3) if isinstance(value, float) else value), key

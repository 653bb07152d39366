"""Tests of ``crfrnn train``, run in-process through ``crfrnn.cli.main``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from crfrnn.cli import main
from crfrnn.io.checkpoint import load_checkpoint, load_model

TINY = ["--num-train", "8", "--num-val", "4", "--image-size", "48", "--crop-size", "48", "--batch-size", "4"]
WIDTH8 = ["--model-kwargs", "{width: 8}"]


def records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]


def error_of(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err  # one line
    return err[0]


class TestTrainCommand:
    def test_two_stages_end_to_end(self, tmp_path, capsys):
        cnn, crf = tmp_path / "cnn", tmp_path / "crf"
        assert main(["train", "--out", str(cnn), "--epochs", "2", "--quiet", *TINY, *WIDTH8]) == 0
        assert capsys.readouterr().out == ""  # --quiet
        saved = yaml.safe_load((cnn / "config.yaml").read_text())
        assert saved["epochs"] == 2 and saved["stage"] == "cnn" and saved["model"] == "small_fcn"
        assert saved["model_kwargs"] == {"width": 8} and saved["out_dir"] == str(cnn)
        assert [r["epoch"] for r in records(cnn)] == [1, 2]
        model, payload = load_model(cnn / "last.pt")
        assert payload["epoch"] == 2 and payload["num_classes"] == 7
        image = torch.rand(1, 3, 48, 40) * 255
        assert model(image).shape == (1, 7, 48, 40)

        code = main(
            [
                "train",
                "--stage",
                "crfrnn",
                "--init-from",
                str(cnn / "last.pt"),
                "--out",
                str(crf),
                "--epochs",
                "1",
                "--iterations",
                "2",
                "--eval-iterations",
                "3",
                *TINY,
            ]
        )
        assert code == 0
        out = capsys.readouterr().out
        assert "best val mIoU" in out and str(crf) in out
        model, payload = load_model(crf / "last.pt")
        assert payload["model"]["name"] == "small_fcn_crfrnn" and payload["stage"] == "crfrnn"
        assert payload["model"]["kwargs"]["backbone_kwargs"] == {"width": 8}  # taken from the stage-1 checkpoint
        assert (model.crf.num_iterations, model.crf.num_eval_iterations) == (2, 3)
        assert model(image).shape == (1, 7, 48, 40)
        assert "val_mean_iou_cnn" in records(crf)[0]

    def test_yaml_config_and_flags_override(self, tmp_path):
        run = tmp_path / "run"
        cfg = tmp_path / "c.yaml"
        cfg.write_text(
            yaml.safe_dump(
                {
                    "out_dir": str(run),
                    "epochs": 5,
                    "lr": 0.05,
                    "model_kwargs": {"width": 8},
                    "num_train": 8,
                    "num_val": 4,
                    "image_size": 48,
                    "crop_size": 48,
                }
            )
        )
        assert main(["train", "--config", str(cfg), "--epochs", "1", "--quiet", "--no-flip"]) == 0
        saved = yaml.safe_load((run / "config.yaml").read_text())
        assert saved["epochs"] == 1 and saved["lr"] == 0.05 and saved["hflip"] is False
        assert len(records(run)) == 1

    def test_stop_and_resume(self, tmp_path):
        run = tmp_path / "run"
        assert main(["train", "--out", str(run), "--epochs", "2", "--stop-after", "1", "--quiet", *TINY, *WIDTH8]) == 0
        assert load_checkpoint(run / "last.pt")["epoch"] == 1
        assert main(["train", "--out", str(run), "--resume", "--quiet"]) == 0  # the run's settings are reused
        assert [r["epoch"] for r in records(run)] == [1, 2]
        assert load_checkpoint(run / "last.pt")["epoch"] == 2

    @pytest.mark.parametrize(
        "argv, message",
        [
            (["--model", "small_fnc"], "unknown model 'small_fnc'"),
            (["--model", "small_fcn_crfrnn"], "stage 'cnn' trains the CNN alone"),
            (["--stage", "crfrnn", "--model", "small_fcn"], "stage 'crfrnn' trains a CNN with a CRF-RNN head"),
            (["--stage", "crfrnn", "--init-from", "missing.pt"], "checkpoint not found: missing.pt"),
            (["--config", "missing.yaml"], "configuration file not found"),
            (["--dataset", "folder", "--images", "no/such/dir", "--masks", "m", "--num-classes", "3"], "no/such/dir"),
            (["--dataset", "folder"], "needs both images and masks"),
            (["--dataset", "voc"], "needs voc_root"),
            (["--resume"], "config.yaml' not found"),
            (["--model-kwargs", "{depth: 0.5, nonsense: 1}"], "unexpected keyword argument"),
        ],
    )
    def test_bad_input_one_line_exit_2(self, tmp_path, capsys, monkeypatch, argv, message):
        monkeypatch.chdir(tmp_path)
        code = main(["train", "--out", str(tmp_path / "run"), "--quiet", *TINY, *argv])
        assert code == 2
        line = error_of(capsys)
        assert line.startswith("crfrnn train: error: ") and message in line

    def test_unknown_yaml_key(self, tmp_path, capsys):
        cfg = tmp_path / "c.yaml"
        cfg.write_text("out_dir: run\nbatchsize: 4\n")
        assert main(["train", "--config", str(cfg)]) == 2
        line = error_of(capsys)
        assert "unknown configuration key 'batchsize'" in line and "Did you mean 'batch_size'" in line
        assert "Valid keys: out_dir, stage, model" in line

    def test_no_out_dir(self, capsys):
        assert main(["train", "--epochs", "1"]) == 2
        assert "--out DIR" in error_of(capsys)

    def test_resume_with_other_settings(self, tmp_path, capsys):
        run = tmp_path / "run"
        assert main(["train", "--out", str(run), "--epochs", "2", "--stop-after", "1", "--quiet", *TINY, *WIDTH8]) == 0
        assert main(["train", "--out", str(run), "--resume", "--lr", "0.3", "--quiet"]) == 2
        assert "lr: was 0.01, now 0.3" in error_of(capsys)
        assert main(["train", "--out", str(run), "--quiet", *TINY, *WIDTH8]) == 2  # no --resume: not overwritten
        assert "already holds a run" in error_of(capsys)

    def test_argparse_rejects_bad_numbers(self, capsys):
        with pytest.raises(SystemExit) as info:
            main(["train", "--out", "x", "--epochs", "0"])
        assert info.value.code == 2
        assert "must be >= 1" in capsys.readouterr().err


def test_symlinked_lock_is_refused_and_its_target_kept(tmp_path, capsys):
    """A ``.lock`` that is a symlink is never followed: its target is not truncated or written."""
    outside = tmp_path / "precious.txt"
    outside.write_text("keep me\n")
    run = tmp_path / "run"
    run.mkdir()
    (run / ".lock").symlink_to(outside)
    assert main(["train", "--out", str(run), "--epochs", "1", "--quiet", *TINY, *WIDTH8]) == 2
    message = error_of(capsys)
    assert "symbolic link" in message and ".lock" in message
    assert outside.read_text() == "keep me\n"
    assert sorted(p.name for p in run.iterdir()) == [".lock"]  # nothing else written

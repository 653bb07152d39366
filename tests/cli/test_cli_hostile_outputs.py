"""Failures on the way out (a full disk, a name too long to write) and sizes refused up front (``--image-size``):
each is one line on stderr and an exit code, never a traceback."""

from __future__ import annotations

import contextlib
import errno
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from crfrnn._utils import files
from crfrnn.cli import MAX_IMAGE_SIZE, main

TINY = ["--num-train", "4", "--num-val", "2", "--image-size", "32", "--crop-size", "32", "--batch-size", "2"]


def one_line(capsys: pytest.CaptureFixture, command: str) -> str:
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith(f"crfrnn {command}: error: "), err
    return lines[0]


@pytest.mark.parametrize("command", ["train", "evaluate"])
def test_huge_image_size_is_refused_up_front(command, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([command, "--image-size", str(10**9), "--out", str(tmp_path / "run")])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "--image-size" in err and f"<= {MAX_IMAGE_SIZE}" in err and "1000000000" in err, err
    assert not (tmp_path / "run").exists()


def test_full_disk_while_training_says_what_was_kept(tmp_path, capsys, monkeypatch):
    real = files.atomic_write

    @contextlib.contextmanager
    def full_for_checkpoints(path, mode="wb", **kw):
        if Path(path).suffix == ".pt":  # the settings and the log are written; the first checkpoint is not
            raise files._naming(OSError(errno.ENOSPC, "No space left on device"), Path(path))
        with real(path, mode, **kw) as fh:
            yield fh

    monkeypatch.setattr(files, "atomic_write", full_for_checkpoints)
    run = tmp_path / "run"
    code = main(["train", "--out", str(run), "--epochs", "1", "--quiet", *TINY, "--model-kwargs", "{width: 4}"])
    line = one_line(capsys, "train")
    assert code == 1
    assert "the disk is full" in line and ".pt'" in line and "Kept in" in line and "config.yaml" in line, line
    assert not list(run.glob("*.pt")) and not list(run.glob(".*.tmp"))


def test_a_name_too_long_is_one_line_naming_the_file(tmp_path, capsys):
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(tmp_path / "image.png")
    np.save(tmp_path / "probs.npy", rng.dirichlet(np.ones(2), (8, 8)).astype(np.float32).transpose(2, 0, 1))
    long_name = "x" * 300 + ".png"
    code = main(["refine", str(tmp_path / "image.png"), str(tmp_path / "probs.npy"), "-o", str(tmp_path / long_name)])
    line = one_line(capsys, "refine")
    assert code == 1
    assert "too long" in line and long_name in line, line


def test_a_long_name_the_system_takes_is_written(tmp_path):
    """The temporary file's name is cut short, so that a 250-character name (the system allows 255) is written."""
    path = tmp_path / ("y" * 246 + ".txt")
    files.atomic_write_text(path, "ok")
    assert path.read_text() == "ok" and [p.name for p in tmp_path.iterdir()] == [path.name]


def test_a_full_disk_names_the_destination(tmp_path, monkeypatch):
    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(files.os, "fsync", full)
    with pytest.raises(OSError) as err:
        files.atomic_write_text(tmp_path / "a.txt", "x")
    assert err.value.errno == errno.ENOSPC and err.value.filename == str(tmp_path / "a.txt")
    assert list(tmp_path.iterdir()) == []

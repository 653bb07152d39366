"""Ctrl-C ends every command with one line and status 130, wherever it arrives (issue 25 item 11).

Some interrupts ended in a traceback and status 1: one that arrived while the sub-commands' modules were imported
(before ``main``'s handler), or one raised inside a cleanup (``finally``/``__exit__``) that then failed with another
exception chained to it. Each run here is a fresh ``python -m crfrnn`` sent SIGINT after a delay.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from crfrnn.cli import interrupted
from crfrnn.data import SyntheticShapes, save_label_png

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="SIGINT to a child process is POSIX")


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("interrupt")
    for name in ("images", "probs", "masks"):
        (root / name).mkdir()
    ds = SyntheticShapes(4, size=32, seed=2)
    rng = np.random.default_rng(0)
    for i in range(4):
        image, mask = ds[i]
        Image.fromarray(image.permute(1, 2, 0).numpy().astype(np.uint8)).save(root / "images" / f"s{i}.png")
        probs = rng.dirichlet(np.ones(ds.num_classes), tuple(mask.shape)).transpose(2, 0, 1).astype(np.float32)
        np.save(root / "probs" / f"s{i}.npy", probs)
        save_label_png(root / "masks" / f"s{i}.png", mask.numpy())
    return root


def interrupt(args: list, delay: float) -> tuple:
    env = dict(os.environ, CRFRNN_QUIET="1", PYTHONPATH=os.pathsep.join(sys.path))
    proc = subprocess.Popen(
        [sys.executable, "-m", "crfrnn", *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env
    )
    time.sleep(delay)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    return proc.returncode, err.decode()


def check(code: int, err: str, command: str) -> None:
    assert "Traceback" not in err, err
    if code == 0:  # finished before the signal came
        return
    assert code == 130, (code, err)
    assert err.strip().splitlines()[-1] in (f"crfrnn {command}: interrupted", "crfrnn: interrupted"), err


@pytest.mark.parametrize("delay", [0.3, 3.0])
def test_fit(folders, tmp_path, delay):
    args = ["fit", *(str(folders / n) for n in ("images", "probs", "masks")), "--no-progress", "--epochs", "5"]
    code, err = interrupt([*args, "-o", str(tmp_path / "crf.yaml")], delay)
    check(code, err, "fit")
    assert not list(tmp_path.glob("*.tmp*"))  # no half-written file left behind


@pytest.mark.parametrize("delay", [1.0, 3.0])
def test_refine_images(folders, tmp_path, delay):
    args = ["refine", "--images", str(folders / "images"), "--probs", str(folders / "probs"), "-o", str(tmp_path)]
    code, err = interrupt([*args, "--jobs", "2"], delay)
    check(code, err, "refine")


def test_an_exception_chained_to_an_interrupt_is_an_interrupt():
    try:
        try:
            raise KeyboardInterrupt
        finally:
            raise OSError("cleanup failed")  # noqa: B012 - what a failing cleanup does
    except OSError as err:
        assert interrupted(err)
    assert not interrupted(ValueError("plain"))

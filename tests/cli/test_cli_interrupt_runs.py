"""Ctrl-C in ``crfrnn train`` and ``crfrnn segment``: one line and status 130, files whole, a run that resumes.

Interrupts sent at many moments (issue 25 item 11) ended in: a traceback and status 1 (NumPy or PyTorch
interrupted half way through their import, then imported again), status -2 after the one-line message (an
interrupt raised in code a C extension ran while importing), status -2 with no message (a Ctrl-C while the
interpreter exited), and tracebacks from DataLoader workers. :mod:`crfrnn.__main__` holds an interrupt back while
a module is imported and ignores SIGINT once the command has returned; loader workers ignore SIGINT.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from crfrnn.__main__ import _importing
from crfrnn.cli import main

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="SIGINT to a child process is POSIX")

_HERE = Path(__file__).resolve().parent
_spec = importlib.util.spec_from_file_location("_interrupt_helpers", _HERE / "test_cli_interrupt.py")
H = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(H)

TINY = ["--num-train", "4", "--num-val", "2", "--image-size", "24", "--crop-size", "24", "--batch-size", "2"]
TINY += ["--model-kwargs", "{width: 4}", "--quiet"]


def test_train_interrupted_with_loader_workers_then_resumed(tmp_path):
    run = tmp_path / "run"
    assert main(["train", "--out", str(run), "--epochs", "2", "--stop-after", "1", *TINY]) == 0
    code, err = H.interrupt(["train", "--out", str(run), "--resume", "--workers", "2", "--quiet"], 2.5)
    H.check(code, err, "train")
    assert err.count("Traceback") == 0 and err.count("KeyboardInterrupt") == 0, err  # no worker's either
    assert not [p for p in run.iterdir() if ".tmp" in p.name]  # no half-written checkpoint
    if code == 130:
        assert main(["train", "--out", str(run), "--resume", "--quiet"]) == 0  # the interrupted run goes on
    epochs = [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert epochs == [1, 2]


def test_segment_interrupted(tmp_path):
    spec = importlib.util.spec_from_file_location("_pretrained_writers", _HERE.parent / "models" / "test_pretrained.py")
    writers = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(writers)
    weights = writers.write_pth(tmp_path / "w.pth", *writers.reference_weights())
    photos = tmp_path / "photos"
    photos.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray((rng.random((24, 32, 3)) * 255).astype(np.uint8)).save(photos / f"p{i}.png")
    out = tmp_path / "out"
    args = ["segment", str(photos), "--weights", str(weights), "-o", str(out), "--iterations", "2", "--probs"]
    code, err = H.interrupt(args, 2.5)
    H.check(code, err, "segment")
    assert not [p for p in out.rglob("*") if ".tmp" in p.name]


def test_an_interrupt_during_an_import_is_held_back(tmp_path):
    (tmp_path / "_probe_import.py").write_text(
        textwrap.dedent(
            """
            import sys
            from crfrnn.__main__ import _importing
            INSIDE = _importing(sys._getframe())
            """
        )
    )
    sys.path.insert(0, str(tmp_path))
    try:
        probe = importlib.import_module("_probe_import")
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("_probe_import", None)
    assert probe.INSIDE and not _importing(sys._getframe())


def test_console_script_entry_point():
    pyproject = (_HERE.parents[1] / "pyproject.toml").read_text()
    assert 'crfrnn = "crfrnn.__main__:entry"' in pyproject
    done = subprocess.run(
        [sys.executable, "-c", "import sys; from crfrnn.__main__ import entry; sys.argv[1:] = ['--version']; entry()"],
        capture_output=True,
        text=True,
        timeout=60,
        env=dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path)),
    )
    assert done.returncode == 0 and done.stdout.startswith("crfrnn "), done.stderr

"""benchmarks/bench_gpu.py runs end to end: exits 0 with a message without a GPU, and its logic on the CPU."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_gpu.py"


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present: the benchmark would run for real")
def test_without_a_gpu_it_says_so_and_exits_0():
    out = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "no CUDA GPU" in out.stdout


def test_the_script_logic_runs_on_the_cpu(tmp_path):
    report = tmp_path / "gpu.json"
    out = subprocess.run(
        [
            sys.executable,
            str(SCRIPT),
            "--device",
            "cpu",
            "--sizes",
            "12x16",
            "--batches",
            "1",
            "2",
            "--iterations",
            "2",
            "--repeats",
            "1",
            "--labels",
            "3",
            "--json",
            str(report),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    import json

    rows = json.loads(report.read_text())["rows"]
    assert [(r["batch"], r["iterations"]) for r in rows] == [(1, 2), (2, 2)]
    assert all(r["forward_backward_s"] > 0 for r in rows)

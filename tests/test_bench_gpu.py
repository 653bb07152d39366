"""benchmarks/bench_gpu.py runs end to end: exits 0 with a message without a GPU, and its logic on the CPU."""

from __future__ import annotations

import os
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


BUILD = SCRIPT.parent / "bench_build.py"


def test_bench_build_compares_the_two_builds(tmp_path):
    """benchmarks/bench_build.py's logic on a tiny image, the Triton kernels under the interpreter."""
    pytest.importorskip("triton")
    report = tmp_path / "build.json"
    command = [sys.executable, str(BUILD), "--device", "cpu", "--size", "8x10", "--repeats", "1", "--json", str(report)]
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    out = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert out.returncode == 0, out.stderr
    import json

    result = json.loads(report.read_text())
    assert [r["backend"] for r in result["rows"]] == ["torch", "triton"]
    assert result["num_vertices"]["torch"] == result["num_vertices"]["triton"]
    assert result["filter_max_relative_difference"] < 1e-5

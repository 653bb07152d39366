"""The README's code runs, and its test command is the one CI runs."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")


def blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README, flags=re.S)


@pytest.mark.parametrize("index", range(len(blocks("python"))))
def test_python_examples_run(index):
    # each block in a fresh interpreter, as a reader runs it (install_as_pydensecrf changes the whole process)
    code = blocks("python")[index]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]))
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, f"README.md python block {index}:\n{done.stderr[-3000:]}"
    assert done.stdout.strip(), "every README example prints what it shows"


def test_dense_crf_example_output(capsys):
    exec(blocks("python")[0], {})
    assert capsys.readouterr().out.split() == ["(2,", "60,", "80)", "0", "1"]


def test_two_setup_commands_and_ci():
    commands = [line for block in blocks("bash") for line in block.splitlines() if line.startswith("python3 -m venv")]
    assert len(commands) == 2, commands
    main_job, tests = commands
    assert main_job.endswith("crfrnn reproduce") and "pip install torch==2.13.0" in main_job
    assert tests.endswith("python -m pytest") and "pip install torch==2.13.0" in tests
    assert tests in (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert main_job.index("torch==2.13.0") < main_job.index("pip install -e")  # the CPU build first


def test_no_placeholders_left():
    assert not re.search(r"\b[A-Z]+_(TABLE|CLAIMS)\b", README)


def test_install_lines_for_cpu_and_cuda_and_the_tested_versions_agree_with_pyproject():
    pyproject = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    bound = re.search(r'"torch>=([\d.]+)"', pyproject)
    python = re.search(r'requires-python = ">=([\d.]+)"', pyproject)
    assert bound and python
    assert f"torch>={bound.group(1)}" in README and f"requires-python >= {python.group(1)}" in README
    assert "pip install torch --index-url https://download.pytorch.org/whl/cpu" in README
    assert "git clone <repository URL>" in README and "--device cuda" in README
    assert "Figures: not yet measured on this tree" in README and "bash benchmarks/gpu_check.sh" in README

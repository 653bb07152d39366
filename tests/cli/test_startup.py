"""``crfrnn --help`` and ``import crfrnn`` start fast: neither imports PyTorch (nor the library's modules)."""

from __future__ import annotations

import subprocess
import sys

import crfrnn
from crfrnn.cli import COMMANDS, _choices


def _python(code: str) -> str:
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_help_and_import_do_not_import_torch():
    out = _python(
        "import sys, crfrnn, crfrnn.cli; crfrnn.cli.build_parser(); dir(crfrnn); "
        "print('torch' in sys.modules, 'numba' in sys.modules)"
    )
    assert out.split() == ["False", "False"]


def test_help_lists_every_command():
    done = subprocess.run([sys.executable, "-m", "crfrnn", "--help"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    for command in COMMANDS:
        assert f"    {command}" in done.stdout, done.stdout


def test_lazy_names_resolve():
    assert set(crfrnn.__all__) <= set(dir(crfrnn))
    for name in crfrnn.__all__:
        assert getattr(crfrnn, name) is not None


def test_flag_choices_match_the_library():
    # the command line keeps plain copies so that building its parser imports nothing heavy
    from crfrnn.crf import NORMALIZATIONS
    from crfrnn.io import LAYOUTS
    from crfrnn.models.pretrained import FORMATS, RESIZE_POLICIES
    from crfrnn.workflow import DATASETS, LR_SCHEDULES, OPTIMIZERS, STAGES

    assert _choices.LAYOUTS == tuple(LAYOUTS)
    assert _choices.NORMALIZATIONS == tuple(NORMALIZATIONS)
    assert (_choices.FORMATS, _choices.RESIZE_POLICIES) == (tuple(FORMATS), tuple(RESIZE_POLICIES))
    assert (_choices.STAGES, _choices.DATASETS) == (tuple(STAGES), tuple(DATASETS))
    assert (_choices.OPTIMIZERS, _choices.LR_SCHEDULES) == (tuple(OPTIMIZERS), tuple(LR_SCHEDULES))

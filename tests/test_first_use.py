"""The kernels' first use: the per-user cache folder of a read-only install, and the one-line compile message.

Each test runs a fresh interpreter on a copy of the package (made read-only) with an empty cache, and compiles
only one small kernel (:func:`crfrnn._kernels.channels_last`), not a whole ``dense_crf``, to stay fast.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

import crfrnn
from crfrnn._kernels import _first_use

#: compiles (or loads) one small kernel
SCRIPT = (
    "import numpy as np, numba, crfrnn._kernels as k; "
    "k.channels_last(np.ones((2, 5), np.float32), np.empty((5, 4), np.float32)); "
    "print(numba.config.CACHE_DIR)"
)


@pytest.fixture(scope="module")
def read_only_copy(tmp_path_factory: pytest.TempPathFactory):
    """A copy of the package in a read-only folder (without cached files), for ``PYTHONPATH``."""
    root = tmp_path_factory.mktemp("install")
    shutil.copytree(Path(crfrnn.__file__).parent, root / "crfrnn", ignore=shutil.ignore_patterns("__pycache__"))
    for path in [root, *root.rglob("*")]:
        path.chmod(path.stat().st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
    yield root
    for path in [root, *root.rglob("*")]:
        path.chmod(path.stat().st_mode | stat.S_IWUSR)


#: loads that kernel from a full cache, checks its result and that numba's compiler registries stayed out, then
#: compiles a function of its own that needs them (numba refreshes its context for that itself)
WARM_SCRIPT = (
    "import sys, numpy as np, numba, crfrnn._kernels as k; "
    "out = k.channels_last(np.arange(10, dtype=np.float32).reshape(2, 5), np.zeros((5, 4), np.float32)); "
    "assert (out[:, :2] == np.arange(10).reshape(2, 5).T).all(), out; "
    "print('numba.np.linalg' in sys.modules); "
    "f = numba.njit(lambda a: np.linalg.norm(a)); "
    "print(f(np.array([3.0, 4.0])))"
)


def _run(install: Path, home: Path, script: str = SCRIPT, **env: str) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if k not in ("NUMBA_CACHE_DIR", "CRFRNN_QUIET")}
    environ.update(PYTHONPATH=str(install), XDG_CACHE_HOME=str(home), CRFRNN_USER_CACHE="1", **env)
    return subprocess.run([sys.executable, "-c", script], env=environ, capture_output=True, text=True, timeout=300)


def test_read_only_install_caches_in_the_user_folder_and_says_so_once(read_only_copy, tmp_path):
    # as root the read-only copy still looks writable to os.access, so CRFRNN_USER_CACHE=1 forces the user folder
    cold = _run(read_only_copy, tmp_path)
    assert cold.returncode == 0, cold.stderr
    folder = tmp_path / "crfrnn" / "numba"
    assert cold.stdout.strip() == str(folder)
    assert list(folder.rglob("*.nbi")) and list(folder.rglob("*.nbc")), "no cache files in the user folder"
    assert cold.stderr.count(_first_use.MESSAGE) == 1, cold.stderr
    assert not list(read_only_copy.rglob("*.nbi")), "the read-only copy was written to"

    warm = _run(read_only_copy, tmp_path)  # loads from the cache: nothing to say
    assert warm.returncode == 0, warm.stderr
    assert _first_use.MESSAGE not in warm.stderr


def test_a_warm_process_loads_the_kernels_without_the_compilers_registries(read_only_copy, tmp_path):
    assert _run(read_only_copy, tmp_path).returncode == 0  # fills the cache
    warm = _run(read_only_copy, tmp_path, WARM_SCRIPT)
    assert warm.returncode == 0, warm.stderr
    assert warm.stdout.split() == ["False", "5.0"], warm.stdout
    assert _first_use.MESSAGE not in warm.stderr  # loaded, not compiled


def test_quiet_and_an_explicit_numba_cache_dir_win(read_only_copy, tmp_path):
    mine = tmp_path / "mine"
    quiet = _run(read_only_copy, tmp_path, CRFRNN_QUIET="1", NUMBA_CACHE_DIR=str(mine))
    assert quiet.returncode == 0, quiet.stderr
    assert quiet.stdout.strip() == str(mine)
    assert _first_use.MESSAGE not in quiet.stderr
    assert not (tmp_path / "crfrnn").exists()


def test_user_cache_dir_follows_xdg(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert _first_use.user_cache_dir() == tmp_path / "crfrnn" / "numba"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert _first_use.user_cache_dir() == tmp_path / ".cache" / "crfrnn" / "numba"


def test_a_change_to_any_kernel_source_recompiles(tmp_path):
    # numba's own stamp is the defining file's time and size: a kernel inlining a helper of another file kept its
    # stale code when only that file changed; the stamp now covers every kernel source
    install = tmp_path / "install"
    shutil.copytree(Path(crfrnn.__file__).parent, install / "crfrnn", ignore=shutil.ignore_patterns("__pycache__"))
    home = tmp_path / "home"
    assert _first_use.MESSAGE in _run(install, home).stderr  # compiles channels_last (crfrnn/_kernels/layout.py)
    assert _first_use.MESSAGE not in _run(install, home).stderr  # loads it
    helper = install / "crfrnn" / "_kernels" / "simd.py"  # another kernel file
    helper.write_text(helper.read_text() + "\n# changed\n")
    again = _run(install, home)
    assert again.returncode == 0, again.stderr
    assert _first_use.MESSAGE in again.stderr  # compiled again, not loaded stale


#: every CPU path once: the fused loop (float32 and float64, the parallel hash: 20480 points), the compiled
#: differentiable path's forward and backward, the pydensecrf shim stepping through inference, the lattice filter,
#: the labelling of scores (``labels_of``)
EVERY_PATH = """
import sys, numpy as np, torch
import crfrnn._kernels._first_use as first_use
from crfrnn import CrfRnn, dense_crf
from crfrnn.compat import DenseCRF2D
from crfrnn.lattice import PermutohedralLattice
rng = np.random.default_rng(0)
img = (rng.random((128, 160, 3)) * 255).astype(np.uint8)
p = rng.dirichlet(np.ones(4), size=128 * 160).T.reshape(4, 128, 160).astype(np.float32)
dense_crf(img, p, num_iterations=2)
dense_crf(img, p.astype(np.float64), num_iterations=2)
crf = CrfRnn(4, num_iterations=2)
u = torch.randn(1, 4, 128, 160, requires_grad=True)
crf(u, torch.from_numpy(img).permute(2, 0, 1)[None].float()).sum().backward()
assert u.grad is not None and bool(torch.isfinite(u.grad).all())
d = DenseCRF2D(160, 128, 4)
d.setUnaryEnergy(np.ascontiguousarray(-np.log(p.reshape(4, -1))))
d.addPairwiseGaussian(sxy=3, compat=3)
d.addPairwiseBilateral(sxy=80, srgb=13, rgbim=img, compat=10)
q, t1, t2 = d.startInference()
d.stepInference(q, t1, t2)
d.klDivergence(q)
f = torch.rand(1, 500, 3, dtype=torch.float64)
PermutohedralLattice(f).filter(torch.rand(1, 500, 2, dtype=torch.float64))
from crfrnn.io import labels_of
assert (labels_of(p) == p.argmax(0)).all() and (labels_of(p.astype(np.float64)) == p.argmax(0)).all()
print("every path ran")
"""


def test_every_kernel_loads_from_the_cache_in_a_fresh_process():
    # A warm process loads the kernels without numba's context refresh (_KernelCache): a kernel needing a symbol
    # that only a skipped module registers would abort the process, not raise. The first run fills the package's
    # cache with whatever this test session has not compiled yet (usually nothing: the suite's earlier tests did);
    # the second loads every kernel of every CPU path.
    env = {k: v for k, v in os.environ.items() if k != "CRFRNN_QUIET"}
    runs = [
        subprocess.run([sys.executable, "-c", EVERY_PATH], env=env, capture_output=True, text=True, timeout=600)
        for _ in range(2)
    ]
    for run in runs:
        assert run.returncode == 0, run.stderr[-2000:]
        assert "every path ran" in run.stdout
    assert _first_use.MESSAGE not in runs[1].stderr, runs[1].stderr[-2000:]  # and the full one loaded everything

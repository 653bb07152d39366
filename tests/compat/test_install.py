"""crfrnn.compat.install_as_pydensecrf(): after it, the whole process's pydensecrf imports resolve to crfrnn's shim,
even with the real pydensecrf installed. Each case runs in a child process, so this process's sys.modules stays
clean."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

SRC = str(Path(__file__).resolve().parents[2] / "src")


def run(code: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=SRC + os.pathsep + os.environ.get("PYTHONPATH", ""), CRFRNN_QUIET="1")
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, env=env, timeout=300
    )


def test_every_import_form_gets_the_shim():
    out = run(
        """
        import importlib, importlib.util
        import crfrnn.compat
        crfrnn.compat.install_as_pydensecrf()
        crfrnn.compat.install_as_pydensecrf()  # a second call does nothing
        import pydensecrf.densecrf as dcrf
        from pydensecrf.utils import unary_from_softmax
        import pydensecrf
        import crfrnn.compat.densecrf, crfrnn.compat.utils
        assert dcrf is crfrnn.compat.densecrf, dcrf
        assert unary_from_softmax is crfrnn.compat.utils.unary_from_softmax
        assert pydensecrf.densecrf is dcrf and pydensecrf.utils is crfrnn.compat.utils
        spec = importlib.util.find_spec("pydensecrf")
        assert spec is not None and spec.name == "pydensecrf" and spec.origin == "crfrnn.compat", spec
        assert importlib.util.find_spec("pydensecrf.densecrf").name == "crfrnn.compat.densecrf"
        assert importlib.import_module("pydensecrf.utils") is crfrnn.compat.utils
        assert isinstance(dcrf.DenseCRF2D(3, 2, 2), crfrnn.compat.DenseCRF)
        print("ok")
        """
    )
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


def test_the_real_one_imported_first_is_refused_unless_forced():
    pytest.importorskip("pydensecrf.densecrf", reason="pydensecrf2 (densecrf) is not installed")
    out = run(
        """
        import warnings
        import pydensecrf.densecrf as real
        import crfrnn.compat
        try:
            crfrnn.compat.install_as_pydensecrf()
        except RuntimeError as e:
            assert "already imported" in str(e) and "force=True" in str(e), e
        else:
            raise AssertionError("no error")
        import pydensecrf.densecrf
        assert pydensecrf.densecrf is real  # refused: nothing changed
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            crfrnn.compat.install_as_pydensecrf(force=True)
        assert any("later imports" in str(w.message) for w in caught), caught
        import pydensecrf.densecrf as dcrf
        assert dcrf is crfrnn.compat.densecrf and real is not dcrf
        print("ok")
        """
    )
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr

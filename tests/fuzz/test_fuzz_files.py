"""Hostile files through the commands that read them (:data:`fuzz_files.COMMAND_CASES`): each command exits 0 or
with code 1 or 2 and a one-line message, never a traceback, a crash or a hang, within a memory limit
(``RLIMIT_AS``, :data:`fuzz_settings.COMMAND_MEMORY`), and unpickles nothing.

All cases run in one child process (torch is imported once), under the limit, each with an alarm.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from fuzz_files import COMMAND_CASES
from fuzz_settings import COMMAND_MEMORY, COMMAND_TIMEOUT_S

RUNNER = Path(__file__).with_name("fuzz_runner.py")
OPTIONAL = {"h5": "h5py", "nifti": "nibabel"}
#: commands that go on past a bad input file, reporting it on a line of its own (``crfrnn segment: PATH: ...``)
PER_FILE = {"segment"}


def _skip_reason(name: str) -> str | None:
    for word, module in OPTIONAL.items():
        if word in name:
            try:
                __import__(module)
            except ImportError:
                return f"{module} is not installed"
    return None


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    root = tmp_path_factory.mktemp("hostile")
    cases = []
    for i, (command, name, build) in enumerate(COMMAND_CASES):
        if _skip_reason(name):
            continue
        folder = root / f"case{i}"
        folder.mkdir()
        cases.append((f"{command}: {name}", build(folder)))
    listing = root / "cases.json"
    listing.write_text(json.dumps(cases))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CRFRNN_NUM_THREADS": "1"}
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).parents[2] / "src"), env.get("PYTHONPATH", "")])
    proc = subprocess.run(
        [sys.executable, str(RUNNER), str(COMMAND_MEMORY), str(COMMAND_TIMEOUT_S), str(listing)],
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT_S * len(cases) + 120,
        env=env,
    )
    assert proc.returncode == 0, f"the runner died ({proc.returncode}): {proc.stderr[-3000:]}"
    return {r["name"]: r | {"folder": root / f"case{i}"} for i, r in zip(_indices(), json.loads(proc.stdout))}


def _indices() -> list[int]:
    return [i for i, (_, name, _) in enumerate(COMMAND_CASES) if not _skip_reason(name)]


@pytest.mark.parametrize("command,name", [(c, n) for c, n, _ in COMMAND_CASES], ids=lambda v: str(v))
def test_hostile_file(command, name, results):
    reason = _skip_reason(name)
    if reason:
        pytest.skip(reason)
    r = results[f"{command}: {name}"]
    assert r["escaped"] is None, f"{command} on {name}: {r['escaped']}"
    assert r["code"] in (0, 1, 2), r
    assert "Traceback" not in r["stderr"], r["stderr"]
    assert not (r["folder"] / "UNPICKLED").exists(), f"{command} on {name} unpickled the file"
    lines = r["stderr"].strip().splitlines()
    if r["code"] != 0 and command in PER_FILE and not any(": error: " in line for line in lines):
        # a bad photo fails alone: one line naming it, the other photos go on, the exit code says some failed
        assert any(line.startswith(f"crfrnn {command}: /") and len(line) < 2000 for line in lines), r["stderr"]
    elif r["code"] != 0:  # the message is one line, the last (notes and warnings may come before it)
        assert lines and lines[-1].startswith(f"crfrnn {command}: error: "), r["stderr"]
        assert sum(line.startswith(f"crfrnn {command}: error: ") for line in lines) == 1, r["stderr"]

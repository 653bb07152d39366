"""Every ```python block of docs/*.md runs as written (in a fresh namespace, in a temporary folder).

A block that needs something only the user has (a weights file, their photos) starts with a ``# needs: ...``
comment and is skipped, with that reason.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parent.parent / "docs"


def _blocks() -> list:
    found = []
    for page in sorted(DOCS.glob("*.md")):
        for i, code in enumerate(re.findall(r"^```python\n(.*?)^```", page.read_text(encoding="utf-8"), re.S | re.M)):
            found.append(pytest.param(page.name, code, id=f"{page.stem}-{i}"))
    return found


BLOCKS = _blocks()


def test_blocks_are_found():
    assert len(BLOCKS) >= 4


@pytest.mark.parametrize("page, code", BLOCKS)
def test_python_block_runs(page, code, tmp_path, monkeypatch):
    needs = re.match(r"\s*# needs: (.*)", code)
    if needs:
        pytest.skip(f"{page}: needs {needs.group(1)}")
    monkeypatch.chdir(tmp_path)  # blocks may write files (crf.yaml)
    exec(compile(code, f"docs/{page}", "exec"), {"__name__": "__docs__"})

"""Every public callable of crfrnn has a fuzz test or a reason not to (:mod:`fuzz_registry`)."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest
from fuzz_files import COMMAND_CASES
from fuzz_registry import EXEMPT, FUZZED

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE.parent))  # tests/: test_api's PUBLIC_API
from crfrnn.cli import COMMANDS  # noqa: E402
from test_api import PUBLIC_API  # noqa: E402


def public_callables() -> dict[str, object]:
    """Public name (first spelling in PUBLIC_API's order) -> object, for every callable of a public ``__all__``."""
    found: dict[int, tuple[str, object]] = {}
    for module_name, names in PUBLIC_API.items():
        module = importlib.import_module(module_name)
        for name in names:
            obj = getattr(module, name)
            if callable(obj) and not isinstance(obj, (int, float, str, tuple, dict)):
                found.setdefault(id(obj), (f"{module_name}.{name}", obj))
    return dict(found.values())


def test_every_public_callable_is_fuzzed_or_exempt():
    names = public_callables()
    missing = sorted(set(names) - set(FUZZED) - set(EXEMPT))
    assert not missing, f"public callables without a fuzz entry in tests/fuzz/fuzz_registry.py: {missing}"


def test_the_registry_names_only_public_callables_and_real_tests():
    names = public_callables()
    assert not set(FUZZED) & set(EXEMPT), "a name is both fuzzed and exempt"
    stale = sorted((set(FUZZED) | set(EXEMPT)) - set(names))
    assert not stale, f"tests/fuzz/fuzz_registry.py names what is not public (any more): {stale}"
    assert all(reason.strip() for reason in EXEMPT.values())
    for where in set(FUZZED.values()):
        file, function = where.split("::")
        assert f"def {function}(" in (HERE / file).read_text(), f"{where} is not a test"


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_command_that_reads_files_has_hostile_cases(command):
    if command == "reproduce":
        pytest.skip("reproduce reads only its own YAML config, through the same reader as train --config")
    assert any(c == command for c, _, _ in COMMAND_CASES), f"crfrnn {command} has no case in fuzz_files.py"

"""Run the ``>>>`` examples of every module of the installed package as tests (one test per module).

The modules are found with :mod:`pkgutil` from the installed (editable) package, not from a path, so the
examples run against what ``import crfrnn`` gives. Only modules whose source holds an example are collected
(read as text, nothing imported at collection time); a module, or an example, that needs an optional
dependency which is not installed is skipped with the dependency's name.
"""

from __future__ import annotations

import doctest
import importlib
import importlib.util
import io
import pkgutil

import pytest

import crfrnn

#: Optional dependencies (extras): a module or an example that needs one of these is skipped without it.
OPTIONAL = frozenset({"h5py", "matplotlib", "nibabel", "pydensecrf", "scipy", "skimage"})


def _modules_with_examples() -> list[str]:
    names = ["crfrnn"] + [m.name for m in pkgutil.walk_packages(crfrnn.__path__, "crfrnn.")]
    found = []
    for name in names:
        if name.rsplit(".", 1)[-1] == "__main__":  # running it is the command line, not an example
            continue
        spec = importlib.util.find_spec(name)
        with open(spec.origin, encoding="utf-8") as fh:
            if ">>>" in fh.read():
                found.append(name)
    return sorted(found)


MODULES = _modules_with_examples()


def _missing_optional(exc: BaseException) -> str | None:
    if isinstance(exc, ModuleNotFoundError) and exc.name and exc.name.split(".")[0] in OPTIONAL:
        return exc.name.split(".")[0]
    return None


class _Runner(doctest.DocTestRunner):
    """A runner that notes an example failing only because an optional dependency is missing."""

    missing: str | None = None

    def report_unexpected_exception(self, out, test, example, exc_info):  # noqa: ANN001 - doctest's API
        missing = _missing_optional(exc_info[1])
        if missing is not None:
            self.missing = missing
        super().report_unexpected_exception(out, test, example, exc_info)


def test_examples_are_found():
    # the collection below must not silently find nothing (e.g. after a move of the package)
    assert len(MODULES) >= 20, MODULES
    assert {"crfrnn.crf.functional", "crfrnn.dense", "crfrnn.metrics.confusion"} <= set(MODULES)


@pytest.mark.parametrize("name", MODULES)
def test_doctests(name):
    try:
        module = importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if _missing_optional(exc) is None:
            raise
        pytest.skip(f"{name} needs the optional dependency {_missing_optional(exc)}")
    tests = [t for t in doctest.DocTestFinder().find(module, name) if t.examples]
    assert tests, f"{name} has '>>>' in its source but no example doctest can find"
    runner = _Runner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    out = io.StringIO()
    for test in tests:
        runner.run(test, out=out.write)
    if runner.failures and runner.missing is not None:
        pytest.skip(f"an example of {name} needs the optional dependency {runner.missing}")
    assert runner.failures == 0, f"{runner.failures} of {runner.tries} examples of {name} failed:\n{out.getvalue()}"

"""Old import paths, kept for one release: each still imports, with a :class:`FutureWarning` naming the new one.

``MOVED`` maps an old module path to its new home. :func:`install` puts a finder on :data:`sys.meta_path` that
answers an import of an old path with the new module itself (the same object, so ``isinstance`` checks and
monkeypatching keep working), after one warning.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import warnings
from types import ModuleType
from typing import Any, Callable, Optional, Sequence

MOVED: dict[str, str] = {
    "crfrnn.validation": "crfrnn._utils.validation",
    "crfrnn._threads": "crfrnn._utils.threads",
    "crfrnn._memory": "crfrnn._utils.memory",
    "crfrnn._profiling": "crfrnn._utils.profiling",
    "crfrnn._io": "crfrnn._utils.files",
    "crfrnn.refine": "crfrnn.io",
    "crfrnn.volumes": "crfrnn.io.volumes",
    "crfrnn.checkpoint": "crfrnn.io.checkpoint",
    "crfrnn.training": "crfrnn.workflow",
    "crfrnn.evaluation": "crfrnn.workflow",
    "crfrnn.reproduce": "crfrnn.workflow",
    "crfrnn.filters": "crfrnn.lattice.filters",
    "crfrnn._ops": "crfrnn.lattice._custom_ops",
}


class _Alias(importlib.abc.Loader):
    def __init__(self, new: str) -> None:
        self.new = new

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        warnings.warn(
            f"{spec.name} has moved to {self.new}; the old path goes in the next release.",
            FutureWarning,
            stacklevel=2,
        )
        return importlib.import_module(self.new)

    def exec_module(self, module: ModuleType) -> None:
        # The module is the new one, already executed: re-executing it would reset its state.
        return None


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(
        self, fullname: str, path: Optional[Sequence[str]] = None, target: Optional[ModuleType] = None
    ) -> Optional[importlib.machinery.ModuleSpec]:
        new = MOVED.get(fullname)
        if new is None:
            return None
        return importlib.util.spec_from_loader(fullname, _Alias(new))


def install() -> None:
    """Put the finder for :data:`MOVED` on :data:`sys.meta_path` (once)."""
    if not any(isinstance(f, _Finder) for f in sys.meta_path):
        sys.meta_path.append(_Finder())


def renamed(module: str, names: dict[str, tuple[str, Any]]) -> Callable[[str], Any]:
    """A module ``__getattr__`` that answers old names with their new values, after one :class:`FutureWarning`.

    Args:
        module: the module's ``__name__``.
        names: old name -> (the new name to tell, its value).

    Returns:
        The function to bind as the module's ``__getattr__``.
    """

    def __getattr__(name: str) -> Any:
        if name in names:
            new, value = names[name]
            warnings.warn(
                f"{module}.{name} is now {new}; the old name goes in the next release.", FutureWarning, stacklevel=2
            )
            return value
        raise AttributeError(f"module {module!r} has no attribute {name!r}")

    return __getattr__

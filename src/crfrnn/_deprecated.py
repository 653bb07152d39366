"""Old import paths and argument names, kept for one release: each still works, with a :class:`FutureWarning`.

``MOVED`` maps an old module path to its new home. :func:`install` puts a finder on :data:`sys.meta_path` that
answers an import of an old path with the new module itself (the same object, so ``isinstance`` checks and
monkeypatching keep working), after one warning. :func:`renamed` answers old module attributes,
:func:`renamed_arguments` old keyword arguments of a function, :func:`renamed_keys` old keys of a mapping of
keyword arguments (a parameter file).
"""

from __future__ import annotations

import functools
import importlib
import sys
import warnings
from types import ModuleType
from typing import TYPE_CHECKING, Any, Callable, Mapping, Optional, Sequence, TypeVar

if TYPE_CHECKING:
    import importlib.machinery

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
    "crfrnn.workflow.build": "crfrnn.workflow._build",
    "crfrnn.workflow.claims": "crfrnn.workflow._claims",
    "crfrnn.workflow.config": "crfrnn.workflow._config",
    "crfrnn.workflow.datasets": "crfrnn.workflow._datasets",
    "crfrnn.workflow.distributed": "crfrnn.workflow._distributed",
    "crfrnn.workflow.experiment": "crfrnn.workflow._experiment",
    "crfrnn.workflow.experiment_config": "crfrnn.workflow._experiment_config",
    "crfrnn.workflow.loop": "crfrnn.workflow._loop",
    "crfrnn.workflow.predict": "crfrnn.workflow._predict",
    "crfrnn.workflow.report": "crfrnn.workflow._report",
    "crfrnn.workflow.rundir": "crfrnn.workflow._rundir",
    "crfrnn.workflow.seeding": "crfrnn.workflow._seeding",
    "crfrnn.workflow.validate": "crfrnn.workflow._validate",
}


class _Alias:  # an importlib Loader (duck-typed: importlib.abc costs ~30 ms at `import crfrnn`)
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


class _Finder:  # an importlib MetaPathFinder (duck-typed)
    def find_spec(
        self, fullname: str, path: Optional[Sequence[str]] = None, target: Optional[ModuleType] = None
    ) -> Optional[importlib.machinery.ModuleSpec]:
        new = MOVED.get(fullname)
        if new is None:
            return None
        import importlib.util

        return importlib.util.spec_from_loader(fullname, _Alias(new))  # type: ignore[arg-type]  # duck-typed


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


F = TypeVar("F", bound=Callable[..., Any])


def _renamed_message(where: str, old: str, new: str) -> str:
    return f"{where}: {old}= is now {new}=; the old name goes in the next release."


def renamed_arguments(**renames: str) -> Callable[[F], F]:
    """Decorate a function whose keyword arguments were renamed: the old names still work, with a warning.

    An old keyword is passed on under its new name after a :class:`FutureWarning`; giving both names is a
    :class:`TypeError`. The wrapper keeps the function's name, docstring and signature (``functools.wraps``:
    :func:`inspect.signature` shows the new names only).

    Args:
        **renames: old keyword name -> new parameter name.

    Returns:
        The decorator.

    Raises:
        TypeError: (at decoration) a new name that is not a parameter of the function, or an old one that still is.

    Example:
        >>> @renamed_arguments(iterations="num_iterations")
        ... def run(*, num_iterations: int = 5) -> int:
        ...     return num_iterations
        >>> import warnings
        >>> with warnings.catch_warnings(record=True) as caught:
        ...     warnings.simplefilter("always")
        ...     run(iterations=3)
        3
        >>> str(caught[0].message)
        'run: iterations= is now num_iterations=; the old name goes in the next release.'
    """

    def decorate(fn: F) -> F:
        where = fn.__qualname__
        import inspect  # here: ~20 ms that `import crfrnn` (and the command line's start) need not pay

        parameters = inspect.signature(fn).parameters
        positions: dict[str, int] = {}
        for old, new in renames.items():
            if new not in parameters or old in parameters:
                raise TypeError(f"{where}: cannot rename {old}= to {new}=: {new} must be a parameter and {old} not.")
            param = parameters[new]
            if param.kind in (param.POSITIONAL_ONLY, param.POSITIONAL_OR_KEYWORD):
                positions[new] = list(parameters).index(new)

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            if kwargs:  # a plain loop: torch.compile traces it without a graph break
                for old, new in renames.items():
                    if old not in kwargs:
                        continue
                    if new in kwargs or len(args) > positions.get(new, len(args)):
                        raise TypeError(f"{where}() got both {old}= and {new}=; pass only {new}= (the new name).")
                    warnings.warn(_renamed_message(where, old, new), FutureWarning, stacklevel=2)
                    kwargs[new] = kwargs.pop(old)
            return fn(*args, **kwargs)

        return wrapper  # type: ignore[return-value]

    return decorate


def renamed_keys(
    mapping: Mapping[str, Any], renames: Mapping[str, str], where: str, *, stacklevel: int = 2
) -> dict[str, Any]:
    """A copy of ``mapping`` (keyword arguments kept as a dict or a file) with renamed keys under their new names.

    Each old key found gives the :class:`FutureWarning` of :func:`renamed_arguments`; the order of the keys is kept.

    Args:
        mapping: the keyword arguments.
        renames: old key -> new key.
        where: what holds them (a function or a file name), for the messages.
        stacklevel: as :func:`warnings.warn`'s, given in the caller of this function (2: its caller).

    Returns:
        A new dict.

    Raises:
        ValueError: the mapping holds an old key and its new one.

    Example:
        >>> import warnings
        >>> with warnings.catch_warnings():
        ...     warnings.simplefilter("ignore")
        ...     renamed_keys({"iterations": 5, "clip": 0.1}, {"iterations": "num_iterations"}, "params")
        {'num_iterations': 5, 'clip': 0.1}
    """
    out: dict[str, Any] = {}
    for key, value in mapping.items():
        new = renames.get(key) if isinstance(key, str) else None
        if new is not None:
            if new in mapping:
                raise ValueError(f"{where} holds both {key!r} and {new!r}; keep only {new!r} (the new name).")
            warnings.warn(_renamed_message(where, key, new), FutureWarning, stacklevel=stacklevel + 1)
            key = new
        out[key] = value
    return out

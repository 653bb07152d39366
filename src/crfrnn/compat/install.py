"""A program-wide switch: make every ``import pydensecrf...`` in the process get crfrnn's shim.

Like ``pymysql.install_as_MySQLdb()``: call :func:`install_as_pydensecrf` once, early (at the top of the main
script, before anything imports pydensecrf), and code you do not edit (a library, a notebook's helpers) that
does ``import pydensecrf.densecrf as dcrf`` or ``from pydensecrf.utils import unary_from_softmax`` runs on
crfrnn instead.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import sys
import types
import warnings

import crfrnn.compat.densecrf as _densecrf
import crfrnn.compat.utils as _utils

__all__ = ["install_as_pydensecrf"]

#: the module names the switch registers, and the crfrnn module each one resolves to
ALIASES = {"pydensecrf.densecrf": _densecrf, "pydensecrf.utils": _utils}


def _package() -> types.ModuleType:
    spec = importlib.machinery.ModuleSpec("pydensecrf", None, origin="crfrnn.compat", is_package=True)
    spec.submodule_search_locations = []  # nothing else is found under it: only the aliases exist
    pkg = importlib.util.module_from_spec(spec)
    pkg.__doc__ = "pydensecrf, provided by crfrnn.compat (crfrnn.compat.install_as_pydensecrf() was called)."
    pkg.densecrf = _densecrf  # type: ignore[attr-defined]
    pkg.utils = _utils  # type: ignore[attr-defined]
    pkg.__crfrnn__ = True  # type: ignore[attr-defined]
    return pkg


def _is_ours(name: str) -> bool:
    module = sys.modules.get(name)
    return module is not None and (getattr(module, "__crfrnn__", False) or module is ALIASES.get(name))


def install_as_pydensecrf(*, force: bool = False) -> None:
    """Register crfrnn's shim as ``pydensecrf`` for the whole process.

    Afterwards ``import pydensecrf.densecrf as dcrf`` gives :mod:`crfrnn.compat.densecrf`, ``from
    pydensecrf.utils import unary_from_softmax`` gives :mod:`crfrnn.compat.utils`'s function, and
    ``importlib.util.find_spec("pydensecrf")`` finds the shim (a package ``pydensecrf`` with a proper
    ``__spec__``, ``origin="crfrnn.compat"``), even where the real pydensecrf is installed: the entries in
    :data:`sys.modules` are found before any installed package. Only ``pydensecrf``, ``pydensecrf.densecrf`` and
    ``pydensecrf.utils`` exist (pydensecrf's ``eigen`` module does not). Calling it again does nothing.

    Args:
        force: replace a real pydensecrf that is already imported. Code that imported it before keeps the real
            module in its names (only later imports get the shim), so the program then runs both; a
            ``RuntimeWarning`` says so.

    Raises:
        RuntimeError: the real pydensecrf is already imported (and ``force`` is False): call this before anything
            imports pydensecrf, or pass ``force=True``.
    """
    names = ("pydensecrf", *ALIASES)
    real = [n for n in names if n in sys.modules and not _is_ours(n)]
    if real:
        message = (
            f"the real pydensecrf is already imported ({', '.join(real)} in sys.modules), so code that imported it "
            "keeps it; call crfrnn.compat.install_as_pydensecrf() before anything imports pydensecrf (at the top of "
            "the main script)"
        )
        if not force:
            raise RuntimeError(message + ", or pass force=True to switch later imports only.")
        warnings.warn(message + "; force=True: later imports get crfrnn's shim.", RuntimeWarning, stacklevel=2)
        for name in list(sys.modules):  # the real package's other submodules (eigen) go with it
            if name == "pydensecrf" or name.startswith("pydensecrf."):
                del sys.modules[name]
    if not _is_ours("pydensecrf"):
        sys.modules["pydensecrf"] = _package()
    sys.modules.update(ALIASES)

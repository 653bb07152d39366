"""First use of the compiled kernels: where numba caches them, and one line on stderr while they compile.

:func:`configure` runs when this module is imported, first of :mod:`crfrnn._kernels`, before any kernel is
decorated (numba chooses a function's cache folder when it decorates it):

- the cache: numba writes it next to the sources (the package's ``__pycache__``). Where the package folder is
  not writable (a system or read-only install) that fails and every process would compile again, so the cache
  goes to ``$XDG_CACHE_HOME/crfrnn/numba`` (default ``~/.cache/crfrnn/numba``) instead. ``CRFRNN_USER_CACHE=1``
  forces that folder (e.g. as root, where the package always looks writable); a ``NUMBA_CACHE_DIR`` the user set
  always wins.
- the message: compiling the kernels of a first call takes about half a minute on 2 cores
  (``benchmarks/bench_first_call.py``), once (later processes load them from the cache).
  The first time a kernel compiles in a process (not when it loads from the cache), one line goes to stderr:
  ``crfrnn: compiling the CPU kernels (once; about half a minute) ...``. ``CRFRNN_QUIET=1`` silences it.
"""

from __future__ import annotations

import os
import sys
import threading
from pathlib import Path
from typing import Any, Optional

import numba
from numba.core import event

__all__ = ["MESSAGE", "configure", "user_cache_dir"]

#: The line written to stderr the first time a kernel compiles in a process.
MESSAGE = "crfrnn: compiling the CPU kernels (once; about half a minute; CRFRNN_QUIET=1 hides this) ..."

_PACKAGE = Path(__file__).resolve().parent
_lock = threading.Lock()
_announced = False
_configured = False


def _flag(name: str) -> bool:
    """Whether the environment variable ``name`` is set to something other than empty, ``0`` or ``false``."""
    return os.environ.get(name, "").strip().lower() not in ("", "0", "false", "no")


def user_cache_dir() -> Path:
    """The per-user cache folder of the kernels: ``$XDG_CACHE_HOME/crfrnn/numba`` (``~/.cache/crfrnn/numba``)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "crfrnn" / "numba"


def _use_user_cache() -> Optional[Path]:
    """Point numba's cache at :func:`user_cache_dir` when needed (see the module docstring); return it if so."""
    if os.environ.get("NUMBA_CACHE_DIR"):
        return None
    if not _flag("CRFRNN_USER_CACHE") and os.access(_PACKAGE, os.W_OK):
        return None
    folder = user_cache_dir()
    # numba reads the variable when it imports its config and again before each compilation (reload_config),
    # so set both: the environment (also inherited by worker processes) and the live value.
    os.environ["NUMBA_CACHE_DIR"] = str(folder)
    numba.config.CACHE_DIR = str(folder)  # type: ignore[attr-defined]  # set from the environment at run time
    return folder


class _CompileListener(event.Listener):
    """Writes :data:`MESSAGE` once per process, when a kernel of this package starts compiling."""

    def on_start(self, ev: Any) -> None:
        global _announced
        if _announced:
            return
        dispatcher = (ev.data or {}).get("dispatcher")
        module = getattr(getattr(dispatcher, "py_func", None), "__module__", "") or ""
        if not module.startswith(__package__ or "crfrnn._kernels"):
            return
        with _lock:
            if _announced:
                return
            _announced = True
        if not _flag("CRFRNN_QUIET"):
            print(MESSAGE, file=sys.stderr, flush=True)

    def on_end(self, ev: Any) -> None:
        pass


def configure() -> None:
    """Choose the cache folder and install the compile message (once per process)."""
    global _configured
    if _configured:
        return
    _configured = True
    _use_user_cache()
    event.register("numba:compile", _CompileListener())


configure()

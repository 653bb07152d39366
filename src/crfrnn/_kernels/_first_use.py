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
- the loading: numba refreshes its target context before it loads any function from the cache, and the first
  refresh of a process imports every registry of numba's compiler (about 50 modules: ``numba.np.arraymath``,
  ``linalg``, ``npdatetime``, ``typed``, ...), which only compiling needs. This package's kernels load without it
  (:class:`_KernelCache`): numba's runtime is initialised and the modules that put symbols in LLVM's table are
  imported, the rest is left to the first compilation, which refreshes the context itself. The first call of a
  process with a full cache is that much cheaper (``benchmarks/profile_first_call.py``).
- the stamp: numba reuses a cached function while its own file keeps its time and size; the kernels' stamp also
  holds a digest of every module of this package (:func:`sources_digest`), since a kernel inlines helpers of other
  files and kept their old code when only those changed.
"""

from __future__ import annotations

import hashlib
import importlib
import os
import sys
import threading
from pathlib import Path
from typing import Any, Optional

import numba
from numba.core import caching, event
from numba.core import dispatcher as numba_dispatcher

__all__ = ["MESSAGE", "configure", "sources_digest", "user_cache_dir"]

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


def _ours(py_func: Any) -> bool:
    """Whether ``py_func`` is one of this package's kernels."""
    module = getattr(py_func, "__module__", "") or ""
    return module.startswith(__package__ or "crfrnn._kernels")


_digest: Optional[str] = None


def sources_digest() -> str:
    """SHA-256 of the contents of every module of this package (the kernels' sources), computed once."""
    global _digest
    if _digest is None:
        h = hashlib.sha256()
        for path in sorted(_PACKAGE.glob("*.py")):
            h.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
        _digest = h.hexdigest()
    return _digest


class _KernelCache(caching.FunctionCache):
    """numba's on-disk cache of a function, loading this package's kernels without numba's first refresh.

    numba's ``load_overload`` refreshes the target context, which imports all its compiler's registries the
    first time. A cached kernel needs only the runtime (NRT) and the symbols some modules put in LLVM's table
    when imported (``numba.cpython.hashing``); a kernel of another package, or a load that fails this way, goes
    through numba's own path.
    """

    def __init__(self, py_func: Any) -> None:
        super().__init__(py_func)
        if _ours(py_func):
            # numba stamps a cached function with its own file's time and size only: a kernel that inlines a helper
            # from another file kept its stale code when only that file changed (a `git pull`, an edit). The stamp
            # also covers every kernel source, so a change to any of them recompiles every kernel.
            file = self._cache_file
            file._source_stamp = (file._source_stamp, sources_digest())  # noqa: SLF001 - numba has no API for it

    def load_overload(self, sig: Any, target_context: Any) -> Any:
        if _ours(self._py_func):
            try:
                from numba.core.runtime import nrt

                nrt.rtsys.initialize(target_context)
                importlib.import_module("numba.cpython.hashing")  # registers the hash secret's symbols
                return self._load_overload(sig, target_context)
            except Exception:  # noqa: BLE001 - numba's own path below refreshes and tries again
                pass
        return super().load_overload(sig, target_context)


def configure() -> None:
    """Choose the cache folder, install the compile message and the kernels' cache (once per process)."""
    global _configured
    if _configured:
        return
    _configured = True
    _use_user_cache()
    event.register("numba:compile", _CompileListener())
    # numba's decorators make each dispatcher's cache from this name (``Dispatcher.enable_caching``); the
    # subclass behaves as numba's for every function outside this package.
    if numba_dispatcher.FunctionCache is caching.FunctionCache:  # type: ignore[attr-defined]
        numba_dispatcher.FunctionCache = _KernelCache  # type: ignore[attr-defined]


configure()

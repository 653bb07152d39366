"""``python -m crfrnn`` and the ``crfrnn`` console script (:func:`entry`): the command line as a process.

:func:`entry` makes Ctrl-C end the process with one line and status 130 wherever it arrives (issue 25 item 11):

* it installs its SIGINT handler before :mod:`crfrnn.cli` (and, later, PyTorch and NumPy) is imported. An
  interrupt that arrives while a module is being imported is held back and raised once the import is done: a
  KeyboardInterrupt in the middle of a C extension's import leaves it half initialised (NumPy then refuses to
  load again: a traceback and status 1), and one raised in code that such an extension runs may mark the
  interpreter to kill itself with SIGINT at exit (status -2, after the one-line message).
* once the command has returned it ignores SIGINT: at exit the interpreter puts back the default action, under
  which a late Ctrl-C kills the process (status -2) instead of letting it finish.
* once it has raised KeyboardInterrupt, the errors of code that the interrupt stopped half way and that is torn
  down after it (a ``__del__`` of a half-built object, such as a DataLoader iterator interrupted while it
  started its workers; a thread whose peer stopped) are not printed: the one line says what happened.

Only the stretch before this module runs (the interpreter's own start, ``import crfrnn``: a few milliseconds)
is not covered. Importing this module as ``crfrnn.__main__`` (the console script does) runs nothing.
"""

from __future__ import annotations

import signal
import sys
from types import FrameType
from typing import Optional

__all__ = ["entry"]

_RETRY_S = 0.05  # how often a held-back interrupt checks whether the import is done
_held = [False]  # an interrupt is held back (a retry is scheduled)
_raised = [False]  # KeyboardInterrupt was raised: what fails while the stopped code is torn down is not printed


def _importing(frame: Optional[FrameType]) -> bool:
    """Whether ``frame`` (the main thread's, where the signal arrived) is inside an import."""
    while frame is not None:
        if frame.f_code.co_filename.startswith("<frozen importlib"):
            return True
        frame = frame.f_back
    return False


def _hold() -> None:
    """Raise the interrupt again in ``_RETRY_S`` seconds (once, however many are held)."""
    if not _held[0]:
        import threading

        _held[0] = True
        timer = threading.Timer(_RETRY_S, _retry)
        timer.daemon = True
        timer.start()


def _retry() -> None:
    import _thread  # noqa: PLC2701 - interrupt_main is the documented way to re-run the handler

    _held[0] = False
    _thread.interrupt_main()  # the handler runs again in the main thread (nothing if SIGINT is ignored by then)


def _on_sigint(signum: int, frame: Optional[FrameType]) -> None:
    """SIGINT: KeyboardInterrupt, held back (retried every ``_RETRY_S`` seconds) while a module is imported."""
    if _importing(frame):
        _hold()
        return
    _raised[0] = True
    raise KeyboardInterrupt


def _quiet_after_interrupt() -> None:
    """Install hooks that drop unraisable exceptions and thread errors once a KeyboardInterrupt was raised."""
    import threading

    unraisable, thread_error = sys.unraisablehook, threading.excepthook

    def on_unraisable(args: "sys.UnraisableHookArgs") -> None:
        if args.exc_type is not None and issubclass(args.exc_type, KeyboardInterrupt):
            # raised in a __del__ or a callback (one of os.fork's, as a DataLoader starts its workers), where
            # Python drops it: raise it again, later, where it counts
            _hold()
        elif not _raised[0]:
            unraisable(args)

    def on_thread_error(args: "threading.ExceptHookArgs") -> None:
        if not _raised[0]:
            thread_error(args)

    sys.unraisablehook = on_unraisable
    threading.excepthook = on_thread_error


def entry() -> int:
    """Run the ``crfrnn`` command line on ``sys.argv[1:]`` in this process and return its exit status.

    Returns:
        The status of :func:`crfrnn.cli.main`; 130 (with one line on stderr) for a Ctrl-C, even one that
        arrives while :mod:`crfrnn.cli` is imported.
    """
    try:
        signal.signal(signal.SIGINT, _on_sigint)
    except ValueError:  # pragma: no cover - not the main thread (an embedding): keep the interpreter's handler
        pass
    _quiet_after_interrupt()
    try:
        try:
            from crfrnn.cli import main
        except KeyboardInterrupt:
            print("crfrnn: interrupted", file=sys.stderr)
            return 130
        return main()
    finally:
        try:
            signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C during the interpreter's exit is too late
        except ValueError:  # pragma: no cover - not the main thread
            pass


if __name__ == "__main__":
    sys.exit(entry())

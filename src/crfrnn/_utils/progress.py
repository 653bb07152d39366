"""Progress of a long loop that a person or a log can read: a tqdm bar on a terminal, plain lines elsewhere.

tqdm with ``disable=None`` prints nothing when stderr is not a terminal (a cluster job's log, a pipe), so a run
of hours would say nothing until its end. :class:`Progress` shows the bar on a terminal and, off one, prints one
plain line at most every ``interval`` seconds and one at the end::

    crfrnn refine: DONE/TOTAL images, RATE images/s, about TIME left

The interval is 30 s unless the environment variable ``CRFRNN_PROGRESS_SECONDS`` says otherwise (tests set it
to 0 to see a line after every step).

>>> import io
>>> out = io.StringIO()
>>> with Progress(2, "crfrnn demo", "image", file=out, interval=0.0) as progress:
...     progress.update()
...     progress.update()
>>> out.getvalue().splitlines()[0].startswith("crfrnn demo: 1/2 images")
True
>>> out.getvalue().splitlines()[-1].startswith("crfrnn demo: 2/2 images")
True
"""

from __future__ import annotations

import os
import sys
import time
from typing import IO, Any, Optional

__all__ = ["DEFAULT_INTERVAL", "Progress", "progress_interval"]

#: seconds between two plain lines off a terminal
DEFAULT_INTERVAL = 30.0


def progress_interval() -> float:
    """The seconds between two plain lines: ``CRFRNN_PROGRESS_SECONDS`` when set to a number >= 0, else 30."""
    text = os.environ.get("CRFRNN_PROGRESS_SECONDS", "")
    try:
        value = float(text)
    except ValueError:
        return DEFAULT_INTERVAL
    return value if value >= 0 else DEFAULT_INTERVAL


def _duration(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


class Progress:
    """Count the steps of a loop of ``total`` steps and show the rate and the time left.

    Args:
        total: the number of steps (images, epochs) expected.
        prefix: what each plain line starts with, e.g. ``"crfrnn refine"``; the bar's label is its last word.
        unit: one step's name, e.g. ``"image"`` (``"images"`` in the lines).
        file: where to write (default ``sys.stderr``).
        enabled: ``False`` shows nothing (``write`` still prints).
        interval: seconds between two plain lines off a terminal (default :func:`progress_interval`).
        terminal: force the bar (``True``) or the plain lines (``False``); default: whether ``file`` is a terminal.
    """

    def __init__(
        self,
        total: int,
        prefix: str,
        unit: str,
        *,
        file: Optional[IO[str]] = None,
        enabled: bool = True,
        interval: Optional[float] = None,
        terminal: Optional[bool] = None,
    ) -> None:
        self.total = int(total)
        self.prefix = prefix
        self.unit = unit
        self.file = file if file is not None else sys.stderr
        self.enabled = enabled
        self.interval = progress_interval() if interval is None else float(interval)
        self.count = 0
        self.postfix = ""
        self._start = time.monotonic()
        self._last_line = self._start
        self._closed = False
        self._bar: Any = None
        if terminal is None:
            isatty = getattr(self.file, "isatty", None)
            terminal = bool(isatty()) if callable(isatty) else False
        if enabled and terminal:
            from tqdm import tqdm

            self._bar = tqdm(total=self.total, desc=prefix.split()[-1], unit=unit, file=self.file)

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def line(self, final: bool = False) -> str:
        """The plain line for now: ``PREFIX: done/total units, R units/s, about T left`` (and the postfix);
        ``final``: the time taken in all instead of the time left.
        """
        elapsed = time.monotonic() - self._start
        text = f"{self.prefix}: {self.count}/{self.total} {self.unit}s"
        if self.count and elapsed > 0:
            rate = self.count / elapsed
            text += f", {rate:.3g} {self.unit}s/s" if rate >= 0.1 else f", {1 / rate:.3g} s/{self.unit}"
            left = self.total - self.count
            text += (
                f", about {_duration(left / rate)} left" if left > 0 and not final else f", {_duration(elapsed)} in all"
            )
        return text + (f" ({self.postfix})" if self.postfix else "")

    def update(self, n: int = 1) -> None:
        """``n`` more steps done; off a terminal, print a line if ``interval`` seconds passed since the last."""
        self.count += n
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.update(n)
            return
        now = time.monotonic()
        if now - self._last_line >= self.interval and self.count < self.total:
            self._last_line = now
            print(self.line(), file=self.file, flush=True)

    def set_postfix(self, **values: Any) -> None:
        """Show ``key=value`` pairs after the counts (e.g. the losses of an epoch)."""
        self.postfix = ", ".join(f"{k} {v}" for k, v in values.items())
        if self._bar is not None:
            self._bar.set_postfix(**values)

    def write(self, message: str) -> None:
        """Print ``message`` on a line of its own (above the bar on a terminal)."""
        if self._bar is not None:
            self._bar.write(message, file=self.file)
        else:
            print(message, file=self.file, flush=True)

    def close(self) -> None:
        """End: close the bar, or print the last plain line (once; nothing when there were no steps)."""
        if self._closed:
            return
        self._closed = True
        if self._bar is not None:
            self._bar.close()
        elif self.enabled and self.total > 0:
            print(self.line(final=True), file=self.file, flush=True)

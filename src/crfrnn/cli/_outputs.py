"""The one output-collision check of the commands that write files (``crfrnn segment``, ``crfrnn refine``).

A command plans every path it will write, then calls :func:`check_outputs` with those and its inputs before it
writes anything: an output that is an input, or two outputs that are one path, stop the command with a one-line
error (exit code 2) that names both. Two paths are one when they are the same file on disk (links, ``..``,
hard links) or, where they do not exist yet, the same path once resolved.

>>> from pathlib import Path
>>> check_outputs([("labels", Path("out/a.png")), ("overlay", Path("out/b.png"))], [("IMAGE", Path("a.jpg"))])
>>> check_outputs([("-o", Path("out/a.png")), ("--overlay", Path("out/../out/a.png"))], [])
Traceback (most recent call last):
...
crfrnn.cli.CommandError: -o and --overlay would both be written to the same file 'out/../out/a.png', so one \
would overwrite the other; give each output its own file.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Dict, Hashable, Iterable, Optional, Tuple

from crfrnn.cli import CommandError

__all__ = ["check_outputs"]


def _identity(path: Path) -> Hashable:
    """What names one file: its device and inode when it exists, else its resolved path."""
    try:
        st = path.stat()
    except OSError:
        try:
            return ("path", str(path.resolve()))
        except (OSError, RuntimeError):  # a symlink loop
            return ("path", os.path.abspath(path))
    return ("inode", st.st_dev, st.st_ino)


def check_outputs(
    outputs: Iterable[Tuple[str, Optional[Path]]],
    inputs: Iterable[Tuple[str, Optional[Path]]],
    *,
    kind: str = "file",
    clash_hint: Optional[str] = None,
    input_hint: Optional[str] = None,
) -> None:
    """Refuse, before anything is written, outputs that are an input or that coincide with each other.

    Args:
        outputs: ``(description, path)`` of every planned output (``None`` paths are skipped); descriptions name
            the output in messages (a flag such as ``--overlay``, or ``the labels of 'a.jpg'``).
        inputs: ``(description, path)`` of every input (a flag or argument name such as ``IMAGE``).
        kind: what the paths are, for messages (``"file"`` or ``"directory"``).
        clash_hint: what to do about two outputs at one path (default: give each output its own ``kind``).
        input_hint: what to do about an output at an input's path (default: choose another ``kind``).

    Raises:
        CommandError: (exit code 2) naming both paths' descriptions and the path.
    """
    sources: Dict[Hashable, str] = {}
    for description, path in inputs:
        if path is not None:
            sources.setdefault(_identity(path), description)
    planned: Dict[Hashable, str] = {}
    for description, path in outputs:
        if path is None:
            continue
        key = _identity(path)
        if key in sources:
            raise CommandError(
                f"{description} would be written to '{path}', which is the input {sources[key]}; refusing to "
                f"overwrite an input with an output; {input_hint or f'choose another {kind}'}.",
                2,
            )
        if key in planned:
            raise CommandError(
                f"{planned[key]} and {description} would both be written to the same {kind} '{path}', so one would "
                f"overwrite the other; {clash_hint or f'give each output its own {kind}'}.",
                2,
            )
        planned[key] = description

"""The ``crfrnn`` command line: each sub-command lives in its own module with ``add_parser`` and ``run``.

The command line only parses arguments and calls importable library functions. Sub-commands report
failures as one line on stderr and a non-zero exit code (2 for bad usage or input, 1 otherwise).
"""

from __future__ import annotations

import argparse
import errno
import importlib
import math
import os
import sys
from typing import Any, Callable, Optional, Sequence

__all__ = ["CommandError", "build_parser", "interrupted", "main", "number_type"]

#: sub-command name -> module under crfrnn.cli that defines add_parser(subparsers) and run(args) -> int
COMMANDS = {
    "refine": "crfrnn.cli.refine",
    "train": "crfrnn.cli.train",
    "evaluate": "crfrnn.cli.evaluate",
    "reproduce": "crfrnn.cli.reproduce",
    "segment": "crfrnn.cli.segment",
    "fit": "crfrnn.cli.fit",
}


class CommandError(Exception):
    """A failure to report as one line (``crfrnn <command>: error: <message>``) with an exit code."""

    def __init__(self, message: str, code: int = 2) -> None:
        super().__init__(message)
        self.code = code


#: side of a synthetic image (``--image-size``) at most: 4096 x 4096 is already 64 MiB per float32 channel
MAX_IMAGE_SIZE = 4096
#: mean-field iterations (``--iterations``) at most: the CRF converges in 5-10; 1000 already takes minutes per image
MAX_ITERATIONS = 1000
#: images per forward pass (``--batch-size``) at most
MAX_BATCH_SIZE = 1024
#: images of a synthetic split (``evaluate --num-images``) at most
MAX_NUM_IMAGES = 100_000
#: images in evaluate's grid.png (``--grid``) at most
MAX_GRID = 64

#: OSError numbers reported as one line (the disk is full, a name is too long, a read-only file system)
OUTPUT_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.ENAMETOOLONG, errno.EROFS)


def number_type(
    kind: type, minimum: float, strict: bool = False, maximum: Optional[float] = None
) -> Callable[[str], Any]:
    """An argparse ``type`` for finite numbers (``int`` or ``float``) ``>= minimum`` (``> minimum`` if ``strict``)
    and ``<= maximum`` if given.
    """

    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected {'an integer' if kind is int else 'a number'}, got {text!r}"
            ) from None
        if not math.isfinite(value) or value < minimum or (strict and value == minimum):
            raise argparse.ArgumentTypeError(f"must be {'>' if strict else '>='} {minimum}, got {text}")
        if maximum is not None and value > maximum:
            raise argparse.ArgumentTypeError(f"must be <= {maximum}, got {text}")
        return value

    return parse


def build_parser() -> argparse.ArgumentParser:
    """The ``crfrnn`` argument parser, with a sub-command for each command module of this build."""
    from crfrnn import __version__

    parser = argparse.ArgumentParser(
        prog="crfrnn", description="CRF-RNN and dense CRFs in PyTorch: refine, train, evaluate, reproduce."
    )
    parser.add_argument("--version", action="version", version=f"crfrnn {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in COMMANDS.values():
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as err:  # a sub-command whose module is not part of this build
            if err.name != module:
                raise
            continue
        mod.add_parser(sub)
    return parser


def interrupted(err: BaseException) -> bool:
    """Whether ``err`` is a Ctrl-C: a KeyboardInterrupt, or an exception raised while one was handled or cleaned
    up after (a ``finally`` or ``__exit__`` that failed in turn), anywhere in its ``__cause__``/``__context__`` chain.
    """
    seen = set()
    cur: Optional[BaseException] = err
    while cur is not None and id(cur) not in seen:
        if isinstance(cur, KeyboardInterrupt):
            return True
        seen.add(id(cur))
        cur = cur.__cause__ or cur.__context__
    return False


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the ``crfrnn`` command line on ``argv`` (default ``sys.argv[1:]``) and return its exit status.

    Args:
        argv: the arguments after the program name.

    Returns:
        The command's status (0 on success), 2 without a command (after printing the help), a
        :class:`CommandError`'s code on one, 130 when interrupted (one line on stderr, wherever the interrupt
        arrived: while importing, in a command, in its cleanup).
    """
    command = "crfrnn"
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        if not getattr(args, "command", None) or not hasattr(args, "func"):
            parser.print_help()
            return 2
        command = f"crfrnn {args.command}"
        return int(args.func(args) or 0)
    except CommandError as err:  # one line, even where a message from deep inside spans several
        if interrupted(err):
            return _interrupted(command)
        text = " ".join(line.strip() for line in str(err).splitlines() if line.strip())
        print(f"{command}: error: {text}", file=sys.stderr)
        return err.code
    except OSError as err:
        if interrupted(err):
            return _interrupted(command)
        if err.errno not in OUTPUT_ERRNOS:
            raise
        print(f"{command}: error: {output_error(err)}", file=sys.stderr)
        return 1
    except BaseException as err:
        if interrupted(err):
            return _interrupted(command)
        raise


def _interrupted(command: str) -> int:
    """One line and status 130; a second Ctrl-C while the interpreter shuts down is ignored (no traceback)."""
    import signal

    try:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    except ValueError:  # pragma: no cover - not the main thread
        pass
    try:
        print(f"{command}: interrupted", file=sys.stderr)
    except (OSError, ValueError):  # pragma: no cover - stderr closed
        pass
    return 130


def output_error(err: OSError) -> str:
    """One line for an OSError of :data:`OUTPUT_ERRNOS`: what happened, to which file, and what to do."""
    name = f" '{err.filename}'" if err.filename else ""
    if err.errno in (errno.ENOSPC, errno.EDQUOT):
        return (
            f"the disk is full: could not write{name}. Files written before it are whole (every write is atomic); "
            "free some space and run again."
        )
    if err.errno == errno.ENAMETOOLONG:
        length = f" ({len(os.path.basename(err.filename))} characters)" if err.filename else ""
        return (
            f"the file name is too long to write{name}{length}; most file systems allow 255 bytes. Rename the "
            "input or choose a shorter output name."
        )
    return f"cannot write{name}: {err.strerror}."


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

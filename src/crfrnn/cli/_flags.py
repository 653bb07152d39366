"""Library messages name parameters; the command line names its flags.

Errors and notes of :mod:`crfrnn.io` (and of :mod:`crfrnn._utils.images`) write the parameter that fixes a
problem between backticks, as Python spells it (``layout='hwl'``, ``logits=True``, ``num_classes``). A command
maps its parameters to its flags (``{"layout": "--layout"}``) and :func:`name_flags` rewrites such a message
for the command line (``--layout hwl``, ``--logits``, ``--num-labels``).

Every command that runs a model or a CRF takes ``--device`` through :func:`add_device_flag` and resolves it with
:func:`resolve_device_flag`: one rule for all of them, ``auto`` (the default) is CUDA when PyTorch sees a GPU,
else the CPU (where the dense CRF takes its compiled kernels, its fastest path there; on CUDA it takes the
PyTorch path, its fastest there).
"""

from __future__ import annotations

import re
import sys
from typing import Any, Mapping

__all__ = ["DEVICE_HELP", "add_device_flag", "name_flags", "resolve_device_flag"]

#: the help of every command's ``--device``
DEVICE_HELP = "auto, cpu, cuda or cuda:N; auto is CUDA when PyTorch sees a GPU, else the CPU (default: auto)"

_NAMED = re.compile(r"`([A-Za-z_][\w.]*)(?:=([^`]*))?`")


def name_flags(message: str, flags: Mapping[str, str]) -> str:
    """``message`` with every backticked parameter replaced by its flag in ``flags``.

    ``name=True`` becomes the flag alone, ``name=value`` the flag and the value (without quotes), and a
    parameter without a flag its Python spelling without the backticks.

    Example:
        >>> name_flags("pass `layout='hwl'` or `logits=True`; check `num_classes`", {"layout": "--layout",
        ...            "logits": "--logits", "num_classes": "--num-labels"})
        'pass --layout hwl or --logits; check --num-labels'
    """

    def swap(match: re.Match) -> str:
        name, value = match.group(1), match.group(2)
        flag = flags.get(name)
        if flag is None:
            return match.group(0)[1:-1]
        if value is None or value == "True":
            return flag
        return f"{flag} {value.strip(chr(39) + chr(34))}"

    return _NAMED.sub(swap, message)


def add_device_flag(group: Any, default: Any = "auto") -> None:
    """Add ``--device DEV`` to ``group`` (a parser or an argument group) with the shared help and default."""
    group.add_argument("--device", default=default, metavar="DEV", help=DEVICE_HELP)


def resolve_device_flag(spec: str, command: str, *, quiet: bool = False) -> Any:
    """The :class:`torch.device` that ``--device spec`` names, said on stderr when it is not the CPU.

    Args:
        spec: the flag's value (``auto``, ``cpu``, ``cuda``, ``cuda:N``).
        command: the sub-command's name, for the note (``crfrnn refine: running on cuda:0 (...)``).
        quiet: do not say which device was taken.

    Raises:
        CommandError: (2) a value that is not a device, or CUDA asked for where PyTorch sees none.
    """
    import torch

    from crfrnn.cli import CommandError
    from crfrnn.workflow._distributed import resolve_device

    try:
        device = resolve_device(spec)
    except ValueError:
        try:
            torch.device(spec)
        except (RuntimeError, ValueError):
            raise CommandError(
                f"--device {spec!r} is not a device; use --device auto, cpu, cuda or cuda:N.", 2
            ) from None
        raise CommandError(
            f"--device {spec}: CUDA is not available to this PyTorch (torch {torch.__version__}); use --device cpu "
            "(or auto), or install a CUDA build of torch (README, 'GPU').",
            2,
        ) from None
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise CommandError(
            f"--device {spec}: this machine has {torch.cuda.device_count()} CUDA device(s); use --device cuda:0 "
            f"to cuda:{torch.cuda.device_count() - 1}, or --device cpu.",
            2,
        )
    if device.type != "cpu" and not quiet:
        name = torch.cuda.get_device_name(device) if device.type == "cuda" else device.type
        print(f"crfrnn {command}: running on {device} ({name})", file=sys.stderr)
    return device

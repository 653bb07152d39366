"""Library messages name parameters; the command line names its flags.

Errors and notes of :mod:`crfrnn.io` (and of :mod:`crfrnn._utils.images`) write the parameter that fixes a
problem between backticks, as Python spells it (``layout='hwl'``, ``logits=True``, ``num_classes``). A command
maps its parameters to its flags (``{"layout": "--layout"}``) and :func:`name_flags` rewrites such a message
for the command line (``--layout hwl``, ``--logits``, ``--num-labels``).
"""

from __future__ import annotations

import re
from typing import Mapping

__all__ = ["name_flags"]

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

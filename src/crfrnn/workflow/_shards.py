"""Split a list of inputs among the tasks of a job array: task ``index`` of ``count`` takes every ``count``-th one.

A cluster's job array runs the same command ``count`` times with a different task number; each task calls
:func:`take_shard` with its number and processes its part. The inputs are first sorted by a name (the one the
outputs are derived from), so every task sees the same order whatever order the file system lists them in, and
the ``count`` parts together hold every input exactly once.

>>> take_shard(["c", "a", "e", "b", "d"], 1, 2)
['b', 'd']
>>> parse_shard("2/3")
(2, 3)
"""

from __future__ import annotations

import re
from typing import Callable, List, Optional, Sequence, Tuple, TypeVar

__all__ = ["parse_shard", "shard_name", "take_shard"]

T = TypeVar("T")

_FORM = re.compile(r"\s*(\d+)\s*/\s*(\d+)\s*")


def _check(index: int, count: int) -> None:
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise ValueError(f"`count` must be an integer >= 1, got {count!r}.")
    if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < count:
        raise ValueError(f"`index` must be an integer from 0 to count - 1 = {count - 1}, got {index!r}.")


def parse_shard(text: str) -> Tuple[int, int]:
    """``"K/N"`` as ``(K, N)``, with ``N >= 1`` and ``0 <= K < N``.

    Args:
        text: the task's number and the number of tasks, e.g. ``"0/4"`` (a job array's first of four tasks).

    Returns:
        ``(index, count)`` for :func:`take_shard`.

    Raises:
        ValueError: ``text`` is not of that form (``"3/2"``, ``"a/b"``, ``"0/0"``); the message says why.
    """
    match = _FORM.fullmatch(text)
    if match is None:
        raise ValueError(f"expected K/N (task K of N, 0 <= K < N, e.g. 0/4), got {text!r}.")
    index, count = int(match.group(1)), int(match.group(2))
    if count < 1:
        raise ValueError(f"expected K/N with N >= 1 tasks (e.g. 0/4), got {text!r}.")
    if index >= count:
        raise ValueError(
            f"expected K/N with 0 <= K < N (for N = {count}: 0/{count} to {count - 1}/{count}), got {text!r}."
        )
    return index, count


def shard_name(index: int, count: int) -> str:
    """The shard as a file-name part, ``"K-of-N"`` (``summary-0-of-4.json``)."""
    _check(index, count)
    return f"{index}-of-{count}"


def take_shard(items: Sequence[T], index: int, count: int, key: Optional[Callable[[T], str]] = None) -> List[T]:
    """The items of task ``index`` of ``count``: sorted by ``key``, then every one whose position ``i`` has
    ``i % count == index``.

    Args:
        items: the inputs (any order; sorted here, ties kept in their given order).
        index: this task's number, ``0 <= index < count``.
        count: the number of tasks, ``>= 1``; ``1`` takes every item (sorted).
        key: the name each item is sorted by (default: ``str(item)``); give the name its outputs are derived
            from, so that the split does not depend on where the inputs lie.

    Returns:
        About ``len(items) / count`` items, in sorted order; the ``count`` tasks' lists partition ``items``.

    Raises:
        ValueError: ``index`` or ``count`` out of range.
    """
    _check(index, count)
    ordered = sorted(items, key=key if key is not None else str)
    return ordered[index::count]

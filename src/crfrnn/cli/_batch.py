"""What the folder commands (``crfrnn refine --images``, ``crfrnn segment``) share to run at data-set scale.

- ``--shard K/N``: this process takes task ``K`` of ``N`` of a job array (:func:`crfrnn.workflow._shards.take_shard`).
- Resume: an input whose outputs all exist is skipped unless ``--overwrite`` is given. Every output is written
  atomically (:mod:`crfrnn._utils.files`), so an existing file is a complete one and a killed run loses only the
  images it was writing.
- :class:`Summary`: ``summary.json`` (``summary-K-of-N.json`` with ``--shard``) in the output folder, one record
  per input of the shard (input, outputs, status ``done``/``skipped``/``failed`` with the error, shard) and the
  totals, written atomically at the end. Under torchrun every record also names the ``rank`` that took it
  (:mod:`crfrnn.cli._ranks`).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Tuple

from crfrnn._utils.files import atomic_write_text
from crfrnn.cli import CommandError

__all__ = ["STATUSES", "Summary", "add_batch_flags", "is_complete", "shard_of"]

#: the statuses of a summary's records
STATUSES = ("done", "skipped", "failed")


def add_batch_flags(group: "argparse._ArgumentGroup") -> None:
    """Add ``--shard K/N`` and ``--overwrite`` to a command's argument group."""
    group.add_argument(
        "--shard",
        metavar="K/N",
        help="process task K of N of a job array (0 <= K < N): the inputs sorted by name, every N-th from the K-th "
        "(e.g. --shard $SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT)",
    )
    group.add_argument(
        "--overwrite",
        action="store_true",
        help="redo inputs whose outputs all exist (default: skip them, so that a rerun resumes a stopped run)",
    )


def shard_of(args: argparse.Namespace) -> Optional[Tuple[int, int]]:
    """``(K, N)`` from ``--shard K/N``, ``None`` without it; a bad value is a one-line usage error naming the flag."""
    text = getattr(args, "shard", None)
    if text is None:
        return None
    try:
        from crfrnn.workflow._shards import parse_shard

        return parse_shard(text)
    except ValueError as err:
        raise CommandError(f"--shard: {err}", 2) from err


def is_complete(outputs: Iterable[Optional[Path]]) -> bool:
    """Whether every planned output (``None``: not asked for) exists; atomic writes make an existing file complete."""
    return all(p is None or p.is_file() for p in outputs)


class Summary:
    """The records of one run (one shard) of a folder command, written as JSON at the end.

    Args:
        command: the command's name (``"refine"``, ``"segment"``).
        shard: ``(K, N)`` from ``--shard``, or ``None``.
        rank: under torchrun, this process's rank, written in each record it adds.
    """

    def __init__(self, command: str, shard: Optional[Tuple[int, int]], rank: Optional[int] = None) -> None:
        self.command = command
        self.shard = shard
        self.rank = rank
        self.world: Optional[int] = None  # under torchrun, on the merged summary: the number of ranks
        self.missing_ranks: List[int] = []  # ... and the ranks that did not report
        self.records: List[Dict[str, Any]] = []

    @property
    def file_name(self) -> str:
        """``summary.json``, or ``summary-K-of-N.json`` for a shard."""
        from crfrnn.workflow._shards import shard_name

        return "summary.json" if self.shard is None else f"summary-{shard_name(*self.shard)}.json"

    def add(
        self,
        input: Path,
        outputs: Iterable[Optional[Path]],
        status: str,
        error: Optional[str] = None,
        *,
        rank: Optional[int] = None,
        **extra: Any,
    ) -> None:
        """Record one input: its path, its outputs (``None`` skipped), ``status`` (:data:`STATUSES`) and for a
        failure the one-line ``error``; ``rank`` (default: the summary's) the torchrun rank that took it;
        ``extra`` adds fields (such as the scores file of ``refine``).
        """
        if status not in STATUSES:
            raise ValueError(f"`status` must be one of {', '.join(STATUSES)}, got {status!r}.")
        record: Dict[str, Any] = {"input": str(input), **{k: str(v) for k, v in extra.items()}}
        record["outputs"] = [str(p) for p in outputs if p is not None]
        record["status"] = status
        if error is not None:
            record["error"] = error
        record["shard"] = None if self.shard is None else f"{self.shard[0]}/{self.shard[1]}"
        rank = self.rank if rank is None else rank
        if rank is not None:
            record["rank"] = rank
        self.records.append(record)

    def totals(self) -> Dict[str, int]:
        """How many inputs, and how many of each status."""
        counts = {"inputs": len(self.records)} | {s: 0 for s in STATUSES}
        for record in self.records:
            counts[record["status"]] += 1
        return counts

    def write(self, folder: Path) -> Path:
        """Write ``folder / file_name`` atomically, records sorted by input; returns its path."""
        body = {
            "command": self.command,
            "shard": None if self.shard is None else {"index": self.shard[0], "count": self.shard[1]},
            **({} if self.world is None else {"ranks": self.world, "missing_ranks": self.missing_ranks}),
            "totals": self.totals(),
            "records": sorted(self.records, key=lambda r: r["input"]),
        }
        return atomic_write_text(folder / self.file_name, json.dumps(body, indent=1) + "\n")

"""The folder commands under ``torchrun``: every rank takes its share of the inputs, rank 0 writes one summary.

``torchrun --nnodes N --nproc-per-node M -m crfrnn refine --images ...`` (or ``... -m crfrnn segment ...``)
starts ``WORLD_SIZE = N * M`` processes. Each one:

1. joins a gloo process group (CPU only; the join times out after ``CRFRNN_DIST_JOIN_SECONDS``, default 600)
   and receives rank 0's run token;
2. takes the share ``RANK/WORLD_SIZE`` of the sorted inputs, the rule of ``--shard K/N`` (giving ``--shard`` as
   well is refused: one rule splits the folder, not two);
3. refines its share with no further talk to the others (an image that fails fails alone), in this process with
   ``OMP_NUM_THREADS`` threads (torchrun sets 1 unless told otherwise) unless ``--jobs`` says otherwise;
4. writes its records atomically to ``OUT/summary-rank-K-of-N.json`` with the token, then waits at a barrier
   (``CRFRNN_DIST_WAIT_SECONDS``, default 7200, for the slowest rank);
5. rank 0 merges every rank's records into ``OUT/summary.json``: one record per input with its outputs, status
   and ``rank``. A rank that did not report this run (killed, or its file holds another run's token) has its
   inputs recorded as ``failed`` and is named in ``missing_ranks``; rank 0 then keeps the per-rank files.

A rank killed mid-run loses only the image it was writing (outputs are written atomically). torchrun stops the
other ranks when one dies, unless given ``--max-restarts``; either way a rerun of the same command skips complete
outputs and finishes the folder. Only rank 0 shows progress.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple

from crfrnn._utils.files import atomic_write_text
from crfrnn.cli import CommandError
from crfrnn.cli._batch import Summary

__all__ = ["Ranks", "join_ranks"]


def _env_seconds(name: str, default: float) -> float:
    text = os.environ.get(name, "")
    try:
        value = float(text)
    except ValueError:
        return default
    return value if value > 0 else default


def _env_world() -> Tuple[int, int]:
    """``(RANK, WORLD_SIZE)`` from torchrun's environment, ``(0, 1)`` outside it."""
    from crfrnn.workflow._distributed import env_int

    try:
        world, rank = env_int("WORLD_SIZE") or 1, env_int("RANK")
    except ValueError as err:
        raise CommandError(str(err), 2) from err
    if world <= 1:
        return 0, 1
    if rank is None or not 0 <= rank < world:
        raise CommandError(
            f"WORLD_SIZE={world} is set but RANK={rank!r} is not a rank from 0 to {world - 1}; launch with torchrun, "
            "which sets both.",
            2,
        )
    return rank, world


class Ranks:
    """This process's place among ``world`` ranks of one run of a folder command.

    Args:
        command: ``"refine"`` or ``"segment"``.
        rank: this process's rank, ``0 <= rank < world``.
        world: the number of ranks, ``> 1``.
        token: the run's token (rank 0's), to tell this run's records files from an earlier run's.
    """

    def __init__(self, command: str, rank: int, world: int, token: str) -> None:
        self.command = command
        self.rank = rank
        self.world = world
        self.token = token
        self.sigterm: Any = None  # the SIGTERM handler before join_ranks, restored by close

    @property
    def shard(self) -> Tuple[int, int]:
        """``(rank, world)``: the share of the inputs this rank takes (the rule of ``--shard``)."""
        return self.rank, self.world

    @property
    def is_main(self) -> bool:
        """Whether this is rank 0, which shows progress and writes ``summary.json``."""
        return self.rank == 0

    def records_file(self, folder: Path, rank: int) -> Path:
        """Where rank ``rank`` writes its records: ``folder/summary-rank-K-of-N.json``."""
        return folder / f"summary-rank-{rank}-of-{self.world}.json"

    def maybe_die(self, done: int) -> None:
        """Test hook: ``CRFRNN_TEST_KILL_RANK=K:N`` kills rank K (SIGKILL) once it has written N images."""
        text = os.environ.get("CRFRNN_TEST_KILL_RANK", "")
        if text and text == f"{self.rank}:{done}":
            os.kill(os.getpid(), signal.SIGKILL)

    def finish(self, summary: Summary, folder: Path, inputs_of: Callable[[int], Iterable[Tuple[Path, list]]]) -> Path:
        """Write this rank's records, wait for the others, and (rank 0) merge them into ``folder/summary.json``.

        Args:
            summary: this rank's records.
            folder: the output folder.
            inputs_of: rank ``k``'s inputs as ``(input, outputs)``, for the ranks that did not report.

        Returns:
            ``summary.json`` on rank 0, this rank's records file on the others.
        """
        import torch.distributed as dist

        mine = self.records_file(folder, self.rank)
        body = {"token": self.token, "rank": self.rank, "records": summary.records}
        atomic_write_text(mine, json.dumps(body, indent=1) + "\n")
        wait = timedelta(seconds=_env_seconds("CRFRNN_DIST_WAIT_SECONDS", 7200.0))
        try:
            dist.monitored_barrier(timeout=wait, wait_all_ranks=True)
        except RuntimeError as err:
            print(
                f"crfrnn {self.command}: rank {self.rank}: not every rank reached the end ({_first_line(err)}); "
                "summary.json lists what was reported; rerun the same command to finish the folder.",
                file=sys.stderr,
            )
        if not self.is_main:
            return mine
        merged = Summary(self.command, None)
        merged.world = self.world
        missing: List[int] = []
        for k in range(self.world):
            records = self._read(folder, k)
            if records is None:
                missing.append(k)
                for path, outputs in inputs_of(k):
                    merged.add(
                        path,
                        outputs,
                        "failed",
                        f"rank {k} of {self.world} stopped before reporting; rerun the command to finish it",
                        rank=k,
                    )
            else:
                merged.records.extend(records)
        merged.missing_ranks = missing
        written = merged.write(folder)
        if not missing:
            for k in range(self.world):
                self.records_file(folder, k).unlink(missing_ok=True)
        summary.records = merged.records
        return written

    def _read(self, folder: Path, rank: int) -> Optional[List[Dict[str, Any]]]:
        """Rank ``rank``'s records of this run, ``None`` if it wrote none (or an earlier run's)."""
        try:
            body = json.loads(self.records_file(folder, rank).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        if not isinstance(body, dict) or body.get("token") != self.token or not isinstance(body.get("records"), list):
            return None
        return body["records"]

    def close(self) -> None:
        """Leave the process group; SIGTERM gets its handler back."""
        import torch.distributed as dist

        if self.sigterm is not None:
            signal.signal(signal.SIGTERM, self.sigterm)

        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__


def _stop(signum: int, frame: Any) -> None:
    """SIGTERM (torchrun stopping the ranks when one died) as an exception, so that a file being written is
    cleaned up (:mod:`crfrnn._utils.files` removes its temporary file) instead of left behind.
    """
    raise SystemExit(128 + signum)


def join_ranks(command: str, args: argparse.Namespace) -> Optional[Ranks]:
    """Under torchrun (``WORLD_SIZE > 1``), join the gloo group and return this rank; ``None`` in one process.

    Raises:
        CommandError: ``--shard`` given as well, torch without ``torch.distributed``, or the join failed.
    """
    rank, world = _env_world()
    if world <= 1:
        return None
    if getattr(args, "shard", None) is not None:
        raise CommandError(
            f"--shard {args.shard} and torchrun (WORLD_SIZE={world}) both split the folder; under torchrun each "
            "rank already takes the share RANK/WORLD_SIZE. Drop --shard, or run without torchrun.",
            2,
        )
    import torch.distributed as dist

    if not dist.is_available():
        raise CommandError(f"WORLD_SIZE={world} but this torch build has no torch.distributed; run without torchrun.")
    join = timedelta(seconds=_env_seconds("CRFRNN_DIST_JOIN_SECONDS", 600.0))
    try:
        if not dist.is_initialized():
            dist.init_process_group(backend="gloo", timeout=join)
        token = [os.urandom(8).hex() if rank == 0 else None]
        dist.broadcast_object_list(token, src=0)
    except (RuntimeError, ValueError) as err:
        raise CommandError(f"rank {rank} of {world} could not join the others: {_first_line(err)}") from err
    from crfrnn.workflow._distributed import DistInfo, set_threads

    if getattr(args, "jobs", None) is None and hasattr(args, "jobs"):
        args.jobs = 1  # each rank is already a process
    set_threads(None, DistInfo(rank, world))
    ranks = Ranks(command, rank, world, str(token[0]))
    ranks.sigterm = signal.signal(signal.SIGTERM, _stop)
    return ranks

"""The run directory of :func:`crfrnn.workflow._loop.train`: its files, its lock and the checks of a resume.

A run directory holds ``config.yaml`` (the resolved configuration), ``metrics.jsonl`` (one JSON object per
epoch, each written with one ``write()``), ``last.pt`` (written atomically after every epoch) and ``best.pt``
(best validation mean IoU), all :mod:`crfrnn.io.checkpoint` files, and ``.lock``, held by the process writing it.
"""

from __future__ import annotations

import json
import os
import stat
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional, Union

from torch import nn

from crfrnn.workflow._config import RESUMABLE_CHANGES, TrainConfig, load_config

__all__ = ["RunDir", "RunLock", "check_resume", "load_run_config", "read_metrics"]


@dataclass(frozen=True)
class RunDir:
    """The files of one run (only rank 0 writes them)."""

    path: Path

    @property
    def config_path(self) -> Path:
        """The run's configuration, ``config.yaml``."""
        return self.path / "config.yaml"

    @property
    def metrics_path(self) -> Path:
        """The run's metrics log, one JSON line per epoch, ``metrics.jsonl``."""
        return self.path / "metrics.jsonl"

    @property
    def last_path(self) -> Path:
        """The checkpoint of the last epoch, ``last.pt``."""
        return self.path / "last.pt"

    @property
    def best_path(self) -> Path:
        """The checkpoint of the best epoch, ``best.pt``."""
        return self.path / "best.pt"

    def check_resumable(self) -> None:
        """Raise FileNotFoundError unless the run has a ``last.pt`` to continue from."""
        if not self.last_path.is_file():
            raise FileNotFoundError(
                f"cannot resume: no checkpoint '{self.last_path}'. Train without resume to start the run."
            )

    def resume_checkpoint(self, config: TrainConfig, resume: bool) -> Optional[dict[str, Any]]:
        """``last.pt`` checked against ``config`` when resuming, ``None`` when starting (then there must be no run).

        Raises:
            FileNotFoundError: resume without ``last.pt`` (:meth:`check_resumable`).
            ValueError: resume with other settings (:func:`check_resume`), or a new run over an existing one.
        """
        from crfrnn.io.checkpoint import load_checkpoint

        if resume:
            self.check_resumable()
            ckpt = load_checkpoint(self.last_path)
            check_resume(config, ckpt.get("config", {}), self.last_path)
            return ckpt
        if self.last_path.exists():
            raise ValueError(
                f"'{self.path}' already holds a run ({self.last_path.name}); resume it (--resume) or choose another "
                "out_dir."
            )
        return None

    def start(self, config: TrainConfig, resumed_epoch: Optional[int]) -> list[dict[str, Any]]:
        """Write ``config.yaml`` and return the metrics records kept: those up to ``resumed_epoch`` (the records
        written after that checkpoint are dropped from the file), none for a new run (the file is removed).
        """
        from crfrnn._utils.files import atomic_write_text

        self.path.mkdir(parents=True, exist_ok=True)
        config.save(self.config_path)
        history: list[dict[str, Any]] = []
        if resumed_epoch is not None and self.metrics_path.exists():
            history = [r for r in read_metrics(self.metrics_path) if r.get("epoch", 0) <= resumed_epoch]
            atomic_write_text(self.metrics_path, "".join(json.dumps(r) + "\n" for r in history))
        elif resumed_epoch is None and self.metrics_path.exists():
            self.metrics_path.unlink()
        return history

    def append_metrics(self, record: Mapping[str, Any]) -> None:
        """Append one epoch's record to ``metrics.jsonl`` (one ``write()``; see :func:`read_metrics`)."""
        from crfrnn._utils.files import append_line

        append_line(self.metrics_path, json.dumps(record))

    def save_checkpoints(self, model: nn.Module, *, best: bool, **payload: Any) -> None:
        """Write ``last.pt`` (and ``best.pt`` when ``best``): :func:`crfrnn.io.checkpoint.save_checkpoint` of
        ``model`` with ``payload`` (``model_name``, ``model_kwargs``, ``num_classes``, ... and any extras).
        """
        from crfrnn.io.checkpoint import save_checkpoint

        save_checkpoint(self.last_path, model, **payload)
        if best:
            save_checkpoint(self.best_path, model, **payload)


class RunLock:
    """An exclusive lock on a run directory: ``fcntl.flock`` on ``<out_dir>/.lock``, which holds the pid.

    The kernel releases the lock when its process ends, however it ends, so a lock left by a crashed run is
    never in the way (the file stays; only the lock on it counts). Where ``fcntl`` does not exist (Windows)
    runs are not locked. A ``.lock`` that is a symlink, not a regular file, or hard-linked elsewhere is refused
    (``ValueError``) without being written: the lock never writes through a link.
    """

    NAME = ".lock"

    def __init__(self, path: Path, fd: int) -> None:
        self.path, self.fd = path, fd

    @classmethod
    def acquire(cls, out_dir: Path) -> Optional["RunLock"]:
        """Lock ``out_dir`` (created if missing) for this process.

        Args:
            out_dir: the run directory.

        Returns:
            The lock, or ``None`` where ``fcntl`` does not exist.

        Raises:
            NotADirectoryError: ``out_dir`` is a file.
            ValueError: another process holds the lock, or ``.lock`` is a symlink, not a regular file, or
                hard-linked (left untouched).
        """
        try:
            import fcntl
        except ImportError:  # pragma: no cover - Windows
            return None
        if out_dir.exists() and not out_dir.is_dir():
            raise NotADirectoryError(f"out_dir '{out_dir}' exists and is not a directory; pass a folder for the run.")
        out_dir.mkdir(parents=True, exist_ok=True)
        path = out_dir / cls.NAME
        fd = cls._open(path)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:  # BlockingIOError: another process holds it
            holder = os.read(fd, 64).decode("ascii", "replace").strip() or "unknown"
            os.close(fd)
            raise ValueError(
                f"the run directory '{out_dir}' is in use by another training process (pid {holder}, lock file "
                f"'{path}'); two runs writing one directory would mix their files. Wait for that run to finish, "
                f"or choose another out_dir."
            ) from err
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode("ascii"))
        return cls(path, fd)

    @staticmethod
    def _open(path: Path) -> int:
        """Open (or create) the lock file itself, never what a link points to, and only a regular file.

        ``O_NOFOLLOW`` makes a symlink fail to open instead of being followed (a link to a file elsewhere would have
        it truncated and overwritten with the pid), ``O_NONBLOCK`` keeps a FIFO from blocking the open; then the
        open file must be a regular file without other hard links, or it is closed untouched.
        """
        flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
        try:
            fd = os.open(path, flags, 0o666)
        except OSError as err:
            if not path.is_symlink():
                raise
            raise ValueError(
                f"the run's lock file '{path}' is a symbolic link (to '{os.readlink(path)}'); crfrnn does not follow "
                "it, since taking the lock through it would overwrite the file it points to with the pid. Remove the "
                "link and start the run again."
            ) from err
        st = os.fstat(fd)
        problem = ""
        if not stat.S_ISREG(st.st_mode):
            problem = "is not a regular file"
        elif st.st_nlink != 1:
            problem = f"has {st.st_nlink - 1} other links (hard links), whose files writing the pid would change"
        if problem:
            os.close(fd)
            raise ValueError(
                f"the run's lock file '{path}' {problem}; it is left untouched. Remove it and start the run again."
            )
        return fd

    def release(self) -> None:
        """Release the lock and close the file (which stays)."""
        import fcntl

        fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """The records of ``metrics.jsonl``; a last line cut short by a crash is dropped with a warning."""
    lines = path.read_text(encoding="utf-8").splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    records = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            if number == len(lines):  # the record being written when the run stopped
                warnings.warn(
                    f"dropping the last line of '{path}', cut short when the run stopped ({err}): {line[:60]!r}",
                    stacklevel=5,
                )
                break
            raise ValueError(
                f"'{path}' line {number} is not JSON ({err}): {line[:60]!r}. Only the last line can be cut short "
                "by a crash; repair or delete the file (its records are also in the checkpoints) and resume."
            ) from err
        if not isinstance(record, dict):
            raise ValueError(f"'{path}' line {number} is not a JSON object: {line[:60]!r}; repair or delete the file.")
        records.append(record)
    return records


def check_resume(config: TrainConfig, saved: Mapping[str, Any], path: Path) -> None:
    """Refuse to resume with settings other than the saved ones (except :data:`RESUMABLE_CHANGES`)."""
    current = config.to_dict()
    changed = [
        k
        for k in current
        if k not in RESUMABLE_CHANGES
        and k in saved
        and saved[k] != current[k]
        and not (k == "model" and current[k] is None)  # None: the stage's default, resolved when the run began
    ]
    if changed:
        detail = "; ".join(f"{k}: was {saved[k]!r}, now {current[k]!r}" for k in changed)
        raise ValueError(
            f"cannot resume '{path}' with different settings ({detail}). Resume with the run's config.yaml "
            f"(only {sorted(RESUMABLE_CHANGES)} may change), or start a new run in another out_dir."
        )


def load_run_config(
    run: Union[str, os.PathLike], /, *paths: Optional[Union[str, os.PathLike]], **overrides: Any
) -> TrainConfig:
    """The configuration to resume the run in folder ``run`` with: its ``config.yaml``, then the YAML files
    ``paths``, then ``overrides`` (see :func:`~crfrnn.workflow._config.load_config`; ``out_dir`` may be one).

    Raises:
        FileNotFoundError: ``run`` has no ``config.yaml`` (it is not a run directory).
    """
    saved = RunDir(Path(run)).config_path
    if not saved.is_file():
        raise FileNotFoundError(f"cannot resume: '{saved}' not found; is '{run}' a run directory?")
    return load_config(saved, *paths, **overrides)

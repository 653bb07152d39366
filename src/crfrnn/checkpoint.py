"""Checkpoints: one self-describing file per save, written atomically.

A checkpoint is a ``torch.save``d dict::

    {
        "format": "crfrnn-checkpoint-v1",
        "model": {"name": <crfrnn.models registry name>, "kwargs": {...}},  # enough to rebuild it
        "state_dict": model.state_dict(),
        "num_classes": L, "class_names": [...] or None,
        ...anything else the writer adds (epoch, optimizer state, RNG states, config, metrics)
    }

so that :func:`load_model` can rebuild the network without the code that trained it.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, Optional, Union

import torch
from torch import nn

__all__ = ["FORMAT", "load_checkpoint", "load_model", "save_checkpoint"]

FORMAT = "crfrnn-checkpoint-v1"
PathLike = Union[str, os.PathLike]


def save_checkpoint(
    path: PathLike,
    model: nn.Module,
    *,
    model_name: str,
    model_kwargs: dict[str, Any],
    num_classes: int,
    class_names: Optional[list[str]] = None,
    **extra: Any,
) -> Path:
    """Write a checkpoint atomically (a temporary file in the same directory, then ``os.replace``).

    An interrupted save never leaves a truncated file behind: the previous checkpoint stays intact.

    Args:
        path: destination file.
        model: the network (its ``state_dict`` is saved; unwrap DDP first).
        model_name: its :func:`crfrnn.models.create` name.
        model_kwargs: the keyword arguments that rebuild it with ``create(model_name, **model_kwargs)``.
        num_classes: number of labels.
        class_names: optional label names.
        **extra: anything else to store (epoch, optimizer state, RNG states, config, metrics).

    Returns:
        The path written.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": FORMAT,
        "model": {"name": model_name, "kwargs": dict(model_kwargs)},
        "state_dict": model.state_dict(),
        "num_classes": int(num_classes),
        "class_names": list(class_names) if class_names is not None else None,
        **extra,
    }
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            torch.save(payload, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def load_checkpoint(path: PathLike, *, map_location: Union[str, torch.device] = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint`, with errors that name the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as err:  # truncated or not a torch file
        raise ValueError(f"cannot read checkpoint {path}: {err}") from err
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ValueError(f"{path} is not a crfrnn checkpoint (expected format {FORMAT!r}).")
    return payload


def load_model(path: PathLike, *, map_location: Union[str, torch.device] = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the network stored in a checkpoint and load its weights.

    Returns:
        ``(model, checkpoint)``, the model in eval mode.
    """
    from crfrnn.models import create

    payload = load_checkpoint(path, map_location=map_location)
    model = create(payload["model"]["name"], **payload["model"]["kwargs"])
    model.load_state_dict(payload["state_dict"])
    return model.eval(), payload

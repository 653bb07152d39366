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

import pickle
from pathlib import Path
from typing import Any, Optional, Union

import torch
from torch import nn

from crfrnn._utils.files import PathLike, atomic_torch_save
from crfrnn._utils.safe_load import check_zip_sizes
from crfrnn.models import create

__all__ = ["FORMAT", "load_checkpoint", "load_model", "save_checkpoint"]

FORMAT = "crfrnn-checkpoint-v1"


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

    An interrupted save never leaves a truncated file behind: the previous checkpoint stays intact. The
    file gets the permissions of any other file written (``0o666`` less the umask). ``extra`` values must
    be tensors or plain Python values (numbers, strings, lists, tuples, dicts, None), the only things
    :func:`load_checkpoint` accepts.

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
    atomic_torch_save(payload, path)
    return path


#: the largest model-construction arguments a checkpoint may ask for (checked before anything is built): a
#: crfrnn model needs far less, and a larger one can take more memory than the machine has
MAX_MODEL_ARGS: dict[str, int] = {
    "num_classes": 4096,
    "width": 4096,
    "depth": 64,
    "num_iterations": 1000,
}
#: the bound on any other integer argument (and each entry of a list of them, e.g. ``dilations``)
MAX_MODEL_ARG = 65536


def check_model_args(kwargs: Any, source: str, field: str = "") -> None:
    """Refuse model-construction arguments over :data:`MAX_MODEL_ARGS` (or :data:`MAX_MODEL_ARG`).

    Args:
        kwargs: the arguments (nested dicts and lists are walked).
        source: what they came from (named in the message).
        field: the dotted name of ``kwargs`` itself ("" at the top).

    Raises:
        ValueError: naming the field, its value and the limit.
    """
    if isinstance(kwargs, dict):
        for name, value in kwargs.items():
            check_model_args(value, source, f"{field}.{name}" if field else str(name))
    elif isinstance(kwargs, (list, tuple)):
        if len(kwargs) > MAX_MODEL_ARGS["depth"] * 16:
            raise ValueError(f"{source}: model argument {field!r} has {len(kwargs)} entries, more than expected.")
        for value in kwargs:
            check_model_args(value, source, field)
    elif isinstance(kwargs, int) and not isinstance(kwargs, bool):
        limit = MAX_MODEL_ARGS.get(field.rsplit(".", 1)[-1], MAX_MODEL_ARG)
        if abs(kwargs) > limit:
            raise ValueError(
                f"{source}: model argument {field!r} is {kwargs}, but at most {limit} is accepted (a larger model "
                "could take more memory than the machine has, so it is not built). The checkpoint is damaged or "
                "was not written by crfrnn; rebuild the model yourself if it is really this large."
            )


def _check_device(map_location: Union[str, torch.device, None]) -> None:
    if map_location is None or callable(map_location) or isinstance(map_location, dict):
        return
    try:
        device = torch.device(map_location)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"map_location={map_location!r} is not a torch device (e.g. 'cpu', 'cuda:0').") from err
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"map_location={map_location!r} asks for CUDA, but CUDA is not available on this machine "
            f"(torch {torch.__version__}); load the checkpoint with map_location='cpu'."
        )


#: entries every checkpoint has, and what they hold
_REQUIRED = {"model": "a dict {'name', 'kwargs'}", "state_dict": "the weights", "num_classes": "an int"}


def load_checkpoint(path: PathLike, *, map_location: Union[str, torch.device] = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint`, with errors that name the file.

    The file is read with ``torch.load(..., weights_only=True)``: tensors and plain Python values only, so
    a file that is not a crfrnn checkpoint cannot run code while it is read (a pickle can).

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file is truncated, not a torch file, holds other Python objects (refused, not
            unpickled), is not a crfrnn checkpoint or lacks an entry; ``map_location`` is CUDA without CUDA.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    _check_device(map_location)
    check_zip_sizes(path)  # declared sizes, before anything is inflated
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:  # weights_only refused a global: the file holds arbitrary objects
        first = str(err).strip().splitlines()
        detail = next((ln.strip() for ln in first if "GLOBAL" in ln or "global" in ln), first[0] if first else "")
        raise ValueError(
            f"refusing to load {path}: it holds Python objects other than tensors and plain values ({detail}), "
            "which could run code when unpickled, so it is not read (torch.load with weights_only=True). crfrnn "
            "checkpoints hold only tensors and plain values; pass a checkpoint written by crfrnn."
        ) from err
    except Exception as err:  # truncated or not a torch file
        raise ValueError(f"cannot read checkpoint {path}: {err}") from err
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ValueError(f"{path} is not a crfrnn checkpoint (expected format {FORMAT!r}).")
    missing = [k for k in _REQUIRED if k not in payload]
    model = payload.get("model")
    if not missing and not (isinstance(model, dict) and isinstance(model.get("name"), str) and "kwargs" in model):
        missing = ["model"]
    if missing:
        what = ", ".join(f"{k!r} ({_REQUIRED[k]})" for k in missing)
        raise ValueError(
            f"checkpoint {path} lacks {what}; it is damaged or was not written by crfrnn.io.save_checkpoint."
        )
    return payload


def load_model(path: PathLike, *, map_location: Union[str, torch.device] = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the network stored in a checkpoint and load its weights.

    Returns:
        ``(model, checkpoint)``, the model in eval mode.
    """
    payload = load_checkpoint(path, map_location=map_location)
    check_model_args(payload["model"]["kwargs"], str(path))  # before anything is built
    model = create(payload["model"]["name"], **payload["model"]["kwargs"])
    model.load_state_dict(payload["state_dict"])
    return model.eval(), payload

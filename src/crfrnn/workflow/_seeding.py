"""Random states: seeding every generator, seeds derived from ``(seed, epoch, rank)``, and saving/restoring
the states of torch, numpy and python in a checkpoint (as tensors and plain values, ``weights_only`` loadable).
"""

from __future__ import annotations

import hashlib
import random
from typing import Any, Mapping

import numpy as np
import torch

__all__ = ["derived_seed", "quiet_worker", "rng_state", "seed_all", "seed_worker", "set_rng_state"]


def rng_state() -> dict[str, Any]:
    """The random states of torch, numpy and python as tensors and plain values (``weights_only`` loadable)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "kind": str(kind),
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "python": {
            "version": int(version),
            "state": torch.tensor(internal, dtype=torch.int64),
            "gauss_next": None if gauss_next is None else float(gauss_next),
        },
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Restore the states saved by :func:`rng_state`."""
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    keys = n["keys"].numpy().astype(np.uint32)
    np.random.set_state((n["kind"], keys, n["pos"], n["has_gauss"], n["cached_gaussian"]))
    p = state["python"]
    random.setstate((p["version"], tuple(int(v) for v in p["state"].tolist()), p["gauss_next"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_all(seed: int) -> None:
    """Seed python's, numpy's and torch's generators."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def derived_seed(*parts: int) -> int:
    """A 63-bit seed from integers (stable across runs and platforms)."""
    digest = hashlib.sha256(",".join(str(int(p)) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def seed_worker(worker_id: int) -> None:  # pragma: no cover - runs in DataLoader workers
    """DataLoader ``worker_init_fn``: seed numpy and python from the worker's torch seed (and :func:`quiet_worker`)."""
    quiet_worker(worker_id)
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


def quiet_worker(worker_id: int) -> None:  # pragma: no cover - runs in DataLoader workers
    """DataLoader ``worker_init_fn``: the worker ignores SIGINT. A Ctrl-C reaches every process of the terminal's
    group; the main process stops the run (and its loader's workers), so a worker prints no traceback of its own:
    nor does the worker thread that hands a batch's shared memory over (multiprocessing's resource sharer) when
    the main process stops half way through taking it (EOFError, ConnectionError).
    """
    import signal
    import threading

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    hook = threading.excepthook

    def quiet(args: Any) -> None:
        if not issubclass(args.exc_type, (EOFError, ConnectionError)):
            hook(args)

    threading.excepthook = quiet

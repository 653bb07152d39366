"""The one safe NumPy reader of :mod:`crfrnn.io`: ``.npy``/``.npz`` files, never unpickled, with errors that name
the file.

Parameters named in messages are written in backticks (`key`), so that the command line can name its flags instead.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import numpy as np

from crfrnn._utils.files import PathLike

__all__ = ["load_array"]


def load_array(path: PathLike, key: Optional[str] = None) -> np.ndarray:
    """Read an array from a ``.npy`` file (memory-mapped) or a ``.npz`` archive (its first array, or ``key``).

    Pickles and object arrays are refused, never loaded (they can run code).

    Raises:
        OSError: the file is a pickle, holds an object array, or is not a readable NumPy file.
        ValueError: ``key`` given for a ``.npy`` file or naming no array of the archive; an empty archive.
    """
    path = os.fspath(path)
    suffix = Path(path).suffix.lower()
    if key is not None and suffix != ".npz":
        raise ValueError(f"`key={key!r}` only applies to .npz archives, but '{path}' is a {suffix} file.")
    with open(path, "rb") as fh:
        magic = fh.read(6)
    if magic[:1] == b"\x80" or (magic[:6] != b"\x93NUMPY" and magic[:4] != b"PK\x03\x04"):
        what = "a Python pickle" if magic[:1] == b"\x80" else "not a NumPy .npy/.npz file"
        raise OSError(
            f"could not read '{path}' as a NumPy file: it is {what}. Pickles can run code when loaded, so they "
            "are never unpickled; save the scores with np.save (a numeric array)."
        )
    try:
        data = np.load(path, allow_pickle=False, mmap_mode="r" if suffix == ".npy" else None)
    except ValueError as e:
        if any(word in str(e) for word in ("pickle", "Object arrays", "Python objects")):
            raise OSError(_pickled_array(path)) from e
        raise OSError(f"could not read '{path}' as a NumPy file (ValueError: {e}); is it corrupt or truncated?") from e
    except Exception as e:  # EOFError, OSError, BadZipFile, ... on corrupt files
        raise OSError(
            f"could not read '{path}' as a NumPy file ({type(e).__name__}: {e}); is it corrupt or truncated?"
        ) from e
    if isinstance(data, np.ndarray):
        return data
    with data:
        names = list(data.files)
        if not names:
            raise ValueError(f"'{path}' is an empty .npz archive; expected at least one array.")
        if key is not None and key not in names:
            raise ValueError(
                f"no array named {key!r} in '{path}'; it holds {', '.join(names)}. Pass one of them as `key`."
            )
        name = names[0] if key is None else key
        try:
            return data[name]
        except ValueError as e:
            if "pickle" in str(e) or "Object arrays" in str(e):
                raise OSError(_pickled_array(f"{path}[{name!r}]")) from e
            raise OSError(f"could not read array {name!r} from '{path}' (ValueError: {e}); is it corrupt?") from e
        except Exception as e:
            raise OSError(
                f"could not read array {name!r} from '{path}' ({type(e).__name__}: {e}); is it corrupt?"
            ) from e


def _pickled_array(what: str) -> str:
    return (
        f"'{what}' holds a pickled object array (dtype object), and pickles are never unpickled (they can run "
        "code); save the scores as a numeric array, e.g. np.save(path, scores.astype(np.float32))."
    )

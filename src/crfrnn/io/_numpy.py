"""The one safe NumPy reader of :mod:`crfrnn.io`: ``.npy``/``.npz`` files, never unpickled, with errors that name
the file.

Sizes are checked before anything is allocated: the ``.npy`` header (shape and dtype) is read first, from the
file or from the archive member without inflating the rest of it, and an array larger than the caller's bound
is refused (a small compressed ``.npz`` can inflate to gigabytes).

Parameters named in messages are written in backticks (`key`), so that the command line can name its flags instead.
"""

from __future__ import annotations

import math
import os
import zipfile
from pathlib import Path
from typing import IO, Optional, Tuple

import numpy as np

from crfrnn._utils.files import PathLike
from crfrnn.io.memory import MemoryLimitError, format_bytes

__all__ = ["load_array"]

#: header bytes read at most (numpy's own default limit)
_MAX_HEADER = 10_000


def load_array(
    path: PathLike,
    key: Optional[str] = None,
    *,
    max_values: Optional[int] = None,
    max_bytes: Optional[int] = None,
    expected: str = "",
) -> np.ndarray:
    """Read an array from a ``.npy`` file (memory-mapped) or a ``.npz`` archive (its first array, or ``key``).

    Pickles and object arrays are refused, never loaded (they can run code). The shape and dtype are read
    from the ``.npy`` header before the data, and the array is refused unless it fits the bounds.

    Args:
        path: ``.npy`` or ``.npz`` file.
        key: array name inside a ``.npz`` archive (default: its first member).
        max_values: most values the array may hold (the caller's bound, e.g. labels x pixels); None: no bound.
        max_bytes: most bytes the array may take (the caller's `max_memory`); None: no bound.
        expected: what the bound stands for, for the message (e.g. "for a 4x6 image with at most 256 labels").

    Returns:
        The array (memory-mapped for ``.npy``), of the shape and dtype its header declares.

    Raises:
        OSError: the file is a pickle, holds an object array or a member that is not a ``.npy`` array, or is
            not a readable NumPy file.
        ValueError: ``key`` given for a ``.npy`` file or naming no array of the archive; an empty archive; the
            array declares more than ``max_values`` values.
        MemoryLimitError: the array declares more than ``max_bytes`` bytes.
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
    bounds = (max_values, max_bytes, expected)
    if magic[:4] == b"PK\x03\x04":
        return _read_npz(path, key, bounds)
    with open(path, "rb") as fh:
        _check_header(fh, path, bounds)
    try:
        return np.load(path, allow_pickle=False, mmap_mode="r")
    except ValueError as e:
        if any(word in str(e) for word in ("pickle", "Object arrays", "Python objects")):
            raise OSError(_pickled_array(path)) from e
        raise OSError(f"could not read '{path}' as a NumPy file (ValueError: {e}); is it corrupt or truncated?") from e
    except Exception as e:  # EOFError, OSError, ... on corrupt files
        raise OSError(
            f"could not read '{path}' as a NumPy file ({type(e).__name__}: {e}); is it corrupt or truncated?"
        ) from e


_Bounds = Tuple[Optional[int], Optional[int], str]


def _read_npz(path: str, key: Optional[str], bounds: _Bounds) -> np.ndarray:
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, EOFError) as e:
        raise OSError(
            f"could not read '{path}' as a NumPy file ({type(e).__name__}: {e}); is it corrupt or truncated?"
        ) from e
    with zf:
        members = [info for info in zf.infolist() if not info.is_dir()]
        names = [m.filename[:-4] if m.filename.endswith(".npy") else m.filename for m in members]
        if not members:
            raise ValueError(f"'{path}' is an empty .npz archive; expected at least one array.")
        if key is not None and key not in names:
            raise ValueError(
                f"no array named {key!r} in '{path}'; it holds {', '.join(names)}. Pass one of them as `key`."
            )
        info = members[0 if key is None else names.index(key)]
        what = f"{path}[{info.filename!r}]"
        if not info.filename.endswith(".npy"):
            raise OSError(
                f"'{path}' holds {info.filename!r}, which is not a .npy array; an .npz archive (np.savez) holds "
                "only .npy members. Save the scores with np.savez or np.save."
            )
        try:
            with zf.open(info) as fh:
                if fh.read(6) != b"\x93NUMPY":
                    raise OSError(f"'{what}' is not a .npy array (no NumPy header); save it with np.savez.")
            with zf.open(info) as fh:  # the header only: the data is not inflated yet
                _check_header(fh, what, bounds)
            with zf.open(info) as fh:  # reads exactly the bytes the (checked) header declares
                return np.lib.format.read_array(fh, allow_pickle=False, max_header_size=_MAX_HEADER)
        except (OSError, MemoryError):
            raise
        except ValueError as e:
            if any(word in str(e) for word in ("pickle", "Object arrays", "Python objects", "declares")):
                raise
            raise OSError(f"could not read array '{what}' (ValueError: {e}); is it corrupt or truncated?") from e
        except Exception as e:  # EOFError, zlib.error, BadZipFile, ... on corrupt archives
            raise OSError(f"could not read array '{what}' ({type(e).__name__}: {e}); is it corrupt?") from e


def _check_header(fh: IO[bytes], what: str, bounds: _Bounds) -> None:
    """Read a ``.npy`` header from ``fh`` and refuse object arrays and arrays over the bounds."""
    max_values, max_bytes, expected = bounds
    try:
        version = np.lib.format.read_magic(fh)
        if version == (1, 0):
            shape, _, dtype = np.lib.format.read_array_header_1_0(fh, max_header_size=_MAX_HEADER)
        elif version == (2, 0):
            shape, _, dtype = np.lib.format.read_array_header_2_0(fh, max_header_size=_MAX_HEADER)
        else:
            raise ValueError(f"unsupported .npy format version {version}")
    except ValueError as e:
        raise OSError(f"could not read the .npy header of '{what}' ({e}); is it corrupt or truncated?") from e
    if dtype.hasobject:
        raise OSError(_pickled_array(what))
    values = math.prod(int(s) for s in shape)  # Python ints: no overflow, nothing allocated
    size = values * dtype.itemsize
    if max_values is not None and values > max_values:
        raise ValueError(
            f"'{what}' declares an array of shape {tuple(shape)} ({values} values, {format_bytes(size)}), but at "
            f"most {max_values} values are expected{' ' + expected if expected else ''}; it is not read. Pass "
            "the array meant for this input."
        )
    if max_bytes is not None and size > max_bytes:
        raise MemoryLimitError(
            f"'{what}' declares an array of shape {tuple(shape)} ({format_bytes(size)}), more than the limit of "
            f"{format_bytes(max_bytes)} (`max_memory`); it is not read. Raise the limit if the machine has the "
            "memory."
        )


def _pickled_array(what: str) -> str:
    return (
        f"'{what}' holds a pickled object array (dtype object), and pickles are never unpickled (they can run "
        "code); save the scores as a numeric array, e.g. np.save(path, scores.astype(np.float32))."
    )

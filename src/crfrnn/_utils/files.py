r"""Every file crfrnn writes goes through here, so that an interrupted write never leaves a broken file.

A file is written to a temporary file in the destination's directory (``.<name>.<random>.tmp``), flushed
and ``fsync``ed, given the permissions an ordinary ``open(path, "w")`` would give it (``0o666`` less the
umask; :func:`tempfile.mkstemp` creates ``0o600`` files) and renamed into place with :func:`os.replace`,
which is atomic on POSIX and Windows. Whatever happens in between (an exception, ``KeyboardInterrupt``, a
full disk), the destination holds either its old content or the new one, and the temporary file is removed.
(A ``SIGKILL`` or a power cut can leave a ``.*.tmp`` file behind, never a truncated destination.)

The one exception is :func:`append_line`, for logs such as ``metrics.jsonl`` that grow by one record at a
time: the whole line goes to the file in a single ``write`` call, then it is flushed and ``fsync``ed. A
crash can still cut the last line short; readers of such logs drop a last line that does not parse.

>>> import tempfile
>>> from pathlib import Path
>>> d = Path(tempfile.mkdtemp())
>>> _ = atomic_write_text(d / "a.txt", "hello\n")
>>> (d / "a.txt").read_text(), sorted(p.name for p in d.iterdir())
('hello\n', ['a.txt'])
"""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
import threading
from pathlib import Path
from typing import IO, Any, Iterator, Optional, Union

__all__ = [
    "append_line",
    "atomic_np_save",
    "atomic_save_image",
    "atomic_savefig",
    "atomic_torch_save",
    "atomic_write",
    "atomic_write_bytes",
    "atomic_write_text",
    "file_mode",
]

PathLike = Union[str, "os.PathLike[str]"]

_UMASK_LOCK = threading.Lock()


def _umask() -> int:
    """The process's umask, read without changing it where the system allows (Linux), else set and restored."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    with _UMASK_LOCK:  # os.umask can only be read by setting it
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def file_mode() -> int:
    """The permission bits a new file gets from ``open(path, "w")``: ``0o666`` less the umask."""
    return 0o666 & ~_umask()


@contextlib.contextmanager
def atomic_write(path: PathLike, mode: str = "wb", *, encoding: Optional[str] = None) -> Iterator[IO[Any]]:
    """Context manager giving a file object whose content replaces ``path`` only when the block succeeds.

    For writers that need a file object (``torch.save``, ``np.save``, Pillow's ``Image.save``, matplotlib's
    ``savefig``). If the block raises (``KeyboardInterrupt`` included), ``path`` is left as it was and the
    temporary file is removed. The parent directory must exist.

    Args:
        path: destination file.
        mode: ``"wb"`` (bytes) or ``"w"`` (text).
        encoding: text encoding for ``mode="w"`` (default UTF-8).

    Raises:
        ValueError: any other mode.
        FileNotFoundError: the parent directory does not exist.
    """
    if mode not in ("wb", "w"):
        raise ValueError(f"mode must be 'wb' or 'w', got {mode!r}; atomic writes replace the whole file.")
    path = Path(path)
    parent = path.parent
    if not parent.is_dir():
        raise FileNotFoundError(f"cannot write '{path}': the directory '{parent}' does not exist; create it first.")
    try:  # a long name is cut short in the temporary one, so that any name the system takes can be written
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name[:_TMP_NAME_CHARS]}.", suffix=".tmp", dir=parent)
    except OSError as err:
        raise _naming(err, path) from err
    try:
        text = mode == "w"
        with os.fdopen(fd, mode, encoding=(encoding or "utf-8") if text else None) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, file_mode())
        os.replace(tmp, path)
    except BaseException as err:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(err, OSError) and err.errno in _NAMED_ERRNOS:
            raise _naming(err, path) from err
        raise


#: longest part of the destination's name kept in the temporary file's name
_TMP_NAME_CHARS = 200
#: OSErrors reported with the destination's name (not the temporary file's, nor none)
_NAMED_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.ENAMETOOLONG)


def _naming(err: OSError, path: Path) -> OSError:
    """``err`` naming the destination ``path`` (a write's errors name the temporary file, or nothing)."""
    if err.errno not in _NAMED_ERRNOS or err.filename == str(path):
        return err
    return OSError(err.errno, err.strerror or os.strerror(err.errno or 0), str(path))


def atomic_write_bytes(path: PathLike, data: bytes) -> Path:
    """Replace ``path`` with ``data`` atomically; returns the path."""
    with atomic_write(path, "wb") as fh:
        fh.write(data)
    return Path(path)


def atomic_write_text(path: PathLike, text: str, *, encoding: str = "utf-8") -> Path:
    """Replace ``path`` with ``text`` atomically; returns the path."""
    with atomic_write(path, "w", encoding=encoding) as fh:
        fh.write(text)
    return Path(path)


def atomic_torch_save(obj: Any, path: PathLike) -> Path:
    """``torch.save(obj, path)``, atomically; returns the path."""
    import torch

    with atomic_write(path, "wb") as fh:
        torch.save(obj, fh)
    return Path(path)


def atomic_np_save(path: PathLike, array: Any) -> Path:
    """``np.save(path, array)`` (no pickles: ``allow_pickle=False``), atomically; returns the path.

    Unlike ``np.save``, no ``.npy`` suffix is added: the file is written exactly at ``path``.
    """
    import numpy as np

    with atomic_write(path, "wb") as fh:
        np.save(fh, np.asarray(array), allow_pickle=False)
    return Path(path)


def _image_format(path: Path, format: Optional[str]) -> str:
    if format is not None:
        return format
    from PIL import Image

    known = Image.registered_extensions()
    suffix = path.suffix.lower()
    if suffix not in known:
        raise ValueError(f"cannot tell the image format of '{path}' from its suffix; pass format= (e.g. 'PNG').")
    return known[suffix]


def atomic_save_image(image: Any, path: PathLike, *, format: Optional[str] = None, **options: Any) -> Path:
    """``image.save(path)`` for a Pillow image (format from the suffix unless given), atomically.

    Args:
        image: a ``PIL.Image.Image``.
        path: destination file.
        format: Pillow format name; default from the suffix of ``path``.
        **options: Pillow save options (``optimize=True``, ...).
    """
    path = Path(path)
    fmt = _image_format(path, format)
    with atomic_write(path, "wb") as fh:
        image.save(fh, format=fmt, **options)
    return path


def atomic_savefig(figure: Any, path: PathLike, *, format: Optional[str] = None, **options: Any) -> Path:
    """``figure.savefig(path)`` for a matplotlib figure (format from the suffix unless given), atomically."""
    path = Path(path)
    fmt = format or (path.suffix[1:].lower() or "png")
    with atomic_write(path, "wb") as fh:
        figure.savefig(fh, format=fmt, **options)
    return path


def append_line(path: PathLike, line: str, *, encoding: str = "utf-8") -> Path:
    """Append one line (a newline is added) to a log file in a single ``write`` call, then flush and fsync.

    Not atomic: a crash can leave the last line cut short, so readers drop a last line that does not parse.
    """
    if "\n" in line:
        raise ValueError("append_line writes one line; the text must not contain a newline.")
    path = Path(path)
    data = (line + "\n").encode(encoding)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)  # the umask applies, as for open()
    try:
        view = memoryview(data)
        while view:  # one write() call in practice; loop only if the system writes part of it
            written = os.write(fd, view)
            view = view[written:]
        os.fsync(fd)
    finally:
        os.close(fd)
    return path

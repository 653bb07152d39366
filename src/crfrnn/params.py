"""Dense-CRF parameter files: the keyword arguments of :func:`crfrnn.dense_crf` as YAML.

``crfrnn fit`` writes one, ``crfrnn refine --params FILE`` and ``crfrnn.dense_crf(image, probs,
**crfrnn.load_params(FILE))`` read it. A file is a flat YAML mapping of :func:`crfrnn.dense_crf`'s names::

    # crfrnn dense CRF parameters (keyword arguments of crfrnn.dense_crf)
    num_iterations: 5
    gaussian_sxy: 2.4
    gaussian_compat: 1.7
    bilateral_sxy: 41.3
    bilateral_srgb: 9.8
    bilateral_compat: 6.2
    normalization: symmetric

Every key is optional (:func:`crfrnn.dense_crf`'s defaults fill in the rest); unknown keys are refused. Files
are read with a safe YAML loader only (no Python objects, no YAML tags that construct them, no aliases), at most
:data:`MAX_FILE_BYTES` bytes, and every value is checked: whole ``num_iterations`` in ``0..1000``, widths positive
and finite (one number, or one per spatial axis / guide channel), Potts weights finite and ``>= 0``, a known
normalisation, ``clip`` in ``(0, 1)``. Floats are written with Python's shortest round-tripping repr, so a file
written by :func:`save_params` loads back to exactly the same values. Files of earlier releases that name
``iterations`` (now ``num_iterations``, :data:`RENAMED_PARAMS`) still load, with a :class:`FutureWarning`.
"""

from __future__ import annotations

import math
import numbers
import os
from pathlib import Path
from typing import Any, Mapping, Optional, Union

__all__ = [
    "DENSECRF_DEFAULTS",
    "MAX_FILE_BYTES",
    "PARAM_NAMES",
    "RENAMED_PARAMS",
    "check_params",
    "load_params",
    "save_params",
]

from crfrnn._deprecated import renamed_keys  # noqa: E402
from crfrnn._utils.files import PathLike  # noqa: E402
from crfrnn._utils.safe_load import load_yaml

#: the keys a parameter file may hold: keyword arguments of :func:`crfrnn.dense_crf`, in the order written
PARAM_NAMES: tuple[str, ...] = (
    "num_iterations",
    "gaussian_sxy",
    "gaussian_compat",
    "bilateral_sxy",
    "bilateral_srgb",
    "bilateral_compat",
    "normalization",
    "clip",
)
#: Krähenbühl's densecrf parameters as usually called: where ``crfrnn fit`` starts and what
#: ``crfrnn evaluate``'s grid search is centred on
DENSECRF_DEFAULTS: dict[str, Any] = {
    "num_iterations": 5,
    "gaussian_sxy": 3.0,
    "gaussian_compat": 3.0,
    "bilateral_sxy": 80.0,
    "bilateral_srgb": 13.0,
    "bilateral_compat": 10.0,
    "normalization": "symmetric",
}
#: old key -> new key: names of earlier releases, still read (with a ``FutureWarning``) for one release
RENAMED_PARAMS: dict[str, str] = {"iterations": "num_iterations"}
#: largest parameter file read (a real one is a few hundred bytes)
MAX_FILE_BYTES = 64 * 1024
_MAX_ITERATIONS = 1000
_MAX_WIDTHS = {"gaussian_sxy": 3, "bilateral_sxy": 3, "bilateral_srgb": 64}  # spatial axes, guide channels
_WIDTH_WHAT = {"gaussian_sxy": "spatial axis", "bilateral_sxy": "spatial axis", "bilateral_srgb": "guide channel"}


def _real(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _where(source: Optional[str], key: str) -> str:
    return f"{source}: {key}" if source else key


def _check_width(key: str, value: Any, source: Optional[str]) -> Union[float, list[float]]:
    what = _WIDTH_WHAT[key]
    values = value if isinstance(value, (list, tuple)) else [value]
    if isinstance(value, (list, tuple)) and not 1 <= len(value) <= _MAX_WIDTHS[key]:
        raise ValueError(
            f"{_where(source, key)} must be one width or a list of 1 to {_MAX_WIDTHS[key]} widths (one per {what}), "
            f"got a list of {len(value)}."
        )
    out = []
    for v in values:
        if not _real(v):
            raise TypeError(
                f"{_where(source, key)} must be a positive number (a kernel width), got {v!r} ({type(v).__name__})."
            )
        v = float(v)
        if not math.isfinite(v) or not v > 0:
            raise ValueError(f"{_where(source, key)} must be a positive finite width, got {v!r}.")
        out.append(v)
    return out if isinstance(value, (list, tuple)) else out[0]


def check_params(params: Mapping[str, Any], *, source: Optional[str] = None, stacklevel: int = 2) -> dict[str, Any]:
    """Check dense-CRF parameters and return them as plain Python values (floats, ints, lists, strings).

    Args:
        params: a mapping of :data:`PARAM_NAMES` to values (any subset); the old names of
            :data:`RENAMED_PARAMS` are read as the new ones, with a ``FutureWarning``.
        source: where they come from (a file name), for error messages.
        stacklevel: where a ``FutureWarning`` about an old name points, as :func:`warnings.warn`'s.

    Returns:
        A new dict in :data:`PARAM_NAMES` order: ``num_iterations`` an int, widths floats or lists of floats, weights
        and ``clip`` floats, ``normalization`` a string.

    Raises:
        ValueError: an unknown key, an old and a new name of one parameter, or a value out of range (negative
            or zero width, NaN, ...).
        TypeError: a value of the wrong type (a string for a number, a bool, a mapping, ...).

    Example:
        >>> check_params({"bilateral_srgb": 9, "num_iterations": 5})
        {'num_iterations': 5, 'bilateral_srgb': 9.0}
    """
    from crfrnn.crf import NORMALIZATIONS

    if not isinstance(params, Mapping):
        raise TypeError(
            f"{source or 'parameters'} must be a mapping of dense_crf parameter names to values, got "
            f"{type(params).__name__}."
        )
    if any(k in RENAMED_PARAMS for k in params):
        params = renamed_keys(params, RENAMED_PARAMS, source or "check_params", stacklevel=stacklevel)
    unknown = [k for k in params if k not in PARAM_NAMES]
    if unknown:
        shown = ", ".join(repr(k) for k in unknown[:5])
        raise ValueError(
            f"{source + ': ' if source else ''}unknown parameter(s) {shown}; valid names are {', '.join(PARAM_NAMES)} "
            "(keyword arguments of crfrnn.dense_crf)."
        )
    out: dict[str, Any] = {}
    for key in PARAM_NAMES:
        if key not in params:
            continue
        value = params[key]
        if key == "num_iterations":
            if isinstance(value, bool) or not isinstance(value, numbers.Integral):
                raise TypeError(
                    f"{_where(source, key)} must be a whole number, got {value!r} ({type(value).__name__})."
                )
            if not 0 <= int(value) <= _MAX_ITERATIONS:
                raise ValueError(f"{_where(source, key)} must be in 0..{_MAX_ITERATIONS}, got {int(value)}.")
            out[key] = int(value)
        elif key in _WIDTH_WHAT:
            out[key] = _check_width(key, value, source)
        elif key == "normalization":
            if not isinstance(value, str) or value not in NORMALIZATIONS:
                raise ValueError(f"{_where(source, key)} must be one of {', '.join(NORMALIZATIONS)}, got {value!r}.")
            out[key] = value
        else:  # gaussian_compat, bilateral_compat, clip
            if not _real(value):
                raise TypeError(f"{_where(source, key)} must be a number, got {value!r} ({type(value).__name__}).")
            v = float(value)
            if not math.isfinite(v):
                raise ValueError(f"{_where(source, key)} must be finite, got {v!r}.")
            if key == "clip" and not 0 < v < 1:
                raise ValueError(f"{_where(source, key)} must be in (0, 1), got {v!r}.")
            if key != "clip" and v < 0:
                raise ValueError(f"{_where(source, key)} must be >= 0 (a Potts weight), got {v!r}.")
            out[key] = v
    return out


def load_params(path: PathLike) -> dict[str, Any]:
    """Read a parameter file: the keyword arguments it holds for :func:`crfrnn.dense_crf`.

    Args:
        path: a YAML file as written by :func:`save_params` or ``crfrnn fit``.

    Returns:
        ``dense_crf`` keyword arguments (only those in the file), checked as by :func:`check_params`.

    Raises:
        FileNotFoundError: no such file.
        ValueError: not YAML, not a mapping, too large, an unknown key or a value out of range; YAML that asks to
            construct Python objects (``!!python/...`` tags) is refused by the safe loader, and so are YAML aliases.
        TypeError: a value of the wrong type.

    Example:
        >>> import tempfile
        >>> path = Path(tempfile.mkdtemp()) / "crf.yaml"
        >>> _ = save_params({"bilateral_sxy": 50.0, "bilateral_compat": 5.0}, path)
        >>> load_params(path)
        {'bilateral_sxy': 50.0, 'bilateral_compat': 5.0}
    """
    import yaml

    name = os.fspath(path)
    if not os.path.isfile(name):
        raise FileNotFoundError(f"parameter file not found: '{name}'")
    with open(name, "rb") as fh:
        data = fh.read(MAX_FILE_BYTES + 1)
    if len(data) > MAX_FILE_BYTES:
        raise ValueError(
            f"'{name}' is larger than {MAX_FILE_BYTES // 1024} KiB; a dense CRF parameter file is a few lines of YAML."
        )
    try:
        text = data.decode("utf-8")
        params = load_yaml(text)
    except UnicodeDecodeError as err:
        raise ValueError(f"'{name}' is not a text (UTF-8 YAML) file: {err}") from err
    except yaml.YAMLError as err:
        detail = " ".join(str(err).split())
        raise ValueError(f"'{name}' is not a valid YAML parameter file ({detail}).") from err
    if params is None:
        raise ValueError(f"'{name}' is empty; expected a mapping such as 'bilateral_compat: 5'.")
    if not isinstance(params, dict):
        raise ValueError(
            f"'{name}' must hold a mapping of dense_crf parameter names to values, got a YAML {type(params).__name__}."
        )
    return check_params(params, source=f"'{name}'", stacklevel=3)


def save_params(params: Mapping[str, Any], path: PathLike, *, comment: Optional[str] = None) -> Path:
    """Write dense-CRF parameters as YAML, atomically (see :mod:`crfrnn._utils.files`).

    Args:
        params: ``dense_crf`` keyword arguments (any subset of :data:`PARAM_NAMES`; numbers may be NumPy or
            0-d torch values), checked as by :func:`check_params`.
        path: the file to write (usually ``.yaml``).
        comment: text written as ``#`` comment lines above the parameters (e.g. how they were fitted).

    Returns:
        The path written.
    """
    import yaml

    from crfrnn._utils.files import atomic_write_text

    plain = {}
    for key, value in dict(params).items():
        if hasattr(value, "tolist"):  # NumPy scalars and arrays, torch tensors
            value = value.tolist()
        elif isinstance(value, tuple):
            value = list(value)
        plain[key] = value
    checked = check_params(plain, stacklevel=3)
    lines = ["# crfrnn dense CRF parameters (keyword arguments of crfrnn.dense_crf; crfrnn refine --params)"]
    if comment:
        lines += [f"# {line}".rstrip() for line in comment.splitlines()]
    body = yaml.safe_dump(checked, sort_keys=False, default_flow_style=False)
    return atomic_write_text(path, "\n".join(lines) + "\n" + body)

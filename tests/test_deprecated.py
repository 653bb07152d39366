"""Renamed keyword arguments and parameter keys: the old names work for one release, with a FutureWarning."""

from __future__ import annotations

import inspect
import warnings

import numpy as np
import pytest

from crfrnn._deprecated import renamed_arguments, renamed_keys


@renamed_arguments(num_labels="num_classes", iterations="num_iterations")
def _solve(scores, num_classes: int = 2, *, num_iterations: int = 5) -> tuple:
    """Docstring of the new function."""
    return scores, num_classes, num_iterations


MESSAGE = "_solve: iterations= is now num_iterations=; the old name goes in the next release."


def test_old_keyword_warns_and_arrives():
    with pytest.warns(FutureWarning) as caught:
        assert _solve("s", iterations=3) == ("s", 2, 3)
    assert [str(w.message) for w in caught] == [MESSAGE]
    assert caught[0].filename == __file__  # stacklevel: the caller's line, not the wrapper's


def test_old_positional_or_keyword_name_arrives():
    with pytest.warns(FutureWarning, match=r"num_labels= is now num_classes="):
        assert _solve("s", num_labels=7) == ("s", 7, 5)


def test_new_names_do_not_warn():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert _solve("s", 4, num_iterations=1) == ("s", 4, 1)
        assert _solve(scores="s", num_classes=4) == ("s", 4, 5)


@pytest.mark.parametrize(
    "args, kwargs",
    [
        ((), {"iterations": 1, "num_iterations": 2}),
        ((), {"num_labels": 3, "num_classes": 3}),
        ((3,), {"num_labels": 3}),  # the new name given positionally
    ],
)
def test_both_names_is_a_type_error(args, kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # refused before any warning
        with pytest.raises(TypeError, match="got both"):
            _solve("s", *args, **kwargs)


def test_signature_and_docstring_are_the_new_function():
    params = list(inspect.signature(_solve).parameters)
    assert params == ["scores", "num_classes", "num_iterations"]
    assert _solve.__doc__ == "Docstring of the new function."
    assert _solve.__name__ == "_solve"


def test_a_rename_to_no_parameter_is_refused():
    with pytest.raises(TypeError, match="cannot rename"):

        @renamed_arguments(iterations="num_iterations")
        def f(iterations: int = 1) -> int:
            return iterations


def test_renamed_keys():
    with pytest.warns(FutureWarning, match=r"^f\.yaml: iterations= is now num_iterations="):
        out = renamed_keys({"clip": 0.1, "iterations": 5}, {"iterations": "num_iterations"}, "f.yaml")
    assert out == {"clip": 0.1, "num_iterations": 5}
    assert list(out) == ["clip", "num_iterations"]
    with pytest.raises(ValueError, match="both"):
        renamed_keys({"iterations": 5, "num_iterations": 5}, {"iterations": "num_iterations"}, "f.yaml")


@pytest.mark.parametrize(
    "name, old, new",
    [
        ("crfrnn.dense.dense_crf", "iterations", "num_iterations"),
        ("crfrnn.dense.unary_from_labels", "num_labels", "num_classes"),
        ("crfrnn.crf.engine.infer", "iterations", "num_iterations"),
        ("crfrnn.crf.pairwise.label_transform", "num_labels", "num_classes"),
        ("crfrnn.fit.fit_crf", "iterations", "num_iterations"),
        ("crfrnn.fit.degraded_probs", "num_labels", "num_classes"),
        ("crfrnn.io.read_scores", "num_labels", "num_classes"),
        ("crfrnn.io.estimate_memory", "num_labels", "num_classes"),
        ("crfrnn.io.check_memory", "num_labels", "num_classes"),
    ],
)
def test_public_api_shows_the_new_names(name, old, new):
    import importlib

    module, attr = name.rsplit(".", 1)
    params = inspect.signature(getattr(importlib.import_module(module), attr)).parameters
    assert new in params and old not in params


def test_dense_crf_old_keyword():
    from crfrnn.dense import dense_crf, unary_from_labels

    image = np.zeros((6, 7, 3), np.uint8)
    probs = np.full((2, 6, 7), 0.5, np.float32)
    with pytest.warns(FutureWarning, match=r"dense_crf: iterations= is now num_iterations="):
        old = dense_crf(image, probs, iterations=1)
    np.testing.assert_array_equal(old, dense_crf(image, probs, num_iterations=1))
    with pytest.warns(FutureWarning, match=r"unary_from_labels: num_labels= is now num_classes="):
        assert unary_from_labels(np.zeros((6, 7), np.int64), num_labels=3).shape == (3, 6, 7)
    with pytest.raises(TypeError, match="got both"):
        dense_crf(image, probs, iterations=1, num_iterations=1)

"""Fuzzing more public functions (see :mod:`fuzz_registry`): random shapes, dtypes, scales and non-finite
values. Each call returns finite output of the right shape or raises ValueError/TypeError/MemoryError with a
message; never another exception, NaN or a crash. Hangs are bounded by small sizes and iteration counts."""

from __future__ import annotations

import tempfile
import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
import torch
from fuzz_settings import fuzz
from hypothesis import given
from hypothesis import strategies as st

import crfrnn
import crfrnn.compat as dcrf
from crfrnn import io as cio
from crfrnn import metrics

ALLOWED = (ValueError, TypeError, MemoryError)
#: file readers may also say that a file cannot be read (OSError, with the file's name)
FILE_ALLOWED = (*ALLOWED, OSError)
SPECIAL = [0.0, 1.0, -1.0, 1e-30, 1e30, float("nan"), float("inf"), -float("inf"), 255.0]
number = st.one_of(st.sampled_from(SPECIAL), st.floats(-1e6, 1e6, allow_nan=False), st.integers(-3, 300))
small = st.integers(1, 6)


def attempt(call: Callable[[], Any], allowed: tuple = ALLOWED) -> Any:
    """The call's result, or None if it refused with an allowed exception that carries a message."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return call()
        except allowed as err:
            assert str(err), f"{type(err).__name__} without a message"
            return None


def finite(x: Any) -> bool:
    arr = x.detach().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    return bool(np.isfinite(arr).all())


@st.composite
def tensor(draw, shape, dtype=None):
    """A tensor of ``shape`` with one value perhaps non-finite, of a random dtype unless given."""
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    scale = draw(st.sampled_from([1.0, 255.0, 1e-3, 1e6]))
    arr = rng.standard_normal(shape) * scale
    if draw(st.booleans()) and arr.size:
        arr.flat[draw(st.integers(0, arr.size - 1))] = draw(st.sampled_from(SPECIAL))
    name = dtype or draw(st.sampled_from(["float32", "float64", "float16", "int64"]))
    with np.errstate(over="ignore", invalid="ignore"):
        out = arr.astype(name) if name != "int64" else np.nan_to_num(arr).clip(-1e9, 1e9).astype(name)
    return torch.from_numpy(np.ascontiguousarray(out))


@fuzz(30)
@given(st.data(), small, small, st.integers(1, 4), number, number, st.integers(-1, 3))
def test_crfrnn_module(data, h, w, labels, theta, weight, iterations):
    unary = data.draw(tensor((1, labels, h, w), data.draw(st.sampled_from(["float32", "float64", "float16"]))))
    image = data.draw(tensor((1, data.draw(st.integers(1, 4)), h, w)))
    module = attempt(
        lambda: crfrnn.CrfRnn(labels, theta_alpha=theta, bilateral_weight=weight, num_iterations=iterations)
    )
    if module is None:
        return
    out = attempt(lambda: module.eval()(unary, image))
    assert out is None or (out.shape == unary.shape and finite(out))


def test_crfrnn_module_float16_overflow():
    """Found by the fuzz suite: CrfRnn computes a float16 unary in float32, and a bilateral weight of 3.5e5 makes
    the logits leave float16's range (65504); it refuses, naming the fix, instead of returning -inf."""
    module = crfrnn.CrfRnn(1, theta_alpha=1.0, bilateral_weight=347725.0, num_iterations=3).eval()
    unary = torch.tensor([[[[-0.8711]]]], dtype=torch.float16)
    image = torch.tensor([-647976.0, 32344.0, 965086.0, -1675500.0]).reshape(1, 4, 1, 1)
    with pytest.raises(ValueError, match=r"float16's range.*unary.float\(\)"):
        module(unary, image)
    assert finite(module(unary.float(), image))
    small = crfrnn.CrfRnn(2, num_iterations=2).eval()(
        torch.zeros(1, 2, 3, 3, dtype=torch.float16), image[..., :1].expand(1, 4, 3, 3)
    )
    assert small.dtype == torch.float16 and finite(small)


@fuzz(30)
@given(st.data(), small, small, st.integers(1, 4), number, number, number, st.sampled_from(["mean", "sum", "none"]))
def test_dense_crf_loss(data, h, w, labels, alpha, beta, weight, reduction):
    probs = data.draw(tensor((1, labels, h, w)))
    image = data.draw(tensor((1, 3, h, w)))
    call = lambda: crfrnn.dense_crf_loss(  # noqa: E731
        probs, image, theta_alpha=alpha, theta_beta=beta, bilateral_weight=weight, reduction=reduction
    )
    out = attempt(call)
    assert out is None or finite(out)


@fuzz(30)
@given(st.data(), small, small, st.integers(1, 4), number, st.integers(-1, 3))
def test_infer(data, h, w, labels, weight, iterations):
    scores = data.draw(tensor((1, labels, h, w)))
    features = data.draw(tensor((1, data.draw(st.integers(1, 5)), h, w), "float32"))
    kernels = attempt(lambda: [crfrnn.Pairwise(features, weight=weight)])
    if kernels is None:
        return
    out = attempt(lambda: crfrnn.infer(scores, kernels, num_iterations=iterations))
    assert out is None or (out.shape == scores.shape and finite(out))


@fuzz(30)
@given(st.data(), small, small, st.integers(1, 4))
def test_gaussian_filter(data, h, w, labels):
    values = data.draw(tensor((1, labels, h, w)))
    features = data.draw(tensor((1, data.draw(st.integers(1, 5)), h, w)))
    exact = data.draw(st.booleans())
    out = attempt(lambda: crfrnn.gaussian_filter(values, features, exact))
    assert out is None or (out.shape == values.shape and finite(out))


@fuzz(2)
@given(st.data(), st.integers(1, 3), st.integers(2, 3), number, st.integers(-1, 2))
def test_fit_crf(data, count, labels, lr, epochs):
    rng = np.random.default_rng(data.draw(st.integers(0, 2**16)))
    images = [rng.integers(0, 256, (6, 6, 3)).astype(np.uint8) for _ in range(count)]
    probs = [data.draw(tensor((labels, 6, 6), "float32")).numpy() for _ in range(count)]
    truth = [rng.integers(0, labels + 1, (6, 6)).astype(np.int64) for _ in range(count)]
    result = attempt(lambda: crfrnn.fit_crf(images, probs, truth, lr=lr, epochs=epochs, progress=False))
    if result is not None:
        assert all(np.isfinite(v) for v in result.params.values() if isinstance(v, float)), result.params


@fuzz(30)
@given(st.data(), st.lists(st.integers(0, 6), min_size=0, max_size=4), st.sampled_from(["npy", "npz", "bytes"]))
def test_read_scores_and_guides(data, shape, kind):
    path = Path(tempfile.mkdtemp()) / f"s.{'npy' if kind == 'bytes' else kind}"
    arr = data.draw(tensor(tuple(shape), data.draw(st.sampled_from(["float32", "float64", "float16", "int64"]))))
    if kind == "npy":
        np.save(path, arr.numpy())
    elif kind == "npz":
        np.savez(path, arr.numpy())
    else:
        path.write_bytes(data.draw(st.binary(max_size=200)))
    size = (data.draw(small), data.draw(small))
    logits = data.draw(st.booleans())
    out = attempt(lambda: cio.read_scores(path, size, logits=logits), FILE_ALLOWED)
    if out is not None:
        assert out.scores.shape[-2:] == size or out.scores.shape[:2] == size
    guide = attempt(lambda: cio.read_guide(path), FILE_ALLOWED)
    if guide is not None:
        shape = tuple(guide.data.shape[:-1]) if guide.data.ndim else ()
        attempt(lambda: cio.read_volume_scores(path, shape), FILE_ALLOWED)
    pair = attempt(lambda: cio.read_volume(path, path), FILE_ALLOWED)  # the same file as guide and scores
    if pair is not None:
        assert pair[1].ndim == len(pair[2]) + 1 and pair[1].dtype == np.float32


@fuzz(30)
@given(st.data(), small, small, st.integers(-1, 5), st.integers(-3, 300))
def test_metrics(data, h, w, classes, ignore):
    rng = np.random.default_rng(data.draw(st.integers(0, 2**16)))
    pred = torch.from_numpy(rng.integers(-2, 8, (h, w)))
    target = torch.from_numpy(rng.choice([-1, 0, 1, 2, 3, 255, 7], (h, w)))
    for call in (
        lambda: metrics.confusion_matrix(pred, target, classes, ignore_index=ignore),
        lambda: metrics.segmentation_metrics(pred, target, classes, ignore),
        lambda: metrics.boundary_accuracy(pred, target, classes, widths=(1, data.draw(st.integers(-2, 9)))),
        lambda: metrics.boundary_mask(target, ignore),
        lambda: metrics.boundary_band(target, data.draw(st.integers(-2, 9)), ignore),
        lambda: metrics.metrics_from_confusion_matrix(data.draw(tensor((classes, classes) if classes > 0 else (2,)))),
    ):
        attempt(call)  # no exception but the allowed ones; metrics may be NaN for absent classes (documented)


@fuzz(30)
@given(st.data(), st.integers(1, 4), small, small, number, number)
def test_unaries(data, labels, h, w, clip, gt_prob):
    probs = data.draw(tensor((labels, h, w)))
    out = attempt(lambda: crfrnn.unary_from_probs(probs, clip=clip))
    assert out is None or (out.shape == probs.shape and finite(out))
    ints = torch.from_numpy(np.random.default_rng(0).integers(-1, labels + 2, (h, w)))
    out = attempt(lambda: crfrnn.unary_from_labels(ints, labels, gt_prob=gt_prob))
    assert out is None or finite(out)
    out = attempt(lambda: dcrf.unary_from_softmax(probs.numpy(), clip=clip))
    assert out is None or not clip > 0 or finite(out)  # documented (pydensecrf's): no clip, p = 0 gives inf
    out = attempt(lambda: dcrf.unary_from_labels(ints.numpy(), labels, gt_prob))
    assert out is None or finite(out)
    out = attempt(lambda: dcrf.create_pairwise_bilateral((clip, clip), (gt_prob,) * 3, probs.numpy(), chdim=0))
    assert out is None or finite(out)

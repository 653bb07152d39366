"""Fuzzing the public entry points: random shapes, dtypes, scales and non-finite values. Each call returns finite
output of the right shape or raises ValueError/TypeError; it never crashes the interpreter or returns NaN.

Bounded for CI (a fixed number of examples per entry point, derandomised so that a failure reproduces)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

hypothesis = pytest.importorskip("hypothesis", reason="hypothesis drives the fuzz tests")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import crfrnn  # noqa: E402
import crfrnn.compat as dcrf  # noqa: E402

FUZZ = settings(
    max_examples=150,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
SPECIAL = [0.0, 1.0, -1.0, 1e-30, 1e30, 1e-18, 1e18, float("nan"), float("inf"), -float("inf"), 255.0]
number = st.one_of(st.sampled_from(SPECIAL), st.floats(-1e6, 1e6, allow_nan=False), st.integers(-3, 300))
width = st.one_of(number, st.tuples(number, number), st.tuples(number, number, number))
ALLOWED = (ValueError, TypeError)


def _finite(x) -> bool:
    arr = x.detach().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    return bool(np.isfinite(arr).all())


@st.composite
def problem(draw):
    ndim = draw(st.integers(1, 3))
    shape = tuple(draw(st.lists(st.integers(1, 7), min_size=ndim, max_size=ndim)))
    labels = draw(st.integers(1, 5))
    channels = draw(st.integers(1, 4))
    scale = draw(st.sampled_from([1.0, 255.0, 1e-3, 1e6]))
    dtype = draw(st.sampled_from(["float32", "float64", "uint8", "float16", "int64"]))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    with np.errstate(over="ignore"):  # float16 overflows to inf on purpose: a non-finite guide
        guide = (rng.random(shape + (channels,)) * scale).astype(dtype)
    probs = rng.dirichlet(np.ones(max(labels, 2)), shape).astype(np.float32)
    probs = np.moveaxis(probs, -1, 0)[:labels] if labels > 1 else np.moveaxis(probs, -1, 0)[:1]
    if draw(st.booleans()):
        probs = probs.copy()
        probs.flat[draw(st.integers(0, probs.size - 1))] = draw(st.sampled_from(SPECIAL))
    return guide, np.ascontiguousarray(probs)


@FUZZ
@given(problem(), width, width, number, number, st.integers(-1, 3))
def test_dense_crf(prob, sxy, srgb, compat, bcompat, iterations):
    guide, probs = prob
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            kind = "probs" if probs.shape[0] > 1 and np.isclose(probs.sum(0), 1).all() else "logits"
            out = crfrnn.dense_crf(
                guide,
                **{kind: probs},
                num_iterations=iterations,
                gaussian_sxy=sxy,
                bilateral_srgb=srgb,
                gaussian_compat=compat,
                bilateral_compat=bcompat,
            )
        except ALLOWED:
            return
    assert out.shape == probs.shape and _finite(out)


@FUZZ
@given(problem(), number, number, st.integers(0, 3), st.sampled_from(["torch", "auto"]), st.booleans())
def test_mean_field(prob, theta, weight, iterations, backend, grad):
    guide, probs = prob
    u = torch.from_numpy(np.log(np.clip(probs, 1e-6, None)) if np.isfinite(probs).all() else probs)[None]
    g = torch.from_numpy(np.moveaxis(guide, -1, 0).copy())[None]
    if grad:
        u = u.float().requires_grad_()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            out = crfrnn.mean_field(
                u, g, theta_alpha=theta, bilateral_weight=weight, num_iterations=iterations, backend=backend
            )
        except ALLOWED:
            return
    assert out.shape == u.shape and _finite(out)


@FUZZ
@given(
    st.integers(-2, 6),
    st.integers(-2, 6),
    st.integers(-1, 4),
    number,
    number,
    st.one_of(st.integers(-2, 4), st.floats(-1, 4), st.just("3")),
)
def test_compat_densecrf2d(w, h, labels, sxy, compat, niter):
    try:
        d = dcrf.DenseCRF2D(w, h, labels)
        d.setUnaryEnergy(np.ones((labels, w * h), np.float32))
        d.addPairwiseGaussian(sxy=sxy, compat=compat)
        d.addPairwiseBilateral(sxy=sxy, srgb=13, rgbim=np.zeros((h, w, 3), np.uint8), compat=compat)
        q = np.array(d.inference(niter))
    except ALLOWED:
        return
    assert q.shape == (labels, w * h) and _finite(q)

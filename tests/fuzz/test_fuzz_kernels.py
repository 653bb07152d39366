"""Fuzzing the numeric building blocks (see :mod:`fuzz_registry`): energies, lattice filters, feature builders
and the pairwise terms, with random shapes, dtypes, scales and non-finite values. Each call returns finite output
of the right shape or raises ValueError/TypeError/MemoryError with a message; never another exception or NaN.
Tiny inputs and few examples keep the suite within its CI budget."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from fuzz_settings import fuzz
from hypothesis import given
from hypothesis import strategies as st
from test_fuzz_public import attempt, finite, number, small, tensor

import crfrnn
from crfrnn import energy
from crfrnn.crf import guide_features, label_transform
from crfrnn.crf.pairwise import build_kernels, pairwise_logits
from crfrnn.lattice.exact import exact_gaussian_filter

width = st.one_of(number, st.tuples(number, number))
dtypes = st.sampled_from(["float32", "float64", "float16", "int64"])


@st.composite
def points(draw):
    """``(values (B, N, C), features (B, N, D))`` of random dtypes, scales and perhaps a non-finite entry."""
    b, n, c, d = draw(st.integers(1, 2)), draw(st.integers(1, 12)), draw(st.integers(1, 3)), draw(st.integers(1, 4))
    return draw(tensor((b, n, c), draw(dtypes))), draw(tensor((b, n, d), draw(dtypes)))


@fuzz(15)
@given(points(), st.sampled_from(["auto", "torch"]), st.booleans())
def test_lattice_filters(pts, backend, exclude):
    values, features = pts
    # linear filters, like torch's convolutions, pass non-finite values through (NaN in, NaN out; checking them
    # would cost a pass per mean-field iteration): finite values must give finite output
    ok = finite(values)
    out = attempt(lambda: crfrnn.lattice_filter(values, features, backend=backend))
    assert out is None or (out.shape == values.shape and (finite(out) or not ok))
    lattice = attempt(lambda: crfrnn.PermutohedralLattice(features, backend=backend))
    if lattice is not None:
        out = attempt(lambda: lattice.filter(values))
        assert out is None or (out.shape == values.shape and (finite(out) or not ok))
        weights = attempt(lattice.self_weights)
        assert weights is None or finite(weights)
    norm = "row" if exclude else "symmetric"
    kernel = attempt(lambda: crfrnn.GaussianKernel(features, normalization=norm, exclude_self=exclude, exact=exclude))
    if kernel is not None:
        out = attempt(lambda: kernel(values))
        assert out is None or (out.shape == values.shape and (finite(out) or not ok))


@pytest.mark.parametrize(
    "values,features",
    [
        (torch.ones(1, 1, 1), torch.zeros(1, 1, 1, dtype=torch.int64)),
        (torch.ones(1, 1, 1), torch.zeros(1, 1, 1, dtype=torch.float64)),
        (torch.ones(1, 1, 1, dtype=torch.float16), torch.full((1, 1, 1), float("inf"), dtype=torch.float16)),
    ],
    ids=["int64-features", "mixed-float", "float16-inf"],
)
def test_exact_gaussian_filter_checked(values, features):
    """Found by the fuzz suite: the exact filter raised RuntimeError on integer or mixed dtypes and returned NaN
    for non-finite features; it now refuses them with TypeError/ValueError naming the fix."""
    with pytest.raises((TypeError, ValueError)):
        exact_gaussian_filter(values, features)


@fuzz(15)
@given(st.data(), st.lists(st.integers(1, 5), min_size=1, max_size=3), width, width)
def test_features(data, shape, alpha, beta):
    image = data.draw(tensor((1, data.draw(st.integers(1, 3)), *shape)))
    n = int(np.prod(shape))
    out = attempt(lambda: crfrnn.bilateral_features(image, alpha, beta))
    assert out is None or (out.shape[:2] == (1, n) and finite(out))
    out = attempt(lambda: crfrnn.position_features(shape, alpha, spacing=data.draw(st.one_of(st.none(), width))))
    assert out is None or (out.shape == (1, n, len(shape)) and finite(out))
    out = attempt(lambda: crfrnn.spatial_features(1, shape[0], shape[-1], alpha))
    assert out is None or finite(out)
    out = attempt(lambda: guide_features(image, beta))
    assert out is None or (out.shape == (1, n, image.shape[1]) and finite(out))
    count = data.draw(st.integers(-1, 4))
    out = attempt(lambda: crfrnn.spatial_features(count, data.draw(st.integers(-1, 4)), 2, 1.0))
    assert out is None or finite(out)


@st.composite
def crf_problem(draw):
    """``(labels (1, N), unary (1, L, N), q (1, L, N), kernels)`` with random weights and features."""
    n, labels = draw(st.integers(1, 10)), draw(st.integers(1, 4))
    unary = draw(tensor((1, labels, n), draw(st.sampled_from(["float32", "float64"]))))
    q = torch.softmax(draw(tensor((1, labels, n), "float64")).nan_to_num(), 1).to(unary.dtype)
    if draw(st.booleans()):
        q = draw(tensor((1, labels, n), str(unary.dtype).split(".")[-1]))
    features = draw(tensor((1, n, draw(st.integers(1, 3))), str(unary.dtype).split(".")[-1]))
    weight = draw(st.one_of(number, st.just([1.0] * labels), st.just(np.ones((labels, labels)).tolist())))
    compat = draw(st.one_of(st.none(), number, st.just([0.5] * labels)))
    kernels = attempt(lambda: [crfrnn.Pairwise(features, weight=weight, compatibility=compat)])
    target = torch.from_numpy(np.random.default_rng(n).integers(-1, labels + 1, (1, n)))
    return target, unary, q, kernels


@fuzz(15)
@given(crf_problem(), st.booleans(), st.sampled_from(["exact", "densecrf"]))
def test_energies(prob, exact, convention):
    target, unary, q, kernels = prob
    if kernels is None:
        return
    out = attempt(lambda: crfrnn.crf_energy(target, unary, kernels, exact=exact))
    assert out is None or (out.shape == (1,) and finite(out))
    out = attempt(lambda: crfrnn.kl_divergence(q, unary, kernels, convention=convention, exact=exact))
    assert out is None or (out.shape == (1,) and finite(out))
    built = attempt(lambda: build_kernels(kernels, unary.dtype, exact=exact))
    if built is not None:
        transforms = [
            attempt(lambda: label_transform(k.weight, k.compatibility, unary.shape[1], unary)) for k in kernels
        ]
        if all(t is not None for t in transforms):
            marginals = torch.softmax(q.nan_to_num().clamp(-50, 50), 1).transpose(1, 2)  # its contract: marginals
            out = attempt(lambda: pairwise_logits(marginals, built, transforms))
            assert out is None or (out.shape == marginals.shape and finite(out))


@fuzz(15)
@given(st.data(), small, small, st.integers(1, 4), width, width, number, st.sampled_from(["symmetric", "row", "x"]))
def test_dense_crf_energy(data, h, w, labels, sxy, srgb, compat, normalization):
    image = data.draw(tensor((1, data.draw(st.integers(1, 3)), h, w)))
    logits = data.draw(tensor((1, labels, h, w), data.draw(st.sampled_from(["float32", "float64"]))))
    target = torch.from_numpy(np.random.default_rng(h * w).integers(-1, labels + 1, (1, h, w)))
    params = dict(gaussian_sxy=sxy, bilateral_srgb=srgb, bilateral_compat=compat, normalization=normalization)
    kernels = attempt(lambda: energy.dense_crf_kernels(image, **params))
    assert kernels is None or all(finite(k.features) for k in kernels)
    out = attempt(lambda: energy.dense_crf_energy(target, image, logits, exact=True, **params))
    assert out is None or (out.shape == (1,) and finite(out))


@fuzz(15)
@given(st.data(), st.integers(1, 4), st.one_of(number, st.lists(number, min_size=1, max_size=4)), st.booleans())
def test_label_transform(data, labels, weight, matrix):
    like = data.draw(tensor((1,), data.draw(st.sampled_from(["float32", "float64", "float16"]))))
    compat = data.draw(st.one_of(st.none(), number, st.lists(number, min_size=1, max_size=4)))
    if matrix and isinstance(weight, list):
        weight = [weight] * len(weight)
    out = attempt(lambda: label_transform(weight, compat, labels, like))
    assert out is None or finite(out)

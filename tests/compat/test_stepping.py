"""crfrnn.compat's step-by-step inference (startInference / stepInference / klDivergence / map) runs the engine's
compiled iteration one at a time: the same marginals as inference(n), the same free energy as
crfrnn.energy.kl_divergence, and pydensecrf's results where it is installed."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from tests.test_dense import scene

import crfrnn.compat as dcrf
from crfrnn.energy import kl_divergence


def model(compat_b=10.0, h=20, w=24, num_labels=3, module=dcrf):
    image, probs, _ = scene(h=h, w=w, num_labels=num_labels)
    d = module.DenseCRF2D(w, h, num_labels)
    d.setUnaryEnergy(dcrf.unary_from_softmax(probs))
    d.addPairwiseGaussian(sxy=3, compat=3)
    d.addPairwiseBilateral(sxy=8, srgb=13, rgbim=image, compat=compat_b)
    return d


@pytest.mark.parametrize("compat_b", [10.0, np.array([1.0, 4.0, 9.0], np.float32), np.eye(3, dtype=np.float32)])
def test_five_steps_equal_inference_five(compat_b):
    d = model(compat_b)
    q, t1, t2 = d.startInference()
    assert q.shape == (3, 480) and q.dtype == np.float32
    assert np.allclose(q, d.inference(0), atol=1e-6)
    for _ in range(5):
        d.stepInference(q, t1, t2)
    assert np.allclose(q, d.inference(5), atol=1e-6)
    assert (d.map(5) == d.inference(5).argmax(0)).all()


def test_kl_divergence_matches_the_energy_module():
    d = model(np.array([1.0, 4.0, 9.0], np.float32))
    q, t1, t2 = d.startInference()
    d.stepInference(q, t1, t2)
    ref = kl_divergence(torch.from_numpy(q)[None], d._logits(), d._pairwise, convention="densecrf")
    assert d.klDivergence(q) == pytest.approx(float(ref[0]), rel=1e-5)


def test_q_of_another_dtype_or_layout_is_updated_in_place():
    d = model()
    q, t1, t2 = d.startInference()
    q64 = q.astype(np.float64)
    fortran = np.asfortranarray(q)
    for arr in (q, q64, fortran):
        d.stepInference(arr, t1, t2)
    assert np.allclose(q64, q, atol=1e-6) and np.allclose(fortran, q, atol=1e-6)


def test_terms_added_after_stepping_are_used():
    d = model()
    q, t1, t2 = d.startInference()
    d.stepInference(q, t1, t2)
    d.addPairwiseGaussian(sxy=1, compat=5)
    q, t1, t2 = d.startInference()
    d.stepInference(q, t1, t2)
    assert np.allclose(q, d.inference(1), atol=1e-6)
    d.setUnaryEnergy(np.zeros((3, 480), np.float32))
    assert np.allclose(d.startInference()[0], 1 / 3)


def test_a_copy_after_stepping_steps_alike():
    d = model()
    q, t1, t2 = d.startInference()
    d.stepInference(q, t1, t2)
    e = copy.deepcopy(d)
    r = q.copy()
    d.stepInference(q, t1, t2)
    e.stepInference(r, t1, t2)
    assert np.array_equal(q, r)


def test_no_pairwise_term_steps_to_the_unary_softmax():
    d = dcrf.DenseCRF(6, 2)
    d.setUnaryEnergy(np.array([[0, 1, 2, 0, 0, 3], [1, 0, 0, 2, 0, 0]], np.float32))
    q, t1, t2 = d.startInference()
    start = q.copy()
    d.stepInference(q, t1, t2)
    assert np.allclose(q, start) and np.isfinite(d.klDivergence(q))


def test_kl_divergence_refuses_what_is_not_marginals():
    d = model()
    q, _, _ = d.startInference()
    with pytest.raises(ValueError, match="shape"):
        d.klDivergence(q[:, :10])
    with pytest.raises(ValueError, match="marginals"):
        d.klDivergence(q * 2)
    bad = q.copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        d.klDivergence(bad)


def test_steps_match_pydensecrf():
    pdc = pytest.importorskip("pydensecrf.densecrf", reason="pydensecrf2 (densecrf) is not installed")
    ours, theirs = model(), model(module=pdc)
    q, t1, t2 = ours.startInference()
    p, u1, u2 = theirs.startInference()
    for _ in range(5):
        ours.stepInference(q, t1, t2)
        theirs.stepInference(p, u1, u2)
        assert ours.klDivergence(q) == pytest.approx(theirs.klDivergence(p), rel=1e-3)
    assert np.abs(q - np.array(p)).max() < 1e-3


def test_a_float_image_with_nan_is_refused():
    d = dcrf.DenseCRF2D(4, 3, 2)
    img = np.zeros((3, 4, 3), np.float32)
    d.addPairwiseBilateral(sxy=3, srgb=3, rgbim=img, compat=1)
    img[0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="rgbim contains NaN"):
        d.addPairwiseBilateral(sxy=3, srgb=3, rgbim=img, compat=1)

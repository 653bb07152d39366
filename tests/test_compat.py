"""crfrnn.compat: pydensecrf's API on top of crfrnn (parity with pydensecrf itself is in test_parity.py)."""

from __future__ import annotations

import numpy as np
import pytest
from tests.test_dense import scene

import crfrnn.compat as dcrf
from crfrnn import dense_crf


def test_same_as_dense_crf():
    image, probs, _ = scene()
    num_labels, h, w = probs.shape
    d = dcrf.DenseCRF2D(w, h, num_labels)
    d.setUnaryEnergy(dcrf.unary_from_softmax(probs))
    d.addPairwiseGaussian(sxy=3, compat=3)
    d.addPairwiseBilateral(sxy=80, srgb=13, rgbim=image, compat=10)
    q = np.array(d.inference(5)).reshape(num_labels, h, w)
    assert np.abs(q - dense_crf(image, probs, num_iterations=5)).max() < 1e-5


def test_step_inference_equals_inference():
    image, probs, _ = scene(h=20, w=24)
    d = dcrf.DenseCRF2D(24, 20, 3)
    d.setUnaryEnergy(dcrf.unary_from_softmax(probs))
    d.addPairwiseBilateral(sxy=(10, 12), srgb=(13, 14, 15), rgbim=image, compat=np.eye(3, dtype=np.float32))
    q, t1, t2 = d.startInference()
    kls = [d.klDivergence(q)]
    for _ in range(4):
        d.stepInference(q, t1, t2)
        kls.append(d.klDivergence(q))
    assert np.allclose(q, d.inference(4), atol=1e-6)
    assert kls[-1] < kls[0]  # mean field decreases the KL divergence here


def test_errors():
    d = dcrf.DenseCRF2D(4, 3, 2)
    with pytest.raises(ValueError, match="Bad shape for unary"):
        d.setUnaryEnergy(np.zeros((2, 11), np.float32))
    with pytest.raises(ValueError, match="Bad shape for pairwise bilateral"):
        d.addPairwiseBilateral(sxy=3, srgb=3, rgbim=np.zeros((4, 3, 3), np.uint8), compat=1)
    with pytest.raises(ValueError, match="only works for RGB"):
        d.addPairwiseBilateral(sxy=3, srgb=3, rgbim=np.zeros((3, 4), np.uint8), compat=1)
    with pytest.raises(ValueError, match="Bad shape for pairwise energy"):
        d.addPairwiseEnergy(np.zeros((2, 5), np.float32), compat=1)
    with pytest.raises(ValueError, match="2 x 2"):
        d.addPairwiseGaussian(sxy=3, compat=np.eye(3))
    with pytest.raises(ValueError, match="normalization"):
        d.addPairwiseGaussian(sxy=3, compat=1, normalization=7)
    with pytest.raises(NotImplementedError, match="CrfRnn"):
        d.setKernelParameters(np.ones(2))
    with pytest.raises(NotImplementedError, match="logistic"):
        d.setUnaryEnergy(np.zeros((2, 12), np.float32), np.zeros((1, 12), np.float32))


def test_no_unary_gives_uniform():
    d = dcrf.DenseCRF(10, 4)
    d.addPairwiseEnergy(np.random.rand(2, 10).astype(np.float32), compat=3)
    assert np.allclose(d.inference(3), 0.25)

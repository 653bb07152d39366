"""Parity with Krähenbühl's densecrf itself (PyPI's pydensecrf2), on real photos at full size.

Skipped, with the reason shown, where pydensecrf2 is not installed (``pip install pydensecrf2``:
it compiles from source; CI installs it).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

dcrf = pytest.importorskip("pydensecrf.densecrf", reason="pydensecrf2 (densecrf) is not installed")
putils = pytest.importorskip("pydensecrf.utils", reason="pydensecrf2 (densecrf) is not installed")
skdata = pytest.importorskip("skimage.data", reason="scikit-image provides the sample photos")

import crfrnn.compat as ccrf  # noqa: E402
from crfrnn import dense_crf  # noqa: E402


def photo_and_probs(name: str, h: int = 375, w: int = 500, num_labels: int = 21, seed: int = 0):
    """A real photo and coarse, noisy probabilities over 21 labels (a blobby CNN's output)."""
    from skimage.transform import resize

    image = (resize(getattr(skdata, name)(), (h, w), anti_aliasing=True) * 255).astype(np.uint8)
    g = torch.Generator().manual_seed(seed)
    coarse = torch.randn(1, num_labels, h // 16 + 1, w // 16 + 1, generator=g) * 2.5
    logits = F.interpolate(coarse, size=(h, w), mode="bilinear")[0] + 0.5 * torch.randn(num_labels, h, w, generator=g)
    return np.ascontiguousarray(image), torch.softmax(logits, 0).numpy()


def reference(image, probs, iterations, **kw):
    num_labels, h, w = probs.shape
    d = dcrf.DenseCRF2D(w, h, num_labels)
    d.setUnaryEnergy(putils.unary_from_softmax(probs))
    d.addPairwiseGaussian(sxy=kw.get("gsxy", 3), compat=kw.get("gcompat", 3))
    d.addPairwiseBilateral(sxy=kw.get("bsxy", 80), srgb=kw.get("bsrgb", 13), rgbim=image, compat=kw.get("bcompat", 10))
    return np.array(d.inference(iterations)).reshape(num_labels, h, w)


@pytest.mark.parametrize("name", ["astronaut", "chelsea", "coffee"])
@pytest.mark.parametrize("iterations", [5, 10])
def test_dense_crf_matches_densecrf(name, iterations):
    image, probs = photo_and_probs(name)
    ref = reference(image, probs, iterations)
    ours = dense_crf(image, probs, num_iterations=iterations)
    agreement = (ours.argmax(0) == ref.argmax(0)).mean()
    mad = np.abs(ours - ref).mean()
    assert agreement >= 0.999, agreement
    assert mad < 1e-4, mad
    # the CRF did real work, so agreement is not trivial
    assert (ref.argmax(0) != probs.argmax(0)).mean() > 0.1


def test_pure_torch_path_matches_densecrf():
    image, probs = photo_and_probs("astronaut", h=150, w=200)
    ref = reference(image, probs, 5, bsxy=30)
    ours = dense_crf(image, probs, num_iterations=5, bilateral_sxy=30.0, backend="torch")
    assert (ours.argmax(0) == ref.argmax(0)).mean() >= 0.999 and np.abs(ours - ref).mean() < 1e-4


@pytest.mark.parametrize(
    "case",
    ["potts-symmetric", "diagonal-after", "matrix-before", "potts-none", "mixed-symmetric"],
)
def test_compat_shim_matches_pydensecrf(case):
    """The same script run with `import crfrnn.compat as dcrf` gives pydensecrf's results."""
    image, probs = photo_and_probs("coffee", h=60, w=80, num_labels=4)
    rng = np.random.default_rng(0)
    matrix = ((rng.random((4, 4)) - 0.5) * 4).astype(np.float32)
    compat_g, compat_b, norm = {
        "potts-symmetric": (3, 10, "NORMALIZE_SYMMETRIC"),
        "diagonal-after": (np.array([1, 2, 3, 4], np.float32), 5, "NORMALIZE_AFTER"),
        "matrix-before": (matrix, 5, "NORMALIZE_BEFORE"),
        "potts-none": (0.05, 0.02, "NO_NORMALIZATION"),
        "mixed-symmetric": (3, matrix, "NORMALIZE_SYMMETRIC"),
    }[case]
    results = []
    for mod in (dcrf, ccrf):
        d = mod.DenseCRF2D(80, 60, 4)
        d.setUnaryEnergy(putils.unary_from_softmax(probs))
        d.addPairwiseGaussian(sxy=3, compat=compat_g, normalization=getattr(mod, norm))
        d.addPairwiseBilateral(sxy=20, srgb=13, rgbim=image, compat=compat_b, normalization=getattr(mod, norm))
        q = np.array(d.inference(5))
        q2, t1, t2 = d.startInference()
        for _ in range(2):
            d.stepInference(q2, t1, t2)
        results.append((q, np.array(q2), d.klDivergence(q2)))
    (q_ref, s_ref, kl_ref), (q, s, kl) = results
    assert np.abs(q - q_ref).max() < 1e-4 and np.abs(s - s_ref).max() < 1e-4
    assert abs(kl - kl_ref) <= 1e-4 * abs(kl_ref)


def test_compat_utils_match_pydensecrf():
    image, probs = photo_and_probs("coffee", h=20, w=30, num_labels=3)
    labels = probs.argmax(0)
    assert np.allclose(ccrf.unary_from_softmax(probs, scale=0.8), putils.unary_from_softmax(probs, scale=0.8))
    for zero_unsure in (True, False):
        assert np.allclose(
            ccrf.unary_from_labels(labels, 3, 0.7, zero_unsure=zero_unsure),
            putils.unary_from_labels(labels, 3, 0.7, zero_unsure=zero_unsure),
        )
    assert np.allclose(
        ccrf.create_pairwise_bilateral((3, 4), (5, 6, 7), image, chdim=2),
        putils.create_pairwise_bilateral((3, 4), (5, 6, 7), image, chdim=2),
    )
    assert np.allclose(
        ccrf.create_pairwise_gaussian((3, 4), (20, 30)), putils.create_pairwise_gaussian((3, 4), (20, 30))
    )

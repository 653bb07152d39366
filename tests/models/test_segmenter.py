"""Tests of crfrnn.models.CrfRnnSegmenter, against the real crfrnn.CrfRnn head."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from crfrnn import CrfRnn
from crfrnn.models import CrfRnnSegmenter, SmallFCN

NUM_CLASSES = 3


class CoarseBackbone(nn.Module):
    """Returns SmallFCN's 1/8-resolution logits, to exercise the up-sampling."""

    def __init__(self) -> None:
        super().__init__()
        self.net = SmallFCN(NUM_CLASSES, width=8)

    def forward(self, image):
        return self.net.forward_coarse(image)


class DictBackbone(nn.Module):
    """torchvision-style: expects a normalised image, returns {"out": logits, "aux": ...}."""

    def __init__(self) -> None:
        super().__init__()
        self.net = SmallFCN(NUM_CLASSES, width=8)

    def forward(self, image):
        out = self.net(image)
        return {"out": out, "aux": out.detach()}


class Returns(nn.Module):
    """A backbone returning a fixed object, for the error paths."""

    def __init__(self, value) -> None:
        super().__init__()
        self.value = value

    def forward(self, image):
        return self.value


def _image(b=2, h=24, w=32, dtype=torch.float32):
    torch.manual_seed(0)
    return torch.rand(b, 3, h, w, dtype=dtype) * 255


def _crf(num_classes=NUM_CLASSES):
    return CrfRnn(num_classes, num_iterations=2)


class TestCrfRnnSegmenter:
    def test_smoke(self):
        model = CrfRnnSegmenter(SmallFCN(NUM_CLASSES, width=8), _crf()).eval()
        image = _image()
        out = model(image)
        assert out.shape == (2, NUM_CLASSES, 24, 32)
        assert torch.isfinite(out).all()
        assert model.num_classes == NUM_CLASSES

    def test_equals_crf_of_backbone(self):
        backbone, crf = SmallFCN(NUM_CLASSES, width=8).eval(), _crf().eval()
        model = CrfRnnSegmenter(backbone, crf).eval()
        image = _image()
        with torch.no_grad():
            unary = backbone(image)
            torch.testing.assert_close(model(image), crf(unary, image))
            torch.testing.assert_close(model(image, use_crf=False), unary)
            assert not torch.allclose(model(image), unary)

    def test_return_unary(self):
        model = CrfRnnSegmenter(SmallFCN(NUM_CLASSES, width=8), _crf(), return_unary=True).eval()
        image = _image()
        refined, unary = model(image)
        torch.testing.assert_close(unary, model.backbone(image))
        assert refined.shape == unary.shape
        refined, unary = model(image, use_crf=False)
        assert refined is unary

    def test_upsamples_coarse_logits(self):
        model = CrfRnnSegmenter(CoarseBackbone(), _crf()).eval()
        image = _image(h=40, w=56)
        coarse = model.backbone(image)
        assert coarse.shape[-2:] == (5, 7)
        expected = F.interpolate(coarse, size=(40, 56), mode="bilinear", align_corners=False)
        torch.testing.assert_close(model(image, use_crf=False), expected)
        assert model(image).shape == (2, NUM_CLASSES, 40, 56)

    def test_output_key(self):
        model = CrfRnnSegmenter(DictBackbone(), _crf(), output_key="out").eval()
        image = _image()
        torch.testing.assert_close(model(image, use_crf=False), model.backbone(image)["out"])
        assert model(image).shape == (2, NUM_CLASSES, 24, 32)

    def test_end_to_end_gradients(self):
        model = CrfRnnSegmenter(SmallFCN(NUM_CLASSES, width=8), _crf())
        image = _image()
        target = torch.randint(0, NUM_CLASSES, (2, 24, 32))
        F.cross_entropy(model(image), target).backward()
        for name, p in model.backbone.named_parameters():
            assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.crf.parameters())

    def test_float64(self):
        model = CrfRnnSegmenter(SmallFCN(NUM_CLASSES, width=8), _crf()).double().eval()
        out = model(_image(dtype=torch.float64))
        assert out.dtype == torch.float64

    def test_exception_backbone_output(self):
        image = _image()
        with pytest.raises(TypeError, match="pass output_key"):
            CrfRnnSegmenter(DictBackbone(), _crf())(image)
        with pytest.raises(KeyError, match=r"no key 'logits'.*\['aux', 'out'\]"):
            CrfRnnSegmenter(DictBackbone(), _crf(), output_key="logits")(image)
        with pytest.raises(TypeError, match="not a mapping"):
            CrfRnnSegmenter(SmallFCN(NUM_CLASSES), _crf(), output_key="out")(image)
        with pytest.raises(ValueError, match=r"\(B, L, h, w\), got shape \(2, 24, 32\)"):
            CrfRnnSegmenter(Returns(torch.zeros(2, 24, 32)), _crf())(image)
        with pytest.raises(ValueError, match=r"\(B, L, h, w\), got a list"):
            CrfRnnSegmenter(Returns([1, 2]), _crf())(image)
        with pytest.raises(ValueError, match="3 score maps for a batch of 2"):
            CrfRnnSegmenter(Returns(torch.zeros(3, NUM_CLASSES, 24, 32)), _crf())(image)
        with pytest.raises(ValueError, match="returned 5 classes but the CRF head has num_classes=3"):
            CrfRnnSegmenter(SmallFCN(5, width=8), _crf())(image)

    def test_exception_image(self):
        model = CrfRnnSegmenter(SmallFCN(NUM_CLASSES, width=8), _crf())
        with pytest.raises(ValueError, match="0..1 scale"):
            model(torch.rand(1, 3, 16, 16))
        with pytest.raises(ValueError, match=r"0..255 scale, got values in \[-2"):
            model(torch.full((1, 3, 16, 16), -2.0))
        with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
            model(torch.rand(1, 1, 16, 16) * 255)
        with pytest.raises(TypeError, match="floating-point"):
            model(torch.zeros(1, 3, 16, 16, dtype=torch.uint8))
        # all-black images are fine, and the range check can be turned off
        model.eval()(torch.zeros(1, 3, 16, 16))
        unchecked = CrfRnnSegmenter(SmallFCN(NUM_CLASSES, width=8), _crf(), check_image_range=False).eval()
        unchecked(torch.rand(1, 3, 16, 16) * 300)  # out of 0..255, accepted without the check

    def test_exception_constructor(self):
        with pytest.raises(TypeError, match="backbone must be"):
            CrfRnnSegmenter(lambda x: x, _crf())
        with pytest.raises(TypeError, match="num_classes"):
            CrfRnnSegmenter(SmallFCN(NUM_CLASSES), nn.Identity())

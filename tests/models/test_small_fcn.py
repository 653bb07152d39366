"""Tests of crfrnn.models.SmallFCN."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from crfrnn.models import SmallFCN
from crfrnn.models.small import IMAGENET_MEAN, IMAGENET_STD


class TestSmallFCN:
    def test_smoke(self):
        torch.manual_seed(0)
        model = SmallFCN(4).eval()
        out = model(torch.rand(2, 3, 96, 96) * 255)
        assert out.shape == (2, 4, 96, 96)
        assert torch.isfinite(out).all()

    @pytest.mark.parametrize("size", [(96, 96), (97, 61), (8, 8), (1, 1), (13, 40)])
    @pytest.mark.parametrize("norm", ["batch", "group", "none"])
    def test_cardinality(self, size, norm):
        model = SmallFCN(3, width=8, norm=norm).eval()
        image = torch.rand(2, 3, *size) * 255
        assert model(image).shape == (2, 3, *size)
        coarse = model.forward_coarse(image)
        assert coarse.shape == (2, 3, -(-size[0] // 8), -(-size[1] // 8))

    def test_output_is_bilinear_upsampling_of_coarse(self):
        model = SmallFCN(3, width=8).eval()
        image = torch.rand(1, 3, 40, 56) * 255
        expected = F.interpolate(model.forward_coarse(image), size=(40, 56), mode="bilinear", align_corners=False)
        torch.testing.assert_close(model(image), expected)

    def test_normalize(self):
        model = SmallFCN(2)
        image = torch.rand(1, 3, 5, 6, dtype=torch.float64) * 255
        out = model.normalize(image)
        assert out.dtype == torch.float64
        for c in range(3):
            torch.testing.assert_close(out[0, c], (image[0, c] - IMAGENET_MEAN[c]) / IMAGENET_STD[c])

    def test_dtype_float64(self):
        model = SmallFCN(2, width=8).double().eval()
        out = model(torch.rand(1, 3, 16, 16, dtype=torch.float64) * 255)
        assert out.dtype == torch.float64

    def test_backward_and_learns(self):
        # a few SGD steps on one batch reduce the loss: the network is trainable
        torch.manual_seed(0)
        model = SmallFCN(2, width=16, norm="group", dropout=0.0)
        target = torch.zeros(4, 32, 32, dtype=torch.long)
        for i, (y, x) in enumerate([(2, 3), (10, 14), (16, 4), (5, 18)]):
            target[i, y : y + 12, x : x + 12] = 1
        image = (60 + 140 * target[:, None].float() + 20 * torch.randn(4, 3, 32, 32)).clamp(0, 255)
        opt = torch.optim.Adam(model.parameters(), lr=1e-2)
        losses = []
        for _ in range(15):
            loss = F.cross_entropy(model(image), target)
            opt.zero_grad()
            loss.backward()
            assert all(p.grad is not None for p in model.parameters())
            opt.step()
            losses.append(loss.item())
        assert losses[-1] < 0.5 * losses[0]

    def test_exception(self):
        model = SmallFCN(2)
        with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
            model(torch.rand(1, 4, 16, 16))
        with pytest.raises(TypeError, match=r"image.float\(\)"):
            model(torch.zeros(1, 3, 16, 16, dtype=torch.uint8))
        with pytest.raises(ValueError, match="norm must be one of"):
            SmallFCN(2, norm="layer")
        with pytest.raises(ValueError, match="width"):
            SmallFCN(2, width=7)
        with pytest.raises(ValueError, match="num_classes"):
            SmallFCN(0)
        with pytest.raises(TypeError):
            SmallFCN(2, 32)  # width is keyword-only

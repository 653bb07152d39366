"""Tests of crfrnn.models.FCN8s (the Caffe voc-fcn8s net)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from crfrnn.models import FCN8s
from crfrnn.models._utils import bilinear_kernel, init_bilinear_
from crfrnn.models.fcn8s import CAFFE_BGR_MEAN

CAFFE_LAYERS = [
    *(f"conv{s}_{i}" for s, n in ((1, 2), (2, 2), (3, 3), (4, 3), (5, 3)) for i in range(1, n + 1)),
    "fc6",
    "fc7",
    "score_fr",
    "score_pool4",
    "score_pool3",
]
DECONV_LAYERS = ["upscore2", "upscore_pool4", "upscore8"]


@pytest.fixture(scope="module")
def fcn() -> FCN8s:
    torch.manual_seed(0)
    model = FCN8s(num_classes=5).eval()
    with torch.no_grad():  # the score layers start at zero: make them random so the output depends on the input
        for name in ("score_fr", "score_pool4", "score_pool3"):
            nn.init.normal_(getattr(model, name).weight, std=0.01)
    return model


def _meta_fcn(**kwargs) -> FCN8s:
    with torch.device("meta"):
        return FCN8s(**kwargs)


def _linear_surrogate(model: FCN8s, path: str) -> FCN8s:
    """The same net with 1 channel per layer, reduced to a linear, translation-equivariant map.

    Every convolution keeps the geometry (kernel, stride, padding) of the model's layer but becomes the
    identity on channel 0 (a centre tap of 1, no bias; ``conv1_1`` reads the B channel), every max-pool
    becomes an average pool of the same geometry, and the transposed convolutions stay bilinear. Only
    the score layer of ``path`` passes its input (weight 1), the other two are zero. The forward code,
    crops included, is the model's own. Such a net reproduces any affine function of position exactly,
    away from the zero padding, if and only if every stage is centred: a wrong crop offset shifts it.
    """
    score_on = {"pool5": "score_fr", "pool4": "score_pool4", "pool3": "score_pool3"}[path]
    for name, m in list(model.named_children()):
        if isinstance(m, nn.ConvTranspose2d):
            new = nn.ConvTranspose2d(1, 1, m.kernel_size, stride=m.stride, padding=m.padding, bias=False)
            init_bilinear_(new)
        elif isinstance(m, nn.Conv2d):
            c_in = 3 if name == "conv1_1" else 1
            new = nn.Conv2d(c_in, 1, m.kernel_size, stride=m.stride, padding=m.padding, dilation=m.dilation)
            with torch.no_grad():
                new.weight.zero_()
                new.bias.zero_()
                kh, kw = m.kernel_size
                if not name.startswith("score") or name == score_on:
                    new.weight[0, 0, kh // 2, kw // 2] = 1.0
        elif isinstance(m, nn.MaxPool2d):
            new = nn.AvgPool2d(m.kernel_size, stride=m.stride, padding=m.padding, ceil_mode=m.ceil_mode)
        else:
            continue
        setattr(model, name, new)
    return model.double().eval()


def _ramp_image(height: int, width: int, axis: str) -> tuple[torch.Tensor, torch.Tensor]:
    """RGB 0..255 image whose B channel minus the Caffe mean is the x (or y) coordinate; and that coordinate."""
    ys, xs = torch.meshgrid(
        torch.arange(height, dtype=torch.float64), torch.arange(width, dtype=torch.float64), indexing="ij"
    )
    image = torch.zeros(1, 3, height, width, dtype=torch.float64)
    image[0, 2] = (xs if axis == "x" else ys) + CAFFE_BGR_MEAN[0]
    return image, (xs if axis == "x" else ys)


# Far enough from the border for the zero padding of conv1_1 not to reach the path's receptive field
# (two cells of the path's stride; measured: 57, 25 and 9 pixels suffice).
MARGIN = {"pool5": 64, "pool4": 32, "pool3": 16}


class TestFCN8s:
    def test_smoke(self, fcn):
        with torch.no_grad():
            out = fcn(torch.rand(1, 3, 64, 64) * 255)
        assert out.shape == (1, 5, 64, 64)
        assert out.dtype == torch.float32
        assert torch.isfinite(out).all()
        assert out.std() > 0

    def test_caffe_layer_names(self):
        model = _meta_fcn(num_classes=21)
        expected = {f"{n}.{p}" for n in CAFFE_LAYERS for p in ("weight", "bias")} | {
            f"{n}.weight" for n in DECONV_LAYERS
        }
        assert set(model.state_dict()) == expected
        shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
        assert shapes["conv1_1.weight"] == (64, 3, 3, 3)
        assert shapes["fc6.weight"] == (4096, 512, 7, 7)
        assert shapes["fc7.weight"] == (4096, 4096, 1, 1)
        assert shapes["score_fr.weight"] == (21, 4096, 1, 1)
        assert shapes["score_pool4.weight"] == (21, 512, 1, 1)
        assert shapes["score_pool3.weight"] == (21, 256, 1, 1)
        assert shapes["upscore2.weight"] == (21, 21, 4, 4)
        assert shapes["upscore_pool4.weight"] == (21, 21, 4, 4)
        assert shapes["upscore8.weight"] == (21, 21, 16, 16)
        assert model.conv1_1.padding == (100, 100)
        assert all(getattr(model, f"pool{i}").ceil_mode for i in range(1, 6))
        assert (model.crop_pool4, model.crop_pool3, model.crop_final) == (5, 9, 31)
        vgg16_convs = 14_714_688
        fc = (4096 * 512 * 49 + 4096) + (4096 * 4096 + 4096)
        scores = 21 * (4096 + 512 + 256) + 3 * 21
        deconvs = 21 * 21 * (4 * 4 + 4 * 4 + 16 * 16)
        assert sum(p.numel() for p in model.parameters()) == vgg16_convs + fc + scores + deconvs

    @pytest.mark.parametrize("size", [(65, 67), (1, 1)])
    def test_cardinality(self, fcn, size):
        with torch.no_grad():
            out = fcn(torch.rand(2, 3, *size) * 255)
        assert out.shape == (2, 5, *size)

    def test_cardinality_all_sizes(self):
        # shape arithmetic only, on the meta device: every size from the minimum (1x1) up works
        model = _meta_fcn(num_classes=3)
        for h in range(1, 200):
            for w in (1, h, h + 1, 2 * h + 3):
                out = model(torch.empty(1, 3, h, w, device="meta"))
                assert out.shape == (1, 3, h, w), (h, w)

    @pytest.mark.parametrize("path", ["pool5", "pool4", "pool3"])
    @pytest.mark.parametrize("axis", ["x", "y"])
    def test_alignment(self, path, axis):
        model = _linear_surrogate(_meta_fcn(num_classes=1), path)
        image, coord = _ramp_image(171, 190, axis)
        with torch.no_grad():
            out = model(image)[0, 0]
        assert out.shape == coord.shape
        m = MARGIN[path]
        inner = (slice(m, -m), slice(m, -m))
        torch.testing.assert_close(out[inner], coord[inner], rtol=0, atol=1e-9)

    @pytest.mark.parametrize(
        ("attr", "path", "shift"), [("crop_final", "pool5", 1), ("crop_pool4", "pool4", 16), ("crop_pool3", "pool3", 8)]
    )
    def test_alignment_detects_wrong_offset(self, attr, path, shift):
        # the test above can fail: moving a crop by one cell shifts its path by the cell size in pixels
        model = _linear_surrogate(_meta_fcn(num_classes=1), path)
        setattr(model, attr, getattr(FCN8s, attr) + 1)
        image, coord = _ramp_image(171, 190, "x")
        with torch.no_grad():
            out = model(image)[0, 0]
        m = MARGIN[path]
        inner = (slice(m, -m), slice(m, -m))
        diff = out[inner] - coord[inner]
        assert not torch.allclose(out[inner], coord[inner], rtol=0, atol=1e-3)
        assert abs(diff.median().item() - shift) < 1e-9  # the whole path moved by one cell

    def test_preprocess(self):
        model = _meta_fcn()
        image = torch.rand(2, 3, 4, 5, dtype=torch.float64) * 255
        out = model.preprocess(image)
        assert out.dtype == torch.float64
        for c in range(3):
            torch.testing.assert_close(out[:, c], image[:, 2 - c] - CAFFE_BGR_MEAN[c])

    def test_bilinear_upsampling(self):
        model = _meta_fcn(num_classes=3)
        for name in DECONV_LAYERS:
            layer = getattr(model, name)
            assert not layer.weight.requires_grad, name
        learnable = _meta_fcn(num_classes=3, learnable_upsampling=True)
        assert all(getattr(learnable, n).weight.requires_grad for n in DECONV_LAYERS)
        # the bilinear kernel of the FCN reference (surgery.upsample_filt), diagonal across channels
        k4 = torch.tensor([0.25, 0.75, 0.75, 0.25])
        torch.testing.assert_close(bilinear_kernel(4), k4[:, None] * k4[None, :])
        layer = init_bilinear_(nn.ConvTranspose2d(3, 3, 16, stride=8, bias=False))
        assert layer.weight[0, 1].abs().sum() == 0
        torch.testing.assert_close(layer.weight[2, 2], bilinear_kernel(16))
        # stride-8 up-sampling of a constant is constant away from the borders
        out = layer(torch.ones(1, 3, 6, 6))
        torch.testing.assert_close(out[..., 8:-8, 8:-8], torch.ones_like(out[..., 8:-8, 8:-8]))

    def test_exception(self, fcn):
        with pytest.raises(ValueError, match=r"\(B, 3, H, W\).*unsqueeze"):
            fcn(torch.rand(3, 32, 32))
        with pytest.raises(ValueError, match="got shape"):
            fcn(torch.rand(1, 1, 32, 32))
        with pytest.raises(TypeError, match=r"image.float\(\)"):
            fcn(torch.zeros(1, 3, 32, 32, dtype=torch.uint8))
        with pytest.raises(ValueError, match="num_classes"):
            FCN8s(0)

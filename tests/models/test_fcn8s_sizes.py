"""FCN-8s and the released pipeline at input sizes other than the 500 x 500 canvas (issue 25).

The reference below is written in plain ``torch.nn.functional`` from the two definitions of the network,
not from :class:`crfrnn.models.FCN8s`:

- the PyTorch port (sadeepj/crfasrnn_pytorch, ``crfasrnn/fcn8s.py``): ``conv1_1`` padding 100, 2x2/2 max
  pooling with ``ceil_mode=True``, ``fc6`` 7x7 unpadded, transposed convolutions without padding, and the
  crops ``score_pool4[5:5 + h]``, ``score_pool3[9:9 + h]``, ``upscore8[31:31 + H]``;
- the Caffe net (torrvision/crfasrnn, ``TVG_CRFRNN_new_deploy.prototxt`` on its Caffe fork): pooling
  output ``ceil((n + 2 pad - k) / s) + 1`` (minus one if the last window starts in the padding, which needs
  ``pad > 0``; here ``pad = 0``), each window clipped to the map (``pooling_layer.cpp``); Deconvolution
  output ``s (n - 1) + k - 2 pad``; ``Crop`` layers without parameters, whose offset ``crop_layer.cpp``
  derives from the layers' coordinate maps (``coord_map()``: Convolution and Pooling
  ``FilterMap(k, s, pad).inv()``, Deconvolution ``FilterMap(k, s, pad)``), a constant of the net, whatever
  the input size.

The Caffe pooling is written out here by padding with ``-inf`` up to ``2 * ceil`` and pooling exactly, and
the crop offsets are derived here from the coordinate maps, so neither relies on what is checked.
"""

from __future__ import annotations

import math
from fractions import Fraction
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from crfrnn.models import CaffeInput, FCN8s, load_pretrained, released_network
from crfrnn.models.fcn8s import CAFFE_BGR_MEAN

L = 3
WIDTHS = (2, 3, 3, 4, 4)
FC = 5
STAGES = ((1, 2), (2, 2), (3, 3), (4, 3), (5, 3))
SIZES = [(1, 1), (31, 17), (150, 200), (97, 203), (500, 500), (501, 333)]


# ------------------------------------------------------------------------ the Caffe geometry, derived


def _caffe_pooled(n: int, k: int = 2, s: int = 2, pad: int = 0) -> int:
    """Caffe's ``PoolingLayer::Reshape`` output size."""
    out = math.ceil((n + 2 * pad - k) / s) + 1
    if pad and (out - 1) * s >= n + pad:
        out -= 1
    return out


def _caffe_deconv(n: int, k: int, s: int, pad: int = 0) -> int:
    return s * (n - 1) + k - 2 * pad


def _coord_maps() -> dict[str, tuple[Fraction, Fraction]]:
    """For each blob: input (``data``) coordinate = ``a * blob coordinate + b``, from Caffe's coord_map rules.

    A filter of kernel ``k``, stride ``s``, padding ``p`` maps output ``y`` to input ``s * y + (k - 1) / 2 - p``
    (``FilterMap``); a Deconvolution is that map read the other way.
    """

    def filt(m, k, s, p):  # blob -> next blob through a Convolution / Pooling
        a, b = m
        return a * s, b + a * (Fraction(k - 1, 2) - p)

    def deconv(m, k, s, p):  # input coordinate x = (y - ((k - 1) / 2 - p)) / s
        a, b = m
        return a / s, b - a * (Fraction(k - 1, 2) - p) / s

    maps = {}
    m = (Fraction(1), Fraction(0))
    for stage, n in STAGES:
        for i in range(1, n + 1):
            m = filt(m, 3, 1, 100 if (stage, i) == (1, 1) else 1)
        m = filt(m, 2, 2, 0)
        maps[f"pool{stage}"] = m
    m = filt(m, 7, 1, 0)  # fc6; fc7 and score_fr are 1x1
    maps["score_fr"] = m
    maps["upscore2"] = m = deconv(m, 4, 2, 0)
    maps["upscore_pool4"] = m = deconv(m, 4, 2, 0)
    maps["upscore8"] = deconv(m, 16, 8, 0)
    return maps


def _crop_offset(bottom: tuple[Fraction, Fraction], reference: tuple[Fraction, Fraction]) -> int:
    """Caffe ``Crop``: the index in ``bottom`` of the reference blob's coordinate 0 (must be whole, scale 1)."""
    assert bottom[0] == reference[0], "scale mismatch"
    offset = (reference[1] - bottom[1]) / bottom[0]
    assert offset.denominator == 1 and offset >= 0
    return int(offset)


MAPS = _coord_maps()
DATA = (Fraction(1), Fraction(0))
OFFSETS = {
    "pool4": _crop_offset(MAPS["pool4"], MAPS["upscore2"]),
    "pool3": _crop_offset(MAPS["pool3"], MAPS["upscore_pool4"]),
    "final": _crop_offset(MAPS["upscore8"], DATA),
}


# ------------------------------------------------------------------------------------ the reference


def _caffe_maxpool(x: torch.Tensor) -> torch.Tensor:
    h, w = x.shape[-2:]
    oh, ow = _caffe_pooled(h), _caffe_pooled(w)
    x = F.pad(x, (0, 2 * ow - w, 0, 2 * oh - h), value=-math.inf)  # clipped windows: max over what is there
    return F.max_pool2d(x, 2, 2)


def _crop(x: torch.Tensor, offset: int, size) -> torch.Tensor:
    h, w = size
    assert x.shape[-2] >= offset + h and x.shape[-1] >= offset + w
    return x[..., offset : offset + h, offset : offset + w]


def reference_fcn8s(net_input: torch.Tensor, w: dict[str, torch.Tensor]) -> torch.Tensor:
    """FCN-8s logits of a mean-subtracted BGR input ``(B, 3, H, W)`` from a dict of weights (our key names)."""

    def conv(x, name, pad=0, relu=True):
        y = F.conv2d(x, w[f"{name}.weight"], w[f"{name}.bias"], padding=pad)
        return F.relu(y) if relu else y

    x, pools = net_input, {}
    for stage, n in STAGES:
        for i in range(1, n + 1):
            x = conv(x, f"conv{stage}_{i}", 100 if (stage, i) == (1, 1) else 1)
        x = _caffe_maxpool(x)
        pools[stage] = x
    score = conv(conv(conv(x, "fc6"), "fc7"), "score_fr", relu=False)
    score2 = F.conv_transpose2d(score, w["upscore2.weight"], w["upscore2.bias"], stride=2)
    assert score2.shape[-1] == _caffe_deconv(score.shape[-1], 4, 2)
    fused = score2 + _crop(conv(pools[4], "score_pool4", relu=False), OFFSETS["pool4"], score2.shape[-2:])
    score4 = F.conv_transpose2d(fused, w["upscore_pool4.weight"], stride=2)
    final = score4 + _crop(conv(pools[3], "score_pool3", relu=False), OFFSETS["pool3"], score4.shape[-2:])
    big = F.conv_transpose2d(final, w["upscore8.weight"], stride=8)
    assert big.shape[-2] == _caffe_deconv(final.shape[-2], 16, 8)
    return _crop(big, OFFSETS["final"], net_input.shape[-2:])


def _net_input(image: torch.Tensor, mean_bgr) -> torch.Tensor:
    return image.flip(1) - torch.tensor(mean_bgr, dtype=image.dtype).view(1, 3, 1, 1)


@pytest.fixture(scope="module")
def weights() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(25)
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in FCN8s(L, widths=WIDTHS, fc_width=FC, upscore2_bias=True).state_dict().items()}
    out = {}
    for key, shape in shapes.items():  # no bilinear or symmetric weights: a flipped kernel or a shift shows
        fan_in = math.prod(shape[1:]) if len(shape) > 1 else 1
        out[key] = (torch.randn(shape, generator=g, dtype=torch.float64) / fan_in**0.5 + 0.05).contiguous()
    return out


def _image(h: int, w: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(1, 3, h, w, generator=g, dtype=torch.float64) * 255


# ---------------------------------------------------------------------------------------------- tests


def test_caffe_crop_offsets_are_constants_of_the_net():
    assert OFFSETS == {"pool4": 5, "pool3": 9, "final": 31}
    assert (FCN8s.crop_pool4, FCN8s.crop_pool3, FCN8s.crop_final) == (5, 9, 31)


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 199, 200, 201, 698, 699])
def test_torch_ceil_mode_is_caffe_rounding(n):
    x = torch.randn(1, 1, n, n + 1)
    y = F.max_pool2d(x, 2, 2, ceil_mode=True)
    assert tuple(y.shape[-2:]) == (_caffe_pooled(n), _caffe_pooled(n + 1))
    torch.testing.assert_close(y, _caffe_maxpool(x), rtol=0, atol=0)


@pytest.mark.parametrize("size", SIZES)
def test_fcn8s_matches_reference(weights, size):
    model = FCN8s(L, widths=WIDTHS, fc_width=FC, upscore2_bias=True).double().eval()
    model.load_state_dict(weights)
    image = _image(*size)
    with torch.no_grad():
        got = model(image)
    expected = reference_fcn8s(_net_input(image, CAFFE_BGR_MEAN), weights)
    assert got.shape == (1, L, *size)
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)


def _pth(path: Path, weights) -> Path:
    state = {k: v.float().clone() for k, v in weights.items()}  # the released file is float32
    state["crfrnn.spatial_ker_weights"] = torch.eye(L) * 3
    state["crfrnn.bilateral_ker_weights"] = torch.eye(L) * 5
    state["crfrnn.compatibility_matrix"] = torch.eye(L)
    torch.save(state, path)
    return path


class _RecordingCrf(torch.nn.Module):
    """Stands in for the CRF head: records what it is given and returns the unary (no lattice to build)."""

    num_classes = L

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[torch.Tensor, torch.Tensor]] = []

    def forward(self, unary: torch.Tensor, guide: torch.Tensor) -> torch.Tensor:
        self.calls.append((unary, guide))
        return unary


@pytest.mark.parametrize("fmt", ["caffe", "pytorch"])
def test_pipeline_at_own_size_is_the_net_on_the_raw_input(weights, tmp_path, fmt):
    """``pad_to=None``: the network and the CRF's guide are the mean-subtracted BGR image at its own size.

    This is what the Caffe net (reshaped to the image) and the port's ``CrfRnnNet`` compute when given
    the unpadded image: ``data``/``image`` is both the FCN's input and the CRF's guide.
    """
    if fmt == "pytorch":
        model = load_pretrained(_pth(tmp_path / "w.pth", weights), num_classes=None, pad_to=None).double()
        weights = {k: v.float().double() for k, v in weights.items()}
    else:
        model = released_network("caffe", num_classes=L, widths=WIDTHS, fc_width=FC, pad_to=None).double()
        model.backbone.load_state_dict(weights)
    model.crf = _RecordingCrf()
    model = model.eval()
    mean = model.conventions.mean_bgr
    for size in [(31, 17), (97, 203)]:
        image = _image(*size, seed=1)
        with torch.no_grad():
            got = model(image)
        torch.testing.assert_close(got, reference_fcn8s(_net_input(image, mean), weights), rtol=1e-10, atol=1e-10)
        ((unary, guide),) = model.crf.calls
        model.crf.calls.clear()
        assert unary.shape == (1, L, *size)
        torch.testing.assert_close(guide, CaffeInput(mean)(image), rtol=0, atol=0)


def test_canvas_is_the_port_preprocessing_and_differs_from_own_size(weights):
    """On a canvas the logits are the net on the zero-padded (after mean subtraction) input, cropped.

    That is the port's ``get_preprocessed_image`` (and the Caffe demo) at 500 x 500. The logits at the
    image's own size are another computation: every output pixel of FCN-8s sees hundreds of pixels around
    it (``conv1_1`` pads by 100), so what lies beyond the bottom and right edges, the canvas's mean-colour
    pixels or nothing, changes them. Both agree with the reference; they do not agree with each other.
    """
    size, canvas = (150, 200), (500, 500)
    model = released_network("caffe", num_classes=L, widths=WIDTHS, fc_width=FC, pad_to=canvas, crf=False)
    model = model.double().eval()
    model.backbone.load_state_dict(weights)
    image = _image(*size, seed=2)
    net_in = _net_input(image, CAFFE_BGR_MEAN)
    padded = F.pad(net_in, (0, canvas[1] - size[1], 0, canvas[0] - size[0]))  # zeros after the mean
    with torch.no_grad():
        on_canvas = model(image, use_crf=False)
    torch.testing.assert_close(
        on_canvas, reference_fcn8s(padded, weights)[..., : size[0], : size[1]], rtol=1e-10, atol=1e-10
    )
    own_size = reference_fcn8s(net_in, weights)
    assert (on_canvas - own_size).abs().amax() > 1e-3

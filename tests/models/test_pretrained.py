"""Tests of crfrnn.models.pretrained: the released CRF-RNN network from its Caffe, PyTorch and Keras files.

The real files cannot be downloaded here, so the tests write files of each format themselves: a
width-reduced FCN-8s with the released layer names and layouts, with deterministic random weights (no
symmetric or bilinear weights, so that a wrong transpose or sign shows), plus one full-size file.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from crfrnn import CrfRnn
from crfrnn.models import (
    CONVENTIONS,
    CaffeInput,
    FCN8s,
    detect_format,
    load_pretrained,
    resize_for_network,
    segment_images,
)
from crfrnn.models._caffe import parse_caffemodel
from crfrnn.models._protobuf import ProtobufError, iter_fields
from crfrnn.models.fcn8s import CAFFE_BGR_MEAN
from crfrnn.models.pretrained import PORT_RGB_MEAN, keras_kernel_to_torch

L = 21
WIDTHS = (3, 4, 4, 5, 5)
FC = 6
PAD = 40  # images are padded to PAD x PAD (the released network: 500)

# ours -> Caffe/Keras layer name, PyTorch-port key prefix (the released names)
LAYERS = {
    **{
        f"conv{s}_{i}": (f"conv{s}_{i}", f"conv{s}_{i}")
        for s, n in ((1, 2), (2, 2), (3, 3), (4, 3), (5, 3))
        for i in range(1, n + 1)
    },
    "fc6": ("fc6", "fc6"),
    "fc7": ("fc7", "fc7"),
    "score_fr": ("score-fr", "score_fr"),
    "upscore2": ("score2", "upscore2"),
    "score_pool4": ("score-pool4", "score_pool4"),
    "upscore_pool4": ("score4", "upscore_pool4"),
    "score_pool3": ("score-pool3", "score_pool3"),
    "upscore8": ("upsample", "upscore8"),
}
TRANSPOSED = {"upscore2", "upscore_pool4", "upscore8"}


# ------------------------------------------------------------------ a tiny protobuf wire-format writer


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _key(number: int, wire: int) -> bytes:
    return _varint(number << 3 | wire)


def _ld(number: int, payload: bytes) -> bytes:
    return _key(number, 2) + _varint(len(payload)) + payload


def _vint(number: int, value: int) -> bytes:
    return _key(number, 0) + _varint(value)


def _blob(array: np.ndarray, v1: bool, packed: bool = True) -> bytes:
    arr = np.asarray(array, dtype="<f4")
    if v1:  # the legacy num / channels / height / width, padded with leading ones
        dims = (1,) * (4 - arr.ndim) + arr.shape
        out = b"".join(_vint(i + 1, d) for i, d in enumerate(dims))
    else:
        out = _ld(7, _ld(1, b"".join(_varint(d) for d in arr.shape)))  # BlobShape, packed int64 dims
    if packed:
        out += _ld(5, arr.tobytes())
    else:
        out += b"".join(_key(5, 5) + struct.pack("<f", v) for v in arr.ravel())
    return out


_V1_TYPE = {"Convolution": 4, "Deconvolution": 39, "ReLU": 18, "MultiStageMeanfield": 43}


def _layer(name: str, kind: str, blobs: list[np.ndarray], v1: bool, packed: bool = True) -> bytes:
    if v1:
        out = _ld(2, b"bottom") + _ld(3, name.encode()) + _ld(4, name.encode()) + _vint(5, _V1_TYPE[kind])
        return out + b"".join(_ld(6, _blob(b, v1, packed)) for b in blobs)
    out = _ld(1, name.encode()) + _ld(2, kind.encode()) + _ld(3, b"bottom") + _ld(4, name.encode())
    return out + b"".join(_ld(7, _blob(b, v1, packed)) for b in blobs)


def write_caffemodel(
    path: Path, layers: list[tuple[str, str, list[np.ndarray]]], *, v1: bool = True, packed: bool = True
) -> Path:
    body = _ld(1, b"CRFRNN-VOC")
    for name, kind, blobs in layers:
        body += _ld(2 if v1 else 100, _layer(name, kind, blobs, v1, packed))
    path.write_bytes(body)
    return path


# ------------------------------------------------------------------ reference weights and the three formats


def reference_weights(num_classes: int = L, seed: int = 0) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """FCN8s state dict (narrow, upscore2 with bias) and CRF parameters in this library's convention."""
    g = torch.Generator().manual_seed(seed)
    with torch.device("meta"):
        shapes = {
            k: v.shape
            for k, v in FCN8s(num_classes, widths=WIDTHS, fc_width=FC, upscore2_bias=True).state_dict().items()
        }
    fcn = {}
    for key, shape in shapes.items():
        fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else 1
        fcn[key] = torch.randn(shape, generator=g) * (1.0 / fan_in) ** 0.5 + (0.05 if key.endswith("bias") else 0)
    crf = {
        "spatial": torch.eye(num_classes) * 3 + 0.3 * torch.rand(num_classes, num_classes, generator=g),
        "bilateral": torch.eye(num_classes) * 5 + 0.3 * torch.rand(num_classes, num_classes, generator=g),
        "compatibility": 1 - torch.eye(num_classes) + 0.5 * torch.rand(num_classes, num_classes, generator=g),
    }
    return fcn, crf


def caffe_layers(fcn, crf, *, crf_layer: bool = True, drop_bias: bool = False):
    layers = [("data", "ReLU", [])]
    for ours, (name, _) in LAYERS.items():
        blobs = [fcn[f"{ours}.weight"].numpy()]
        if f"{ours}.bias" in fcn and not (drop_bias and ours == "upscore2"):
            blobs.append(fcn[f"{ours}.bias"].numpy())
        layers.append((name, "Deconvolution" if ours in TRANSPOSED else "Convolution", blobs))
        layers.append((f"relu_{name}", "ReLU", []))
    if crf_layer:  # Caffe: U - C (W_s S + W_b B): the same convention as this library
        blobs = [crf[k].numpy().reshape(1, 1, *crf[k].shape) for k in ("spatial", "bilateral", "compatibility")]
        layers.append(("inference1", "MultiStageMeanfield", blobs))
    return layers


def write_pth(path: Path, fcn, crf, *, crf_keys: bool = True) -> Path:
    state = {}
    for ours, (_, prefix) in LAYERS.items():
        for p in ("weight", "bias"):
            if f"{ours}.{p}" in fcn:
                state[f"{prefix}.{p}"] = fcn[f"{ours}.{p}"].clone()
    if crf_keys:  # the port: U + C (W_s S + W_b B)
        state["crfrnn.spatial_ker_weights"] = crf["spatial"].clone()
        state["crfrnn.bilateral_ker_weights"] = crf["bilateral"].clone()
        state["crfrnn.compatibility_matrix"] = -crf["compatibility"]
    torch.save(state, path)
    return path


def write_h5(path: Path, fcn, crf, *, model_weights: bool = False, crf_layer: bool = True) -> Path:
    h5py = pytest.importorskip("h5py")
    with h5py.File(path, "w") as f:
        root = f.create_group("model_weights") if model_weights else f
        names = [b"input_1", b"zero_padding2d_1"]
        root.create_group("input_1").attrs["weight_names"] = np.array([], dtype="S1")
        for ours, (name, _) in LAYERS.items():
            g = root.create_group(name)
            # Keras: Conv2D (kh, kw, in, out); Conv2DTranspose (kh, kw, out, in)
            kernel = fcn[f"{ours}.weight"].permute(2, 3, 1, 0).numpy()
            weight_names = [f"{name}/kernel:0"]
            g.create_dataset(f"{name}/kernel:0", data=kernel)
            if f"{ours}.bias" in fcn:
                g.create_dataset(f"{name}/bias:0", data=fcn[f"{ours}.bias"].numpy())
                weight_names.append(f"{name}/bias:0")
            g.attrs["weight_names"] = [n.encode() for n in weight_names]
            names.append(name.encode())
        if crf_layer:  # Keras: U - C (W_s S + W_b B), like Caffe
            g = root.create_group("crfrnn")
            for key, n in (
                ("spatial", "spatial_ker_weights"),
                ("bilateral", "bilateral_ker_weights"),
                ("compatibility", "compatibility_matrix"),
            ):
                g.create_dataset(f"crfrnn/{n}:0", data=crf[key].numpy())
            names.append(b"crfrnn")
        root.attrs["layer_names"] = names
    return path


@pytest.fixture(scope="module")
def weights():
    return reference_weights()


@pytest.fixture(scope="module")
def files(weights, tmp_path_factory):
    fcn, crf = weights
    d = tmp_path_factory.mktemp("pretrained")
    out = {
        "caffe_v1": write_caffemodel(d / "v1.caffemodel", caffe_layers(fcn, crf), v1=True),
        "caffe_v2": write_caffemodel(d / "v2.caffemodel", caffe_layers(fcn, crf), v1=False),
        "pytorch": write_pth(d / "weights.pth", fcn, crf),
    }
    try:
        import h5py  # noqa: F401

        out["keras"] = write_h5(d / "model.h5", fcn, crf)
        out["keras_full_model"] = write_h5(d / "full.h5", fcn, crf, model_weights=True)
    except ImportError:  # pragma: no cover - the keras extra is part of the test extra
        pass
    return out


def _image(h: int, w: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    img = torch.rand(1, 3, h, w, generator=g) * 255
    img[..., : h // 2, :] = img[..., : h // 2, :] * 0.3  # two regions of different colour: the CRF has edges to use
    return img


def _load(path, **kw):
    kw.setdefault("pad_to", PAD)
    return load_pretrained(path, **kw)


def _reference_output(fcn, crf, image, mean_bgr, *, num_iterations=10, pad=PAD, guide_raw=False):
    """The released pipeline written out step by step from the reference weights."""
    backbone = FCN8s(L, widths=WIDTHS, fc_width=FC, upscore2_bias=True, mean=mean_bgr).eval()
    backbone.load_state_dict(fcn)
    head = CrfRnn(L, num_iterations=num_iterations, num_eval_iterations=num_iterations).eval()
    with torch.no_grad():
        head.spatial_weights.copy_(crf["spatial"])
        head.bilateral_weights.copy_(crf["bilateral"])
        head.compatibility.copy_(crf["compatibility"])
        h, w = image.shape[-2:]
        net_in = CaffeInput(mean_bgr)(image)  # BGR minus mean, then zero padding to pad x pad (as released)
        net_in = torch.nn.functional.pad(net_in, (0, pad - w, 0, pad - h))
        raw = net_in.flip(1) + torch.tensor(mean_bgr[::-1]).view(1, 3, 1, 1)  # the padded raw RGB image
        unary = backbone(raw)
        out = head(unary, raw if guide_raw else net_in)
    return out[..., :h, :w], unary[..., :h, :w]


# --------------------------------------------------------------------------------------------- tests


class TestProtobufReader:
    def test_roundtrip(self):
        msg = _vint(1, 300) + _ld(2, b"abc") + _key(5, 5) + struct.pack("<f", 1.5) + _vint(100, 2**40)
        fields = list(iter_fields(msg))
        assert [(f.number, f.wire_type) for f in fields] == [(1, 0), (2, 2), (5, 5), (100, 0)]
        assert fields[0].value == 300 and fields[3].value == 2**40
        assert msg[fields[1].start : fields[1].end] == b"abc"

    def test_length_past_end(self):
        bomb = _key(2, 2) + _varint(10 * 2**30) + b"tiny"  # claims 10 GB in a few bytes
        with pytest.raises(ProtobufError, match=r"claims 10737418240 bytes but only 4 remain"):
            list(iter_fields(bomb))

    def test_bad_input(self):
        with pytest.raises(ProtobufError, match="truncated varint"):
            list(iter_fields(b"\x08\xff"))
        with pytest.raises(ProtobufError, match="longer than 10 bytes"):
            list(iter_fields(b"\x08" + b"\xff" * 11))
        with pytest.raises(ProtobufError, match="wire type 3"):
            list(iter_fields(_key(1, 3)))
        with pytest.raises(ProtobufError, match="field number 0"):
            list(iter_fields(b"\x00\x00"))

    @pytest.mark.parametrize("v1", [True, False])
    @pytest.mark.parametrize("packed", [True, False])
    def test_blob_shapes_and_data(self, v1, packed):
        w = np.arange(2 * 3 * 1 * 2, dtype=np.float32).reshape(2, 3, 1, 2)
        b = np.array([0.5, -1.0], dtype=np.float32)
        net = parse_caffemodel(_ld(1, b"n") + _ld(2 if v1 else 100, _layer("conv", "Convolution", [w, b], v1, packed)))
        assert net.format == ("V1" if v1 else "V2")
        (layer,) = net.layers
        assert (layer.name, layer.type) == ("conv", "Convolution")
        assert layer.blobs[0].shape == (2, 3, 1, 2)
        np.testing.assert_array_equal(layer.blobs[0].data.reshape(2, 3, 1, 2), w)
        assert layer.blobs[1].shape == ((1, 1, 1, 2) if v1 else (2,))
        np.testing.assert_array_equal(layer.blobs[1].data, b)

    def test_blob_shape_disagrees_with_data(self):
        blob = _ld(7, _ld(1, _varint(2**30) + _varint(2**30))) + _ld(5, b"\0" * 8)  # claims 2^60 values, holds 2
        with pytest.raises(ProtobufError, match=r"holds 2 values"):
            parse_caffemodel(_ld(100, _ld(1, b"x") + _ld(7, blob)))


class TestFormats:
    def test_detect_by_content(self, files, tmp_path):
        assert detect_format(files["caffe_v1"]) == "caffe"
        assert detect_format(files["caffe_v2"]) == "caffe"
        assert detect_format(files["pytorch"]) == "pytorch"
        if "keras" in files:
            assert detect_format(files["keras"]) == "keras"
        # the suffix does not matter
        misnamed = tmp_path / "weights.h5"
        misnamed.write_bytes(files["caffe_v1"].read_bytes())
        assert detect_format(misnamed) == "caffe"

    def test_unknown_content(self, tmp_path):
        junk = tmp_path / "x.caffemodel"
        junk.write_bytes(b"\xff\xfe not a model at all")
        with pytest.raises(ValueError, match=r"x.caffemodel.*cannot tell the weight format"):
            detect_format(junk)
        empty = tmp_path / "empty.pth"
        empty.write_bytes(b"")
        with pytest.raises(ValueError, match="empty"):
            load_pretrained(empty)
        with pytest.raises(FileNotFoundError):
            load_pretrained(tmp_path / "missing.caffemodel")

    def test_format_argument_checked_against_content(self, files):
        with pytest.raises(ValueError, match=r"format='keras' was given but the content is that of a 'caffe'"):
            load_pretrained(files["caffe_v1"], format="keras")
        with pytest.raises(ValueError, match="format must be one of"):
            load_pretrained(files["caffe_v1"], format="onnx")


class TestLoadPretrained:
    def test_smoke(self, files):
        model = _load(files["caffe_v1"])
        assert not model.training
        assert model.num_classes == L and model.pad_to == (PAD, PAD)
        assert model.backbone.widths == WIDTHS and model.backbone.fc_width == FC
        assert model.crf.num_eval_iterations == 10 and model.crf.num_iterations == 10
        assert (float(model.crf.theta_alpha), float(model.crf.theta_beta), float(model.crf.theta_gamma)) == (160, 3, 3)
        assert model.crf.normalization == "row"
        with torch.no_grad():
            out = model(_image(30, 25))
        assert out.shape == (1, L, 30, 25) and torch.isfinite(out).all()

    def test_every_format_same_output(self, files, weights):
        fcn, crf = weights
        image = _image(33, 27)
        expected, _ = _reference_output(fcn, crf, image, CAFFE_BGR_MEAN)
        for name, path in files.items():
            model = _load(path, mean=CAFFE_BGR_MEAN)  # the same mean for all: the rest must agree exactly
            for key, value in fcn.items():
                torch.testing.assert_close(model.backbone.state_dict()[key], value, rtol=0, atol=0, msg=f"{name} {key}")
            with torch.no_grad():
                out = model(image)
            torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-4, msg=name)

    def test_default_conventions(self, files):
        assert CONVENTIONS["caffe"].mean_bgr == (104.00698793, 116.66876762, 122.67891434)
        # the ports subtract the RGB ImageNet mean (123.68, 116.779, 103.939) and then flip to BGR
        assert PORT_RGB_MEAN == (123.68, 116.779, 103.939)
        assert CONVENTIONS["pytorch"].mean_bgr == CONVENTIONS["keras"].mean_bgr == (103.939, 116.779, 123.68)
        assert (CONVENTIONS["caffe"].resize, CONVENTIONS["pytorch"].resize, CONVENTIONS["keras"].resize) == (
            "shrink",
            "fit",
            "none",
        )
        assert (CONVENTIONS["caffe"].restore_size, CONVENTIONS["pytorch"].restore_size) == (False, True)
        for fmt, key in (("caffe", "caffe_v1"), ("pytorch", "pytorch"), ("keras", "keras")):
            if key not in files:
                continue
            model = _load(files[key])
            assert model.conventions.format == fmt
            assert model.backbone.input.mean == CONVENTIONS[fmt].mean_bgr
            assert model.crf_input.mean == CONVENTIONS[fmt].mean_bgr
            assert model.pad_value == CONVENTIONS[fmt].mean_bgr[::-1]

    def test_port_mean_is_rgb_mean_before_flip(self, files):
        model = _load(files["pytorch"])
        image = torch.tensor(PORT_RGB_MEAN).view(1, 3, 1, 1).expand(1, 3, 4, 4)
        torch.testing.assert_close(model.backbone.preprocess(image), torch.zeros(1, 3, 4, 4), rtol=0, atol=1e-5)
        image = torch.tensor(CAFFE_BGR_MEAN[::-1]).view(1, 3, 1, 1).expand(1, 3, 4, 4)  # Caffe: BGR mean, RGB image
        torch.testing.assert_close(_load(files["caffe_v1"]).backbone.preprocess(image), torch.zeros(1, 3, 4, 4))

    def test_bgr_channel_order(self):
        pre = CaffeInput((1.0, 2.0, 3.0))
        rgb = torch.tensor([10.0, 20.0, 30.0]).view(1, 3, 1, 1)
        assert pre(rgb).flatten().tolist() == [30 - 1, 20 - 2, 10 - 3]  # B - mean_B, G - mean_G, R - mean_R

    def test_default_means_change_the_output(self, files):
        image = _image(20, 20)
        with torch.no_grad():
            caffe = _load(files["caffe_v1"])(image)
            port = _load(files["pytorch"])(image)
            port_caffe_mean = _load(files["pytorch"], mean=CAFFE_BGR_MEAN)(image)
        assert not torch.allclose(caffe, port, atol=1e-3)
        torch.testing.assert_close(caffe, port_caffe_mean, rtol=1e-5, atol=1e-4)

    @pytest.mark.parametrize("fmt", ["caffe_v1", "pytorch", "keras"])
    def test_compatibility_sign(self, files, weights, fmt):
        """Against each code base's own update, written out: Caffe/Keras U - C m, the PyTorch port U + C m."""
        if fmt not in files:
            pytest.skip("h5py not installed")
        fcn, crf = weights
        model = _load(files[fmt], num_iterations=1)
        file_c = -crf["compatibility"] if fmt == "pytorch" else crf["compatibility"]  # C as stored in the file
        unary = torch.randn(1, L, 12, 14, generator=torch.Generator().manual_seed(3)) * 2
        guide = _image(12, 14)
        probe = CrfRnn(L, num_iterations=1).eval()  # the messages m = W_s S q + W_b B q, via mu = I
        with torch.no_grad():
            probe.spatial_weights.copy_(crf["spatial"])
            probe.bilateral_weights.copy_(crf["bilateral"])
            probe.compatibility.copy_(torch.eye(L))
            m = unary - probe(unary, guide)
            c_m = torch.einsum("kl,blhw->bkhw", file_c, m)
            expected = unary + c_m if fmt == "pytorch" else unary - c_m
            out = model.crf(unary, guide)
        torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-4)
        assert (c_m.abs() > 1e-2).any()  # the sign matters here: the flipped update is far from this one
        assert not torch.allclose(out, unary - c_m if fmt == "pytorch" else unary + c_m, atol=1e-2)

    def test_keras_kernel_layout(self):
        k = torch.arange(2 * 3 * 4 * 5, dtype=torch.float32).reshape(2, 3, 4, 5)  # (kh, kw, a, b)
        conv = keras_kernel_to_torch(k, transposed=False)  # Conv2D (kh, kw, in, out) -> (out, in, kh, kw)
        deconv = keras_kernel_to_torch(k, transposed=True)  # Conv2DTranspose (kh, kw, out, in) -> (in, out, kh, kw)
        assert conv.shape == (5, 4, 2, 3) and deconv.shape == (5, 4, 2, 3)
        for y, x, a, b in ((0, 0, 0, 0), (1, 2, 3, 4), (1, 0, 2, 1)):
            assert conv[b, a, y, x] == k[y, x, a, b]  # conv: a = in, b = out
            assert deconv[b, a, y, x] == k[y, x, a, b]  # deconv: a = out, b = in

    def test_keras_wrong_transpose_detected(self, weights, tmp_path):
        pytest.importorskip("h5py")
        fcn, crf = weights
        swapped = dict(fcn)  # a writer that forgot the in/out swap of Conv2DTranspose
        swapped["upscore8.weight"] = fcn["upscore8.weight"].transpose(0, 1)
        good = _load(write_h5(tmp_path / "good.h5", fcn, crf), mean=CAFFE_BGR_MEAN)
        bad = _load(write_h5(tmp_path / "bad.h5", swapped, crf), mean=CAFFE_BGR_MEAN)
        image = _image(20, 20)
        with torch.no_grad():
            assert not torch.allclose(good(image, use_crf=False), bad(image, use_crf=False), atol=1e-3)

    def test_upscore2_bias(self, files, weights, tmp_path):
        fcn, crf = weights
        model = _load(files["caffe_v1"])
        torch.testing.assert_close(model.backbone.upscore2.bias, fcn["upscore2.bias"], rtol=0, atol=0)
        assert model.backbone.upscore_pool4.bias is None and model.backbone.upscore8.bias is None
        no_bias = _load(write_caffemodel(tmp_path / "nb.caffemodel", caffe_layers(fcn, crf, drop_bias=True)))
        assert no_bias.backbone.upscore2.bias is None
        image = _image(20, 20)
        with torch.no_grad():  # the bias is used: without it the unary changes
            assert not torch.allclose(model(image, use_crf=False), no_bias(image, use_crf=False), atol=1e-4)

    def test_crf_sees_mean_subtracted_bgr_padded_image(self, files, weights):
        fcn, crf = weights
        image = _image(31, 22)
        expected, unary = _reference_output(fcn, crf, image, CAFFE_BGR_MEAN)
        model = _load(files["caffe_v1"])
        seen = []
        hook = model.crf.register_forward_pre_hook(lambda module, args: seen.append(args))
        try:
            with torch.no_grad():
                refined, got_unary = CrfRnnSegmenterPair(model)(image)
        finally:
            hook.remove()
        ((crf_unary, guide),) = seen
        assert guide.shape == (1, 3, PAD, PAD) and crf_unary.shape == (1, L, PAD, PAD)  # the padded 40 x 40
        net_in = torch.nn.functional.pad(CaffeInput(CAFFE_BGR_MEAN)(image), (0, PAD - 22, 0, PAD - 31))
        torch.testing.assert_close(guide, net_in, rtol=0, atol=1e-4)  # BGR minus the mean, zeros in the padding
        torch.testing.assert_close(got_unary, unary, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(refined, expected, rtol=1e-5, atol=1e-4)
        # NB the exact Gaussian kernel depends on colour differences only, so the mean and the channel order do
        # not change it; only the lattice's approximation (not shift-invariant) sees them (docs/pretrained.md)

    def test_padding_is_mean_colour(self, files):
        model = _load(files["caffe_v1"])
        padded = model.pad(torch.full((1, 3, 5, 7), 200.0))
        assert padded.shape == (1, 3, PAD, PAD)
        torch.testing.assert_close(model.crf_input(padded)[..., 5:, :], torch.zeros(1, 3, PAD - 5, PAD))
        torch.testing.assert_close(model.crf_input(padded)[..., :, 7:], torch.zeros(1, 3, PAD, PAD - 7))

    def test_padding_changes_the_output(self, files):
        image = _image(24, 30)
        with torch.no_grad():
            padded = _load(files["caffe_v1"])(image)
            unpadded = _load(files["caffe_v1"], pad_to=None)(image)
        assert padded.shape == unpadded.shape
        assert not torch.allclose(padded, unpadded, atol=1e-3)

    def test_full_size_input_by_default(self, files):
        assert load_pretrained(files["caffe_v1"]).pad_to == (500, 500)

    def test_image_too_large(self, files):
        model = _load(files["caffe_v1"])
        with pytest.raises(ValueError, match=r"41 x 12 pixels.*does not fit.*40 x 40.*Resize.*pad_to=None"):
            model(_image(41, 12))

    def test_batch(self, files):
        model = _load(files["caffe_v1"])
        images = torch.cat([_image(20, 24, seed=1), _image(20, 24, seed=2)])
        with torch.no_grad():
            batch = model(images)
            single = torch.cat([model(images[:1]), model(images[1:])])
        torch.testing.assert_close(batch, single, rtol=1e-3, atol=1e-2)  # float32 batched convolutions, 10 iterations


class CrfRnnSegmenterPair(torch.nn.Module):
    """Runs a segmenter with return_unary=True."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, image):
        self.model.return_unary = True
        try:
            return self.model(image)
        finally:
            self.model.return_unary = False


class TestBadFiles:
    @pytest.mark.parametrize("fmt", ["caffe_v1", "caffe_v2", "pytorch", "keras"])
    def test_truncated(self, files, fmt, tmp_path):
        if fmt not in files:
            pytest.skip("h5py not installed")
        data = files[fmt].read_bytes()
        cut = tmp_path / f"cut_{files[fmt].name}"
        cut.write_bytes(data[: len(data) // 2])
        with pytest.raises(ValueError, match=rf"{cut.name}.*(truncated|damaged)"):
            load_pretrained(cut)

    def test_caffe_length_bomb(self, tmp_path):
        bomb = tmp_path / "bomb.caffemodel"
        bomb.write_bytes(_ld(1, b"net") + _key(100, 2) + _varint(10 * 2**30) + b"x" * 100)
        with pytest.raises(ValueError, match=r"bomb.caffemodel.*claims 10737418240 bytes"):
            load_pretrained(bomb)

    def test_another_network(self, weights, tmp_path):
        fcn, crf = weights
        vgg = [
            ("conv1_1", "Convolution", [fcn["conv1_1.weight"].numpy(), fcn["conv1_1.bias"].numpy()]),
            ("fc8", "Convolution", [np.zeros((10, 4, 1, 1), np.float32)]),
        ]
        path = write_caffemodel(tmp_path / "vgg.caffemodel", vgg)
        with pytest.raises(ValueError, match=r"vgg.caffemodel: not the FCN-8s.*missing layers \['conv1_2'.*'fc8'"):
            load_pretrained(path)
        other = tmp_path / "resnet.pth"
        torch.save({"layer1.0.conv1.weight": torch.zeros(2, 2, 1, 1)}, other)
        with pytest.raises(ValueError, match=r"resnet.pth: unexpected keys \['layer1.0.conv1.weight'\]"):
            load_pretrained(other)

    def test_wrong_shapes(self, weights, tmp_path):
        fcn, crf = weights
        bad = dict(fcn)
        bad["score_pool4.weight"] = torch.zeros(L, WIDTHS[3] + 1, 1, 1)
        path = write_caffemodel(tmp_path / "bad.caffemodel", caffe_layers(bad, crf))
        with pytest.raises(ValueError, match=r"bad.caffemodel.*score-pool4 weight: shape \(21, 6, 1, 1\), expected"):
            load_pretrained(path)

    def test_wrong_class_count(self, tmp_path):
        fcn, crf = reference_weights(num_classes=5)
        path = write_caffemodel(tmp_path / "five.caffemodel", caffe_layers(fcn, crf))
        with pytest.raises(ValueError, match=r"five.caffemodel: the network has 5 classes.*num_classes=21"):
            load_pretrained(path)
        model = load_pretrained(path, num_classes=None, pad_to=PAD)
        assert model.num_classes == 5
        with torch.no_grad():
            assert model(_image(10, 10)).shape == (1, 5, 10, 10)
        # a CRF that does not belong to the network
        fcn21, crf21 = reference_weights()
        mixed = write_caffemodel(tmp_path / "mixed.caffemodel", caffe_layers(fcn21, crf))
        with pytest.raises(ValueError, match=r"mixed.caffemodel: CRF-RNN parameter 'spatial' has shape \(5, 5\)"):
            load_pretrained(mixed)

    def test_missing_crf_layer(self, weights, files, tmp_path):
        fcn, crf = weights
        path = write_caffemodel(tmp_path / "fcn_only.caffemodel", caffe_layers(fcn, crf, crf_layer=False))
        with pytest.raises(ValueError, match=r"fcn_only.caffemodel: the file has no CRF-RNN layer.*crf=False"):
            load_pretrained(path)
        model = _load(path, crf=False)
        assert model.crf is None and model.num_classes == L
        full = _load(files["caffe_v1"])
        image = _image(16, 18)
        with torch.no_grad():
            torch.testing.assert_close(model(image), full(image, use_crf=False), rtol=0, atol=0)
        pth = write_pth(tmp_path / "fcn_only.pth", fcn, crf, crf_keys=False)
        with pytest.raises(ValueError, match="no CRF-RNN layer"):
            load_pretrained(pth)

    def test_pickle_refused(self, tmp_path):
        path = tmp_path / "evil.pth"
        torch.save({"conv1_1.weight": torch.zeros(1), "extra": Path("x")}, path)
        with pytest.raises(ValueError, match=r"evil.pth: refused to load.*weights_only"):
            load_pretrained(path)


class TestSegmentImages:
    def test_resize_policies(self):
        big = np.zeros((750, 1000, 3), np.uint8)
        small = np.zeros((100, 250, 3), np.uint8)
        assert resize_for_network(big, "shrink").shape == (375, 500, 3)
        assert resize_for_network(small, "shrink") is small
        assert resize_for_network(big, "fit").shape == (375, 500, 3)
        assert resize_for_network(small, "fit").shape == (200, 500, 3)  # the PyTorch port enlarges too
        assert resize_for_network(small, "none") is small
        with pytest.raises(ValueError, match=r"1000 x 750 pixels.*at most 500 x 500.*--resize shrink"):
            resize_for_network(big, "none")
        # the same pixels as Pillow's bilinear resize to (int(w r), int(h r)), as the released scripts do
        img = (np.random.default_rng(0).random((333, 701, 3)) * 255).astype(np.uint8)
        expected = np.asarray(Image.fromarray(img).resize((500, int(333 * 500 / 701)), resample=Image.BILINEAR))
        np.testing.assert_array_equal(resize_for_network(img, "shrink"), expected)

    def test_batch_of_mixed_sizes(self, files):
        model = _load(files["caffe_v1"])
        rng = np.random.default_rng(1)
        images = [(rng.random((h, w, 3)) * 255).astype(np.uint8) for h, w in ((20, 30), (33, 17), (40, 40))]
        batch = segment_images(model, images, return_probs=True)
        for im, res in zip(images, batch):
            (one,) = segment_images(model, [im], return_probs=True)
            assert (res.labels == one.labels).mean() > 0.99  # float32 batched convolutions may flip a near tie
            np.testing.assert_allclose(res.probs, one.probs, rtol=1e-3, atol=1e-3)  # float32 batched convolutions
            assert res.labels.shape == im.shape[:2] and res.probs.shape == (L, *im.shape[:2])
            np.testing.assert_allclose(res.probs.sum(0), 1.0, rtol=1e-5)
        with torch.no_grad():
            logits = model(torch.from_numpy(images[0]).permute(2, 0, 1)[None].float())
        np.testing.assert_array_equal(batch[0].labels, logits[0].argmax(0).numpy())

    def test_restore_size_like_pil_nearest(self, files):
        model = _load(files["pytorch"])  # resize "fit", restore_size True
        img = (np.random.default_rng(2).random((25, 13, 3)) * 255).astype(np.uint8)
        (res,) = segment_images(model, [img])
        assert res.size == (PAD, int(13 * PAD / 25)) and res.labels.shape == (25, 13)
        (net,) = segment_images(model, [img], restore_size=False)
        assert net.labels.shape == res.size
        expected = np.asarray(Image.fromarray(net.labels.astype(np.uint8)).resize((13, 25), resample=Image.NEAREST))
        np.testing.assert_array_equal(res.labels, expected)

    def test_bad_images(self, files):
        model = _load(files["caffe_v1"])
        with pytest.raises(ValueError, match=r"image 0: expected an \(H, W, 3\) uint8"):
            segment_images(model, [np.zeros((4, 4), np.uint8)])


@pytest.mark.slow
def test_full_size_caffemodel_lands_everywhere(tmp_path):
    """Every blob of a full-size released-layout file (V1, 21 classes, CRF) lands in the right tensor."""
    with torch.device("meta"):
        shapes = {k: tuple(v.shape) for k, v in FCN8s(L, upscore2_bias=True).state_dict().items()}
    expected: dict[str, tuple[float, int]] = {}
    layers = []
    code = 0.0
    for ours, (name, _) in LAYERS.items():
        blobs = []
        for p in ("weight", "bias"):
            key = f"{ours}.{p}"
            if key not in shapes:
                continue
            code += 1.0
            data = np.full(int(np.prod(shapes[key])), code, np.float32)
            n = min(data.size, 64)
            data[:n] = code + np.arange(n, dtype=np.float32) / 128  # the order of the first values
            blobs.append(data.reshape(shapes[key]))
            expected[key] = (code, n)
        layers.append((name, "Deconvolution" if ours in TRANSPOSED else "Convolution", blobs))
    crf = [np.arange(L * L, dtype=np.float32).reshape(1, 1, L, L) + 1000 * (i + 1) for i in range(3)]
    layers.append(("inference1", "MultiStageMeanfield", crf))
    path = write_caffemodel(tmp_path / "TVG_CRFRNN_COCO_VOC.caffemodel", layers, v1=True)
    del layers
    model = load_pretrained(path)
    state = model.backbone.state_dict()
    assert set(state) == set(shapes)
    assert model.backbone.widths == (64, 128, 256, 512, 512) and model.backbone.fc_width == 4096
    for key, (c, n) in expected.items():
        flat = state[key].reshape(-1)
        assert tuple(state[key].shape) == shapes[key], key
        torch.testing.assert_close(flat[:n], c + torch.arange(n, dtype=torch.float32) / 128, msg=key)
        assert bool((flat[n:] == c).all()), key
    for i, name in enumerate(("spatial_weights", "bilateral_weights", "compatibility")):
        torch.testing.assert_close(getattr(model.crf, name), torch.from_numpy(crf[i][0, 0]), rtol=0, atol=0)


def test_released_network_is_the_loaded_pipeline(files):
    from crfrnn.models import released_network

    fresh = released_network("pytorch", widths=WIDTHS, fc_width=FC, pad_to=PAD)
    loaded = _load(files["pytorch"])
    assert set(fresh.state_dict()) == set(loaded.state_dict())
    assert fresh.conventions == loaded.conventions and fresh.pad_value == loaded.pad_value
    assert fresh.crf.num_eval_iterations == 10 and fresh.backbone.upscore2.bias is not None


class TestBoundedKeras:
    """Keras files: external storage and links are refused, declared sizes bounded, before any dataset is read."""

    def _file(self, tmp_path, weights, **kw):
        fcn, crf = weights
        return write_h5(tmp_path / "m.h5", fcn, crf, **kw)

    def test_declared_never_written_dataset_is_refused(self, weights, tmp_path):
        h5py = pytest.importorskip("h5py")
        path = self._file(tmp_path, weights)
        with h5py.File(path, "a") as f:
            name = "conv1_1"
            g = f[name]
            del g[f"{name}/kernel:0"]
            g.create_dataset(f"{name}/kernel:0", shape=(3, 3, 3, 2**36), dtype="f4", chunks=(3, 3, 3, 1024))
        assert path.stat().st_size < 10 << 20
        with pytest.raises(ValueError, match=r"declares .* at most"):
            _load(path)

    def test_each_layer_is_checked_against_the_one_it_is_meant_for(self, weights, tmp_path):
        h5py = pytest.importorskip("h5py")
        path = self._file(tmp_path, weights)
        with h5py.File(path, "a") as f:  # conv1_2 reads conv1_1's output: its in-channels are fixed by conv1_1
            g = f["conv1_2"]
            shape = g["conv1_2/kernel:0"].shape
            del g["conv1_2/kernel:0"]
            g.create_dataset("conv1_2/kernel:0", shape=(3, 3, shape[2] + 999, shape[3]), dtype="f4")
        with pytest.raises(ValueError, match=r"'conv1_2' kernel declares shape .* meant for has shape \(3, 3, "):
            _load(path)

    def test_crf_matrices_must_be_labels_by_labels(self, weights, tmp_path):
        h5py = pytest.importorskip("h5py")
        path = self._file(tmp_path, weights)
        with h5py.File(path, "a") as f:  # declared, never written: refused before it is read
            g = f["crfrnn"]
            del g["crfrnn/compatibility_matrix:0"]
            g.create_dataset("crfrnn/compatibility_matrix:0", shape=(L, 2**20), dtype="f4", chunks=(1, 1024))
        with pytest.raises(ValueError, match=rf"compatibility_matrix declares .* shape \({L}, {L}\)"):
            _load(path)

    def test_too_many_channels_are_refused_before_reading(self, weights, tmp_path):
        h5py = pytest.importorskip("h5py")
        path = self._file(tmp_path, weights)
        with h5py.File(path, "a") as f:
            g = f["fc7"]
            del g["fc7/kernel:0"]
            g.create_dataset("fc7/kernel:0", shape=(1, 1, FC, 5000), dtype="f4", chunks=(1, 1, 1, 1000))
        with pytest.raises(ValueError, match="'fc7' kernel declares shape .* 5000 output channels, but at most 4096"):
            _load(path)

    def test_external_storage_is_refused(self, weights, tmp_path):
        h5py = pytest.importorskip("h5py")
        path = self._file(tmp_path, weights)
        raw = tmp_path / "outside.bin"
        raw.write_bytes(bytes(4 * 4))
        with h5py.File(path, "a") as f:
            g = f["crfrnn"]
            n = "crfrnn/spatial_ker_weights:0"
            del g[n]
            g.create_dataset(n, shape=(2, 2), dtype="f4", external=[(str(raw), 0, 16)])
        with pytest.raises(ValueError, match="external storage"):
            _load(path)

    def test_external_link_is_refused(self, weights, tmp_path):
        h5py = pytest.importorskip("h5py")
        path = self._file(tmp_path, weights)
        with h5py.File(tmp_path / "other.h5", "w") as o:
            o.create_dataset("w", data=np.zeros((2, 2), np.float32))
        with h5py.File(path, "a") as f:
            g = f["crfrnn"]
            n = "crfrnn/spatial_ker_weights:0"
            del g[n]
            g[n] = h5py.ExternalLink(str(tmp_path / "other.h5"), "w")
        with pytest.raises(ValueError, match="link"):
            _load(path)

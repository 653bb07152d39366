"""Run the released CRF-RNN network (FCN-8s + CRF-RNN, PASCAL VOC, Zheng et al. ICCV 2015) from its weights.

Three weight files were published, one per code base; :func:`load_pretrained` reads any of them, telling
the formats apart by their content, and returns a ready :class:`~crfrnn.models.CrfRnnSegmenter`::

    model = load_pretrained("TVG_CRFRNN_COCO_VOC.caffemodel")  # or crfasrnn_weights.pth, crfrnn_keras_model.h5
    results = segment_images(model, [np.asarray(Image.open("photo.jpg").convert("RGB"))])
    results[0].labels  # (H, W) VOC class indices

- ``caffe``: ``TVG_CRFRNN_COCO_VOC.caffemodel`` of torrvision/crfasrnn (read without Caffe, see
  :mod:`crfrnn.models._caffe`);
- ``pytorch``: ``crfasrnn_weights.pth`` of sadeepj/crfasrnn_pytorch (read with
  ``torch.load(weights_only=True)``: never unpickled);
- ``keras``: ``crfrnn_keras_model.h5`` of sadeepj/crfasrnn_keras (read with ``h5py``, the ``keras`` extra).

Each code base ran the network slightly differently (mean values, resizing, the sign of the compatibility
matrix, weight layouts). A file runs the way its own code base ran it by default; every difference is an
option. ``docs/pretrained.md`` lists them with the source files they were read from.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Sequence, Union, cast

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from crfrnn._utils.files import PathLike
from crfrnn.models._keras import keras_kernel_to_torch, read_keras  # noqa: F401 (keras_kernel_to_torch: importable here)
from crfrnn.models._weights import (
    CAFFE_CRF_LAYER,
    FCN_LAYERS,
    FILE_NAME,
    KERAS_CRF_LAYER,
    read_caffe,
    read_pytorch,
    sniff,
)
from crfrnn.models.fcn8s import CAFFE_BGR_MEAN, CaffeInput, FCN8s
from crfrnn.models.segmenter import CrfRnnSegmenter

if TYPE_CHECKING:  # pragma: no cover
    from crfrnn.crf import CrfRnn

__all__ = [
    "CONVENTIONS",
    "Conventions",
    "FORMATS",
    "Segmentation",
    "detect_format",
    "load_pretrained",
    "released_network",
    "resize_for_network",
    "segment_images",
]

#: Weight-file formats :func:`load_pretrained` reads.
FORMATS = ("caffe", "pytorch", "keras")

#: ImageNet mean of the PyTorch and Keras ports, in R, G, B order (``_IMAGENET_MEANS`` in their util.py).
PORT_RGB_MEAN: tuple[float, float, float] = (123.68, 116.779, 103.939)
RESIZE_POLICIES = ("none", "shrink", "fit")


@dataclass(frozen=True)
class Conventions:
    """How one code base ran the released network (see ``docs/pretrained.md``).

    Attributes:
        format: ``"caffe"``, ``"pytorch"`` or ``"keras"``.
        source: the code base.
        mean_bgr: the mean subtracted from the BGR input, in B, G, R order.
        resize: what happens to an image larger than ``max_size``: ``"shrink"`` (scale it down so that it
            fits, the Caffe demo), ``"fit"`` (scale every image so that its longer side is ``max_size``, up
            or down, the PyTorch port), ``"none"`` (an error, the Keras port).
        restore_size: whether the label map is resized back to the original image size (nearest
            neighbour) after a resize (the PyTorch port does, the Caffe demo does not).
        max_size: the side of the square the image is padded to (500).
    """

    format: str
    source: str
    mean_bgr: tuple[float, float, float]
    resize: str
    restore_size: bool
    max_size: int = 500


CONVENTIONS: dict[str, Conventions] = {
    "caffe": Conventions("caffe", "torrvision/crfasrnn (Caffe)", CAFFE_BGR_MEAN, "shrink", False),
    "pytorch": Conventions("pytorch", "sadeepj/crfasrnn_pytorch", PORT_RGB_MEAN[::-1], "fit", True),
    "keras": Conventions("keras", "sadeepj/crfasrnn_keras", PORT_RGB_MEAN[::-1], "none", False),
}


# --------------------------------------------------------------------------------------------- formats


def detect_format(path: PathLike) -> str:
    """Tell which released weight file ``path`` is by its content: ``"caffe"``, ``"pytorch"`` or ``"keras"``.

    HDF5 files (Keras) and PyTorch checkpoints (zip archive or legacy pickle) have magic numbers; a Caffe
    model is a protocol-buffers message, recognised by a well-formed first field of ``NetParameter``.

    Raises:
        FileNotFoundError: if there is no such file.
        ValueError: if the content matches none of the three.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such weight file: {path}")
    if path.stat().st_size == 0:
        raise ValueError(f"{path}: the file is empty (an interrupted download?).")
    fmt = sniff(path)
    if fmt is None:
        raise ValueError(
            f"{path}: cannot tell the weight format from the content: not an HDF5 file (Keras), not a PyTorch "
            "checkpoint and not a Caffe protocol-buffers model. Pass format='caffe', 'pytorch' or 'keras' "
            "(crfrnn segment --format) if you are sure."
        )
    return fmt


# ---------------------------------------------------------------------------------------------- builder

#: the reader of each of :data:`FORMATS`
_READERS = {"caffe": read_caffe, "pytorch": read_pytorch, "keras": read_keras}


def _infer_fcn(path: Path, fmt: str, fcn: Mapping[str, Tensor], names: Sequence[str]) -> dict[str, Any]:
    """FCN8s keyword arguments (widths, class count, bias of upscore2) read off the weights' shapes."""
    key_name = (lambda ours: FILE_NAME[ours]) if fmt != "pytorch" else (lambda ours: ours)
    missing = [key_name(ours) for ours, _, _, _ in FCN_LAYERS if f"{ours}.weight" not in fcn]
    if missing:
        shown = ", ".join(map(repr, list(names)[:12])) + (" ..." if len(names) > 12 else "")
        raise ValueError(
            f"{path}: not the FCN-8s (+ CRF-RNN) network: missing {'layers' if fmt != 'pytorch' else 'keys'} "
            f"{missing[:6]}{' ...' if len(missing) > 6 else ''}. The file holds: {shown or 'nothing'}."
        )
    widths = tuple(int(fcn[f"conv{s}_1.weight"].shape[0]) for s in range(1, 6))
    return {
        "num_classes": int(fcn["score_fr.weight"].shape[0]),
        "widths": widths,
        "fc_width": int(fcn["fc6.weight"].shape[0]),
        "upscore2_bias": "upscore2.bias" in fcn,
    }


def _check_shapes(path: Path, fmt: str, model: torch.nn.Module, fcn: Mapping[str, Tensor]) -> None:
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    problems = []
    for key in sorted(set(expected) | set(fcn)):
        layer, param = key.rsplit(".", 1)
        shown = f"{FILE_NAME.get(layer, layer) if fmt != 'pytorch' else layer} {param}"
        if key not in fcn:
            problems.append(f"{shown}: missing")
        elif key not in expected:
            problems.append(f"{shown}: not part of FCN-8s (a bias where the released network has none?)")
        elif tuple(fcn[key].shape) != expected[key]:
            got = tuple(fcn[key].shape)
            problems.append(f"{shown}: shape {got}, expected {expected[key]}")
    if problems:
        raise ValueError(
            f"{path}: the weights do not fit FCN-8s: "
            + "; ".join(problems[:6])
            + (" ..." if len(problems) > 6 else "")
            + ". Is this another network, or a damaged file?"
        )


def load_pretrained(
    path: PathLike,
    *,
    format: Optional[str] = None,
    crf: bool = True,
    num_classes: Optional[int] = 21,
    num_iterations: int = 10,
    pad_to: Union[int, tuple[int, int], None] = 500,
    mean: Optional[Sequence[float]] = None,
    device: Union[str, torch.device, None] = None,
    crf_kwargs: Optional[dict[str, Any]] = None,
) -> CrfRnnSegmenter:
    """Build the released CRF-RNN network (FCN-8s + CRF-RNN) from one of its published weight files.

    The returned model, in eval mode, takes RGB images on the 0..255 scale and, like the released code:
    pads them at the bottom and right to ``pad_to`` (with the mean colour, i.e. zeros after the mean is
    subtracted), converts them to BGR minus ``mean``, runs FCN-8s, runs ``num_iterations`` mean-field
    iterations whose bilateral kernel sees that mean-subtracted BGR padded image (widths 160 / 3 / 3), and
    crops the logits back to the image size. Its ``conventions`` attribute (:class:`Conventions`) says
    how the file's code base prepared images (see :func:`segment_images`).

    Args:
        path: ``TVG_CRFRNN_COCO_VOC.caffemodel``, ``crfasrnn_weights.pth`` or ``crfrnn_keras_model.h5``
            (or a file of the same layout: layer widths are read off the weights).
        format: ``"caffe"``, ``"pytorch"`` or ``"keras"``; ``None`` tells them apart by their content.
        crf: ``False`` builds FCN-8s alone (``model.crf is None``), e.g. for a ``.caffemodel`` without the
            CRF-RNN layer.
        num_classes: the class count the file must have (21, PASCAL VOC); ``None`` accepts any.
        num_iterations: mean-field iterations ``T`` (10, as the released models ran at test time).
        pad_to: side (or ``(H, W)``) the images are padded to (500, as released); ``None`` runs each
            image at its own size, as the Caffe net and the port's network compute on an unpadded image
            (same geometry at every size); its logits differ from the canvas's, since FCN-8s sees past the
            image's edges (``docs/pretrained.md``, "Input sizes other than 500 x 500").
        mean: BGR mean to subtract; default: the file's code base's (see :data:`CONVENTIONS`).
        device: where to put the model (default CPU).
        crf_kwargs: further keyword arguments of :class:`crfrnn.CrfRnn` (e.g. ``backend``).

    Returns:
        A :class:`CrfRnnSegmenter` in eval mode.

    Raises:
        FileNotFoundError: if the file does not exist.
        ValueError: naming the file, if it is truncated, damaged, another network, has another class
            count than ``num_classes``, or lacks the CRF-RNN layer while ``crf=True``.
        ImportError: for a Keras file without h5py installed.

    Example::

        model = load_pretrained("TVG_CRFRNN_COCO_VOC.caffemodel")
        logits = model(image)  # image: (B, 3, H, W) RGB 0..255 with H, W <= 500
    """
    path = Path(path)
    if format is not None and format not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS} or None (detect), got {format!r}.")
    found = detect_format(path)
    if format is not None and format != found:
        raise ValueError(
            f"{path}: format={format!r} was given but the content is that of a {found!r} file "
            "(drop format= to let the loader tell)."
        )
    fmt = found
    weights = _READERS[fmt](path)
    kwargs = _infer_fcn(path, fmt, weights.fcn, weights.names)
    if num_classes is not None and kwargs["num_classes"] != num_classes:
        raise ValueError(
            f"{path}: the network has {kwargs['num_classes']} classes (its score layer has {kwargs['num_classes']} "
            f"outputs) but num_classes={num_classes} was expected. Pass num_classes=None (crfrnn segment "
            "--num-classes 0) to load a network with another class count."
        )
    conventions = CONVENTIONS[fmt]
    if mean is not None:
        mean_bgr = cast("tuple[float, float, float]", tuple(float(v) for v in mean))  # FCN8s checks the length
        conventions = replace(conventions, mean_bgr=mean_bgr)
    with torch.device("meta"):
        backbone = FCN8s(dropout=0.5, mean=conventions.mean_bgr, **kwargs)
    _check_shapes(path, fmt, backbone, weights.fcn)
    backbone.load_state_dict(weights.fcn, strict=True, assign=True)

    head = None
    if crf:
        if weights.crf is None:
            raise ValueError(
                f"{path}: the file has no CRF-RNN layer ({CAFFE_CRF_LAYER!r} in Caffe, {KERAS_CRF_LAYER!r} in "
                "Keras, crfrnn.* in PyTorch): it looks like FCN-8s alone. Load it with crf=False (crfrnn segment "
                "--no-crf) to run the FCN-8s without a CRF."
            )
        L = kwargs["num_classes"]
        for key, value in weights.crf.items():
            if tuple(value.shape) != (L, L):
                raise ValueError(
                    f"{path}: CRF-RNN parameter {key!r} has shape {tuple(value.shape)} but the FCN-8s has {L} "
                    f"classes: expected ({L}, {L}). The CRF and the network do not belong together."
                )
        if L < 2:
            raise ValueError(f"{path}: a CRF needs at least 2 classes, the network has {L}; load it with crf=False.")
        head = _crf_head(L, num_iterations, crf_kwargs)
        with torch.no_grad():
            head.spatial_weights.copy_(weights.crf["spatial"])
            head.bilateral_weights.copy_(weights.crf["bilateral"])
            head.compatibility.copy_(weights.crf["compatibility"])
    model = _assemble(backbone, head, conventions, pad_to)
    model.weights_path = str(path)  # type: ignore[assignment]
    return model.to(device or "cpu").eval()


def _crf_head(num_classes: int, num_iterations: int, crf_kwargs: Optional[dict[str, Any]]) -> "CrfRnn":
    from crfrnn.crf import CrfRnn  # imported here, as in crfrnn.models: the CRF is only needed when built

    options: dict[str, Any] = dict(theta_alpha=160.0, theta_beta=3.0, theta_gamma=3.0, normalization="row")
    options.update(crf_kwargs or {})
    return CrfRnn(num_classes, num_iterations=num_iterations, num_eval_iterations=num_iterations, **options)


def _assemble(
    backbone: FCN8s,
    head: Optional["CrfRnn"],
    conventions: Conventions,
    pad_to: Union[int, tuple[int, int], None],
) -> CrfRnnSegmenter:
    """The released pipeline around a backbone and a CRF head: padding with the mean colour, BGR guide."""
    if isinstance(pad_to, int) and not isinstance(pad_to, bool):
        pad_to = (pad_to, pad_to)
    pad_value = None if pad_to is None else tuple(float(v) for v in conventions.mean_bgr[::-1])
    model = CrfRnnSegmenter(
        backbone,
        head,
        crf_input=CaffeInput(conventions.mean_bgr),
        pad_to=cast("Optional[tuple[int, int]]", pad_to),  # a bool is refused there
        pad_value=pad_value,
    )
    model.conventions = conventions  # type: ignore[assignment]
    return model


def released_network(
    format: str = "caffe",
    *,
    num_classes: int = 21,
    widths: Optional[Sequence[int]] = None,
    fc_width: int = 4096,
    crf: bool = True,
    num_iterations: int = 10,
    pad_to: Union[int, tuple[int, int], None] = 500,
    crf_kwargs: Optional[dict[str, Any]] = None,
) -> CrfRnnSegmenter:
    """The released network's pipeline with freshly initialised weights (benchmarks, tests, fine-tuning).

    The same model :func:`load_pretrained` builds for a file of ``format``, without reading one: FCN-8s
    with the ``upscore2`` bias (``widths``/``fc_width`` narrow it) and a CRF-RNN head at its initial values.
    """
    if format not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {format!r}.")
    conventions = CONVENTIONS[format]
    backbone = FCN8s(num_classes, widths=widths, fc_width=fc_width, upscore2_bias=True, mean=conventions.mean_bgr)
    head = _crf_head(num_classes, num_iterations, crf_kwargs) if crf else None
    return _assemble(backbone, head, conventions, pad_to).eval()


# ------------------------------------------------------------------------------------------ segmenting


@dataclass
class Segmentation:
    """One segmented image: ``labels (H, W)`` int64 class indices and, if asked for, ``probs (L, H, W)``.

    ``size`` is the ``(H, W)`` the network saw (after any resize).
    """

    labels: np.ndarray
    probs: Optional[np.ndarray]
    size: tuple[int, int]


def resize_for_network(image: np.ndarray, policy: str, max_size: int = 500) -> np.ndarray:
    """Resize an ``(H, W, 3)`` uint8 RGB image as a code base did before its network.

    Args:
        image: ``(H, W, 3)`` uint8.
        policy: ``"none"`` (unchanged; an image larger than ``max_size`` raises), ``"shrink"`` (only an
            image larger than ``max_size`` is scaled down to fit, the Caffe demo's ``resize_image``) or
            ``"fit"`` (every image is scaled so that its longer side is ``max_size``, the PyTorch port's
            ``get_preprocessed_image``). Both resize with Pillow's bilinear filter to
            ``(int(w * r), int(h * r))``, as those functions do.
        max_size: the network's input side (500).

    Returns:
        The image to feed the network, ``(h, w, 3)`` uint8.
    """
    from PIL import Image

    if policy not in RESIZE_POLICIES:
        raise ValueError(f"resize policy must be one of {RESIZE_POLICIES}, got {policy!r}.")
    h, w = image.shape[:2]
    if policy == "none":
        if h > max_size or w > max_size:
            raise ValueError(
                f"the image is {w} x {h} pixels (W x H) but the network takes at most {max_size} x {max_size}; "
                "resize it first, or use resize 'shrink' (crfrnn segment --resize shrink)."
            )
        return image
    ratio = min(max_size / w, max_size / h)
    if policy == "shrink" and ratio >= 1.0:
        return image
    size = (max(1, int(w * ratio)), max(1, int(h * ratio)))
    if size == (w, h):
        return image
    return np.asarray(
        Image.fromarray(image).resize(
            size,
            resample=Image.BILINEAR,  # type: ignore[attr-defined]  # Pillow sets it at import
        )
    )


def _resize_labels(labels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize with Pillow, as the PyTorch port resizes its label image back."""
    from PIL import Image

    mode_dtype = np.uint8 if labels.max(initial=0) < 256 else np.int32
    img = Image.fromarray(labels.astype(mode_dtype))
    return np.asarray(
        img.resize((size[1], size[0]), resample=Image.NEAREST)  # type: ignore[attr-defined]  # Pillow sets it at import
    ).astype(np.int64)


def _as_uint8_rgb(image: Any, index: int) -> np.ndarray:
    arr = np.asarray(image)
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.dtype != np.uint8:
        raise ValueError(
            f"image {index}: expected an (H, W, 3) uint8 RGB array, got shape {arr.shape} and dtype {arr.dtype} "
            "(e.g. np.asarray(PIL.Image.open(path).convert('RGB')))."
        )
    return arr


@torch.no_grad()
def segment_images(
    model: CrfRnnSegmenter,
    images: Sequence[np.ndarray],
    *,
    resize: Optional[str] = None,
    restore_size: Optional[bool] = None,
    use_crf: bool = True,
    return_probs: bool = False,
) -> list[Segmentation]:
    """Segment photos with a network from :func:`load_pretrained`, all in one batch.

    Each image is resized by ``resize`` (see :func:`resize_for_network`), padded to the model's
    ``pad_to`` with the mean colour, run through the model and cropped back; the labels are the argmax.

    Args:
        model: from :func:`load_pretrained` (or any :class:`CrfRnnSegmenter`).
        images: ``(H, W, 3)`` uint8 RGB arrays, any sizes.
        resize: resize policy; default ``model.conventions.resize`` (``"none"`` without conventions).
        restore_size: resize the label map (nearest) and probabilities (bilinear) back to the original
            size after a resize; default ``model.conventions.restore_size``.
        use_crf: ``False`` for the FCN-8s alone.
        return_probs: also return the softmax probabilities ``(L, H, W)`` float32.

    Returns:
        One :class:`Segmentation` per image, in order.
    """
    conventions: Optional[Conventions] = getattr(model, "conventions", None)
    resize = resize if resize is not None else (conventions.resize if conventions else "none")
    restore = restore_size if restore_size is not None else (conventions.restore_size if conventions else True)
    max_size = model.pad_to if model.pad_to is not None else None
    param = next(model.parameters())
    originals = [_as_uint8_rgb(im, i) for i, im in enumerate(images)]
    if max_size is None:
        if resize != "none":
            raise ValueError(f"resize={resize!r} needs a model with pad_to; this one runs images at their own size.")
        prepared = originals
    else:
        prepared = [resize_for_network(im, resize, min(max_size)) for im in originals]
    tensors = [torch.tensor(im).permute(2, 0, 1).to(param.device, param.dtype) for im in prepared]
    if model.pad_to is not None:
        logits = model(torch.stack([model.pad(t[None])[0] for t in tensors]), use_crf=use_crf)
        outputs = [logits[i, :, : t.shape[1], : t.shape[2]] for i, t in enumerate(tensors)]
    else:
        outputs = [model(t[None], use_crf=use_crf)[0] for t in tensors]
    results = []
    for original, out in zip(originals, outputs):
        size = (int(out.shape[-2]), int(out.shape[-1]))
        probs = torch.softmax(out, 0)
        labels = probs.argmax(0).cpu().numpy()
        target = original.shape[:2]
        if restore and size != target:
            labels = _resize_labels(labels, target)
            if return_probs:
                probs = F.interpolate(probs[None], size=target, mode="bilinear", align_corners=False)[0]
        kept = probs.float().cpu().numpy() if return_probs else None
        results.append(Segmentation(labels=labels.astype(np.int64), probs=kept, size=size))
    return results

"""Prediction by the three methods of the paper's comparison, the CNN computed once.

The methods (Zheng et al. 2015, Table 1): ``"cnn"``, the CNN alone (the backbone of a
:class:`~crfrnn.models.CrfRnnSegmenter`, or a plain network returning logits); ``"cnn+densecrf"``, its logits
refined offline by :func:`crfrnn.dense_crf` with fixed parameters; ``"crfrnn"``, the full CNN + CRF-RNN network
in eval mode. :func:`predict_timed` is the worker that the validation loop (:mod:`crfrnn.workflow._validate`)
and :func:`predict` share.
"""

from __future__ import annotations

import contextlib
import itertools
import time
from typing import Any, Iterable, Iterator, Mapping, Optional, Sequence, Union, cast

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from crfrnn import _deprecated, _kernels
from crfrnn.dense import dense_crf
from crfrnn.models.segmenter import CrfRnnSegmenter
from crfrnn.params import DENSECRF_DEFAULTS, RENAMED_PARAMS

__all__ = [
    "DEFAULT_SEARCH_GRID",
    "METHODS",
    "METHOD_TITLES",
    "check_count",
    "check_methods",
    "cnn_logits",
    "eval_mode",
    "labels_of_scores",
    "merge_dense_crf_params",
    "model_device",
    "predict",
    "predict_timed",
    "unwrap",
]

#: the evaluation methods, in the order of the paper's Table 1
METHODS: tuple[str, ...] = ("cnn", "cnn+densecrf", "crfrnn")
#: display names of the methods (report tables, plot legends, grid titles)
METHOD_TITLES: dict[str, str] = {"cnn": "CNN", "cnn+densecrf": "CNN + dense CRF", "crfrnn": "CRF-RNN"}
#: the default grid of :func:`search_dense_crf` (27 points around densecrf's defaults)
DEFAULT_SEARCH_GRID: dict[str, tuple[float, ...]] = {
    "bilateral_sxy": (20.0, 50.0, 80.0),
    "bilateral_srgb": (5.0, 13.0, 25.0),
    "bilateral_compat": (3.0, 5.0, 10.0),
}


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside ``DataParallel`` / ``DistributedDataParallel`` wrappers."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}.")
    while isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
        model = model.module
    return model


def check_methods(methods: Union[str, Iterable[str]], model: nn.Module) -> tuple[str, ...]:
    """The method names, checked against :data:`METHODS` and the model, in :data:`METHODS` order."""
    if isinstance(methods, str):
        methods = (methods,)
    methods = tuple(methods)
    if not methods:
        raise ValueError(f"methods must name at least one of {list(METHODS)}, got an empty sequence.")
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ValueError(f"unknown method(s) {unknown}; valid methods are {list(METHODS)}.")
    if len(set(methods)) != len(methods):
        raise ValueError(f"methods must not repeat a name, got {list(methods)}.")
    if "crfrnn" in methods and not isinstance(model, CrfRnnSegmenter):
        raise ValueError(
            f"method 'crfrnn' needs a CNN + CRF-RNN model (crfrnn.models.CrfRnnSegmenter), got a "
            f"{type(model).__name__}. Drop 'crfrnn' from methods to evaluate this network as a plain CNN."
        )
    return tuple(m for m in METHODS if m in methods)  # canonical order


def merge_dense_crf_params(params: Optional[Mapping[str, Any]]) -> dict[str, Any]:
    """Densecrf's defaults updated with ``params``; unknown names are rejected, old ones renamed (with a warning)."""
    out = dict(DENSECRF_DEFAULTS)
    if params is None:
        return out
    if not isinstance(params, Mapping):
        raise TypeError(
            f"dense_crf_params must be a mapping of dense_crf keyword arguments, got {type(params).__name__}."
        )
    params = _deprecated.renamed_keys(params, RENAMED_PARAMS, "dense_crf_params", stacklevel=3)
    unknown = sorted(set(params) - set(DENSECRF_DEFAULTS))
    if unknown:
        raise ValueError(
            f"unknown dense CRF parameter(s) {unknown}; valid names are {sorted(DENSECRF_DEFAULTS)} "
            "(keyword arguments of crfrnn.dense_crf)."
        )
    out.update(params)
    return out


def check_count(value: Optional[int], name: str, minimum: int) -> None:
    """Check that an optional count is an int ``>= minimum``."""
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum} or None, got {value!r}.")


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter or buffer (the CPU for a model without any)."""
    for p in itertools.chain(model.parameters(), model.buffers()):
        return p.device
    return torch.device("cpu")


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Put every submodule in eval mode and restore each one's own flag afterwards."""
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for m, flag in flags:
            m.training = flag


def cnn_logits(model: nn.Module, image: Tensor) -> Tensor:
    """The CNN's logits ``(B, L, H, W)`` at the image size (a segmenter's backbone, or the plain model)."""
    if isinstance(model, CrfRnnSegmenter):
        return model.unary(image)
    out = model(image)
    if not isinstance(out, Tensor) or out.ndim != 4:
        got = f"shape {tuple(out.shape)}" if isinstance(out, Tensor) else f"a {type(out).__name__}"
        raise ValueError(f"the model must return logits of shape (B, L, H, W), got {got}.")
    if out.shape[-2:] != image.shape[-2:]:
        out = F.interpolate(out, size=image.shape[-2:], mode="bilinear", align_corners=False)
    return out


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def predict_timed(
    model: nn.Module,
    image: Tensor,
    methods: Sequence[str],
    crf_params: Mapping[str, Any],
    num_classes: Optional[int] = None,
) -> tuple[dict[str, Tensor], dict[str, float]]:
    """Worker: label maps ``(B, H, W)`` and seconds per method (the whole pipeline of each)."""
    labels: dict[str, Tensor] = {}
    seconds: dict[str, float] = {}
    t0 = time.perf_counter()
    unary = cnn_logits(model, image)
    if num_classes is not None and unary.shape[1] != num_classes:
        raise ValueError(
            f"the model returned scores for {unary.shape[1]} classes but num_classes={num_classes}; pass the "
            "number of classes the model was built for (and data with those labels)."
        )
    _sync(unary.device)
    t_cnn = time.perf_counter() - t0
    if "cnn" in methods:
        labels["cnn"] = labels_of_scores(unary)
        seconds["cnn"] = t_cnn
    if "cnn+densecrf" in methods:
        t0 = time.perf_counter()
        q = cast(Tensor, dense_crf(image, logits=unary, **crf_params))  # tensors in, a tensor out
        labels["cnn+densecrf"] = labels_of_scores(q)
        _sync(q.device)
        seconds["cnn+densecrf"] = t_cnn + time.perf_counter() - t0
    if "crfrnn" in methods:
        t0 = time.perf_counter()
        released = getattr(model, "pad_to", None) is not None or getattr(model, "crf_input", None) is not None
        if released:  # e.g. the released network: padded canvas, BGR guide; run its whole pipeline
            out = model(image, use_crf=True)
            refined = out[0] if isinstance(out, tuple) else out
        else:
            refined = cast(nn.Module, model.crf)(unary, image)
        labels["crfrnn"] = labels_of_scores(refined)
        _sync(refined.device)
        seconds["crfrnn"] = (0.0 if released else t_cnn) + time.perf_counter() - t0
    return labels, seconds


def labels_of_scores(scores: Tensor) -> Tensor:
    """``scores.argmax(1)`` for ``(B, L, *S)`` scores: on the CPU, the compiled argmax label by label
    (:func:`crfrnn._kernels.argmax_labels`; PyTorch's over a non-innermost dimension is a strided pass), else
    PyTorch's. The same labels either way (the first of equal maxima).
    """
    if scores.device.type != "cpu" or scores.dtype not in (torch.float32, torch.float64) or scores.shape[1] < 2:
        return scores.argmax(1)
    maps = []
    for x in scores.detach():
        m = _kernels.argmax_labels(x.contiguous().numpy())
        if m is None:  # a NaN: PyTorch's rule
            return scores.argmax(1)
        maps.append(m)
    return torch.from_numpy(np.stack(maps)) if maps else scores.argmax(1)


def predict(
    model: nn.Module,
    image: Tensor,
    *,
    methods: Iterable[str] = ("cnn", "crfrnn"),
    dense_crf_params: Optional[Mapping[str, Any]] = None,
) -> dict[str, Tensor]:
    """Label maps of a batch of images by each method, the CNN computed once.

    The model runs in eval mode without gradients; the training flags of its submodules are restored.

    Args:
        model: a :class:`~crfrnn.models.CrfRnnSegmenter` or a plain network mapping an image to logits.
        image: ``(B, 3, H, W)`` RGB on the 0..255 scale, on the model's device.
        methods: names from :data:`METHODS`; ``"crfrnn"`` needs a ``CrfRnnSegmenter``.
        dense_crf_params: keyword arguments of :func:`crfrnn.dense_crf` for ``"cnn+densecrf"``, updating
            :data:`DENSECRF_DEFAULTS`.

    Returns:
        ``{method: (B, H, W) int64 labels}`` on the image's device, methods in :data:`METHODS` order.

    Example:
        >>> from crfrnn.models import create
        >>> model = create("small_fcn_crfrnn", num_classes=3, backbone_kwargs={"width": 8})
        >>> out = predict(model, torch.rand(1, 3, 16, 16) * 255, methods=("cnn", "cnn+densecrf", "crfrnn"))
        >>> {k: tuple(v.shape) for k, v in out.items()}
        {'cnn': (1, 16, 16), 'cnn+densecrf': (1, 16, 16), 'crfrnn': (1, 16, 16)}
    """
    model = unwrap(model)
    methods = check_methods(methods, model)
    params = merge_dense_crf_params(dense_crf_params)
    with eval_mode(model), torch.no_grad():
        return predict_timed(model, image, methods, params)[0]


__getattr__ = _deprecated.renamed(
    __name__, {"DENSE_CRF_DEFAULTS": ("crfrnn.params.DENSECRF_DEFAULTS", DENSECRF_DEFAULTS)}
)

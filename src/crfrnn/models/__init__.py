"""Segmentation networks for CRF-RNN: FCN-8s, a small CPU-friendly FCN, and a CNN + CRF-RNN composition.

Build a registered model by name with :func:`create`; :func:`list_models` lists the names::

    >>> from crfrnn.models import create, list_models
    >>> list_models()
    ['fcn8s', 'fcn8s_crfrnn', 'small_fcn', 'small_fcn_crfrnn']
    >>> model = create("small_fcn", num_classes=5)

Every model takes a raw RGB image ``(B, 3, H, W)`` on the 0..255 scale and returns logits ``(B, L, H, W)``.

The released CRF-RNN network is built from any of its three published weight files by
:func:`load_pretrained` (see :mod:`crfrnn.models.pretrained` and ``docs/pretrained.md``).
"""

from __future__ import annotations

import difflib
import inspect
from typing import TYPE_CHECKING, Any, Callable, Optional

from torch import nn

from crfrnn.models.fcn8s import CaffeInput, FCN8s
from crfrnn.models.pretrained import (
    CONVENTIONS,
    Conventions,
    Segmentation,
    detect_format,
    load_pretrained,
    released_network,
    resize_for_network,
    segment_images,
)
from crfrnn.models.segmenter import CrfRnnSegmenter
from crfrnn.models.small import SmallFCN

if TYPE_CHECKING:  # pragma: no cover
    from crfrnn.crf import CrfRnn

__all__ = [
    "CONVENTIONS",
    "CaffeInput",
    "Conventions",
    "CrfRnnSegmenter",
    "FCN8s",
    "Segmentation",
    "SmallFCN",
    "create",
    "detect_format",
    "list_models",
    "load_pretrained",
    "register_model",
    "released_network",
    "resize_for_network",
    "segment_images",
]

_MODELS: dict[str, Callable[..., nn.Module]] = {}


def register_model(name: str) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator adding a model builder to the registry under ``name``.

    Builders take keyword-only arguments and return a :class:`torch.nn.Module`.

    Example::

        @register_model("tiny_fcn")
        def _tiny_fcn(*, num_classes: int = 21) -> nn.Module:
            return SmallFCN(num_classes, width=8)

        model = create("tiny_fcn", num_classes=3)
    """

    def decorator(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _MODELS:
            raise ValueError(f"a model named {name!r} is already registered; choose another name.")
        _MODELS[name] = fn
        return fn

    return decorator


def list_models() -> list[str]:
    """The names accepted by :func:`create`, sorted."""
    return sorted(_MODELS)


def create(name: str, /, **kwargs: Any) -> nn.Module:
    """Build a registered model.

    Args:
        name: one of :func:`list_models`.
        **kwargs: keyword arguments of that model's builder (e.g. ``num_classes``).

    Returns:
        The model, freshly initialised (no pretrained weights are downloaded).

    Raises:
        ValueError: if ``name`` is not registered; the message lists the valid names.
        TypeError: if a keyword argument is not accepted by the builder; the message lists those that are.
    """
    if name not in _MODELS:
        close = difflib.get_close_matches(str(name), list_models(), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"unknown model {name!r}; valid names are {list_models()}.{hint}")
    builder = _MODELS[name]
    accepted = [
        p.name for p in inspect.signature(builder).parameters.values() if p.kind is inspect.Parameter.KEYWORD_ONLY
    ]
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown:
        raise TypeError(f"model {name!r} got unexpected keyword argument(s) {unknown}; it accepts {accepted}.")
    return builder(**kwargs)


def _crf(num_classes: int, crf_kwargs: Optional[dict[str, Any]]) -> "CrfRnn":
    from crfrnn.crf import CrfRnn  # imported here: the CRF is only needed when a CRF model is built

    return CrfRnn(num_classes, **(crf_kwargs or {}))


@register_model("fcn8s")
def _fcn8s(
    *, num_classes: int = 21, dropout: float = 0.5, learnable_upsampling: bool = False, upscore2_bias: bool = False
) -> FCN8s:
    """FCN-8s on VGG-16 (the Caffe ``voc-fcn8s`` net); see :class:`FCN8s`."""
    return FCN8s(num_classes, dropout=dropout, learnable_upsampling=learnable_upsampling, upscore2_bias=upscore2_bias)


@register_model("small_fcn")
def _small_fcn(
    *,
    num_classes: int = 21,
    width: int = 32,
    depth: int = 2,
    dilations: tuple[int, ...] = (2, 4),
    norm: str = "batch",
    dropout: float = 0.1,
) -> SmallFCN:
    """Small output-stride-8 FCN for CPU-scale experiments; see :class:`SmallFCN`."""
    return SmallFCN(num_classes, width=width, depth=depth, dilations=dilations, norm=norm, dropout=dropout)


@register_model("fcn8s_crfrnn")
def _fcn8s_crfrnn(
    *,
    num_classes: int = 21,
    backbone_kwargs: Optional[dict[str, Any]] = None,
    crf_kwargs: Optional[dict[str, Any]] = None,
    return_unary: bool = False,
    safe_start: bool = False,
) -> CrfRnnSegmenter:
    """FCN-8s with a CRF-RNN head, the network of Zheng et al. (ICCV 2015).

    Args:
        num_classes: number of labels ``L``, shared by the backbone and the CRF.
        backbone_kwargs: further keyword arguments of :class:`FCN8s`.
        crf_kwargs: keyword arguments of :class:`crfrnn.CrfRnn` (e.g. ``num_iterations``).
        return_unary: see :class:`CrfRnnSegmenter`.
        safe_start: gate the CRF's contribution, 0 at the start, for training from scratch (see
            :class:`CrfRnnSegmenter`); ``False`` is the paper's network.
    """
    backbone = FCN8s(num_classes, **(backbone_kwargs or {}))
    return CrfRnnSegmenter(backbone, _crf(num_classes, crf_kwargs), return_unary=return_unary, safe_start=safe_start)


@register_model("small_fcn_crfrnn")
def _small_fcn_crfrnn(
    *,
    num_classes: int = 21,
    backbone_kwargs: Optional[dict[str, Any]] = None,
    crf_kwargs: Optional[dict[str, Any]] = None,
    return_unary: bool = False,
    safe_start: bool = False,
) -> CrfRnnSegmenter:
    """:class:`SmallFCN` with a CRF-RNN head.

    Args:
        num_classes: number of labels ``L``, shared by the backbone and the CRF.
        backbone_kwargs: further keyword arguments of :class:`SmallFCN` (e.g. ``width``, ``norm``).
        crf_kwargs: keyword arguments of :class:`crfrnn.CrfRnn` (e.g. ``num_iterations``).
        return_unary: see :class:`CrfRnnSegmenter`.
        safe_start: gate the CRF's contribution, 0 at the start, for training from scratch (see
            :class:`CrfRnnSegmenter`); ``False`` is the paper's network.
    """
    backbone = SmallFCN(num_classes, **(backbone_kwargs or {}))
    return CrfRnnSegmenter(backbone, _crf(num_classes, crf_kwargs), return_unary=return_unary, safe_start=safe_start)

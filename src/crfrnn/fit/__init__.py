"""Fitting a dense CRF's parameters to a network: gradient descent through mean field.

Krähenbühl's densecrf is usually called with one set of parameters that suits PASCAL VOC
photos at 500x375 and a VGG network; another network, resolution or kind of image wants others, and a grid
search (``crfrnn evaluate --search``) tries a few dozen points. :func:`fit_crf` instead fits them by gradient
descent: the refined marginals of :func:`crfrnn.mean_field` (the differentiable engine, with densecrf's
symmetric normalisation and Potts model, so that it is exactly :func:`crfrnn.dense_crf`) are compared with the
ground truth by cross-entropy (label 255 ignored) on training images, and the parameters are updated with Adam.

What is fitted: the two Potts weights (``gaussian_compat``, ``bilateral_compat``) and, with ``fit_widths``,
the three kernel widths (``gaussian_sxy``, ``bilateral_sxy``, ``bilateral_srgb``), each as its logarithm, so
that it stays positive. These are exactly what :func:`crfrnn.dense_crf` takes (it takes no per-label weights
and no full compatibility matrix; for those, train :class:`crfrnn.CrfRnn`), so the result is a parameter file
for ``crfrnn refine --params`` and ``dense_crf(**load_params(file))``.

A share of the images (``val_fraction``) is held out: after every epoch the validation loss is measured with
:func:`crfrnn.dense_crf` itself (the compiled path), the best parameters so far are kept and the fit stops when
the validation loss has not improved for ``patience`` epochs. Mean IoU and accuracy in a band around label
boundaries are reported on the validation images for the network alone, the initial and the fitted parameters.

Names: :func:`crfrnn.mean_field` calls the widths ``theta_gamma`` (spatial kernel, densecrf's Gaussian
``sxy``), ``theta_alpha`` (bilateral position, ``sxy``) and ``theta_beta`` (bilateral colour, ``srgb``).
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from crfrnn import _deprecated
from crfrnn._deprecated import renamed_arguments, renamed_keys
from crfrnn.crf import KernelCache, mean_field
from crfrnn.fit._samples import (
    check_count,
    check_real,
    degraded_probs,
    evaluate_params,
    prepare_samples,
    split_indices,
)
from crfrnn.params import DENSECRF_DEFAULTS, RENAMED_PARAMS, check_params

__all__ = [
    "FitResult",
    "degraded_probs",
    "fit_crf",
    "to_mean_field",
    "width_gradients_available",
]

ArrayLike = Union[np.ndarray, Tensor]

_WEIGHTS = ("gaussian_compat", "bilateral_compat")
_WIDTHS = ("gaussian_sxy", "bilateral_sxy", "bilateral_srgb")
_MIN_WEIGHT = 1e-2  # a weight of 0 has no logarithm: the fit starts it here
_WIDTH_RANGE = (0.25, 1e4)  # fitted widths are kept in this range (pixels, colour units)
_MAX_EPOCHS = 100_000


@dataclass(frozen=True)
class FitResult:
    """What :func:`fit_crf` found.

    Attributes:
        params: the fitted :func:`crfrnn.dense_crf` keyword arguments (those of the epoch with the lowest
            validation loss); write them with :func:`crfrnn.save_params`.
        initial: the parameters the fit started from.
        history: one entry per epoch (epoch 0: the initial parameters): ``{"epoch", "train_loss", "val_loss",
            **params}``; ``train_loss`` is the mean over the epoch's steps (None for epoch 0).
        best_epoch: the epoch whose parameters are ``params``.
        stopped_early: whether the fit stopped before ``epochs`` because the validation loss stopped improving.
        metrics: on the validation images, ``{"network": m, "initial": m, "fitted": m}`` with ``m = {"loss",
            "mean_iou", "pixel_accuracy", "boundary_accuracy", "boundary_mean_iou"}`` (fractions; ``loss`` is the
            cross-entropy, None for the network's raw probabilities when they are logits).
        train_indices: the images fitted on.
        val_indices: the images held out.
        boundary_width: the band width (pixels) of ``boundary_accuracy``.
    """

    params: dict[str, Any]
    initial: dict[str, Any]
    history: list[dict[str, Any]]
    best_epoch: int
    stopped_early: bool
    metrics: dict[str, dict[str, Any]]
    train_indices: list[int]
    val_indices: list[int]
    boundary_width: int = 3
    fit_widths: bool = field(default=False)

    def summary(self) -> str:
        """A small table of the validation metrics (network, initial, fitted) and the fitted parameters."""
        rows = [
            ("network alone", self.metrics["network"]),
            ("initial CRF", self.metrics["initial"]),
            ("fitted CRF", self.metrics["fitted"]),
        ]
        width = self.boundary_width
        lines = [
            f"{'validation (' + str(len(self.val_indices)) + ' images)':<28} {'loss':>7} {'mean IoU':>9} "
            f"{'pixel acc':>9} {'boundary acc (' + str(width) + ' px)':>20}"
        ]
        for name, m in rows:
            loss = "-" if m.get("loss") is None else f"{m['loss']:.4f}"
            lines.append(
                f"{name:<28} {loss:>7} {100 * m['mean_iou']:>8.2f}% {100 * m['pixel_accuracy']:>8.2f}% "
                f"{100 * m['boundary_accuracy']:>19.2f}%"
            )
        shown = ", ".join(f"{k}={_fmt(v)}" for k, v in self.params.items() if k in _WEIGHTS + _WIDTHS)
        lines.append(f"fitted (epoch {self.best_epoch}): {shown}")
        return "\n".join(lines)


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


# --------------------------------------------------------------------------------------------------------
# the mapping between dense_crf's names and mean_field's
# --------------------------------------------------------------------------------------------------------
def to_mean_field(params: Mapping[str, Any]) -> dict[str, Any]:
    """:func:`crfrnn.mean_field` keyword arguments equal to :func:`crfrnn.dense_crf` ones.

    ``softmax(mean_field(log(max(p, clip)), image, **to_mean_field(params)))`` is ``dense_crf(image, p,
    **params)`` (to rounding): ``theta_gamma = gaussian_sxy``, ``theta_alpha = bilateral_sxy``, ``theta_beta =
    bilateral_srgb``, ``spatial_weight = gaussian_compat``, ``bilateral_weight = bilateral_compat``,
    ``num_iterations`` and densecrf's ``normalization``; Potts compatibility. ``clip`` has no
    counterpart (it belongs to the unary).

    Example:
        >>> to_mean_field({"gaussian_sxy": 3.0, "bilateral_compat": 10.0})
        {'normalization': 'symmetric', 'theta_gamma': 3.0, 'bilateral_weight': 10.0}
    """
    out: dict[str, Any] = {"normalization": "symmetric"}  # dense_crf's default, not mean_field's ("row")
    out.update(_renamed(params))
    return out


#: dense_crf's names -> mean_field's
_MEAN_FIELD_NAMES = {
    "num_iterations": "num_iterations",
    "gaussian_sxy": "theta_gamma",
    "gaussian_compat": "spatial_weight",
    "bilateral_sxy": "theta_alpha",
    "bilateral_srgb": "theta_beta",
    "bilateral_compat": "bilateral_weight",
    "normalization": "normalization",
}


def _renamed(params: Mapping[str, Any]) -> dict[str, Any]:
    if any(k in RENAMED_PARAMS for k in params):
        params = renamed_keys(params, RENAMED_PARAMS, "to_mean_field", stacklevel=3)
    out = {}
    for key, value in params.items():
        if key == "clip":
            continue
        if key not in _MEAN_FIELD_NAMES:
            raise ValueError(
                f"unknown dense_crf parameter {key!r}; expected some of {', '.join(_MEAN_FIELD_NAMES)}, clip."
            )
        out[_MEAN_FIELD_NAMES[key]] = value
    return out


_WIDTH_GRADIENTS: Optional[bool] = None


def width_gradients_available() -> bool:
    """Whether :func:`crfrnn.mean_field` differentiates with respect to tensor kernel widths (checked once)."""
    global _WIDTH_GRADIENTS
    if _WIDTH_GRADIENTS is None:
        theta = torch.tensor(3.0, requires_grad=True)
        try:
            g = torch.Generator().manual_seed(0)
            out = mean_field(
                torch.randn(1, 2, 6, 6, generator=g),
                torch.rand(1, 3, 6, 6, generator=g) * 255,
                theta_alpha=theta,
                theta_beta=theta,
                theta_gamma=theta,
                num_iterations=1,
                normalization="symmetric",
            )
            grad = torch.autograd.grad(out.square().sum(), theta, allow_unused=True)[0] if out.requires_grad else None
            _WIDTH_GRADIENTS = grad is not None and bool(torch.isfinite(grad)) and float(grad) != 0.0
        except (TypeError, ValueError, RuntimeError):
            _WIDTH_GRADIENTS = False
    return _WIDTH_GRADIENTS


def _initial(
    init: Optional[Mapping[str, Any]],
    num_iterations: Optional[int],
    normalization: Optional[str],
    clip: Optional[float],
) -> dict[str, Any]:
    params = dict(DENSECRF_DEFAULTS)
    params.update(check_params(dict(init or {}), source="init", stacklevel=5))  # the caller of fit_crf
    for key, value in (("num_iterations", num_iterations), ("normalization", normalization), ("clip", clip)):
        if value is not None:
            params[key] = value
    params = check_params(params)
    if params["num_iterations"] < 1:
        raise ValueError("num_iterations must be >= 1 to fit anything (with 0 the CRF returns its input).")
    return params


# --------------------------------------------------------------------------------------------------------
# the fit
# --------------------------------------------------------------------------------------------------------
@renamed_arguments(iterations="num_iterations")
def fit_crf(
    images: Sequence[ArrayLike],
    probs: Sequence[ArrayLike],
    labels: Sequence[ArrayLike],
    *,
    logits: bool = False,
    init: Optional[Mapping[str, Any]] = None,
    num_iterations: Optional[int] = None,
    epochs: int = 30,
    lr: float = 0.05,
    val_fraction: float = 0.25,
    patience: int = 5,
    fit_widths: Optional[bool] = None,
    normalization: Optional[str] = None,
    clip: Optional[float] = None,
    ignore_index: int = 255,
    boundary_width: int = 3,
    min_delta: float = 1e-4,
    seed: int = 0,
    progress: bool = True,
) -> FitResult:
    """Fit :func:`crfrnn.dense_crf`'s parameters to a network's outputs and ground-truth masks.

    Args:
        images: guides, each ``(H, W, 3)`` (densecrf's layout; ``(H, W)`` grey, ``(H, W, C)`` or a ``(C, H, W)``
            tensor work too), on the 0..255 scale. Images may differ in size.
        probs: the network's ``(L, H, W)`` probabilities for each image (``L = 1``: a binary network's
            foreground), or logits with ``logits=True``.
        labels: ``(H, W)`` integer ground truth for each image, ``ignore_index`` for pixels to leave out.
        logits: ``probs`` are unary logits (raw scores), not probabilities.
        init: the starting point (any :data:`crfrnn.params.PARAM_NAMES`); default
            :data:`crfrnn.params.DENSECRF_DEFAULTS`, densecrf's usual parameters.
        num_iterations: mean-field iterations to fit with (and to write); default ``init``'s, else 5.
        epochs: passes over the training images (one Adam step per image).
        lr: Adam's learning rate on the logarithms of the parameters (0.05: about 5 % per step).
        val_fraction: share of the images held out for validation and early stopping (at least one image each
            side), chosen at random with ``seed``.
        patience: stop after this many epochs without a lower validation loss (by more than ``min_delta``
            relative).
        fit_widths: also fit the three kernel widths. Default: when :func:`width_gradients_available`.
        normalization: densecrf's normalisation to fit with; default ``init``'s, else ``"symmetric"``.
        clip: smallest probability of the unary ``log(max(p, clip))``; default ``init``'s, else 1e-5.
        ignore_index: label of the pixels left out of the loss and the metrics.
        boundary_width: band half-width (pixels) of the boundary accuracy.
        min_delta: relative decrease of the validation loss that counts as an improvement.
        seed: seed of the split and of the order of the training images.
        progress: show progress on stderr (a bar on a terminal, else a plain line every 30 s), and at the end
            a line naming the best epoch.

    Returns:
        A :class:`FitResult`; ``result.params`` go to :func:`crfrnn.dense_crf` and :func:`crfrnn.save_params`.

    Raises:
        ValueError: inputs of mismatched shapes or counts, labels out of range, probabilities that are not, bad
            options; ``fit_widths=True`` when this build has no width gradients.
        TypeError: inputs that are not arrays or tensors.

    Example:
        >>> from crfrnn.data import SyntheticShapes
        >>> ds = SyntheticShapes(3, size=32, seed=0)
        >>> images = [ds[i][0].permute(1, 2, 0).numpy() for i in range(3)]
        >>> masks = [ds[i][1].numpy() for i in range(3)]
        >>> probs = [degraded_probs(m, 7, seed=i) for i, m in enumerate(masks)]
        >>> result = fit_crf(images, probs, masks, epochs=1, fit_widths=False, progress=False)
        >>> sorted(result.params) == sorted(DENSECRF_DEFAULTS)
        True
    """
    from crfrnn._utils.progress import Progress

    epochs = check_count("epochs", epochs, 1)
    if epochs > _MAX_EPOCHS:
        raise ValueError(f"epochs must be at most {_MAX_EPOCHS}, got {epochs}.")
    patience = check_count("patience", patience, 1)
    boundary_width = check_count("boundary_width", boundary_width, 0)
    seed = check_count("seed", seed, 0)
    lr = check_real("lr", lr, 0.0, 10.0)
    val_fraction = check_real("val_fraction", val_fraction, 0.0, 1.0)
    min_delta = check_real("min_delta", min_delta, 0.0, 1.0, closed_lo=True)
    if not isinstance(ignore_index, int) or isinstance(ignore_index, bool):
        raise ValueError(f"ignore_index must be an integer, got {ignore_index!r}.")
    initial = _initial(init, num_iterations, normalization, clip)
    if fit_widths is None:
        fit_widths = width_gradients_available()
    elif fit_widths and not width_gradients_available():
        raise ValueError(
            "fit_widths=True needs gradients with respect to the kernel widths, which this build of "
            "crfrnn.mean_field does not give; pass fit_widths=False to fit the weights with the widths fixed."
        )
    for key in _WIDTHS:
        if fit_widths and isinstance(initial[key], list):
            raise ValueError(
                f"init[{key!r}] is a list of widths; fit_crf fits one width per kernel, so pass one "
                "number (or fit_widths=False to keep per-axis widths fixed)."
            )
    samples, num_labels = prepare_samples(
        images, probs, labels, logits=logits, clip=initial.get("clip", 1e-5), ignore_index=ignore_index
    )
    train, val = split_indices(len(samples), val_fraction, seed)
    if not any(samples[i].valid for i in train):
        raise ValueError(
            f"every pixel of the training images is ignored (label {ignore_index}); there is nothing to fit."
        )

    names = _WEIGHTS + (_WIDTHS if fit_widths else ())
    logs = {
        k: torch.tensor(
            math.log(max(float(initial[k]), _MIN_WEIGHT if k in _WEIGHTS else _WIDTH_RANGE[0])),
            dtype=torch.float64,
            requires_grad=True,
        )
        for k in names
    }
    optimizer = torch.optim.Adam(list(logs.values()), lr=lr)
    fixed = to_mean_field({k: v for k, v in initial.items() if k not in names})
    cache = KernelCache()  # spatial kernels of the evaluation (images of the same size share one)
    width_lo, width_hi = math.log(_WIDTH_RANGE[0]), math.log(_WIDTH_RANGE[1])

    def current() -> dict[str, Any]:
        out = dict(initial)
        out.update({k: math.exp(float(v.detach())) for k, v in logs.items()})
        return out

    def evaluate(params: Optional[Mapping[str, Any]]) -> dict[str, Any]:
        return evaluate_params(
            samples,
            val,
            params,
            num_labels,
            logits=logits,
            ignore_index=ignore_index,
            boundary_width=boundary_width,
            cache=cache,
        )

    start = evaluate(initial)
    history = [{"epoch": 0, "train_loss": None, "val_loss": start["loss"], **initial}]
    best_loss, best_epoch, best_params = start["loss"], 0, dict(initial)  # the fit never returns worse than this
    rng = np.random.default_rng(seed)
    stopped_early = False
    bar = Progress(epochs, "crfrnn fit", "epoch", file=sys.stderr, enabled=bool(progress))
    for epoch in range(1, epochs + 1):
        losses = []
        for i in rng.permutation(train):
            s = samples[int(i)]
            if not s.valid:
                continue
            values = {k: v.exp().to(torch.float32) for k, v in logs.items()}
            out = mean_field(s.unary, s.image, **fixed, **_renamed(values))
            loss = F.cross_entropy(out, s.labels, ignore_index=ignore_index)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            with torch.no_grad():
                for k in _WIDTHS:
                    if k in logs:
                        logs[k].clamp_(width_lo, width_hi)
            losses.append(float(loss.detach()))
        params = current()
        val_loss = evaluate(params)["loss"]
        history.append({"epoch": epoch, "train_loss": float(np.mean(losses)), "val_loss": val_loss, **params})
        if val_loss < best_loss * (1 - min_delta):
            best_loss, best_epoch, best_params = val_loss, epoch, params
        bar.set_postfix(train=f"{np.mean(losses):.4f}", val=f"{val_loss:.4f}", best=best_epoch)
        bar.update()
        if epoch - best_epoch >= patience:
            stopped_early = epoch < epochs
            break
    bar.close()
    if progress:
        last = history[-1]["epoch"]
        bar.write(
            f"crfrnn fit: best epoch {best_epoch} of {last} (validation loss {best_loss:.4f}"
            + (", the last one" if best_epoch == last else "")
            + (", the initial parameters" if best_epoch == 0 else "")
            + ("; stopped early" if stopped_early else "")
            + ")"
        )
    metrics = {"network": evaluate(None), "initial": start, "fitted": evaluate(best_params)}
    return FitResult(
        params=best_params,
        initial=initial,
        history=history,
        best_epoch=best_epoch,
        stopped_early=stopped_early,
        metrics=metrics,
        train_indices=train,
        val_indices=val,
        boundary_width=boundary_width,
        fit_widths=bool(fit_widths),
    )


__getattr__ = _deprecated.renamed(__name__, {"FIT_DEFAULTS": ("crfrnn.params.DENSECRF_DEFAULTS", DENSECRF_DEFAULTS)})

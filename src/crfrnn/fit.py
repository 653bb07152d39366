"""Fitting a dense CRF's parameters to a network: gradient descent through mean field.

Krähenbühl's densecrf is usually called with one set of parameters (SPEC section 8) that suits PASCAL VOC
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

from crfrnn.params import DENSECRF_DEFAULTS

__all__ = [
    "FIT_DEFAULTS",
    "FitResult",
    "degraded_probs",
    "fit_crf",
    "to_mean_field",
    "width_gradients_available",
]

ArrayLike = Union[np.ndarray, Tensor]

#: densecrf's usual parameters (SPEC section 8), the default starting point of :func:`fit_crf`
FIT_DEFAULTS: dict[str, Any] = dict(DENSECRF_DEFAULTS)
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
        rows = [("network alone", self.metrics["network"]), ("initial CRF", self.metrics["initial"]),
                ("fitted CRF", self.metrics["fitted"])]  # fmt: skip
        width = self.boundary_width
        lines = [f"{'validation (' + str(len(self.val_indices)) + ' images)':<28} {'loss':>7} {'mean IoU':>9} "
                 f"{'pixel acc':>9} {'boundary acc (' + str(width) + ' px)':>20}"]  # fmt: skip
        for name, m in rows:
            loss = "-" if m.get("loss") is None else f"{m['loss']:.4f}"
            lines.append(f"{name:<28} {loss:>7} {100 * m['mean_iou']:>8.2f}% {100 * m['pixel_accuracy']:>8.2f}% "
                         f"{100 * m['boundary_accuracy']:>19.2f}%")  # fmt: skip
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
    ``num_iterations = iterations`` and densecrf's ``normalization``; Potts compatibility. ``clip`` has no
    counterpart (it belongs to the unary).

    Example:
        >>> to_mean_field({"gaussian_sxy": 3.0, "bilateral_compat": 10.0})
        {'normalization': 'symmetric', 'theta_gamma': 3.0, 'bilateral_weight': 10.0}
    """
    out: dict[str, Any] = {"normalization": "symmetric"}  # dense_crf's default, not mean_field's ("row")
    out.update(_renamed(params))
    return out


#: dense_crf's names -> mean_field's
_MEAN_FIELD_NAMES = {"iterations": "num_iterations", "gaussian_sxy": "theta_gamma", "gaussian_compat": "spatial_weight",
                     "bilateral_sxy": "theta_alpha", "bilateral_srgb": "theta_beta",
                     "bilateral_compat": "bilateral_weight", "normalization": "normalization"}  # fmt: skip


def _renamed(params: Mapping[str, Any]) -> dict[str, Any]:
    out = {}
    for key, value in params.items():
        if key == "clip":
            continue
        if key not in _MEAN_FIELD_NAMES:
            raise ValueError(f"unknown dense_crf parameter {key!r}; expected some of "
                             f"{', '.join(_MEAN_FIELD_NAMES)}, clip.")  # fmt: skip
        out[_MEAN_FIELD_NAMES[key]] = value
    return out


_WIDTH_GRADIENTS: Optional[bool] = None


def width_gradients_available() -> bool:
    """Whether :func:`crfrnn.mean_field` differentiates with respect to tensor kernel widths (checked once)."""
    global _WIDTH_GRADIENTS
    if _WIDTH_GRADIENTS is None:
        from crfrnn.crf import mean_field

        theta = torch.tensor(3.0, requires_grad=True)
        try:
            g = torch.Generator().manual_seed(0)
            out = mean_field(torch.randn(1, 2, 6, 6, generator=g), torch.rand(1, 3, 6, 6, generator=g) * 255,
                             theta_alpha=theta, theta_beta=theta, theta_gamma=theta, num_iterations=1,
                             normalization="symmetric")  # fmt: skip
            grad = torch.autograd.grad(out.square().sum(), theta, allow_unused=True)[0] if out.requires_grad else None
            _WIDTH_GRADIENTS = grad is not None and bool(torch.isfinite(grad)) and float(grad) != 0.0
        except (TypeError, ValueError, RuntimeError):
            _WIDTH_GRADIENTS = False
    return _WIDTH_GRADIENTS


# --------------------------------------------------------------------------------------------------------
# inputs
# --------------------------------------------------------------------------------------------------------
@dataclass
class _Sample:
    image: Tensor  # (1, C, H, W) float32, 0..255
    scores: Tensor  # (1, L, H, W) float32 probabilities or logits (L >= 2)
    unary: Tensor  # (1, L, H, W) float32 logits of mean_field
    labels: Tensor  # (1, H, W) int64, ignore_index allowed
    valid: int  # pixels not ignored


def _as_tensor(x: Any, what: str, index: int) -> Tensor:
    if isinstance(x, Tensor):
        return x.detach().cpu()
    if isinstance(x, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(x))
    raise TypeError(f"{what}[{index}] must be a NumPy array or a torch tensor, got {type(x).__name__}.")


def _prepare(images: Sequence[ArrayLike], probs: Sequence[ArrayLike], labels: Sequence[ArrayLike], *, logits: bool,
             clip: float, ignore_index: int) -> tuple[list[_Sample], int]:
    n = len(images)
    if not (len(probs) == len(labels) == n):
        raise ValueError(f"images, probs and labels must have the same length, got {n}, {len(probs)} and {len(labels)}.")
    samples: list[_Sample] = []
    num_labels = None
    for i in range(n):
        p = _as_tensor(probs[i], "probs", i)
        if p.dim() != 3 or not p.is_floating_point() or p.numel() == 0:
            raise ValueError(f"probs[{i}] must be a floating-point (L, H, W) array, got shape {tuple(p.shape)} of "
                             f"{p.dtype}.")  # fmt: skip
        p = p.to(torch.float32)
        if not bool(torch.isfinite(p).all()):
            raise ValueError(f"probs[{i}] contains NaN or infinite values.")
        h, w = p.shape[1:]
        img = _as_tensor(images[i], "images", i)
        if tuple(img.shape) == (h, w):
            img = img[None]
        elif img.dim() == 3 and tuple(img.shape[:2]) == (h, w):
            img = img.movedim(-1, 0)  # (H, W, C), densecrf's layout
        elif not (img.dim() == 3 and tuple(img.shape[1:]) == (h, w) and isinstance(images[i], Tensor)):
            raise ValueError(f"images[{i}] of shape {tuple(img.shape)} does not match probs[{i}] of shape "
                             f"{tuple(p.shape)}: expected ({h}, {w}) or ({h}, {w}, C).")  # fmt: skip
        img = img.to(torch.float32)
        lab = _as_tensor(labels[i], "labels", i)
        if tuple(lab.shape) != (h, w) or lab.is_floating_point() or lab.dtype == torch.bool:
            raise ValueError(f"labels[{i}] must be an integer ({h}, {w}) label map, got shape {tuple(lab.shape)} of "
                             f"{lab.dtype}.")  # fmt: skip
        lab = lab.to(torch.int64)
        if p.shape[0] == 1:  # a binary network's foreground map: the two-label problem it is
            p = torch.cat([torch.zeros_like(p), p] if logits else [1.0 - p, p], 0)
        if not logits:
            if bool((p < 0).any()) or float((p.sum(0) - 1).abs().max()) > 1e-3:
                raise ValueError(f"probs[{i}] are not probabilities (non-negative, summing to 1 over labels); pass "
                                 "logits=True for raw scores.")  # fmt: skip
        count = p.shape[0]
        if num_labels is None:
            num_labels = count
        elif count != num_labels:
            raise ValueError(f"probs[{i}] has {count} labels but probs[0] has {num_labels}; every image needs the "
                             "same labels.")  # fmt: skip
        known = lab[lab != ignore_index]
        if known.numel() and (int(known.min()) < 0 or int(known.max()) >= count):
            raise ValueError(f"labels[{i}] holds labels outside 0..{count - 1} (besides {ignore_index}, ignored): "
                             f"{int(known.min())}..{int(known.max())}.")  # fmt: skip
        unary = p if logits else p.clamp(clip, 1.0).log()
        samples.append(_Sample(img[None].contiguous(), p[None].contiguous(), unary[None].contiguous(), lab[None],
                               int(known.numel())))  # fmt: skip
    assert num_labels is not None
    return samples, num_labels


def _split(n: int, val_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    if n < 2:
        raise ValueError(f"fitting needs at least 2 images (some to fit on, some to validate on), got {n}.")
    count = min(n - 1, max(1, round(val_fraction * n)))
    order = np.random.default_rng(seed).permutation(n)
    return sorted(int(i) for i in order[count:]), sorted(int(i) for i in order[:count])


def _initial(init: Optional[Mapping[str, Any]], iterations: Optional[int], normalization: Optional[str],
             clip: Optional[float]) -> dict[str, Any]:
    from crfrnn.params import check_params

    params = dict(FIT_DEFAULTS)
    params.update(check_params(dict(init or {}), source="init"))
    for key, value in (("iterations", iterations), ("normalization", normalization), ("clip", clip)):
        if value is not None:
            params[key] = value
    params = check_params(params)
    if params["iterations"] < 1:
        raise ValueError("iterations must be >= 1 to fit anything (with 0 the CRF returns its input).")
    return params


# --------------------------------------------------------------------------------------------------------
# evaluation (dense_crf itself, the compiled path)
# --------------------------------------------------------------------------------------------------------
def _evaluate(samples: Sequence[_Sample], indices: Sequence[int], params: Optional[Mapping[str, Any]], num_labels: int,
              *, logits: bool, ignore_index: int, boundary_width: int, cache) -> dict[str, Any]:
    """Loss, mean IoU, pixel accuracy and boundary accuracy of ``params`` (None: the network alone) on images."""
    from crfrnn.dense import dense_crf
    from crfrnn.metrics import BoundaryAccuracy, ConfusionMatrix

    cm = ConfusionMatrix(num_labels, ignore_index=ignore_index)
    band = BoundaryAccuracy(num_labels, widths=(boundary_width,), ignore_index=ignore_index)
    total, pixels = 0.0, 0
    with torch.no_grad():
        for i in indices:
            s = samples[i]
            if params is None:
                q = s.scores.softmax(1) if logits else s.scores
            else:
                q = dense_crf(s.image, **{"logits" if logits else "probs": s.scores}, cache=cache, **params)
            pred = q.argmax(1)
            cm.update(pred, s.labels)
            band.update(pred, s.labels)
            if s.valid:
                total += float(F.nll_loss(q.clamp_min(1e-12).log(), s.labels, ignore_index=ignore_index,
                                          reduction="sum"))  # fmt: skip
                pixels += s.valid
    m = cm.compute()
    b = band.compute()[boundary_width]
    return {"loss": total / max(pixels, 1), "mean_iou": float(m["mean_iou"]), "pixel_accuracy": float(m["pixel_accuracy"]),
            "boundary_accuracy": float(b["pixel_accuracy"]), "boundary_mean_iou": float(b["mean_iou"])}  # fmt: skip


# --------------------------------------------------------------------------------------------------------
# the fit
# --------------------------------------------------------------------------------------------------------
def _check_count(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or int(value) < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}.")
    return int(value)


def _check_real(name: str, value: Any, lo: float, hi: float, *, closed_lo: bool = False) -> float:
    ok = isinstance(value, (int, float, np.floating, np.integer)) and not isinstance(value, bool)
    v = float(value) if ok else math.nan
    if not (math.isfinite(v) and (lo <= v if closed_lo else lo < v) and v < hi):
        raise ValueError(f"{name} must be a number in {'[' if closed_lo else '('}{lo:g}, {hi:g}), got {value!r}.")
    return v


def fit_crf(
    images: Sequence[ArrayLike],
    probs: Sequence[ArrayLike],
    labels: Sequence[ArrayLike],
    *,
    logits: bool = False,
    init: Optional[Mapping[str, Any]] = None,
    iterations: Optional[int] = None,
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
        init: the starting point (any :data:`crfrnn.params.PARAM_NAMES`); default :data:`FIT_DEFAULTS`,
            densecrf's usual parameters.
        iterations: mean-field iterations to fit with (and to write); default ``init``'s, else 5.
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
        progress: show a progress bar (on stderr, when it is a terminal).

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
        >>> sorted(result.params) == sorted(FIT_DEFAULTS)
        True
    """
    from tqdm import tqdm

    from crfrnn.crf import KernelCache, mean_field

    epochs = _check_count("epochs", epochs, 1)
    if epochs > _MAX_EPOCHS:
        raise ValueError(f"epochs must be at most {_MAX_EPOCHS}, got {epochs}.")
    patience = _check_count("patience", patience, 1)
    boundary_width = _check_count("boundary_width", boundary_width, 0)
    seed = _check_count("seed", seed, 0)
    lr = _check_real("lr", lr, 0.0, 10.0)
    val_fraction = _check_real("val_fraction", val_fraction, 0.0, 1.0)
    min_delta = _check_real("min_delta", min_delta, 0.0, 1.0, closed_lo=True)
    if not isinstance(ignore_index, int) or isinstance(ignore_index, bool):
        raise ValueError(f"ignore_index must be an integer, got {ignore_index!r}.")
    initial = _initial(init, iterations, normalization, clip)
    if fit_widths is None:
        fit_widths = width_gradients_available()
    elif fit_widths and not width_gradients_available():
        raise ValueError(
            "fit_widths=True needs gradients with respect to the kernel widths, which this build of "
            "crfrnn.mean_field does not give; pass fit_widths=False to fit the weights with the widths fixed."
        )
    for key in _WIDTHS:
        if fit_widths and isinstance(initial[key], list):
            raise ValueError(f"init[{key!r}] is a list of widths; fit_crf fits one width per kernel, so pass one "
                             "number (or fit_widths=False to keep per-axis widths fixed).")  # fmt: skip
    samples, num_labels = _prepare(images, probs, labels, logits=logits, clip=initial.get("clip", 1e-5),
                                   ignore_index=ignore_index)  # fmt: skip
    train, val = _split(len(samples), val_fraction, seed)
    if not any(samples[i].valid for i in train):
        raise ValueError("every pixel of the training images is ignored (label "
                         f"{ignore_index}); there is nothing to fit.")  # fmt: skip

    names = _WEIGHTS + (_WIDTHS if fit_widths else ())
    logs = {k: torch.tensor(math.log(max(float(initial[k]), _MIN_WEIGHT if k in _WEIGHTS else _WIDTH_RANGE[0])),
                            dtype=torch.float64, requires_grad=True) for k in names}  # fmt: skip
    optimizer = torch.optim.Adam(list(logs.values()), lr=lr)
    fixed = to_mean_field({k: v for k, v in initial.items() if k not in names})
    cache = KernelCache()  # spatial kernels of the evaluation (images of the same size share one)
    width_lo, width_hi = math.log(_WIDTH_RANGE[0]), math.log(_WIDTH_RANGE[1])

    def current() -> dict[str, Any]:
        out = dict(initial)
        out.update({k: math.exp(float(v.detach())) for k, v in logs.items()})
        return out

    def evaluate(params: Optional[Mapping[str, Any]]) -> dict[str, Any]:
        return _evaluate(samples, val, params, num_labels, logits=logits, ignore_index=ignore_index,
                         boundary_width=boundary_width, cache=cache)  # fmt: skip

    start = evaluate(initial)
    history = [{"epoch": 0, "train_loss": None, "val_loss": start["loss"], **initial}]
    best_loss, best_epoch, best_params = start["loss"], 0, dict(initial)  # the fit never returns worse than this
    rng = np.random.default_rng(seed)
    stopped_early = False
    bar = tqdm(range(1, epochs + 1), desc="fit", unit="epoch", file=sys.stderr,
               disable=None if progress else True)  # None: not on a non-terminal stderr (logs)
    for epoch in bar:
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
        if epoch - best_epoch >= patience:
            stopped_early = epoch < epochs
            break
    bar.close()
    metrics = {"network": evaluate(None), "initial": start, "fitted": evaluate(best_params)}
    return FitResult(params=best_params, initial=initial, history=history, best_epoch=best_epoch,
                     stopped_early=stopped_early, metrics=metrics, train_indices=train, val_indices=val,
                     boundary_width=boundary_width, fit_widths=bool(fit_widths))  # fmt: skip


# --------------------------------------------------------------------------------------------------------
# test data: a degraded ground truth that stands in for a coarse network
# --------------------------------------------------------------------------------------------------------
def degraded_probs(labels: ArrayLike, num_labels: int, *, factor: int = 8, noise: float = 1.0, confidence: float = 0.8,
                   ignore_index: int = 255, seed: int = 0) -> np.ndarray:
    """Probabilities that a coarse network might give for a ground truth: down-sampled, blurred and noisy.

    The one-hot ground truth is averaged over ``factor x factor`` cells (a stride-``factor`` network's
    resolution), mixed with the uniform distribution (``confidence``), perturbed with Gaussian noise of
    standard deviation ``noise`` on the cells' log-probabilities, and up-sampled bilinearly to the full size:
    interiors are right, boundaries are blurred and misplaced, thin parts are lost.

    Args:
        labels: ``(H, W)`` integer ground truth (``ignore_index`` pixels count as uniform).
        num_labels: ``L``.
        factor: down-sampling factor (1: no down-sampling).
        noise: standard deviation of the noise on the cell log-probabilities.
        confidence: weight of the ground truth against the uniform distribution, in ``(0, 1]``.
        seed: seed of the noise.

    Returns:
        ``(L, H, W)`` float32 probabilities summing to 1 over labels.

    Example:
        >>> p = degraded_probs(np.zeros((16, 16), np.int64), 3)
        >>> p.shape, bool(np.allclose(p.sum(0), 1))
        ((3, 16, 16), True)
    """
    lab = torch.as_tensor(np.asarray(labels.detach().cpu() if isinstance(labels, Tensor) else labels)).long()
    if lab.dim() != 2:
        raise ValueError(f"labels must be an (H, W) label map, got shape {tuple(lab.shape)}.")
    num_labels = _check_count("num_labels", num_labels, 2)
    factor = _check_count("factor", factor, 1)
    noise = _check_real("noise", noise, 0.0, 100.0, closed_lo=True)
    confidence = _check_real("confidence", confidence, 0.0, 1.0 + 1e-12)
    h, w = lab.shape
    known = lab != ignore_index
    if bool(((lab < 0) | (lab >= num_labels))[known].any()):
        raise ValueError(f"labels hold values outside 0..{num_labels - 1} (besides {ignore_index}).")
    onehot = F.one_hot(torch.where(known, lab, 0), num_labels).permute(2, 0, 1).to(torch.float64)
    onehot = torch.where(known[None], onehot, torch.full_like(onehot, 1.0 / num_labels))[None]
    low = F.avg_pool2d(onehot, factor, ceil_mode=True) if factor > 1 else onehot
    low = confidence * low + (1 - confidence) / num_labels
    gen = torch.Generator().manual_seed(int(seed))
    low = low.log() + noise * torch.randn(low.shape, generator=gen, dtype=torch.float64)
    up = F.interpolate(low, size=(h, w), mode="bilinear", align_corners=False) if factor > 1 else low
    return up.softmax(1)[0].to(torch.float32).numpy()

"""Mean-field inference of the dense CRF, and the CRF-RNN layer (Zheng et al. 2015, section 3 of SPEC.md).

One iteration, for marginals ``Q (B, N, L)`` (pixels ``N = H W``, labels ``L``):

1. message passing: ``Qtilde_m = normalised K_m Q`` for the spatial and the bilateral Gaussian kernel,
   each filtered with a permutohedral lattice built once per call and reused by every iteration and by
   the backward pass;
2. weighting: ``Qcheck = sum_m W_m Qtilde_m`` with ``W_m`` an ``L x L`` matrix;
3. compatibility transform: ``Qhat = mu Qcheck``;
4. adding unaries: ``Qbreve = U - Qhat``;
5. normalising: ``Q = softmax(Qbreve)``.

Steps 2 and 3 are folded into one product with ``A_m = mu W_m``: both kernels' messages go through a
single ``(N, 2L) x (2L, L)`` matrix product per iteration.
"""

from __future__ import annotations

import functools
import math
import warnings
from typing import Optional, Sequence, Union

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from crfrnn.filters import gaussian_filter
from crfrnn.lattice import PermutohedralLattice

__all__ = [
    "CrfRnn",
    "GaussianKernel",
    "NORMALIZATIONS",
    "bilateral_features",
    "mean_field",
    "spatial_features",
]

#: Normalisations of the filtered messages, with their names in Krähenbühl's densecrf:
#: ``"row"`` divides by the filtered all-ones image (``NORMALIZE_AFTER``; the released CRF-RNN code),
#: ``"symmetric"`` is ``n^-1/2 K n^-1/2`` (``NORMALIZE_SYMMETRIC``; densecrf's default), ``"column"``
#: is ``K n^-1`` (``NORMALIZE_BEFORE``) and ``"none"`` is the unnormalised kernel ``K``
#: (``NO_NORMALIZATION``; with the lattice, K carries the lattice's amplitude, see docs/lattice.md).
NORMALIZATIONS = ("row", "symmetric", "column", "none")

Weight = Union[float, Tensor]


def _per_axis(theta: Union[float, Sequence[float]], n: int, like: Tensor) -> Tensor:
    t = torch.as_tensor(theta, dtype=like.dtype, device=like.device).reshape(-1)
    return t.expand(n) if t.numel() == 1 else t


def spatial_features(
    batch: int, height: int, width: int, theta: Union[float, Sequence[float]], *,
    dtype: torch.dtype = torch.float32, device: Optional[torch.device] = None,
) -> Tensor:
    """Position features ``(x / theta_x, y / theta_y)`` of every pixel.

    Args:
        theta: the kernel width in pixels, or ``(theta_x, theta_y)``.

    Returns:
        ``(B, H W, 2)``, pixels in row-major order, ``x`` the column and ``y`` the row index.
    """
    y, x = torch.meshgrid(
        torch.arange(height, dtype=dtype, device=device), torch.arange(width, dtype=dtype, device=device),
        indexing="ij",
    )
    pos = torch.stack([x, y], -1).view(1, height * width, 2)
    return (pos / _per_axis(theta, 2, pos)).expand(batch, -1, -1)


def bilateral_features(
    image: Tensor, theta_alpha: Union[float, Sequence[float]], theta_beta: Union[float, Sequence[float]]
) -> Tensor:
    """Position and colour features ``(x / theta_alpha, y / theta_alpha, r / theta_beta, g / .., b / ..)``.

    Args:
        image: ``(B, C, H, W)`` floating point, usually RGB on the 0..255 scale.
        theta_alpha: width in pixels, or ``(theta_x, theta_y)``.
        theta_beta: width in colour units, or one per channel.

    Returns:
        ``(B, H W, 2 + C)``.
    """
    b, c, h, w = image.shape
    pos = spatial_features(b, h, w, theta_alpha, dtype=image.dtype, device=image.device)
    col = image.permute(0, 2, 3, 1).reshape(b, h * w, c)
    return torch.cat([pos, col / _per_axis(theta_beta, c, col)], -1)


class GaussianKernel:
    """One normalised Gaussian message-passing operator ``Q -> normalised K Q``, built once, reused.

    Args:
        features: ``(B, N, D)`` features already divided by the kernel widths.
        normalization: one of :data:`NORMALIZATIONS`.
        exclude_self: leave each point's own value out of its message (the paper's ``j != i``); with the
            lattice this subtracts the lattice's exact self-weight (see
            :meth:`PermutohedralLattice.self_weights`), with ``exact=True`` it subtracts ``exp(0) = 1``.
        exact: use the O(N^2) exact Gaussian instead of the lattice (small inputs, for tests).
        backend: lattice backend, see :class:`PermutohedralLattice`.
    """

    def __init__(
        self, features: Tensor, *, normalization: str = "row", exclude_self: bool = False, exact: bool = False,
        backend: str = "auto",
    ) -> None:
        if normalization not in NORMALIZATIONS:
            raise ValueError(f"normalization must be one of {NORMALIZATIONS}, got {normalization!r}.")
        self.normalization = normalization
        self.exact = exact
        self.features = features
        self.lattice = None if exact else PermutohedralLattice(features, backend=backend)
        b, n, _ = features.shape
        self.self_weight: Optional[Tensor] = None
        if exclude_self:
            self.self_weight = (
                features.new_ones(b, n, 1) if exact else self.lattice.self_weights().unsqueeze(-1)
            )
        ones = features.new_ones(b, n, 1)
        norm = self._filter(ones)
        if exclude_self:
            # A point with no neighbour but itself has K 1 - self = 0 up to rounding: it gets no message
            # (rather than rounding noise divided by zero).
            tol = 1e3 * torch.finfo(features.dtype).eps * (norm + self.self_weight)
            alone = norm <= tol
            norm = torch.where(alone, torch.ones_like(norm), norm)
        # message = post * (K(pre * q) - self * pre * q)
        self.pre: Optional[Tensor] = None
        self.post: Optional[Tensor] = None
        if normalization == "row":
            self.post = 1.0 / norm
        elif normalization == "column":
            self.pre = 1.0 / norm
        elif normalization == "symmetric":
            self.pre = self.post = norm.rsqrt()
        if exclude_self and normalization != "none":  # no message for a point alone in feature space
            if self.post is not None:
                self.post = self.post.masked_fill(alone, 0.0)
            else:
                self.pre = self.pre.masked_fill(alone, 0.0)

    def _filter(self, q: Tensor) -> Tensor:
        if self.exact:
            out = gaussian_filter(q, self.features.to(q.dtype), exact=True)
        else:
            out = self.lattice.filter(q)
        if self.self_weight is not None:
            out = out - self.self_weight.to(q.dtype) * q
        return out

    def __call__(self, q: Tensor) -> Tensor:
        """Normalised message ``(B, N, C)`` for marginals ``q (B, N, C)``."""
        if self.pre is not None:
            q = q * self.pre.to(q.dtype)
        out = self._filter(q)
        return out if self.post is None else out * self.post.to(q.dtype)


@functools.lru_cache(maxsize=8)
def _spatial_kernel(
    height: int, width: int, theta: Union[float, tuple[float, ...]], dtype: torch.dtype, device: torch.device,
    normalization: str, exclude_self: bool, exact: bool, backend: str,
) -> GaussianKernel:
    """The spatial kernel of one image: it depends only on the size and the width, so it is built once
    (lattice, normaliser) and kept for later calls with the same size (training crops, folders of photos)."""
    feats = spatial_features(1, height, width, theta, dtype=dtype, device=device)
    return GaussianKernel(feats, normalization=normalization, exclude_self=exclude_self, exact=exact, backend=backend)


class _BatchShared:
    """Applies a one-image kernel to every image of a batch at once, the batch folded into the channels."""

    def __init__(self, kernel: GaussianKernel) -> None:
        self.kernel = kernel

    def __call__(self, q: Tensor) -> Tensor:
        b, n, c = q.shape
        if b == 1:
            return self.kernel(q)
        out = self.kernel(q.transpose(0, 1).reshape(1, n, b * c))
        return out.view(n, b, c).transpose(0, 1)


def spatial_kernel(
    batch: int, height: int, width: int, theta: Union[float, Sequence[float]], *, dtype: torch.dtype,
    device: torch.device, normalization: str = "row", exclude_self: bool = False, exact: bool = False,
    backend: str = "auto",
):
    """The spatial (smoothness) message-passing operator for ``batch`` images of ``height x width``.

    Cached: one lattice serves every image of that size, now and in later calls.
    """
    key_theta = float(theta) if isinstance(theta, (int, float)) else tuple(float(t) for t in theta)
    kernel = _spatial_kernel(height, width, key_theta, dtype, torch.device(device), normalization, exclude_self,
                             exact, backend)
    return _BatchShared(kernel)


def _as_matrix(weight: Weight, num_labels: int, like: Tensor, name: str) -> Tensor:
    if isinstance(weight, Tensor):
        if weight.shape != (num_labels, num_labels):
            raise ValueError(
                f"{name} must be a number or an (L, L) = ({num_labels}, {num_labels}) tensor, got shape "
                f"{tuple(weight.shape)}."
            )
        return weight.to(like.dtype)
    return float(weight) * torch.eye(num_labels, dtype=like.dtype, device=like.device)


def _iterate(
    unary: Tensor,
    kernels: Sequence[GaussianKernel],
    weights: Sequence[Weight],
    compatibility: Optional[Tensor],
    num_iterations: int,
    memory_efficient: bool = False,
) -> Tensor:
    """Unrolled mean field on channels-last tensors: ``unary (B, N, L)`` logits -> ``(B, N, L)`` logits.

    With ``compatibility=None`` and scalar weights (the Potts model of densecrf) the messages are simply
    added, ``U + sum_m w_m Qtilde_m``, which equals ``U - Potts(sum_m w_m Qtilde_m)`` up to a per-pixel
    constant (identical after the softmax) and skips the ``L x L`` products.
    """
    num_labels = unary.shape[-1]
    potts = compatibility is None and not any(isinstance(w, Tensor) for w in weights)
    if potts:
        coeffs = [float(w) for w in weights]

        def step(q: Tensor) -> Tensor:
            out = unary
            for k, w in zip(kernels, coeffs):
                out = out + w * k(q)
            return out

    else:
        mu = compatibility
        if mu is None:
            mu = 1.0 - torch.eye(num_labels, dtype=unary.dtype, device=unary.device)
        mu = mu.to(unary.dtype)
        # A_m = mu W_m, stacked so that both kernels share one matrix product: (L, M L)
        a = torch.cat([mu @ _as_matrix(w, num_labels, unary, "kernel weight") for w in weights], 1)

        def step(q: Tensor) -> Tensor:
            msgs = torch.cat([k(q) for k in kernels], -1)  # (B, N, M L)
            return unary - msgs @ a.transpose(0, 1)

    logits = unary
    for _ in range(num_iterations):
        q = torch.softmax(logits, -1)
        if memory_efficient and torch.is_grad_enabled():
            logits = checkpoint(step, q, use_reentrant=False)
        else:
            logits = step(q)
    return logits


def _check_inputs(unary: Tensor, image: Tensor) -> None:
    if not isinstance(unary, Tensor):
        raise TypeError(f"unary must be a torch.Tensor of shape (B, L, H, W), got {type(unary).__name__}.")
    if not isinstance(image, Tensor):
        raise TypeError(f"image must be a torch.Tensor of shape (B, 3, H, W), got {type(image).__name__}.")
    if unary.dim() != 4:
        hint = " (a single image: add the batch dimension with unary[None])" if unary.dim() == 3 else ""
        raise ValueError(
            f"unary must have shape (B, L, H, W), got a {unary.dim()}-D tensor of shape "
            f"{tuple(unary.shape)}{hint}."
        )
    if unary.dtype not in (torch.float32, torch.float64):
        raise TypeError(
            f"unary must be float32 or float64 logits, got {unary.dtype}; convert with unary.float() (for "
            "a label map, build logits first, e.g. with crfrnn.unary_from_labels)."
        )
    b, num_labels, h, w = unary.shape
    if num_labels < 2:
        raise ValueError(f"unary must have L >= 2 labels in dimension 1, got shape {tuple(unary.shape)}.")
    if b == 0 or h == 0 or w == 0:
        raise ValueError(f"unary is empty: shape {tuple(unary.shape)}; B, H and W must be at least 1.")
    if image.dim() != 4:
        hint = " (a single image: add the batch dimension with image[None])" if image.dim() == 3 else ""
        raise ValueError(
            f"image must have shape (B, 3, H, W), got a {image.dim()}-D tensor of shape "
            f"{tuple(image.shape)}{hint}."
        )
    if image.shape[0] != b or image.shape[2:] != unary.shape[2:]:
        hint = ""
        if image.shape[1:3] == unary.shape[2:] and image.shape[-1] in (1, 3, 4):
            hint = "; the image looks channels-last (B, H, W, C): pass image.permute(0, 3, 1, 2)"
        raise ValueError(
            f"image of shape {tuple(image.shape)} does not match unary of shape {tuple(unary.shape)}: "
            f"expected (B, C, H, W) = ({b}, C, {h}, {w}){hint}. Resize the unary to the image size "
            "(e.g. F.interpolate(unary, size=image.shape[-2:], mode='bilinear')) or the image to the unary's."
        )
    if image.device != unary.device:
        raise ValueError(
            f"unary is on {unary.device} but image is on {image.device}; move one with .to(other.device)."
        )
    if image.dtype == torch.bool or image.is_complex():
        raise TypeError(f"image must be a real-valued tensor (uint8 or float on the 0..255 scale), got {image.dtype}.")
    if not bool(torch.isfinite(unary).all()):
        raise ValueError(
            "unary contains NaN or infinite values; if they come from log(probabilities), clamp the "
            "probabilities first (e.g. probs.clamp_min(1e-8).log())."
        )
    if image.is_floating_point() and not bool(torch.isfinite(image).all()):
        raise ValueError("image contains NaN or infinite values.")


def _check_theta(**thetas: float) -> None:
    for name, value in thetas.items():
        if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
            raise ValueError(f"{name} must be a positive finite number (pixels or colour units), got {value!r}.")


def mean_field(
    unary: Tensor,
    image: Tensor,
    *,
    theta_alpha: float = 160.0,
    theta_beta: float = 3.0,
    theta_gamma: float = 3.0,
    spatial_weight: Weight = 3.0,
    bilateral_weight: Weight = 5.0,
    compatibility: Optional[Tensor] = None,
    num_iterations: int = 5,
    normalization: str = "row",
    exclude_self: bool = False,
    memory_efficient: bool = False,
    exact: bool = False,
    backend: str = "auto",
) -> Tensor:
    """Mean-field inference in a dense CRF with a spatial and a bilateral Gaussian kernel (CRF-RNN).

    The functional form of :class:`CrfRnn`: ``num_iterations`` iterations of SPEC section 3 starting from
    ``softmax(unary)``, the lattices built once per call (one per kernel; each image of the batch its own).

    Args:
        unary: ``(B, L, H, W)`` logits ``U`` (e.g. a CNN's scores), float32 or float64, ``L >= 2``.
        image: ``(B, 3, H, W)`` colours on the 0..255 scale (uint8 or float; any channel count works).
        theta_alpha: bilateral kernel width in pixels.
        theta_beta: bilateral kernel width in colour units.
        theta_gamma: spatial kernel width in pixels.
        spatial_weight: a number ``w`` (matrix ``w I``) or an ``(L, L)`` weight matrix ``W_spatial``.
        bilateral_weight: a number or an ``(L, L)`` matrix ``W_bilateral``.
        compatibility: ``(L, L)`` label compatibility ``mu`` (asymmetric allowed); None is the Potts
            model ``mu = 1 - I``.
        num_iterations: ``T >= 0`` (``T = 0`` returns the unary).
        normalization: one of :data:`NORMALIZATIONS`; ``"row"`` is the released CRF-RNN code's.
        exclude_self: exclude ``j == i`` from the messages, as the paper writes them.
        memory_efficient: recompute each iteration during the backward pass instead of storing its
            intermediates (about 3x less activation memory, about 1.5x the backward time).
        exact: use the O(N^2) exact Gaussian instead of the lattice (tiny images; for tests).
        backend: lattice backend (``"auto"``, ``"torch"`` or ``"numba"``).

    Returns:
        ``(B, L, H, W)`` refined logits ``Qbreve`` of the last iteration (softmax gives the marginals),
        same dtype as ``unary``.

    Example:
        >>> unary = torch.randn(2, 4, 16, 16)
        >>> image = torch.rand(2, 3, 16, 16) * 255
        >>> mean_field(unary, image, num_iterations=3).shape
        torch.Size([2, 4, 16, 16])
    """
    _check_inputs(unary, image)
    _check_theta(theta_alpha=theta_alpha, theta_beta=theta_beta, theta_gamma=theta_gamma)
    if not isinstance(num_iterations, int) or num_iterations < 0:
        raise ValueError(f"num_iterations must be an integer >= 0, got {num_iterations!r}.")
    b, num_labels, h, w = unary.shape
    dtype = unary.dtype
    img = image.to(dtype)
    if image.numel() > 1 and float(img.max()) <= 1.0 and float(img.max() - img.min()) > 0:
        warnings.warn(
            "image values lie within [0, 1], but the colour kernel width theta_beta is in units of a 0..255 "
            "image; multiply the image by 255 (or scale theta_beta) or the bilateral kernel ignores colour.",
            stacklevel=2,
        )
    opts = dict(normalization=normalization, exclude_self=exclude_self, exact=exact, backend=backend)
    kernels = [
        spatial_kernel(b, h, w, theta_gamma, dtype=dtype, device=unary.device, **opts),
        GaussianKernel(bilateral_features(img, theta_alpha, theta_beta), **opts),
    ]
    u = unary.permute(0, 2, 3, 1).reshape(b, h * w, num_labels)
    for name, wgt in (("spatial_weight", spatial_weight), ("bilateral_weight", bilateral_weight)):
        _as_matrix(wgt, num_labels, u, name)  # validates the shape
    mu = _check_compatibility(compatibility, num_labels)
    out = _iterate(u, kernels, [spatial_weight, bilateral_weight], mu, num_iterations, memory_efficient)
    return out.view(b, h, w, num_labels).permute(0, 3, 1, 2)


def _check_compatibility(compatibility: Optional[Tensor], num_labels: int) -> Optional[Tensor]:
    if compatibility is None:
        return None
    if not isinstance(compatibility, Tensor) or compatibility.shape != (num_labels, num_labels):
        shape = tuple(compatibility.shape) if isinstance(compatibility, Tensor) else type(compatibility).__name__
        raise ValueError(
            f"compatibility must be an (L, L) = ({num_labels}, {num_labels}) tensor or None (Potts), got {shape}."
        )
    return compatibility


class CrfRnn(nn.Module):
    """The CRF-RNN layer: ``T`` mean-field iterations of a dense CRF as a recurrent, trainable module.

    Learnable: ``spatial_weights`` and ``bilateral_weights`` (``L x L``, initialised to ``w I``) and
    ``compatibility`` (``L x L``, initialised to the Potts model ``1 - I``; learned freely, asymmetric
    allowed). The kernel widths are fixed buffers, as in the paper.

    Args:
        num_classes: number of labels ``L >= 2``.
        theta_alpha: bilateral kernel width in pixels (160 in the released model).
        theta_beta: bilateral kernel width in colour units of a 0..255 image (3).
        theta_gamma: spatial kernel width in pixels (3).
        spatial_weight: initial spatial kernel weight (3).
        bilateral_weight: initial bilateral kernel weight (5).
        num_iterations: iterations in training mode (the paper trains with 5).
        num_eval_iterations: iterations in eval mode (the paper tests with 10); None uses
            ``num_iterations``.
        normalization: one of :data:`NORMALIZATIONS` (``"row"``: the released code's).
        exclude_self: exclude ``j == i`` from the messages.
        memory_efficient: recompute iterations in the backward pass to save activation memory.
        backend: lattice backend (``"auto"``, ``"torch"`` or ``"numba"``).

    Shape:
        - unary: ``(B, L, H, W)`` logits; image: ``(B, 3, H, W)`` on the 0..255 scale.
        - output: ``(B, L, H, W)`` refined logits.

    Example:
        >>> crf = CrfRnn(4, num_iterations=5, num_eval_iterations=10)
        >>> crf(torch.randn(1, 4, 20, 30), torch.rand(1, 3, 20, 30) * 255).shape
        torch.Size([1, 4, 20, 30])
    """

    def __init__(
        self,
        num_classes: int,
        *,
        theta_alpha: float = 160.0,
        theta_beta: float = 3.0,
        theta_gamma: float = 3.0,
        spatial_weight: float = 3.0,
        bilateral_weight: float = 5.0,
        num_iterations: int = 5,
        num_eval_iterations: Optional[int] = None,
        normalization: str = "row",
        exclude_self: bool = False,
        memory_efficient: bool = False,
        backend: str = "auto",
    ) -> None:
        super().__init__()
        if not isinstance(num_classes, int) or num_classes < 2:
            raise ValueError(f"num_classes must be an integer >= 2, got {num_classes!r}.")
        _check_theta(theta_alpha=theta_alpha, theta_beta=theta_beta, theta_gamma=theta_gamma)
        for name, t in (("num_iterations", num_iterations), ("num_eval_iterations", num_eval_iterations)):
            if t is not None and (not isinstance(t, int) or t < 0):
                raise ValueError(f"{name} must be an integer >= 0, got {t!r}.")
        if normalization not in NORMALIZATIONS:
            raise ValueError(f"normalization must be one of {NORMALIZATIONS}, got {normalization!r}.")
        self.num_classes = num_classes
        self.num_iterations = num_iterations
        self.num_eval_iterations = num_iterations if num_eval_iterations is None else num_eval_iterations
        self.normalization = normalization
        self.exclude_self = exclude_self
        self.memory_efficient = memory_efficient
        self.backend = backend
        eye = torch.eye(num_classes)
        self.spatial_weights = nn.Parameter(spatial_weight * eye)
        self.bilateral_weights = nn.Parameter(bilateral_weight * eye)
        self.compatibility = nn.Parameter(1.0 - eye)
        self.register_buffer("theta_alpha", torch.tensor(float(theta_alpha)))
        self.register_buffer("theta_beta", torch.tensor(float(theta_beta)))
        self.register_buffer("theta_gamma", torch.tensor(float(theta_gamma)))

    def extra_repr(self) -> str:
        return (
            f"num_classes={self.num_classes}, theta_alpha={float(self.theta_alpha):g}, "
            f"theta_beta={float(self.theta_beta):g}, theta_gamma={float(self.theta_gamma):g}, "
            f"num_iterations={self.num_iterations}, num_eval_iterations={self.num_eval_iterations}, "
            f"normalization={self.normalization!r}"
        )

    def forward(self, unary: Tensor, image: Tensor) -> Tensor:
        """Refine ``unary (B, L, H, W)`` logits with ``image (B, 3, H, W)``; returns ``(B, L, H, W)`` logits."""
        if isinstance(unary, Tensor) and unary.dim() == 4 and unary.shape[1] != self.num_classes:
            raise ValueError(
                f"unary has {unary.shape[1]} labels in dimension 1 (shape {tuple(unary.shape)}) but this "
                f"CrfRnn was built for num_classes={self.num_classes}."
            )
        return mean_field(
            unary,
            image,
            theta_alpha=float(self.theta_alpha),
            theta_beta=float(self.theta_beta),
            theta_gamma=float(self.theta_gamma),
            spatial_weight=self.spatial_weights,
            bilateral_weight=self.bilateral_weights,
            compatibility=self.compatibility,
            num_iterations=self.num_iterations if self.training else self.num_eval_iterations,
            normalization=self.normalization,
            exclude_self=self.exclude_self,
            memory_efficient=self.memory_efficient,
            backend=self.backend,
        )

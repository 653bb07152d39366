"""The pairwise terms of a dense CRF: one Gaussian kernel's specification, its label transform, and the builder
that turns specifications into lattices once per call (once per image on the fused path).

:func:`image_kernels` builds the two kernels every image-shaped entry point uses (a spatial one on positions, a
bilateral one on positions and the guide), so :func:`crfrnn.dense_crf` and :func:`crfrnn.mean_field` describe the
same model in their own vocabularies.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Hashable, Optional, Sequence, Union

import numba
import numpy as np
import torch
from torch import Tensor

from crfrnn._deprecated import renamed_arguments
from crfrnn._utils.validation import check_number, widths_need_grad
from crfrnn.crf.features import bilateral_features, position_features
from crfrnn.crf.kernels import GaussianKernel, KernelCache

__all__ = ["Pairwise", "build_kernels", "image_kernels", "label_transform", "pairwise_logits"]

Weight = Union[float, Tensor, np.ndarray]
Width = Union[float, Sequence[float], Tensor]


@dataclass
class Pairwise:
    """One Gaussian kernel of the pairwise energy: ``mu(l, l') w k(f_i, f_j)``.

    Args:
        features: ``(B, N, D)`` features already divided by the kernel widths, or ``(1, N, D)`` shared by every
            image of the batch (e.g. positions only).
        weight: a number, an ``(L,)`` vector (per-label weights) or an ``(L, L)`` matrix ``W`` (CRF-RNN's).
        compatibility: None for the Potts model, an ``(L,)`` vector (diagonal ``mu``) or an ``(L, L)`` matrix
            ``mu`` (asymmetric allowed).
        normalization: one of :data:`crfrnn.NORMALIZATIONS`.
        exclude_self: leave ``j == i`` out of the messages.
        cache_key: a hashable that determines ``features`` completely (e.g. the grid shape and widths); kernels
            with a key are shared by the batch and kept in the caller's :class:`KernelCache`.
        names: the caller's names for ``weight`` and ``compatibility``, for error messages.

    Example:
        >>> from crfrnn.crf import infer, position_features
        >>> k = Pairwise(position_features((8, 8), 3.0), weight=3.0)
        >>> infer(torch.randn(2, 4, 64), [k], num_iterations=2).shape
        torch.Size([2, 4, 64])
    """

    features: Tensor
    weight: Weight = 1.0
    compatibility: Optional[Union[Tensor, np.ndarray]] = None
    normalization: str = "row"
    exclude_self: bool = False
    cache_key: Optional[Hashable] = None
    names: tuple[str, str] = ("weight", "compatibility")


def _as_tensor(value: Union[Tensor, np.ndarray], like: Tensor) -> Tensor:
    if isinstance(value, np.ndarray):
        value = torch.from_numpy(np.ascontiguousarray(value))
    return value.to(device=like.device, dtype=like.dtype)


@renamed_arguments(num_labels="num_classes")
def label_transform(
    weight: Weight,
    compatibility,
    num_classes: int,
    like: Tensor,
    *,
    name: str = "weight",
    compat_name: str = "compatibility",
) -> Union[float, Tensor]:
    """``T = -mu W`` for one kernel (``W`` itself for Potts): a number, an ``(L,)`` vector or an ``(L, L)`` matrix.

    Raises:
        ValueError: a weight or compatibility of the wrong shape, or not finite.
    """
    shapes = {(): "number", (num_classes,): "vector", (num_classes, num_classes): "matrix"}

    def check(value, what):
        if isinstance(value, (Tensor, np.ndarray)):
            t = _as_tensor(value, like)
            if tuple(t.shape) not in shapes:
                raise ValueError(
                    f"{what} must be a number, an (L,) = ({num_classes},) vector or an (L, L) = ({num_classes}, "
                    f"{num_classes}) matrix, got shape {tuple(t.shape)}."
                )
            if torch.compiler.is_compiling():  # on the device, no value read back
                torch._assert_async(torch.isfinite(t.detach()).all(), f"crfrnn: {what} contains NaN or infinite values")
            elif not bool(torch.isfinite(t.detach()).all()):
                raise ValueError(f"{what} contains NaN or infinite values.")
            return t if t.dim() else t.reshape(())
        return check_number(what, value)

    w = check(weight, name)
    if compatibility is None:
        return w
    mu = check(compatibility, compat_name)
    if not isinstance(mu, Tensor) or mu.dim() == 0:
        raise ValueError(
            f"{compat_name} must be None (Potts), an (L,) vector or an (L, L) matrix, got a number; for a "
            f"Potts model of strength c pass {name}=c and {compat_name}=None."
        )
    if mu.dim() == 1:
        if isinstance(w, Tensor) and w.dim() == 2:
            return -mu[:, None] * w
        return -mu * w
    if isinstance(w, Tensor) and w.dim() == 1:
        return -mu * w[None, :]
    return -(mu @ w) if isinstance(w, Tensor) and w.dim() == 2 else -mu * w


class KernelBuilder:
    """Builds each kernel once per call (once per image on the fused path); shared kernels with a
    ``cache_key`` come from the caller's cache.
    """

    def __init__(
        self, kernels: Sequence[Pairwise], dtype: torch.dtype, exact: bool, backend: str, cache: Optional[KernelCache]
    ) -> None:
        self.kernels = kernels
        self.dtype = dtype
        self.exact = exact
        self.backend = backend
        self.cache = cache
        self._shared: dict[int, GaussianKernel] = {}

    def _make(self, spec: Pairwise, features: Tensor) -> GaussianKernel:
        return GaussianKernel(
            features.to(self.dtype),
            normalization=spec.normalization,
            exclude_self=spec.exclude_self,
            exact=self.exact,
            backend=self.backend,
        )

    def kernel(self, index: int, image: Optional[int]) -> GaussianKernel:
        """Kernel ``index`` for one image (``image``) or for the whole batch (``None``)."""
        spec = self.kernels[index]
        if spec.features.shape[0] > 1:
            return self._make(spec, spec.features if image is None else spec.features[image : image + 1])
        if index not in self._shared:  # shared by the batch
            if spec.cache_key is not None and self.cache is not None:
                key = (
                    spec.cache_key,
                    spec.normalization,
                    spec.exclude_self,
                    self.exact,
                    self.backend,
                    self.dtype,
                    str(spec.features.device),
                )
                self._shared[index] = self.cache.get(key, lambda: self._make(spec, spec.features))
            else:
                self._shared[index] = self._make(spec, spec.features)
        return self._shared[index]


def build_kernels(
    kernels: Sequence[Pairwise],
    dtype: torch.dtype,
    *,
    cache: Optional[KernelCache] = None,
    exact: bool = False,
    backend: str = "auto",
) -> list[GaussianKernel]:
    """The built kernels of the differentiable path, one per :class:`Pairwise` (for the whole batch)."""
    builder = KernelBuilder(kernels, dtype, exact, backend, cache)
    return [builder.kernel(i, None) for i in range(len(kernels))]


def pairwise_logits(q: Tensor, built: Sequence[GaussianKernel], transforms: Sequence) -> Tensor:
    """``sum_k T_k message_k(q)`` for marginals ``q (B, N, L)``: what one iteration adds to the unary."""
    dtype = q.dtype
    out = None
    full = [(k, t) for k, t in zip(built, transforms) if isinstance(t, Tensor) and t.dim() == 2]
    for k, t in zip(built, transforms):
        if isinstance(t, Tensor) and t.dim() == 2:
            continue
        term = k(q) * (t.to(dtype) if isinstance(t, Tensor) else t)
        out = term if out is None else out + term
    if full:  # every matrix kernel's message through one (B N, K L) x (K L, L) product
        mix = torch.cat([t.to(dtype).transpose(0, 1) for _, t in full], 0)
        term = torch.cat([k(q) for k, _ in full], -1) @ mix
        out = term if out is None else out + term
    return torch.zeros_like(q) if out is None else out


def build_concurrently(builder: KernelBuilder, count: int, image: int, num_points: int) -> list[GaussianKernel]:
    """Kernels ``0..count-1`` of one image, built side by side in threads when CPUs are free.

    Part of a lattice's construction is sequential (the hash of its vertices), so lattices of similar cost built
    at once, each with one thread, finish sooner than one after the other with all threads each (the compiled
    kernels release the GIL; numba's thread count is per thread).
    """
    workers = min(count, numba.get_num_threads())
    # One thread per kernel waits for the costliest kernel; all threads per kernel pay the sum of the costs divided
    # by their speed-up, which is well below the thread count. Costs differ more than the feature counts suggest
    # (on a volume the 4-D lattice costs far more than the 3-D one), and building such a pair side by side was
    # slower than one after the other. So kernels build side by side only when they all have the same number of
    # features (two bilateral kernels).
    dims = {builder.kernels[k].features.shape[-1] for k in range(count)}
    if workers < 2 or num_points < 20_000 or len(dims) > 1:
        return [builder.kernel(k, image) for k in range(count)]

    def build(k: int) -> GaussianKernel:
        numba.set_num_threads(1)
        return builder.kernel(k, image)

    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(build, range(count)))


def image_kernels(
    shape: tuple[int, ...],
    image: Tensor,
    *,
    spatial_width: Width,
    bilateral_position_width: Width,
    bilateral_guide_width: Width,
    checked_widths: tuple[tuple[float, ...], tuple[float, ...]],
    spacing: tuple[float, ...],
    weights: tuple[Weight, Weight],
    names: tuple[str, str, str, str, str, str],
    **options,
) -> list[Pairwise]:
    """The spatial and the bilateral kernel of an image-shaped CRF (what ``dense_crf`` and ``mean_field`` build).

    Args:
        shape: the spatial shape ``S`` (1 to 3 axes).
        image: ``(B, C, *S)`` guide in the compute dtype and on the scores' device.
        spatial_width: the spatial kernel's position width (a number, one per axis, or tensors with a gradient).
        bilateral_position_width: the bilateral kernel's position width, as ``spatial_width``.
        bilateral_guide_width: the bilateral kernel's guide width, one number or one per guide channel.
        checked_widths: the two position widths as checked numbers (used unless the width needs a gradient).
        spacing: the physical size of a step along each spatial axis.
        weights: the spatial and the bilateral kernel's weights.
        names: the caller's names for the spatial width, the bilateral position and guide widths, the two weights and
            the compatibility, for error messages.
        **options: passed to both :class:`Pairwise` (``normalization``, ``exclude_self``, ``compatibility``).

    Returns:
        ``[spatial, bilateral]``; the spatial kernel has a ``cache_key`` unless its width needs a gradient.
    """
    spatial_name, position_name, guide_name, spatial_weight, bilateral_weight, compat_name = names
    learned = widths_need_grad(spatial_width)  # a kernel with a graph is never cached
    checked_spatial, checked_position = checked_widths
    position = bilateral_position_width if widths_need_grad(bilateral_position_width) else checked_position
    return [
        Pairwise(
            position_features(
                shape,
                spatial_width if learned else checked_spatial,
                spacing=spacing,
                dtype=image.dtype,
                device=image.device,
                name=spatial_name,
            ),
            weight=weights[0],
            cache_key=None if learned else ("position", shape, checked_spatial, spacing),
            names=(spatial_weight, compat_name),
            **options,
        ),
        Pairwise(
            bilateral_features(
                image, position, bilateral_guide_width, spacing=spacing, names=(position_name, guide_name)
            ),
            weight=weights[1],
            names=(bilateral_weight, compat_name),
            **options,
        ),
    ]

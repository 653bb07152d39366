"""Dense-CRF refinement of any network's output, with the parameters of Krähenbühl's densecrf.

:func:`dense_crf` is what pydensecrf users call as::

    d = dcrf.DenseCRF2D(W, H, L)
    d.setUnaryEnergy(unary_from_softmax(probs))
    d.addPairwiseGaussian(sxy=3, compat=3)
    d.addPairwiseBilateral(sxy=80, srgb=13, rgbim=image, compat=10)
    Q = d.inference(5)

in one batched, differentiable call that runs on any PyTorch device, for images, signals and volumes
(``probs (L, *S)`` with ``S`` of 1 to 3 axes, the guide ``S`` or ``S + (C,)``; or batched tensors). Parameters
mean what they mean in densecrf: ``gaussian_sxy`` and ``bilateral_sxy`` are the position widths in pixels,
``bilateral_srgb`` the colour width (0..255 scale), the ``*_compat`` values are Potts weights (densecrf's
``PottsCompatibility(w)``), the unary is ``-log(prob)`` and the normalisation defaults to densecrf's symmetric
one.

In CRF-RNN terms (:class:`crfrnn.CrfRnn`): ``theta_gamma = gaussian_sxy``, ``theta_alpha =
bilateral_sxy``, ``theta_beta = bilateral_srgb``, ``spatial_weight = gaussian_compat``,
``bilateral_weight = bilateral_compat``, Potts compatibility, ``normalization="symmetric"`` (CRF-RNN's
released code uses ``"row"``).
"""

from __future__ import annotations

from typing import Optional, Union

import numpy as np
import torch
from torch import Tensor

from crfrnn._deprecated import renamed_arguments
from crfrnn._utils.threads import adaptive_threads
from crfrnn._utils.validation import check_guide, check_iterations, check_number, check_spacing, check_widths
from crfrnn.crf.engine import infer
from crfrnn.crf.kernels import KernelCache, check_normalization
from crfrnn.crf.pairwise import Width, image_kernels

__all__ = ["dense_crf", "unary_from_labels", "unary_from_probs"]

ArrayLike = Union[np.ndarray, Tensor]


def unary_from_probs(probs: ArrayLike, *, clip: float = 1e-5, scale: Optional[float] = None) -> ArrayLike:
    """Unary logits ``log(max(p, clip))`` from probabilities (densecrf's ``unary_from_softmax``, negated).

    Args:
        probs: ``(L, H, W)`` or ``(B, L, H, W)`` probabilities over labels (dimension -3).
        clip: smallest probability kept, so that ``log(0)`` does not occur (pydensecrf's default 1e-5).
        scale: if given in ``(0, 1]``, first blend with the uniform distribution:
            ``scale * p + (1 - scale) / L`` (pydensecrf's ``scale``).

    Returns:
        Logits of the same shape and kind (NumPy in, NumPy out), float32 unless a float64 tensor came in.
    """
    is_numpy = isinstance(probs, np.ndarray)
    p = torch.from_numpy(np.asarray(probs, dtype=np.float32)) if is_numpy else probs
    if not isinstance(p, Tensor) or p.dim() not in (3, 4):
        raise ValueError(f"probs must be (L, H, W) or (B, L, H, W), got {getattr(probs, 'shape', type(probs))}.")
    if not p.is_floating_point():
        raise TypeError(f"probs must be floating point probabilities, got {p.dtype}.")
    if not 0 < clip < 1:
        raise ValueError(f"clip must be in (0, 1), got {clip}.")
    if scale is not None:
        if not 0 < scale <= 1:
            raise ValueError(f"scale must be in (0, 1], got {scale}.")
        p = scale * p + (1 - scale) / p.shape[-3]
    out = p.clamp(clip, 1.0).log()
    return out.numpy() if is_numpy else out


@renamed_arguments(num_labels="num_classes")
def unary_from_labels(
    labels: ArrayLike, num_classes: int, *, gt_prob: float = 0.5, unknown: Optional[int] = None
) -> ArrayLike:
    """Unary logits from a hard label map trusted with probability ``gt_prob`` (densecrf's ``unary_from_labels``).

    Each pixel gets probability ``gt_prob`` for its label and ``(1 - gt_prob) / (L - 1)`` for every other
    one; pixels labelled ``unknown`` get the uniform distribution (left unconstrained for the CRF to fill
    in). pydensecrf's ``unary_from_labels(labels, n, gt_prob, zero_unsure=True)`` is
    ``unary_from_labels(labels - 1, n, gt_prob=gt_prob, unknown=-1)`` here, with the label values shifted.

    Args:
        labels: ``(H, W)`` or ``(B, H, W)`` integer labels in ``0..L-1`` (or ``unknown``).
        num_classes: ``L >= 2``.
        gt_prob: confidence in the given labels, in ``(0, 1)``.
        unknown: a label value meaning "unknown" (e.g. 255), or None.

    Returns:
        ``(L, H, W)`` or ``(B, L, H, W)`` float32 logits, NumPy or torch as the input.
    """
    is_numpy = isinstance(labels, np.ndarray)
    lab = torch.from_numpy(np.asarray(labels)) if is_numpy else labels
    if not isinstance(lab, Tensor) or lab.dim() not in (2, 3):
        raise ValueError(f"labels must be (H, W) or (B, H, W), got {getattr(labels, 'shape', type(labels))}.")
    if lab.is_floating_point() or lab.dtype == torch.bool:
        raise TypeError(f"labels must be an integer label map, got {lab.dtype}.")
    if not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(f"num_classes must be an integer >= 2, got {num_classes!r}.")
    if not 0 < gt_prob < 1:
        raise ValueError(f"gt_prob must be in (0, 1), got {gt_prob}.")
    lab = lab.long()
    known = torch.ones_like(lab, dtype=torch.bool) if unknown is None else lab != unknown
    bad = known & ((lab < 0) | (lab >= num_classes))
    if bool(bad.any()):
        values = torch.unique(lab[bad])[:5].tolist()
        raise ValueError(
            f"labels contain values {values} outside 0..{num_classes - 1}; pass num_classes large enough, or "
            f"unknown=<value> for a label meaning 'unknown'."
        )
    off = float(np.log((1.0 - gt_prob) / (num_classes - 1)))
    on = float(np.log(gt_prob))
    onehot = torch.nn.functional.one_hot(torch.where(known, lab, 0), num_classes).movedim(-1, -3)
    out = torch.where(onehot.bool(), on, off).to(torch.float32)
    out = torch.where(known.unsqueeze(-3), out, torch.full_like(out, -float(np.log(num_classes))))
    return out.numpy() if is_numpy else out


_LOW_PRECISION = (torch.float16, torch.bfloat16)


_AXES = {1: "N", 2: "H, W", 3: "D, H, W"}
_ITEMS = {1: ("signal", "one-dimensional signals"), 2: ("image", "images"), 3: ("volume", "volumes")}


def _unbatched_guide(img: Tensor, s: tuple, torch_image: bool) -> tuple[Optional[Tensor], str]:
    """The guide ``(C, *S)`` read from an unbatched image for spatial shape ``s``, and the layout it was read in
    (``(None, "")`` when none fits): ``S``, ``S + (C,)`` (densecrf's) or, for tensors, ``(C,) + S``.
    """
    axes = _AXES.get(len(s), "*S")
    if tuple(img.shape) == s:
        return img.unsqueeze(0), f"({axes})"
    if img.dim() == len(s) + 1 and tuple(img.shape[:-1]) == s:
        return img.movedim(-1, 0), f"({axes}, C)"
    if img.dim() == len(s) + 1 and tuple(img.shape[1:]) == s and torch_image:
        return img, f"(C, {axes})"
    return None, ""


def _ambiguity(img: Tensor, src: Tensor, layout: str) -> str:
    """The message refusing a tensor pair that reads both as one item (in ``layout``) and as a batch."""
    k, b = src.dim() - 1, src.dim() - 2
    one, many = _ITEMS[k][0], _ITEMS[b][1]
    axes, batch_axes = _AXES[k], _AXES[b]
    either = "" if layout.endswith(", C)") else f" or pass the image channels-last ({axes}, C)"
    return (
        f"image of shape {tuple(img.shape)} with scores of shape {tuple(src.shape)} is ambiguous: it reads as one "
        f"{one}, an image {layout} with scores (L, {axes}), or as a batch of {src.shape[0]} {many}, an image "
        f"(B, C, {batch_axes}) with scores (B, L, {batch_axes}); refusing to guess. For one {one}, add the batch "
        f"axis (a (1, C, {axes}) image, channels first, with (1, L, {axes}) scores){either}; for a batch of {many}, "
        f"refine them one at a time with channels-last ({batch_axes}, C) guides."
    )


def _layout(image: ArrayLike, src: Tensor, source_is_numpy: bool) -> tuple[Tensor, Tensor, bool]:
    """``(B, C, *S)`` guide and ``(B, L, *S)`` scores from the accepted layouts; flag: was unbatched.

    Batched: two tensors ``image (B, C, *S)`` and scores ``(B, L, *S)``. Otherwise densecrf's layout: scores
    ``(L, *S)`` define ``S``; the guide is ``S`` (one channel), ``S + (C,)`` or, for tensors, ``(C,) + S``.
    Tensors that read both ways are refused, but for two 4-axis tensors of one shape, the batched
    ``(B, C, H, W)`` image with ``(B, L, H, W)`` scores (the documented batched layout).
    """
    img = torch.from_numpy(np.ascontiguousarray(image)) if isinstance(image, np.ndarray) else image
    if not isinstance(img, Tensor):
        raise TypeError(f"image must be a NumPy array or a torch tensor, got {type(image).__name__}.")
    if src.dim() < 2 or src.dim() > 5:
        raise ValueError(
            f"probabilities must be (L, *S) with S of 1 to 3 spatial axes, or batched (B, L, *S) tensors, got shape "
            f"{tuple(src.shape)}."
        )
    batched = (
        not source_is_numpy
        and not isinstance(image, np.ndarray)
        and src.dim() >= 3
        and img.dim() == src.dim()
        and img.shape[0] == src.shape[0]
        and img.shape[2:] == src.shape[2:]
    )
    s = tuple(src.shape[1:])
    guide, layout = _unbatched_guide(img, s, not isinstance(image, np.ndarray)) if src.dim() <= 4 else (None, "")
    if batched and guide is not None and not (src.dim() == 4 and img.shape == src.shape):
        raise ValueError(_ambiguity(img, src, layout))
    if batched:
        return img, src, False
    if src.dim() > 4:
        raise ValueError(
            f"probabilities of shape {tuple(src.shape)} have more than 3 spatial axes; pass (L, *S) with S of 1 to 3 "
            "axes, or batched (B, L, *S) tensors with an image of shape (B, C, *S)."
        )
    if guide is None:
        expected = f"{s} or {s + ('C',)}".replace("'", "")
        hint = ""
        if img.dim() == len(s) + 2 and tuple(img.shape[2:]) == s:
            hint = " For a batch, pass the probabilities batched too, as a (B, L, *S) tensor."
        raise ValueError(
            f"image of shape {tuple(img.shape)} does not match probabilities of shape {tuple(src.shape)} = (L, *S): "
            f"expected an image of shape {expected}.{hint}"
        )
    return guide.unsqueeze(0), src.unsqueeze(0), True


@renamed_arguments(iterations="num_iterations")
@adaptive_threads
def dense_crf(
    image: ArrayLike,
    probs: Optional[ArrayLike] = None,
    *,
    logits: Optional[ArrayLike] = None,
    num_iterations: int = 5,
    gaussian_sxy: Width = 3.0,
    gaussian_compat: float = 3.0,
    bilateral_sxy: Width = 80.0,
    bilateral_srgb: Width = 13.0,
    bilateral_compat: float = 10.0,
    normalization: str = "symmetric",
    clip: float = 1e-5,
    spacing: Optional[Width] = None,
    cache: Optional[KernelCache] = None,
    backend: str = "auto",
) -> ArrayLike:
    """Refine segmentation probabilities with a fully connected CRF (densecrf's model and parameters).

    Args:
        image: the guide: ``(H, W, 3)`` uint8 RGB for probabilities ``(L, H, W)``; in general ``S`` or ``S + (C,)``
            for probabilities ``(L, *S)`` (grey, RGB, several MRI modalities, ..., on the 0..255 scale), for tensors
            also ``(C,) + S``; or a batched ``(B, C, *S)`` tensor for a batched ``(B, L, *S)`` tensor of
            probabilities. Tensors that read both ways are refused with a ``ValueError`` rather than guessed: a
            ``(C, H, W)`` image with ``(L, H, W)`` scores and ``C == L`` is also a batch of ``C`` one-dimensional
            signals; pass it as ``(1, C, H, W)`` with ``(1, L, H, W)``, or channels-last ``(H, W, C)``. Two 4-axis
            tensors of one shape are the batched ``(B, C, H, W)`` and ``(B, L, H, W)`` (a channels-first volume
            ``(C, D, H, W)`` with ``C == L`` goes channels-last, or batched as ``(1, C, D, H, W)``).
        probs: ``(L, *S)`` probabilities over labels (``S`` of 1 to 3 axes), or batched ``(B, L, *S)``; the
            unary energy is ``-log(max(p, clip))`` as with pydensecrf's ``unary_from_softmax``. ``L = 1`` is a
            binary network's foreground probability, refined as the two-label problem it is.
        logits: instead of ``probs``, unary logits (``-energy``), e.g. a network's raw scores or the
            output of :func:`unary_from_labels`; ``L = 1`` is a single foreground logit map.
        num_iterations: mean-field iterations (densecrf's ``inference(n)``).
        gaussian_sxy: position width of the smoothness kernel in pixels (``addPairwiseGaussian(sxy)``): one number,
            or one per spatial axis in array order (``(s_rows, s_cols)`` for an image; densecrf's ``(sx, sy)`` is
            ``(sy, sx)`` here); in the units of ``spacing`` when one is given.
        gaussian_compat: its Potts weight (``compat``).
        bilateral_sxy: position width of the appearance kernel (``addPairwiseBilateral(sxy)``), as ``gaussian_sxy``.
        bilateral_srgb: its colour width (``srgb``), one number or one per guide channel.
        bilateral_compat: its Potts weight.
        normalization: ``"symmetric"`` (densecrf's default), ``"row"``, ``"column"`` or ``"none"``.
        clip: smallest probability used for the unary.
        spacing: physical size of a step along each spatial axis (e.g. a volume's voxel size in mm).
        cache: a :class:`crfrnn.KernelCache` that keeps the smoothness kernel for later calls of the same size
            (folders of same-sized images); None keeps nothing.
        backend: lattice backend (``"auto"``: compiled kernels on the CPU, PyTorch elsewhere).

    With torch input, the widths (``gaussian_sxy``, ``bilateral_sxy``, ``bilateral_srgb``) may be tensors that
    require a gradient, and so may a floating-point image tensor: the marginals are differentiable with respect to
    them (``docs/widths.md``).

    Returns:
        Marginals of the same shape as the probabilities, float32 (float64 for a float64 tensor), the same kind
        (NumPy or torch); torch input keeps its device and stays differentiable.

    Example:
        >>> image = np.zeros((20, 30, 3), np.uint8)
        >>> probs = np.full((2, 20, 30), 0.5, np.float32)
        >>> dense_crf(image, probs, num_iterations=2).shape
        (2, 20, 30)
    """
    if (probs is None) == (logits is None):
        raise ValueError("pass exactly one of probs= (probabilities) or logits= (unary logits).")
    name = "probs" if probs is not None else "logits"
    source = probs if probs is not None else logits
    is_numpy = isinstance(source, np.ndarray)
    if not isinstance(source, (np.ndarray, Tensor)):
        raise TypeError(f"{name} must be a NumPy array or a torch tensor, got {type(source).__name__}.")
    if isinstance(source, np.ndarray) and source.dtype.kind != "f":
        raise TypeError(
            f"{name} must be floating point, got {source.dtype}; for a label map use "
            "logits=unary_from_labels(labels, num_classes, gt_prob=...)."
        )
    src = torch.from_numpy(np.ascontiguousarray(source)) if isinstance(source, np.ndarray) else source
    if not src.is_floating_point():
        raise TypeError(
            f"{name} must be floating point, got {src.dtype}; for a label map use "
            "logits=unary_from_labels(labels, num_classes, gt_prob=...)."
        )
    iterations = check_iterations("num_iterations", num_iterations)
    clip = check_number("clip", clip)
    if not 0 < clip < 1:
        raise ValueError(f"clip must be in (0, 1), got {clip}.")
    weights = (check_number("gaussian_compat", gaussian_compat), check_number("bilateral_compat", bilateral_compat))
    normalization = check_normalization(normalization)
    if src.numel() == 0:
        raise ValueError(f"{name} is empty: shape {tuple(src.shape)}.")
    # the tolerance of a probability sum follows the precision the network produced them in (bfloat16: 0.03)
    sum_tol = max(1e-3, 4 * torch.finfo(src.dtype).eps)
    dtype = torch.float64 if src.dtype == torch.float64 and not is_numpy else torch.float32
    img, scores, unbatched = _layout(image, src, is_numpy)
    check_guide(img, "image")
    b, num_labels = scores.shape[:2]
    shape = tuple(scores.shape[2:])
    ndim = len(shape)
    channels = img.shape[1]
    if channels == 4 and not isinstance(bilateral_srgb, (list, tuple, np.ndarray, Tensor)):
        one = f"{bilateral_srgb:g}" if isinstance(bilateral_srgb, (int, float)) else "w"
        raise ValueError(
            f"image has 4 channels and one bilateral_srgb ({one}): if it is RGBA, the alpha channel "
            "would act as a fourth colour; drop it with image[..., :3]. To use all 4 channels on purpose (e.g. "
            f"T1, T1c, T2 and FLAIR), pass one width per channel: bilateral_srgb=[{one}] * 4 "
            "or four different widths."
        )
    sxy_g = check_widths("gaussian_sxy", gaussian_sxy, ndim, "spatial axis")
    sxy_b = check_widths("bilateral_sxy", bilateral_sxy, ndim, "spatial axis")
    steps = check_spacing(spacing, ndim)
    scores = scores.to(dtype)
    if num_labels == 1 and probs is not None:  # 1 - p must be a probability too (negative values: checked later)
        lo, hi = (float(v) for v in torch.aminmax(scores))
        if hi > 1 + sum_tol:
            raise ValueError(
                f"probs with one label (L = 1) is a binary network's foreground probability and must lie in [0, 1]; "
                f"got values in {lo:.4g}..{hi:.4g}. Pass a sigmoid's raw scores as logits=, or a label map as "
                "logits=unary_from_labels(labels, num_classes)."
            )
    if num_labels == 1:  # a binary network's single map: the two-label problem it is
        scores = torch.cat([1.0 - scores, scores] if probs is not None else [torch.zeros_like(scores), scores], 1)
    img = img.to(device=scores.device, dtype=dtype)
    kernels = image_kernels(
        shape,
        img,
        spatial_width=gaussian_sxy,
        bilateral_position_width=bilateral_sxy,
        bilateral_guide_width=bilateral_srgb,
        checked_widths=(sxy_g, sxy_b),
        spacing=steps,
        weights=weights,
        names=("gaussian_sxy", "bilateral_sxy", "bilateral_srgb", "gaussian_compat", "bilateral_compat", "compat"),
        normalization=normalization,
    )
    q = infer(
        scores.reshape(b, scores.shape[1], -1),
        kernels,
        num_iterations=iterations,
        from_probs=probs is not None,
        clip=clip,
        cache=cache,
        backend=backend,
        name=name,
        sum_tol=sum_tol,
    )
    q = q.reshape((b, -1) + shape)
    if num_labels == 1:
        q = q[:, 1:]
    if unbatched:
        q = q[0]
    return q.detach().contiguous().numpy() if is_numpy else q.contiguous()

"""Dense-CRF refinement of any network's output, with the parameters of Krähenbühl's densecrf.

:func:`dense_crf` is what pydensecrf users call as::

    d = dcrf.DenseCRF2D(W, H, L)
    d.setUnaryEnergy(unary_from_softmax(probs))
    d.addPairwiseGaussian(sxy=3, compat=3)
    d.addPairwiseBilateral(sxy=80, srgb=13, rgbim=image, compat=10)
    Q = d.inference(5)

in one batched, differentiable call that runs on any PyTorch device. Parameters mean what they mean in
densecrf: ``gaussian_sxy`` and ``bilateral_sxy`` are the position widths in pixels, ``bilateral_srgb``
the colour width (0..255 scale), the ``*_compat`` values are Potts weights (densecrf's
``PottsCompatibility(w)``), the unary is ``-log(prob)`` and the normalisation defaults to densecrf's
symmetric one.

In CRF-RNN terms (:class:`crfrnn.CrfRnn`): ``theta_gamma = gaussian_sxy``, ``theta_alpha =
bilateral_sxy``, ``theta_beta = bilateral_srgb``, ``spatial_weight = gaussian_compat``,
``bilateral_weight = bilateral_compat``, Potts compatibility, ``normalization="symmetric"`` (CRF-RNN's
released code uses ``"row"``).
"""

from __future__ import annotations

from typing import Optional, Sequence, Union

import numpy as np
import torch
from torch import Tensor

from crfrnn.crf import GaussianKernel, _iterate, bilateral_features, spatial_kernel
from crfrnn.lattice import resolve_backend

__all__ = ["dense_crf", "unary_from_labels", "unary_from_probs"]

ArrayLike = Union[np.ndarray, Tensor]
Width = Union[float, Sequence[float]]


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


def unary_from_labels(
    labels: ArrayLike, num_labels: int, *, gt_prob: float = 0.5, unknown: Optional[int] = None
) -> ArrayLike:
    """Unary logits from a hard label map trusted with probability ``gt_prob`` (densecrf's ``unary_from_labels``).

    Each pixel gets probability ``gt_prob`` for its label and ``(1 - gt_prob) / (L - 1)`` for every other
    one; pixels labelled ``unknown`` get the uniform distribution (left unconstrained for the CRF to fill
    in). pydensecrf's ``unary_from_labels(labels, n, gt_prob, zero_unsure=True)`` is
    ``unary_from_labels(labels - 1, n, gt_prob=gt_prob, unknown=-1)`` here, with the label values shifted.

    Args:
        labels: ``(H, W)`` or ``(B, H, W)`` integer labels in ``0..L-1`` (or ``unknown``).
        num_labels: ``L >= 2``.
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
    if not isinstance(num_labels, int) or num_labels < 2:
        raise ValueError(f"num_labels must be an integer >= 2, got {num_labels!r}.")
    if not 0 < gt_prob < 1:
        raise ValueError(f"gt_prob must be in (0, 1), got {gt_prob}.")
    lab = lab.long()
    known = torch.ones_like(lab, dtype=torch.bool) if unknown is None else lab != unknown
    bad = known & ((lab < 0) | (lab >= num_labels))
    if bool(bad.any()):
        values = torch.unique(lab[bad])[:5].tolist()
        raise ValueError(
            f"labels contain values {values} outside 0..{num_labels - 1}; pass num_labels large enough, or "
            f"unknown=<value> for a label meaning 'unknown'."
        )
    off = float(np.log((1.0 - gt_prob) / (num_labels - 1)))
    on = float(np.log(gt_prob))
    onehot = torch.nn.functional.one_hot(torch.where(known, lab, 0), num_labels).movedim(-1, -3)
    out = torch.where(onehot.bool(), on, off).to(torch.float32)
    out = torch.where(known.unsqueeze(-3), out, torch.full_like(out, -float(np.log(num_labels))))
    return out.numpy() if is_numpy else out


def _to_batched(image: ArrayLike, unary: Tensor) -> tuple[Tensor, Tensor, bool]:
    """``(B, 3, H, W)`` image and ``(B, L, H, W)`` unary from the accepted layouts; flag: was unbatched."""
    if unary.dim() == 3:
        h, w = unary.shape[1:]
        img = torch.from_numpy(np.ascontiguousarray(image)) if isinstance(image, np.ndarray) else image
        if not isinstance(img, Tensor) or img.dim() != 3:
            raise ValueError(
                f"image must be (H, W, 3) for probabilities of shape (L, H, W) = {tuple(unary.shape)}, got "
                f"{getattr(image, 'shape', type(image))}."
            )
        if img.shape[:2] == (h, w):
            img = img.permute(2, 0, 1)  # (H, W, C), densecrf's layout
        elif img.shape[1:] != (h, w):
            raise ValueError(
                f"image of shape {tuple(img.shape)} does not match probabilities of shape {tuple(unary.shape)}: "
                f"expected (H, W, 3) = ({h}, {w}, 3)."
            )
        return img.unsqueeze(0), unary.unsqueeze(0), True
    if unary.dim() == 4:
        if isinstance(image, np.ndarray):
            image = torch.from_numpy(np.ascontiguousarray(image))
        if not isinstance(image, Tensor) or image.dim() != 4:
            raise ValueError(
                f"batched input: image must be a (B, 3, H, W) tensor for probabilities of shape "
                f"{tuple(unary.shape)}, got {getattr(image, 'shape', type(image))}."
            )
        return image, unary, False
    raise ValueError(
        f"probabilities must be (L, H, W) or batched (B, L, H, W), got shape {tuple(unary.shape)}."
    )


def _fused_potts(
    unary: np.ndarray, q0: Optional[np.ndarray], num_labels: int, kernels: list[GaussianKernel], weights: list[float],
    iterations: int,
) -> Tensor:
    """The compiled CPU path of :func:`dense_crf` for one image (no autograd): marginals ``(L, N)``.

    ``unary`` and ``q0`` are the padded ``(N, C)`` arrays of :func:`crfrnn._numba.unary_from_scores`.
    """
    from crfrnn import _numba

    dtype = torch.float64 if unary.dtype == np.float64 else torch.float32
    num_points = unary.shape[0]
    args = []
    for k, w in zip(kernels, weights):
        ones = torch.ones(num_points, dtype=dtype)
        pre = ones if k.pre is None else k.pre.reshape(-1).to(dtype)
        post = ones if k.post is None else k.post.reshape(-1).to(dtype)
        self_w = torch.zeros(num_points, dtype=dtype) if k.self_weight is None else k.self_weight.reshape(-1).to(dtype)
        args.append((k.lattice._operators(dtype), pre, post, self_w, w))
    return torch.from_numpy(_numba.potts_mean_field(unary, num_labels, iterations, args, q0=q0))


def _check_scores(nonfinite: bool, negative: bool, min_sum: float, max_sum: float, is_probs: bool) -> None:
    """The errors of :func:`dense_crf` for bad probabilities or logits (one message for either path)."""
    if nonfinite:
        raise ValueError("probabilities/logits contain NaN or infinite values.")
    if is_probs and negative:
        raise ValueError("probs contain negative values: they look like logits; pass them as logits= instead.")
    if is_probs and not (abs(min_sum - 1.0) <= 1e-3 and abs(max_sum - 1.0) <= 1e-3):
        raise ValueError(
            f"probs do not sum to 1 over labels (dimension -3; sums range {min_sum:.4g} to {max_sum:.4g}); "
            "normalise them, or pass raw scores as logits=."
        )


def dense_crf(
    image: ArrayLike,
    probs: Optional[ArrayLike] = None,
    *,
    logits: Optional[ArrayLike] = None,
    iterations: int = 5,
    gaussian_sxy: Width = 3.0,
    gaussian_compat: float = 3.0,
    bilateral_sxy: Width = 80.0,
    bilateral_srgb: Width = 13.0,
    bilateral_compat: float = 10.0,
    normalization: str = "symmetric",
    clip: float = 1e-5,
    backend: str = "auto",
) -> ArrayLike:
    """Refine segmentation probabilities with a fully connected CRF (densecrf's model and parameters).

    Args:
        image: ``(H, W, 3)`` uint8 RGB (NumPy or torch), or a batched ``(B, 3, H, W)`` tensor (uint8 or
            float on the 0..255 scale).
        probs: ``(L, H, W)`` probabilities over labels, or batched ``(B, L, H, W)``; the unary energy is
            ``-log(max(p, clip))`` as with pydensecrf's ``unary_from_softmax``.
        logits: instead of ``probs``, unary logits (``-energy``), e.g. a network's raw scores or the
            output of :func:`unary_from_labels`.
        iterations: mean-field iterations (densecrf's ``inference(n)``).
        gaussian_sxy: position width of the smoothness kernel in pixels (``addPairwiseGaussian(sxy)``).
        gaussian_compat: its Potts weight (``compat``).
        bilateral_sxy: position width of the appearance kernel (``addPairwiseBilateral(sxy)``).
        bilateral_srgb: its colour width (``srgb``).
        bilateral_compat: its Potts weight.
        normalization: ``"symmetric"`` (densecrf's default), ``"row"``, ``"column"`` or ``"none"``.
        clip: smallest probability used for the unary.
        backend: lattice backend (``"auto"``: compiled kernels on the CPU, PyTorch elsewhere).

    Returns:
        Marginals, ``(L, H, W)`` float32 (or ``(B, L, H, W)`` for batched input), the same kind (NumPy
        or torch) as the probabilities; torch input keeps its device and stays differentiable.

    Example:
        >>> image = np.zeros((20, 30, 3), np.uint8)
        >>> probs = np.full((2, 20, 30), 0.5, np.float32)
        >>> dense_crf(image, probs, iterations=2).shape
        (2, 20, 30)
    """
    if (probs is None) == (logits is None):
        raise ValueError("pass exactly one of probs= (probabilities) or logits= (unary logits).")
    source = probs if probs is not None else logits
    is_numpy = isinstance(source, np.ndarray)
    if not is_numpy and not isinstance(source, Tensor):
        raise TypeError(f"probabilities must be a NumPy array or a torch tensor, got {type(source).__name__}.")
    src = torch.from_numpy(np.ascontiguousarray(source)) if is_numpy else source
    if not src.is_floating_point():
        raise TypeError(
            f"probabilities must be floating point, got {src.dtype}; for a label map use "
            "logits=unary_from_labels(labels, num_labels, gt_prob=...)."
        )
    if not isinstance(iterations, int) or iterations < 0:
        raise ValueError(f"iterations must be an integer >= 0, got {iterations!r}.")
    if not 0 < clip < 1:
        raise ValueError(f"clip must be in (0, 1), got {clip}.")
    dtype = torch.float64 if src.dtype == torch.float64 and not is_numpy else torch.float32
    src = src.to(dtype)
    if src.dim() in (3, 4) and src.shape[-3] < 2:
        raise ValueError(f"need at least 2 labels in dimension -3, got shape {tuple(src.shape)}.")
    # The compiled CPU path: one pass prepares (and checks) the unary, one fused kernel iterates.
    fused = (
        resolve_backend(backend, src.device) == "numba" and src.dim() in (3, 4)
        and not (torch.is_grad_enabled() and src.requires_grad)
    )  # fmt: skip
    padded_unary = None
    if fused:
        from crfrnn import _numba

        padded_unary, q0, st = _numba.unary_from_scores(
            src if src.dim() == 4 else src[None], clip, probs is not None
        )  # fmt: skip
        _check_scores(st["nonfinite"] > 0, st["negative"] > 0, st["min_sum"], st["max_sum"], probs is not None)
    else:
        total = (src.sum(-3) if src.dim() in (3, 4) else src).detach()
        _check_scores(
            not bool(torch.isfinite(src).all()), bool((src < 0).any()), float(total.min()), float(total.max()),
            probs is not None,
        )  # fmt: skip
        if probs is not None:
            src = unary_from_probs(src, clip=clip)
    img, unary, unbatched = _to_batched(image, src)  # in the fused path ``unary`` only gives the shape
    if img.shape[1] != 3 and img.shape[-1] == 3:
        raise ValueError(f"batched image must be (B, 3, H, W), got {tuple(img.shape)} (channels-last?).")
    if img.shape[0] != unary.shape[0] or img.shape[2:] != unary.shape[2:]:
        raise ValueError(
            f"image of shape {tuple(img.shape)} does not match probabilities of shape {tuple(unary.shape)}."
        )
    img = img.to(device=unary.device, dtype=dtype)
    b, num_labels, h, w = unary.shape
    opts = dict(normalization=normalization, backend=backend)
    spatial = spatial_kernel(b, h, w, gaussian_sxy, dtype=dtype, device=unary.device, **opts)
    weights = [float(gaussian_compat), float(bilateral_compat)]
    if padded_unary is not None:
        n = h * w
        q = torch.stack([
            _fused_potts(padded_unary[i * n : (i + 1) * n], None if q0 is None else q0[i * n : (i + 1) * n],
                         num_labels, [spatial.kernel, GaussianKernel(bilateral_features(
                             img[i : i + 1], bilateral_sxy, bilateral_srgb), **opts)], weights, iterations)
            for i in range(b)
        ]).view(b, num_labels, h, w)  # fmt: skip
    else:
        u = unary.permute(0, 2, 3, 1).reshape(b, h * w, num_labels)
        kernels = [spatial, GaussianKernel(bilateral_features(img, bilateral_sxy, bilateral_srgb), **opts)]
        q = torch.softmax(_iterate(u, kernels, weights, None, iterations), -1)
        q = q.view(b, h, w, num_labels).permute(0, 3, 1, 2)
    if unbatched:
        q = q[0]
    return q.detach().contiguous().numpy() if is_numpy else q.contiguous()

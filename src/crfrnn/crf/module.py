"""The CRF-RNN layer (Zheng et al. 2015): ``T`` mean-field iterations as a recurrent, trainable ``nn.Module``."""

from __future__ import annotations

import math
from typing import Any, Optional, cast

import torch
from torch import Tensor, nn

from crfrnn._utils.validation import check_iterations, check_widths
from crfrnn.crf.functional import mean_field
from crfrnn.crf.kernels import NORMALIZATIONS, KernelCache

__all__ = ["CrfRnn", "KERNEL_WEIGHTS"]

#: the shapes a :class:`CrfRnn`'s kernel weights can have (its ``kernel_weights`` argument)
KERNEL_WEIGHTS = ("matrix", "vector", "scalar")


class CrfRnn(nn.Module):
    """The CRF-RNN layer: ``T`` mean-field iterations of a dense CRF as a recurrent, trainable module.

    Learnable: ``spatial_weights`` and ``bilateral_weights`` (``L x L``, initialised to ``w I``; or per label,
    or one number each, see ``kernel_weights``) and ``compatibility`` (``L x L``, initialised to the Potts model
    ``1 - I``; learned freely, asymmetric allowed unless ``symmetric_compatibility``). The kernel widths are
    fixed buffers, as in the paper, or with ``learn_widths=True`` learned too: parameters ``log_theta_alpha``,
    ``log_theta_beta`` and ``log_theta_gamma`` (positive by construction);
    ``crf.theta_alpha`` etc. read the current widths either way.

    In eval mode (or under ``torch.no_grad()``) on the CPU it runs the compiled fused mean field; in training
    the differentiable path. The spatial kernel of each input size is kept in :attr:`cache` (a
    :class:`crfrnn.KernelCache`; ``crf.cache.clear()`` frees it).

    Put it on a trained CNN, as the paper did (``crfrnn train --stage cnn``, then ``--stage crfrnn --init-from``):
    on an untrained backbone's near-uniform logits the pairwise term (weights 3 and 5) dominates and the loss
    rises instead of falling (docs/training.md). To train both from scratch, use
    ``crfrnn.models.CrfRnnSegmenter(..., safe_start=True)``.

    Args:
        num_classes: number of labels ``L >= 2``, or ``1`` for a binary network's single logit map (the
            parameters are then the ``2 x 2`` ones of the two-label problem).
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
        memory_efficient: recompute in the backward pass what the default keeps (see :func:`crfrnn.mean_field`).
        backend: lattice backend (``"auto"``, ``"torch"``, ``"numba"`` or ``"triton"``).
        num_untied: untied iterations (the paper's ablation): ``T_u`` separate sets of kernel weights and
            compatibility, stacked as ``(T_u, L, L)`` parameters; iteration ``t`` uses set ``min(t, T_u - 1)``, so
            evaluating with more iterations than sets (e.g. train 5, eval 10) reuses the last set. None (default)
            ties them: one set for every iteration. :meth:`untie` and :meth:`tie` convert; a tied state dict loads
            into an untied layer (every set gets the tied values).
        learn_widths: learn the three kernel widths by their logarithms (``docs/widths.md``: the exact Gaussian's
            derivative through the lattice). A state dict with fixed widths loads into a layer that learns them
            and back (the widths converted).
        kernel_weights: the shape of each kernel's learnable weight: ``"matrix"`` (``L x L``, initialised to
            ``w I``: the released model's), ``"vector"`` (one weight per label, ``(L,)``) or ``"scalar"`` (one
            number per kernel, the paper's ablation without class-specific weights).
        symmetric_compatibility: use ``(mu + mu^T) / 2`` of the learned ``compatibility`` (the paper's ablation
            without an asymmetric compatibility); ``False`` (default) uses ``mu`` as learned.

    Shape:
        - unary: ``(B, L, H, W)`` logits; image: ``(B, 3, H, W)`` on the 0..255 scale.
        - output: ``(B, L, H, W)`` refined logits.

    Example:
        >>> crf = CrfRnn(4, num_iterations=5, num_eval_iterations=10)
        >>> crf(torch.randn(1, 4, 20, 30), torch.rand(1, 3, 20, 30) * 255).shape
        torch.Size([1, 4, 20, 30])
        >>> learned = CrfRnn(4, learn_widths=True)
        >>> sorted(n for n, _ in learned.named_parameters() if "theta" in n)
        ['log_theta_alpha', 'log_theta_beta', 'log_theta_gamma']
        >>> round(learned.theta_alpha.item(), 3)
        160.0
    """

    _WIDTHS = ("theta_alpha", "theta_beta", "theta_gamma")

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
        num_untied: Optional[int] = None,
        learn_widths: bool = False,
        kernel_weights: str = "matrix",
        symmetric_compatibility: bool = False,
    ) -> None:
        super().__init__()
        if num_untied is not None and (
            isinstance(num_untied, bool) or not isinstance(num_untied, int) or num_untied < 1
        ):
            raise ValueError(f"num_untied must be None or an integer >= 1, got {num_untied!r}.")
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"num_classes must be an integer >= 1, got {num_classes!r}.")
        for name, t in (("num_iterations", num_iterations), ("num_eval_iterations", num_eval_iterations)):
            if t is not None:
                check_iterations(name, t)
        if normalization not in NORMALIZATIONS:
            raise ValueError(f"normalization must be one of {NORMALIZATIONS}, got {normalization!r}.")
        self.num_classes = num_classes
        self.num_iterations = num_iterations
        self.num_eval_iterations = num_iterations if num_eval_iterations is None else num_eval_iterations
        self.normalization = normalization
        self.exclude_self = exclude_self
        self.memory_efficient = memory_efficient
        self.backend = backend
        if kernel_weights not in KERNEL_WEIGHTS:
            raise ValueError(f"kernel_weights must be one of {KERNEL_WEIGHTS}, got {kernel_weights!r}.")
        if not isinstance(symmetric_compatibility, bool):
            raise TypeError(f"symmetric_compatibility must be True or False, got {symmetric_compatibility!r}.")
        self.kernel_weights = kernel_weights
        self.symmetric_compatibility = symmetric_compatibility
        self.cache = KernelCache()
        eye = torch.eye(max(num_classes, 2))
        shape = {"matrix": eye, "vector": torch.ones(len(eye)), "scalar": torch.tensor(1.0)}[kernel_weights]
        self.spatial_weights = nn.Parameter(spatial_weight * shape)
        self.bilateral_weights = nn.Parameter(bilateral_weight * shape)
        self.compatibility = nn.Parameter(1.0 - eye)
        self.num_untied: Optional[int] = None
        if num_untied is not None:
            self.untie(num_untied)
        self.learn_widths = bool(learn_widths)
        widths = {"theta_alpha": theta_alpha, "theta_beta": theta_beta, "theta_gamma": theta_gamma}
        fixed = {}
        for name in self._WIDTHS:
            value = float(check_widths(name, widths[name], 1, "kernel")[0])
            fixed[name] = value
            if self.learn_widths:
                self.register_parameter("log_" + name, nn.Parameter(torch.tensor(math.log(value))))
            else:
                self.register_buffer(name, torch.tensor(value))
        # from the arguments, not the buffers: those may live on the meta device (a model built under
        # ``torch.device("meta")`` and materialised later)
        self._fixed_widths = None if self.learn_widths else fixed

    def __getattr__(self, name: str):
        if name in CrfRnn._WIDTHS and "log_" + name in self.__dict__.get("_parameters", {}):
            return cast(Tensor, self._parameters["log_" + name]).exp()  # the learned width, differentiable
        return super().__getattr__(name)

    def _refresh_widths(self) -> None:
        """Keep Python copies of fixed widths, so that ``forward`` reads no tensor (no device sync on a GPU)."""
        if self.learn_widths:
            self._fixed_widths = None
        else:
            buffers = cast("dict[str, Tensor]", self._buffers)  # the fixed widths, registered in __init__
            if not any(buffers[n].is_meta for n in self._WIDTHS):
                self._fixed_widths = {n: float(buffers[n]) for n in self._WIDTHS}

    def extra_repr(self) -> str:
        """The widths, iteration counts and normalisation, for ``repr(module)``."""
        widths = ", ".join(f"{n}={float(getattr(self, n).detach()):g}" for n in self._WIDTHS)
        return (
            f"num_classes={self.num_classes}, {widths}, "
            f"num_iterations={self.num_iterations}, num_eval_iterations={self.num_eval_iterations}, "
            f"normalization={self.normalization!r}"
            + ("" if self.num_untied is None else f", num_untied={self.num_untied}")
            + (", learn_widths=True" if self.learn_widths else "")
            + ("" if self.kernel_weights == "matrix" else f", kernel_weights={self.kernel_weights!r}")
            + (", symmetric_compatibility=True" if self.symmetric_compatibility else "")
        )

    def kernel_weight_means(self) -> dict[str, float]:
        """The mean weight each kernel gives a label with itself (the diagonal of a matrix weight; for untied
        layers over all sets): ``{"spatial": ..., "bilateral": ...}``, for logs and reports.
        """
        out = {}
        for kind in ("spatial", "bilateral"):
            w = getattr(self, kind + "_weights").detach()
            w = w.diagonal(dim1=-2, dim2=-1) if self.kernel_weights == "matrix" else w
            out[kind] = float(w.float().mean())
        return out

    def effective_compatibility(self) -> Tensor:
        """The compatibility the mean field uses: ``compatibility``, or its symmetric part with
        ``symmetric_compatibility`` (``(L, L)``, or ``(T_u, L, L)`` untied).
        """
        mu = self.compatibility
        return 0.5 * (mu + mu.transpose(-1, -2)) if self.symmetric_compatibility else mu

    _UNTIED = ("spatial_weights", "bilateral_weights", "compatibility")

    def untie(self, num_untied: Optional[int] = None) -> "CrfRnn":
        """Give every iteration its own weights and compatibility (``num_untied`` sets, default ``num_iterations``),
        each a copy of the current (tied) values, so the output does not change. Replaces the parameters: build
        the optimiser afterwards. Returns ``self``.
        """
        count = self.num_iterations if num_untied is None else num_untied
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise ValueError(f"num_untied must be an integer >= 1, got {count!r}.")
        if self.num_untied is not None:
            raise ValueError(f"this CrfRnn is already untied (num_untied={self.num_untied}); call tie() first.")
        for name in self._UNTIED:
            value = getattr(self, name).detach()
            setattr(self, name, nn.Parameter(value.expand(count, *value.shape).clone()))
        self.num_untied = count
        return self

    def tie(self) -> "CrfRnn":
        """Back to one set shared by every iteration: the **average** of the untied sets (exact when they are
        equal; otherwise an approximation of the untied layer). Replaces the parameters. Returns ``self``.
        """
        if self.num_untied is not None:
            for name in self._UNTIED:
                setattr(self, name, nn.Parameter(getattr(self, name).detach().mean(0).clone()))
            self.num_untied = None
        return self

    def _load_from_state_dict(
        self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
    ):  # noqa: D401 (PyTorch hook)
        """A tied state dict (``(L, L)`` parameters) loads into an untied layer: every set gets the tied values; fixed
        widths (``theta_*`` buffers) load into a layer that learns them (``log_theta_*``) and back.
        """
        for name in self._WIDTHS:
            fixed, learned = prefix + name, prefix + "log_" + name
            if self.learn_widths and fixed in state_dict and learned not in state_dict:
                state_dict[learned] = state_dict.pop(fixed).log()
            elif not self.learn_widths and learned in state_dict and fixed not in state_dict:
                state_dict[fixed] = state_dict.pop(learned).exp()
        for name in self._UNTIED:
            key = prefix + name
            value = state_dict.get(key)
            if value is None:
                continue
            tied_dim = 2 if name == "compatibility" else {"matrix": 2, "vector": 1, "scalar": 0}[self.kernel_weights]
            if self.num_untied is not None and value.dim() == tied_dim:
                state_dict[key] = value.expand(self.num_untied, *value.shape)
            elif self.num_untied is None and value.dim() == tied_dim + 1:
                error_msgs.append(
                    f"{key} holds {value.shape[0]} untied sets but this CrfRnn is tied; build it with "
                    f"num_untied={value.shape[0]} (or call .untie({value.shape[0]})) before loading."
                )
                return
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )
        self._refresh_widths()

    def _per_iteration(self, value: Tensor):
        return value if self.num_untied is None else list(value.unbind(0))

    def forward(self, unary: Tensor, image: Tensor) -> Tensor:
        """Refine ``unary (B, L, *S)`` logits with ``image (B, C, *S)``; returns ``(B, L, *S)`` logits."""
        if isinstance(unary, Tensor) and unary.dim() >= 3 and unary.shape[1] != self.num_classes:
            raise ValueError(
                f"unary has {unary.shape[1]} labels in dimension 1 (shape {tuple(unary.shape)}) but this "
                f"CrfRnn was built for num_classes={self.num_classes}."
            )
        widths: dict[str, Any] = self._fixed_widths or {n: getattr(self, n) for n in self._WIDTHS}
        return mean_field(
            unary,
            image,
            **widths,
            spatial_weight=self._per_iteration(self.spatial_weights),
            bilateral_weight=self._per_iteration(self.bilateral_weights),
            compatibility=self._per_iteration(self.effective_compatibility()),
            num_iterations=self.num_iterations if self.training else self.num_eval_iterations,
            normalization=self.normalization,
            exclude_self=self.exclude_self,
            memory_efficient=self.memory_efficient,
            backend=self.backend,
            cache=self.cache,
        )

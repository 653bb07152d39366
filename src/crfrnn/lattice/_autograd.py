"""The lattice filter's autograd: ``K values`` and its gradients with respect to the values, features and widths.

:class:`LatticeFilter` is differentiable with respect to the values only: ``K`` is linear, so its backward is the
adjoint ``K^T`` (blur directions reversed) on the same lattice, itself a :class:`LatticeFilter` (double backward
works). :class:`FeatureFilter` also gives the features' and the kernel widths' gradients by the exact Gaussian's
derivative written as filterings of moment channels (:func:`feature_backward`, ``docs/widths.md``).

Both run on any lattice operator: an object with ``apply(values (P, C), reverse) -> (P, C)`` (``K values``, or
``K^T values`` with ``reverse``, without autograd) and ``padded_channels(channels, dtype) -> int`` (the channel count
it filters for ``channels``: the compiled kernels pad to their SIMD width).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Optional, Protocol

import torch
from torch import Tensor

__all__ = ["FeatureFilter", "Filterable", "LatticeFilter", "feature_backward", "moments"]


class Filterable(Protocol):
    """What the autograd functions need of a lattice operator (:class:`crfrnn.lattice._operators.LatticeOperator`)."""

    def apply(self, values: Tensor, reverse: bool) -> Tensor:
        """``K values`` (``K^T values`` with ``reverse``) of ``(P, C)`` values, without autograd."""
        ...

    def padded_channels(self, channels: int, dtype: torch.dtype) -> int:
        """The channel count filtered for ``channels`` channels of ``dtype``."""
        ...


class LatticeFilter(torch.autograd.Function):
    """``out = K values`` on a fixed lattice; backward applies ``K^T`` on the same lattice."""

    @staticmethod
    def forward(ctx, values: Tensor, operator: Filterable, reverse: bool) -> Tensor:
        ctx.operator = operator
        ctx.reverse = reverse
        return operator.apply(values.contiguous(), reverse)

    @staticmethod
    def backward(ctx, grad: Tensor):
        # K is linear, so its backward is again a lattice filter (differentiable: double backward works).
        return LatticeFilter.apply(grad.contiguous(), ctx.operator, not ctx.reverse), None, None


def moments(x: Tensor, f: Tensor, lead: Optional[Tensor], pad: Callable[[int], int]) -> Tensor:
    """``[lead, f_1 x, .., f_D x]`` as one ``(P, pad(C'))`` buffer (zero columns after), written in place."""
    p, c = x.shape
    d = f.shape[1]
    first = 0 if lead is None else lead.shape[1]
    width = first + d * c
    if torch.compiler.is_compiling():  # no out= into a strided view under torch.compile (a graph break): one cat
        parts = ([] if lead is None else [lead]) + [(f.unsqueeze(2) * x.unsqueeze(1)).reshape(p, d * c)]
        if pad(width) > width:
            parts.append(x.new_zeros(p, pad(width) - width))
        return torch.cat(parts, 1)
    buf = x.new_empty(p, pad(width))
    if lead is not None:
        buf[:, :first] = lead
    torch.mul(f.unsqueeze(2), x.unsqueeze(1), out=buf[:, first:width].view(p, d, c))
    buf[:, width:] = 0
    return buf


def feature_backward(
    filt: Callable[[Tensor, bool], Tensor],
    values: Tensor,
    out: Tensor,
    grad: Tensor,
    base: Tensor,
    widths: Optional[Tensor],
    batch: int,
    need: tuple[bool, bool, bool],
    pad: Callable[[int], int] = lambda channels: channels,
    probes: int = 0,
) -> tuple[Optional[Tensor], Optional[Tensor], Optional[Tensor]]:
    """Gradients of ``L`` through ``out = K v`` with respect to ``v``, the undivided features and the widths.

    ``K`` is a Gaussian filter ``k_ij = exp(-|f_i - f_j|^2 / 2)`` with ``f = base / widths`` (``widths`` None:
    ``f = base``), given as ``filt(x, reverse)`` (``K x`` or ``K^T x`` of ``(P, C')`` values). With
    ``g = dL/dout`` and every label channel ``c`` summed, the exact Gaussian's derivative is

        dL/dv = K^T g,
        dL/df_id = -sum_c g_ic (f_id (K v)_ic - (K (f_d v))_ic) - sum_c v_ic (f_id (K^T g)_ic - (K^T (f_d g))_ic),

    whatever ``K`` approximates it (the lattice): moment channels ``f_d v`` and ``f_d g`` filtered by ``K``
    and ``K^T``. When only the widths need a gradient, ``dL/dw_d = -S_d / w_d`` needs just
    ``S_d = sum_i f_id dL/df_id``, which by ``<f_d v, K^T (f_d g)> = <K (f_d v), f_d g>`` and
    ``<f_d^2 v, K^T g> = <K (f_d^2 v), g>`` is

        S_d = 2 <f_d v, K^T (f_d g)> - <f_d^2 (g . K v + v . K^T g), 1>,

    one ``K^T`` call on ``[g, f_1 g, .., f_D g]``, half the channels of the per-point gradient.

    With ``probes = R > 0`` (widths only) the ``D C`` moment channels are replaced by ``D R``: ``K`` acts on
    every channel alike, so for random signs ``s_c`` (Rademacher, ``R`` independent draws, averaged) ``S_d``
    of the single channels ``v s`` and ``g s`` has the expectation ``S_d`` of all channels: an unbiased, noisy
    estimate (both of its terms from the same probe, so that they cancel as the exact ones do). The features
    are centred per image first: the Gaussian depends only on ``f_i - f_j`` and ``sum_i dL/df_i = 0`` (for
    any linear ``K`` and its exact adjoint), so this changes nothing but rounding.

    Args:
        filt: ``filt(x (P, C'), reverse) -> (P, C')``.
        values: ``v``, ``(P, C)`` with ``P = batch * N``.
        out: ``K v``, ``(P, C)``.
        grad: ``g = dL/dout``, ``(P, C)``.
        base: ``(P, D)`` undivided features.
        widths: ``(D,)``, or None (the features are ``base``).
        batch: images in ``P`` (each centred on its own).
        need: which of ``(values, base, widths)`` need a gradient.
        pad: the channel count to filter for ``C'`` channels (the compiled kernels' SIMD padding).
        probes: random sign probes over the label channels for the widths' gradient (0: exact).

    Returns:
        ``(dL/dv (P, C), dL/dbase (P, D), dL/dwidths (D,))``, None where not needed.
    """
    p, c = values.shape
    d = base.shape[1]
    if not (need[1] or need[2]):
        return filt(grad, True), None, None
    f = base if widths is None else base / widths
    f = f.detach().reshape(batch, -1, d)
    f = (f - f.mean(1, keepdim=True)).view(p, d)
    sampled = probes > 0 and not need[1]
    if sampled:  # random signs per probe and channel, shared by every point (and image)
        signs = torch.randint(0, 2, (c, probes), device=values.device).to(values.dtype).mul_(2).sub_(1)
        probe_g, probe_v = grad @ signs, values @ signs  # (P, R)
    else:
        probe_g, probe_v = grad, values
    r = probe_g.shape[1]
    back = filt(moments(probe_g, f, grad, pad), True)  # K^T [g, f_1 g, .., f_D g]
    grad_v, kt_fg = back[:, :c], back[:, c : c + d * r].view(p, d, r)
    v_kt_fg = torch.einsum("pdc,pc->pd", kt_fg, probe_v)  # sum_c v_ic (K^T (f_d g))_ic
    if sampled:  # the local term with the same probes (K acts per channel: (K v) s = K (v s)), so that each
        # probe's two large terms cancel as the exact ones do and only small cross terms are left as noise
        local = torch.einsum("pr,pr->p", probe_g, out @ signs) + torch.einsum("pr,pr->p", probe_v, grad_v @ signs)
        local, v_kt_fg = local / probes, v_kt_fg / probes
    else:
        local = torch.einsum("pc,pc->p", grad, out) + torch.einsum("pc,pc->p", values, grad_v)  # g.Kv + v.K^T g
    acc = torch.float64
    grad_base = grad_w = None
    if need[1]:
        k_fv = filt(moments(values, f, None, pad), False)[:, : d * c].view(p, d, c)  # K [f_1 v, .., f_D v]
        df = torch.einsum("pdc,pc->pd", k_fv, grad) + v_kt_fg - f * local.unsqueeze(1)
        grad_base = df if widths is None else df / widths.detach()
        s = (f.to(acc) * df.to(acc)).sum(0)
    else:
        f64 = f.to(acc)
        s = 2.0 * (f64 * v_kt_fg.to(acc)).sum(0) - (f64 * f64 * local.to(acc).unsqueeze(1)).sum(0)
    if need[2]:
        assert widths is not None  # their gradient is needed only when there are widths
        grad_w = (-s / widths.detach().to(acc)).to(values.dtype)
    # a copy, so that the (P, (1 + D) C) buffer is freed with this call
    return (grad_v.contiguous() if need[0] else None), grad_base, grad_w


class FeatureFilter(torch.autograd.Function):
    """``out = K values`` on a fixed lattice built from ``base / widths``, differentiable w.r.t. all three
    (:func:`feature_backward`); the backward is not itself differentiable.
    """

    @staticmethod
    def forward(
        ctx,
        values: Tensor,
        base: Tensor,
        widths: Optional[Tensor],
        operator: Filterable,
        batch_size: int,
        probes: int = 0,
    ) -> Tensor:
        out = operator.apply(values.contiguous(), False)
        ctx.operator = operator
        ctx.batch_size = batch_size
        ctx.probes = probes
        ctx.save_for_backward(values, base, widths, out)
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: Tensor):
        values, base, widths, out = ctx.saved_tensors
        operator = ctx.operator
        need = (ctx.needs_input_grad[0], ctx.needs_input_grad[1], widths is not None and ctx.needs_input_grad[2])

        def filt(x: Tensor, reverse: bool) -> Tensor:
            return operator.apply(x.contiguous(), reverse)

        def pad(channels: int) -> int:  # the compiled kernels are handed the channel count they pad to: no copy
            return operator.padded_channels(channels, values.dtype)

        gv, gb, gw = feature_backward(
            filt, values, out, grad.contiguous(), base, widths, ctx.batch_size, need, pad, ctx.probes
        )
        return gv, gb, gw, None, None, None

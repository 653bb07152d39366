"""The end of one mean-field iteration in one operator (backend ``"triton"``): messages to logits and marginals.

Each iteration of :func:`crfrnn.crf.engine.infer` filters the marginals with every kernel (the lattice operator)
and then combines the messages: self-exclusion, normalisation, the label transforms, the unary and the softmax.
On the Triton backend that combination is ``crfrnn::message_step``, a ``torch.library`` custom operator whose
forward is one Triton launch (:mod:`crfrnn._kernels.triton_meanfield`; torch ops for more than
:data:`~crfrnn._kernels.triton_meanfield.MAX_LABELS` labels or where triton cannot run) and whose backward is
written with torch ops on the saved inputs (exact; traceable by torch.compile, so the whole loop compiles as one
graph). With ``S_k = K_k (pre_k q)`` the filtered messages (``B N = P`` points, ``L`` labels):

    m_k = post_k (S_k - self_k pre_k q),    logits = u + sum_k m_k M_k,    q' = softmax(logits),

``M_k`` the ``(L, L)`` mixing matrix of kernel ``k``'s label transform (:func:`mixing`). Saved for the backward
pass per iteration: the ``K`` messages ``S_k`` and the input marginals ``q`` (the previous iteration's output, so
kept once), i.e. ``(K + 1) P L`` numbers; the factors, the unary and the matrices are shared by every iteration.
"""

from __future__ import annotations

import warnings
from typing import Sequence, Union

import torch
from torch import Tensor

from crfrnn._kernels import triton_lattice, triton_meanfield
from crfrnn.crf.kernels import GaussianKernel

__all__ = ["fused_iteration", "message_step", "mixing", "step_factors", "torch_step"]

_FAILED: list[str] = []


def mixing(transform: Union[float, Tensor], num_labels: int, like: Tensor) -> Tensor:
    """The ``(L, L)`` matrix ``M`` with ``message @ M`` equal to :func:`crfrnn.crf.pairwise.pairwise_logits`'s term
    for a label transform (a number, an ``(L,)`` vector or an ``(L, L)`` matrix ``T``: ``M = T^T``).
    """
    eye = torch.eye(num_labels, dtype=like.dtype, device=like.device)
    if not isinstance(transform, Tensor):
        return eye * transform
    t = transform.to(like.dtype)
    if t.dim() == 2:
        return t.transpose(0, 1)
    if t.dim() == 1:
        return torch.diag(t)
    return eye * t


def torch_step(
    messages: Sequence[Tensor], q: Tensor, unary: Tensor, pre: Tensor, post: Tensor, selfw: Tensor, mix: Tensor
) -> tuple[Tensor, Tensor]:
    """The operator's forward with torch ops (the reference; more labels than the kernel holds)."""
    logits = unary
    for k, s in enumerate(messages):
        m = post[k].unsqueeze(-1) * (s - (selfw[k] * pre[k]).unsqueeze(-1) * q)
        logits = logits + m @ mix[k]
    return logits, torch.softmax(logits, -1)


def _triton_runs(q: Tensor) -> bool:
    usable = q.device.type == "cuda" or triton_lattice.interpreting()
    return usable and q.shape[-1] <= triton_meanfield.MAX_LABELS and triton_lattice.available() and not _FAILED


@torch.library.custom_op("crfrnn::message_step", mutates_args=())
def message_step(
    messages: list[Tensor],
    q: Tensor,
    unary: Tensor,
    pre: Tensor,
    post: Tensor,
    selfw: Tensor,
    mix: Tensor,
    guarded: bool,
) -> tuple[Tensor, Tensor]:
    """``(logits (P, L), q' (P, L))`` from ``K`` messages ``(P, L)``, ``q``, ``unary (P, L)``, factors ``(K, P)`` and
    mixing matrices ``(K, L, L)``; ``guarded``: a failure of triton falls back to torch ops (with a warning, once).
    """
    if _triton_runs(q):
        try:
            return triton_meanfield.message_step(
                torch.stack(messages).contiguous(),
                q.contiguous(),
                unary.contiguous(),
                pre.contiguous(),
                post.contiguous(),
                selfw.contiguous(),
                mix.contiguous(),
            )
        except torch.OutOfMemoryError:
            raise
        except Exception as error:  # triton's compiler or runtime: fall back when "auto" chose triton
            if not guarded:
                raise
            _FAILED.append(f"{type(error).__name__}: {error}")
            warnings.warn(
                f"crfrnn: the Triton mean-field step failed ({_FAILED[0]}); torch ops from now on in this process.",
                RuntimeWarning,
                stacklevel=2,
            )
    logits, out = torch_step(messages, q, unary, pre, post, selfw, mix)
    return logits.contiguous(), out.contiguous()


@message_step.register_fake
def _(messages, q, unary, pre, post, selfw, mix, guarded):
    return torch.empty_like(unary), torch.empty_like(unary)


def _setup(ctx, inputs, output) -> None:
    messages, q, _, pre, post, selfw, mix, _ = inputs
    ctx.kernels = len(messages)
    ctx.save_for_backward(q, pre, post, selfw, mix, output[1], *messages)


def _backward(ctx, grad_logits: Tensor, grad_q: Tensor):
    q, pre, post, selfw, mix, q_next, *messages = ctx.saved_tensors
    g = q_next * (grad_q - (grad_q * q_next).sum(-1, keepdim=True))
    if grad_logits is not None:
        g = g + grad_logits
    grads_s, grad_pre, grad_post, grad_self, grad_mix = [], [], [], [], []
    grad_in = torch.zeros_like(q)
    for k, s in enumerate(messages):
        a = pre[k].unsqueeze(-1) * q
        inner = s - selfw[k].unsqueeze(-1) * a
        m = post[k].unsqueeze(-1) * inner
        gm = g @ mix[k].transpose(0, 1)
        grad_mix.append(m.transpose(0, 1) @ g)
        grads_s.append(post[k].unsqueeze(-1) * gm)
        grad_post.append((gm * inner).sum(-1))
        ga = -(post[k] * selfw[k]).unsqueeze(-1) * gm
        grad_self.append(-(post[k].unsqueeze(-1) * gm * a).sum(-1))
        grad_in = grad_in + pre[k].unsqueeze(-1) * ga
        grad_pre.append((ga * q).sum(-1))
    return (
        grads_s,
        grad_in,
        g,
        torch.stack(grad_pre),
        torch.stack(grad_post),
        torch.stack(grad_self),
        torch.stack(grad_mix),
        None,
    )


torch.library.register_autograd("crfrnn::message_step", _backward, setup_context=_setup)


def step_factors(built: Sequence[GaussianKernel], batch: int, like: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``(pre, post, self)``, each ``(K, B N)``: every kernel's factors, formed once per call (differentiable where
    the kernels' features are: learned widths).
    """

    def of(kernel: GaussianKernel, value, fill: float) -> Tensor:
        n = kernel.num_points
        if value is None:
            return like.new_full((batch, n), fill)
        return value.reshape(kernel.batch_size, n).to(like.dtype).expand(batch, n)

    pre = torch.stack([of(k, k.pre, 1.0) for k in built]).reshape(len(built), -1)
    post = torch.stack([of(k, k.post, 1.0) for k in built]).reshape(len(built), -1)
    selfw = torch.stack([of(k, k.self_weight, 0.0) for k in built]).reshape(len(built), -1)
    return pre, post, selfw


def fused_iteration(
    q: Tensor,
    unary: Tensor,
    built: Sequence[GaussianKernel],
    factors: tuple[Tensor, Tensor, Tensor],
    mix: Tensor,
    guarded: bool,
) -> tuple[Tensor, Tensor]:
    """One mean-field iteration: every kernel's filter (the lattice operator), then :func:`message_step`.

    Args:
        q: ``(B, N, L)`` marginals.
        unary: ``(B, N, L)``.
        built: the ``K >= 1`` kernels.
        factors: :func:`step_factors`.
        mix: ``(K, L, L)`` the kernels' mixing matrices (:func:`mixing`).
        guarded: fall back to torch ops if triton fails ("auto").

    Returns:
        ``(logits, q')``, each ``(B, N, L)``.
    """
    b, n, num_labels = q.shape
    p = b * n
    messages = [k.filtered(q).reshape(p, num_labels) for k in built]
    logits, out = message_step(messages, q.reshape(p, num_labels), unary.reshape(p, num_labels), *factors, mix, guarded)
    return logits.view(b, n, num_labels), out.view(b, n, num_labels)

"""A Triton kernel for the end of one mean-field iteration: the kernels' messages to the new logits and marginals.

Given each kernel's sliced filter output ``S_k = K_k (pre_k q)``, one launch computes, per point ``p`` and label
``j`` (one program per block of points, the labels in registers),

    m_k = post_k (S_k - self_k pre_k q),    logits_j = u_j + sum_k sum_i m_ki M_kij,    q' = softmax(logits),

with ``M_k`` each kernel's ``(L, L)`` label mixing matrix (the transpose of its label transform). It writes the
logits and the marginals ``q'`` (the next iteration's input) and nothing else.

A leaf module: it imports nothing from the package, and triton only when the kernel is first asked for (jitted
once per value of ``TRITON_INTERPRET``, as :mod:`crfrnn._kernels.triton_lattice` does).
"""

from types import SimpleNamespace
from typing import Any

import torch
from torch import Tensor

from crfrnn._kernels.triton_lattice import interpreting

__all__ = ["MAX_LABELS", "message_step"]

#: the most labels the kernel keeps in registers (more: the caller's torch ops)
MAX_LABELS = 64

_JITTED: dict[bool, Any] = {}


def _kernels() -> Any:
    mode = interpreting()
    found = _JITTED.get(mode)
    if found is None:
        import triton
        import triton.language as tl

        @triton.jit
        def step_kernel(
            messages,
            q,
            unary,
            pre,
            post,
            selfw,
            mix,
            logits_out,
            q_out,
            num_points,
            num_kernels,
            labels,
            BLOCK_P: tl.constexpr,
            BLOCK_L: tl.constexpr,
        ):
            p = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)
            j = tl.arange(0, BLOCK_L)
            p_ok = p < num_points
            j_ok = j < labels
            ok = p_ok[:, None] & j_ok[None, :]
            p64 = p.to(tl.int64)
            rows = p64[:, None] * labels + j[None, :]
            acc = tl.load(unary + rows, mask=ok, other=0.0)
            for k in range(num_kernels):
                kp = k * num_points + p64
                a = tl.load(pre + kp, mask=p_ok, other=0.0)
                b = tl.load(post + kp, mask=p_ok, other=0.0)
                s = tl.load(selfw + kp, mask=p_ok, other=0.0)
                base = kp * labels
                for i in range(labels):
                    qi = tl.load(q + p64 * labels + i, mask=p_ok, other=0.0)
                    si = tl.load(messages + base + i, mask=p_ok, other=0.0)
                    mi = b * (si - s * a * qi)
                    row = tl.load(mix + (k * labels + i) * labels + j, mask=j_ok, other=0.0)
                    acc += mi[:, None] * row[None, :]
            tl.store(logits_out + rows, acc, mask=ok)
            x = tl.where(ok, acc, -float("inf"))
            top = tl.max(x, 1)
            top = tl.where(p_ok, top, 0.0)  # rows past the end: no -inf - -inf
            e = tl.exp(x - top[:, None])
            e = tl.where(ok, e, 0.0)
            total = tl.sum(e, 1)
            total = tl.where(p_ok, total, 1.0)
            tl.store(q_out + rows, e / total[:, None], mask=ok)

        found = _JITTED[mode] = SimpleNamespace(step=step_kernel, next_power_of_2=triton.next_power_of_2)
    return found


def message_step(
    messages: Tensor, q: Tensor, unary: Tensor, pre: Tensor, post: Tensor, selfw: Tensor, mix: Tensor
) -> tuple[Tensor, Tensor]:
    """New logits and marginals from the kernels' sliced messages, in one launch (see the module docstring).

    Args:
        messages: ``(K, P, L)`` contiguous, ``S_k = K_k (pre_k q)``.
        q: ``(P, L)`` contiguous marginals the messages were filtered from.
        unary: ``(P, L)`` contiguous.
        pre: ``(K, P)`` contiguous, each kernel's factor before filtering.
        post: ``(K, P)`` contiguous, each kernel's factor after filtering.
        selfw: ``(K, P)`` contiguous self weights (zero without self-exclusion).
        mix: ``(K, L, L)`` contiguous label mixing matrices.

    Returns:
        ``(logits (P, L), marginals (P, L))`` in the messages' dtype, on their device; ``L <= MAX_LABELS``.
    """
    num_kernels, num_points, labels = messages.shape
    if labels > MAX_LABELS:
        raise ValueError(f"the fused step keeps at most {MAX_LABELS} labels in registers, got {labels}.")
    k = _kernels()
    logits = torch.empty_like(unary)
    out = torch.empty_like(unary)
    block_l = int(max(k.next_power_of_2(labels), 2))
    block_p = 256 if interpreting() else max(16, 2048 // block_l)
    k.step[(-(-num_points // block_p),)](
        messages,
        q,
        unary,
        pre,
        post,
        selfw,
        mix,
        logits,
        out,
        num_points,
        num_kernels,
        labels,
        BLOCK_P=block_p,
        BLOCK_L=block_l,
    )
    return logits, out

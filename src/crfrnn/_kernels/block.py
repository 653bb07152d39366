"""One block of points of a fused mean-field iteration (:func:`fused_block`): the unary, every kernel's sliced
message and label transform, the softmax and the splat of the result, for the loop of
:mod:`~crfrnn._kernels.meanfield`.
"""

from __future__ import annotations

from numba import njit

from crfrnn._kernels.filtering import scatter_rows
from crfrnn._kernels.products import add_product
from crfrnn._kernels.simd import axpy, axpy_scaled
from crfrnn._kernels.softmax import softmax_any

__all__ = ["fused_block"]


@njit(cache=True, inline="always")
def fused_block(
    unary,
    src,
    q_out,
    start,
    stop,
    cr,
    c,
    alphas,
    offsets,
    weights,
    pre,
    post,
    selfw,
    has_self,
    is_full,
    diag,
    mat,
    matrices,
    blurred,
    parts,
    j,
    scatter,
    logits,
    out_t,
    to_t,
    keep,
    scratch,
    msg,
    acc,
):  # pragma: no cover
    """One block of points ``start..stop-1`` of a fused iteration: the unary, every kernel's sliced message and
    label transform, the softmax (unless ``logits``) into ``q_out`` (if ``keep``), and if ``scatter`` the new
    marginals' splat into the partial sums ``parts[k][j]`` of the next iteration (the block is still in cache);
    the result goes to ``out_t`` labels first instead if ``to_t``. ``has_self[k]``: kernel ``k`` has a
    self-exclusion term (only then are ``selfw[k]`` and ``src`` read). ``matrices``: the loop's compile-time
    constant of :func:`_mean_field_for` (False: no kernel is ``is_full``, and that path is not compiled). The
    other arguments are those of the loop of :func:`~crfrnn._kernels.meanfield.mean_field` (``_mean_field``).
    """
    m = stop - start
    nk = alphas.shape[0]
    for i in range(m):
        for ch in range(c):
            acc[i, ch] = unary[start + i, ch]
    for k in range(nk):  # self-exclusion of the vector kernels (reads q before it is overwritten)
        if has_self[k] and not is_full[k]:
            for i in range(m):
                p = start + i
                coef = post[k, p] * selfw[k, p] * pre[k, p]
                if coef != 0.0:
                    for ch in range(c):
                        acc[i, ch] -= coef * diag[k, ch] * src[p, ch]
    # Kernels outside, points inside: each kernel's arrays are fetched once per block, not once per point
    # (fetching an array from a tuple touches its shared reference count, which two threads doing it per point
    # fight over).
    for k in range(nk):
        b = blurred[k]
        off = offsets[k]
        wk = weights[k]
        d1 = off.shape[1]
        alpha = alphas[k]
        if matrices and is_full[k]:
            mk = mat[k]
            for i0 in range(0, m, 8):  # eight points at a time
                count = min(8, m - i0)
                for jj in range(count):
                    p = start + i0 + jj
                    if has_self[k]:
                        s = selfw[k, p] * pre[k, p] / alpha
                        for ch in range(c):
                            msg[jj, ch] = -s * src[p, ch]
                    else:
                        for ch in range(c):
                            msg[jj, ch] = 0.0
                    for r in range(d1):
                        axpy(msg, jj, b, off[p, r], wk[p, r], c)
                    g = post[k, p] * alpha
                    for ch in range(c):
                        msg[jj, ch] *= g
                add_product(msg, 0, count, mk, cr, acc, i0)  # the L x L product, eight points at once
        else:
            dk = diag[k]
            for i in range(m):
                p = start + i
                g = post[k, p] * alpha
                for r in range(d1):
                    axpy_scaled(acc, i, dk, b, off[p, r], wk[p, r] * g, c)
    if not logits:
        softmax_any(acc.reshape(-1), c, cr, 0, m, scratch)
    if to_t:  # the result, labels first: read across the block in cache, written in order
        for ch in range(cr):
            for i in range(m):
                out_t[ch, start + i] = acc[i, ch]
    elif keep:
        for i in range(m):
            for ch in range(c):
                q_out[start + i, ch] = acc[i, ch]
    if scatter:
        for k in range(nk):
            scatter_rows(acc, start, pre[k], offsets[k], weights[k], parts[k][j], start, stop, c)

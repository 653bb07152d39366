"""Hand-written LLVM vector code for the compiled kernels' hot rows, and the vectorised float32 exp and log.

- :func:`axpy` and :func:`axpy_scaled`: the per-vertex row updates of the splat and slice (numba intrinsics);
- :func:`softmax_rows_v`: the softmax of a few rows of a padded channel count, each row's maximum and sum a
  vector reduction (an intrinsic);
- :func:`exp_inplace` and :func:`log_inplace`: float32 exp and log in forms LLVM vectorises (Cephes'
  polynomials; ``@overload`` implementations for compiled callers, NumPy when called from Python);
- :data:`FAST`: the fast-math flags of the kernels that take softmaxes and the splat.
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic, overload

__all__ = ["FAST", "axpy", "axpy_scaled", "exp_inplace", "log_inplace", "softmax_rows_v"]

# Fast-math flags for the kernels that take softmaxes and the splat: reassociation lets LLVM vectorise the row
# maxima and sums (inputs are finite: the unary is checked, and exp is clamped, so no NaN or inf flags are needed).
FAST = {"nsz", "arcp", "contract", "afn", "reassoc"}


# Hot row operations written as LLVM vector code (numba intrinsics), where numba's loops compile badly (see
# :func:`axpy` and :func:`softmax_rows_v`). The flags allow reassociation and assume finite values, which
# holds: the unary is checked finite, the messages are finite sums, and the exponent is clamped.
_VFLAGS = ("nnan", "ninf", "nsz", "arcp", "contract", "afn", "reassoc")


def _llvm_fn(builder, name, ret, arg_types):
    fn = builder.module.globals.get(name)
    return fn if fn is not None else ir.Function(builder.module, ir.FunctionType(ret, arg_types), name=name)


def _row_ptr(context, builder, aryty, ary_value, row):
    """Pointer to ``ary[row, 0]`` of a 2-D array value."""
    ary = context.make_array(aryty)(context, builder, ary_value)
    zero = context.get_constant(types.intp, 0)
    return cgutils.get_item_pointer(context, builder, aryty, ary, [row, zero], wraparound=False)


def _broadcast(builder, x, vty):
    """The scalar ``x`` in every lane of the vector type ``vty`` (insert into lane 0, then shuffle)."""
    undef = ir.Constant(vty, None)
    one = builder.insert_element(undef, x, ir.Constant(ir.IntType(32), 0))
    zeros = ir.Constant(ir.VectorType(ir.IntType(32), vty.count), [0] * vty.count)
    return builder.shuffle_vector(one, undef, zeros)


def _axpy_codegen(scaled):
    def codegen(context, builder, signature, args):
        if scaled:
            dst_t, _, scale_t, src_t, _, w_t, c_t = signature.args
            dst, di, scale, src, si, w, c = args
        else:
            dst_t, _, src_t, _, w_t, c_t = signature.args
            dst, di, src, si, w, c = args
        dtype = dst_t.dtype
        ft = context.get_value_type(dtype)
        width = 8 if dtype == types.float32 else 4
        vty = ir.VectorType(ft, width)
        intp = context.get_value_type(types.intp)
        pd = _row_ptr(context, builder, dst_t, dst, context.cast(builder, di, signature.args[1], types.intp))
        si_t = signature.args[4 if scaled else 3]
        ps = _row_ptr(context, builder, src_t, src, context.cast(builder, si, si_t, types.intp))
        pk = None
        if scaled:
            sc = context.make_array(scale_t)(context, builder, scale)
            pk = sc.data
        wf = context.cast(builder, w, w_t, dtype)
        wv = _broadcast(builder, wf, vty)  # w in every lane
        n = context.cast(builder, c, c_t, types.intp)
        groups = builder.udiv(n, ir.Constant(intp, width))
        align = 4 if dtype == types.float32 else 8

        def step(index, ty, weight, cast):
            qd, qs = builder.gep(pd, [index]), builder.gep(ps, [index])
            if cast:
                qd, qs = builder.bitcast(qd, ty.as_pointer()), builder.bitcast(qs, ty.as_pointer())
            f = weight
            if scaled:
                qk = builder.gep(pk, [index])
                if cast:
                    qk = builder.bitcast(qk, ty.as_pointer())
                f = builder.fmul(weight, builder.load(qk, align=align), flags=_VFLAGS)
            prod = builder.fmul(f, builder.load(qs, align=align), flags=_VFLAGS)
            builder.store(builder.fadd(builder.load(qd, align=align), prod, flags=_VFLAGS), qd, align=align)

        with cgutils.for_range(builder, groups) as loop:
            step(builder.mul(loop.index, ir.Constant(intp, width)), vty, wv, True)
        done = builder.mul(groups, ir.Constant(intp, width))
        with cgutils.for_range(builder, builder.sub(n, done)) as loop:
            step(builder.add(done, loop.index), ft, wf, False)
        return context.get_dummy_value()

    return codegen


def _axpy_typing(dst, src, w, c):
    """Whether :func:`axpy`'s arguments type: two C-contiguous 2-D float arrays of one dtype, a float, an int."""
    return (
        isinstance(dst, types.Array)
        and isinstance(src, types.Array)
        and dst.ndim == 2
        and src.ndim == 2
        and dst.layout == "C"
        and src.layout == "C"
        and dst.dtype == src.dtype
        and dst.dtype in (types.float32, types.float64)
        and isinstance(w, types.Float)
        and isinstance(c, types.Integer)
    )


@intrinsic
def axpy(typingctx, dst, di, src, si, w, c):  # pragma: no cover - compiled
    """``dst[di, :c] += w * src[si, :c]`` in vectors of 8 float32 (4 float64), then a scalar remainder: for the
    splat and slice's per-vertex row updates. Written as loops over a runtime ``c``, LLVM vectorised them at 4
    lanes (its main body wants 32 floats; ``c`` is 24 at 21 labels); with ``c`` a constant it unrolled them to
    scalar code. Same operations in the same order as the loops: the same bits.
    """
    if not _axpy_typing(dst, src, w, c):
        return None
    return types.void(dst, di, src, si, w, c), _axpy_codegen(False)


@intrinsic
def axpy_scaled(typingctx, dst, di, scale, src, si, w, c):  # pragma: no cover - compiled
    """``dst[di, :c] += (w * scale[:c]) * src[si, :c]`` (:func:`axpy` with a per-channel factor)."""
    if not (
        _axpy_typing(dst, src, w, c)
        and isinstance(scale, types.Array)
        and scale.dtype == dst.dtype
        and scale.ndim == 1
        and scale.layout == "C"
    ):
        return None
    return types.void(dst, di, scale, src, si, w, c), _axpy_codegen(True)


# float32 exp in a form LLVM vectorises (no vector math library is needed): range reduction
# x = n ln2 + r, |r| <= ln2 / 2, a degree-6 polynomial for exp(r) (Cephes' expf, ~1 ulp) and 2^n
# written straight into the exponent bits. Softmax spends most of its time in exp, and a scalar
# expf call per element took a large share of a mean-field iteration.
_LOG2E = np.float32(1.44269504088896341)
_LN2_HI = np.float32(0.693359375)
_LN2_LO = np.float32(-2.12194440e-4)
_EXP_MIN = np.float32(-87.0)  # 2^-126 and above: no denormals; smaller inputs give ~1e-38, not 0
_EXP_MAX = np.float32(88.0)
_P0, _P1, _P2 = np.float32(1.9875691500e-4), np.float32(1.3981999507e-3), np.float32(8.3334519073e-3)
_P3, _P4, _P5 = np.float32(4.1665795894e-2), np.float32(1.6666665459e-1), np.float32(5.0000001201e-1)
_HALF, _ONE = np.float32(0.5), np.float32(1.0)


def exp_inplace(x, scratch):  # pragma: no cover - replaced by the overload below when compiled
    """``x[:] = exp(x)`` for a 1-D float array; ``scratch`` is an int32 array at least as long."""
    x[:] = np.exp(x)


@overload(exp_inplace, jit_options={"cache": True})  # type: ignore[typeddict-unknown-key]  # numba's stub lacks it
def _exp_inplace_overload(x, scratch):  # pragma: no cover - compiled
    if x.dtype == types.float32:

        def impl32(x, scratch):
            n = x.shape[0]
            bits = scratch[:n]
            for i in range(n):
                v = min(max(x[i], _EXP_MIN), _EXP_MAX)
                k = np.floor(v * _LOG2E + _HALF)
                r = v - k * _LN2_HI - k * _LN2_LO
                y = (((((_P0 * r + _P1) * r + _P2) * r + _P3) * r + _P4) * r + _P5) * (r * r) + r + _ONE
                x[i] = y
                bits[i] = (np.int32(k) + np.int32(127)) << np.int32(23)
            scale = bits.view(np.float32)
            for i in range(n):
                x[i] *= scale[i]

        return impl32

    def impl64(x, scratch):
        for i in range(x.shape[0]):
            x[i] = np.exp(x[i])

    return impl64


@intrinsic
def softmax_rows_v(typingctx, flat, offset, cr, c_lit, rows_lit):  # pragma: no cover - compiled
    """In place, the softmax over the first ``cr`` of ``c`` values of each of ``rows`` rows of ``flat`` from
    ``offset`` (``rows * c`` values), padding ``cr..c-1`` set to 0; ``c`` and ``rows`` literal integers, ``flat``
    a contiguous 1-D float32 or float64 array.

    Each row is ``c / w`` vectors of ``w`` lanes (``w`` the largest of 8 float32 / 4 float64, 4, 2, 1 that
    divides ``c``); the maximum and the sum are vector reductions; float32 takes the exp as
    :func:`exp_inplace` does (Cephes' polynomial, exponent bits), float64 LLVM's exp. The ``rows`` rows are
    emitted stage by stage, so that their independent dependency chains interleave.

    Written as loops, numba compiled the maximum and the sum of a 24-channel row to 23 dependent scalar
    instructions each (LLVM fully unrolls the short loop, and a select-based max never reassociates): a quarter of a
    mean-field iteration on one thread at 500x375, six times what the whole softmax takes in vectors of 8.
    """
    if not (isinstance(c_lit, types.IntegerLiteral) and isinstance(rows_lit, types.IntegerLiteral)):
        return None
    if not (isinstance(flat, types.Array) and flat.ndim == 1 and flat.dtype in (types.float32, types.float64)):
        return None
    c, rows = c_lit.literal_value, rows_lit.literal_value
    single = flat.dtype == types.float32
    width = next(w for w in ((8, 4, 2, 1) if single else (4, 2, 1)) if c % w == 0)
    groups = c // width
    sig = types.void(flat, offset, cr, c_lit, rows_lit)

    def codegen(context, builder, signature, args):
        ary = context.make_array(signature.args[0])(context, builder, args[0])
        off, ncr = args[1], args[2]
        ft = ir.FloatType() if single else ir.DoubleType()
        i32 = ir.IntType(32)
        vty, ity = ir.VectorType(ft, width), ir.VectorType(i32, width)
        sfx = f"v{width}{'f32' if single else 'f64'}"
        vmax = _llvm_fn(builder, f"llvm.maxnum.{sfx}", vty, [vty, vty])
        vfloor = _llvm_fn(builder, f"llvm.floor.{sfx}", vty, [vty])
        vexp = _llvm_fn(builder, f"llvm.exp.{sfx}", vty, [vty])
        rmax = _llvm_fn(builder, f"llvm.vector.reduce.fmax.{sfx}", ft, [vty])
        radd = _llvm_fn(builder, f"llvm.vector.reduce.fadd.{sfx}", ft, [ft, vty])

        def const(x):
            return ir.Constant(vty, [x] * width)

        def op(name, a, b):
            return getattr(builder, name)(a, b, flags=_VFLAGS)

        def call(fn, *a):
            return builder.call(fn, list(a), fastmath=_VFLAGS)

        crv = _broadcast(builder, builder.trunc(ncr, i32), ity)
        masks = [
            builder.icmp_signed("<", ir.Constant(ity, [j * width + i for i in range(width)]), crv)
            for j in range(groups)
        ]
        base = builder.bitcast(builder.gep(ary.data, [off]), vty.as_pointer())
        ptrs = [[builder.gep(base, [ir.Constant(i32, r * groups + j)]) for j in range(groups)] for r in range(rows)]
        align = 4 if single else 8
        vals = [
            [builder.select(masks[j], builder.load(ptrs[r][j], align=align), const(-1e30)) for j in range(groups)]
            for r in range(rows)
        ]
        shifts = []
        for r in range(rows):
            m = vals[r][0]
            for v in vals[r][1:]:
                m = call(vmax, m, v)
            shifts.append(_broadcast(builder, call(rmax, m), vty))
        exps = []
        for r in range(rows):
            row = []
            for j in range(groups):
                t = op("fsub", vals[r][j], shifts[r])  # <= 0
                if single:
                    t = call(vmax, t, const(float(_EXP_MIN)))
                    k = call(vfloor, op("fadd", op("fmul", t, const(float(_LOG2E))), const(0.5)))
                    x = op(
                        "fsub",
                        op("fsub", t, op("fmul", k, const(float(_LN2_HI)))),
                        op("fmul", k, const(float(_LN2_LO))),
                    )
                    y = const(float(_P0))
                    for coef in (_P1, _P2, _P3, _P4, _P5):
                        y = op("fadd", op("fmul", y, x), const(float(coef)))
                    y = op("fadd", op("fadd", op("fmul", y, op("fmul", x, x)), x), const(1.0))
                    bits = builder.shl(
                        builder.add(builder.fptosi(k, ity), ir.Constant(ity, [127] * width)),
                        ir.Constant(ity, [23] * width),
                    )
                    e = op("fmul", y, builder.bitcast(bits, vty))
                else:
                    e = call(vexp, t)
                row.append(builder.select(masks[j], e, const(0.0)))
            exps.append(row)
        for r in range(rows):
            total = exps[r][0]
            for e in exps[r][1:]:
                total = op("fadd", total, e)
            inv = _broadcast(builder, builder.fdiv(ir.Constant(ft, 1.0), call(radd, ir.Constant(ft, -0.0), total)), vty)
            for j in range(groups):
                builder.store(op("fmul", exps[r][j], inv), ptrs[r][j], align=align)
        return context.get_dummy_value()

    return sig, codegen


# float32 log in the same vectorisable form (Cephes' logf): x = m 2^e with m in [sqrt(1/2), sqrt(2)), a degree-8
# polynomial in m - 1. Subtracting the bits of sqrt(1/2) first moves that range onto one binade, so e and m come
# from one integer shift and mask without a select, which is faster than the select form (1.2e-7 relative error).
_SQRTHF_BITS = np.int32(0x3F3504F3)
_L0, _L1, _L2 = np.float32(7.0376836292e-2), np.float32(-1.1514610310e-1), np.float32(1.1676998740e-1)
_L3, _L4, _L5 = np.float32(-1.2420140846e-1), np.float32(1.4249322787e-1), np.float32(-1.6668057665e-1)
_L6, _L7, _L8 = np.float32(2.0000714765e-1), np.float32(-2.4999993993e-1), np.float32(3.3333331174e-1)


def log_inplace(x, scratch):  # pragma: no cover - replaced by the overload below when compiled
    """``x[:] = log(x)`` for a 1-D array of positive normal floats; ``scratch``: int32, as long."""
    x[:] = np.log(x)


@overload(log_inplace, jit_options={"cache": True, "fastmath": FAST})  # type: ignore[typeddict-unknown-key]  # as above
def _log_inplace_overload(x, scratch):  # pragma: no cover - compiled
    if x.dtype == types.float32:

        def impl32(x, scratch):
            n = x.shape[0]
            bits = x.view(np.int32)
            mant = scratch[:n]
            for i in range(n):
                ix = bits[i] - _SQRTHF_BITS
                mant[i] = (ix & np.int32(0x007FFFFF)) + _SQRTHF_BITS  # m in [sqrt(1/2), sqrt(2))
                bits[i] = ix >> np.int32(23)  # e, kept in x's bits for the second loop
            m_all = mant.view(np.float32)
            for i in range(n):
                e = np.float32(bits[i])
                m = m_all[i] - _ONE
                z = m * m
                y = (
                    ((((((((_L0 * m + _L1) * m + _L2) * m + _L3) * m + _L4) * m + _L5) * m + _L6) * m + _L7) * m + _L8)
                    * m
                    * z
                )
                y = y + _LN2_LO * e - _HALF * z
                x[i] = m + y + _LN2_HI * e

        return impl32

    def impl64(x, scratch):
        for i in range(x.shape[0]):
            x[i] = np.log(x[i])

    return impl64

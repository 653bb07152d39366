"""Atomic operations on int64 arrays for the compiled parallel loops, so that threads can take work from each other.

numba's ``prange`` gives each thread one contiguous share of a loop before it starts, so a thread that runs slower
(a core shared with another program or virtual machine, an efficiency core, a moment set aside by the operating
system) holds up the whole loop while the others wait at its end. With these, a loop can hand out its pieces as
the threads ask for them (:func:`take`), and one thread can claim a piece of another's share
(:func:`claim`, published with :func:`publish` and awaited with :func:`read`); see the block pass of
:mod:`~crfrnn._kernels.meanfield`. Which thread computes a piece never changes what the piece computes.

All are numba intrinsics (LLVM atomic instructions) for 1-D C-contiguous int64 arrays, for compiled callers only.
"""

from __future__ import annotations

from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

__all__ = ["add", "claim", "publish", "read", "take"]


def _int64_array(a) -> bool:
    return isinstance(a, types.Array) and a.ndim == 1 and a.dtype == types.int64


def _pointer(context, builder, signature, args):
    """Pointer to ``a[i]`` for the intrinsics' first two arguments ``(a, i)``."""
    aryty = signature.args[0]
    ary = context.make_array(aryty)(context, builder, args[0])
    i = context.cast(builder, args[1], signature.args[1], types.intp)
    return cgutils.get_item_pointer(context, builder, aryty, ary, [i], wraparound=False)


@intrinsic
def add(typingctx, a, i, delta):
    """``a[i] += delta`` atomically; returns the value before (no ordering of other memory)."""
    if not (_int64_array(a) and isinstance(i, types.Integer) and isinstance(delta, types.Integer)):
        return None

    def codegen(context, builder, signature, args):
        value = context.cast(builder, args[2], signature.args[2], types.int64)
        return builder.atomic_rmw("add", _pointer(context, builder, signature, args), value, "monotonic")

    return types.int64(a, i, delta), codegen


@intrinsic
def take(typingctx, a, i):
    """``a[i] += 1`` atomically; returns the value before: the index of the next piece of a shared counter."""
    if not (_int64_array(a) and isinstance(i, types.Integer)):
        return None

    def codegen(context, builder, signature, args):
        one = context.get_constant(types.int64, 1)
        return builder.atomic_rmw("add", _pointer(context, builder, signature, args), one, "monotonic")

    return types.int64(a, i), codegen


@intrinsic
def claim(typingctx, a, i, mark):
    """Set ``a[i]`` from 0 to ``mark`` if it is 0, atomically; True if this call did (the piece is its caller's).
    Acquire and release: what the thread that claimed it wrote before is visible to a later claim attempt.
    """
    if not (_int64_array(a) and isinstance(i, types.Integer) and isinstance(mark, types.Integer)):
        return None

    def codegen(context, builder, signature, args):
        value = context.cast(builder, args[2], signature.args[2], types.int64)
        zero = context.get_constant(types.int64, 0)
        pair = builder.cmpxchg(_pointer(context, builder, signature, args), zero, value, "acq_rel", "acquire")
        return builder.extract_value(pair, 1)

    return types.boolean(a, i, mark), codegen


@intrinsic
def publish(typingctx, a, i, value):
    """``a[i] = value`` after every write this thread made before (release): a thread that :func:`read` s the value
    sees those writes.
    """
    if not (_int64_array(a) and isinstance(i, types.Integer) and isinstance(value, types.Integer)):
        return None

    def codegen(context, builder, signature, args):
        v = context.cast(builder, args[2], signature.args[2], types.int64)
        builder.store_atomic(v, _pointer(context, builder, signature, args), "release", 8)
        return context.get_dummy_value()

    return types.none(a, i, value), codegen


@intrinsic
def read(typingctx, a, i):
    """``a[i]``, read atomically (acquire): after it, the writes :func:`publish` ed with that value are visible."""
    if not (_int64_array(a) and isinstance(i, types.Integer)):
        return None

    def codegen(context, builder, signature, args):
        return builder.load_atomic(_pointer(context, builder, signature, args), "acquire", 8)

    return types.int64(a, i), codegen

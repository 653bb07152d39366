"""One fused mean-field iteration at a time, for callers that hold the marginals labels first (``(L, N)``, as
pydensecrf's ``startInference`` / ``stepInference`` / ``klDivergence`` do).

:func:`crfrnn.crf.engine.infer` runs all iterations in one compiled call; a caller stepping through inference
instead pays, per step, only the layout change of its marginals and one compiled iteration: the padded unary, the
lattices, the label transforms and the compiled loop's per-kernel arguments are made once per :class:`Stepper`
(the caller makes a new one when its unary or its kernels change).
"""

from __future__ import annotations

import threading
from typing import Optional, Sequence

import numpy as np
import torch
from torch import Tensor

from crfrnn import _kernels
from crfrnn._utils.threads import adaptive_threads
from crfrnn.crf._checks import check_scores
from crfrnn.crf.kernels import KernelCache, check_normalization
from crfrnn.crf.pairwise import KernelBuilder, Pairwise, build_concurrently, label_transform

__all__ = ["Stepper"]


class Stepper:
    """Mean field on the CPU one compiled iteration at a time, marginals labels first.

    Args:
        logits: ``(1, L, N)`` float32 unary logits (``-`` densecrf's energies).
        kernels: the pairwise terms (features ``(1, N, D)``), as for :func:`crfrnn.crf.engine.infer`.
        cache: where kernels with a ``cache_key`` are kept (shared with the caller's :func:`infer` calls).
        name: the caller's name for ``logits``, for error messages.

    The lattices are built on the first :meth:`step` or :meth:`filtered` (not by :meth:`start`). A stepper's
    buffers are its own and calls on one stepper take turns (a lock), so one object used from several threads
    stays correct.
    """

    def __init__(
        self, logits: Tensor, kernels: Sequence[Pairwise], cache: Optional[KernelCache], name: str = "unary"
    ) -> None:
        _, self.num_labels, self.num_points = logits.shape
        self._kernels = list(kernels)
        self._cache = cache
        self._unary, _, stats = _kernels.unary_from_scores(logits.detach().float(), 0.0, False)
        check_scores(stats, False, name, 1e-3)
        self._q = np.empty_like(self._unary)  # the marginals, padded channels last
        self._out: Optional[np.ndarray] = None  # the logits of klDivergence's pass
        self._prepared: Optional[tuple] = None
        self._args: list = []
        self._lock = threading.Lock()

    def _prepare(self) -> tuple:
        if self._prepared is None:
            like = torch.empty(0)
            transforms = [
                label_transform(
                    k.weight, k.compatibility, self.num_labels, like, name=k.names[0], compat_name=k.names[1]
                )
                for k in self._kernels
            ]
            for k in self._kernels:
                check_normalization(k.normalization)
            builder = KernelBuilder(self._kernels, torch.float32, False, "auto", self._cache)
            ops = []
            for kern in build_concurrently(builder, len(self._kernels), 0, self.num_points):
                if kern.lattice is None:  # pragma: no cover - the numba backend always builds a lattice
                    raise RuntimeError("the compiled step needs lattice kernels.")
                pre, post, selfw = (f[0].numpy() for f in kern.factors(torch.float32))
                ops.append((kern.lattice.operators(torch.float32), pre, post, selfw))
            mats = [np.asarray(t.detach().numpy() if isinstance(t, Tensor) else t, np.float32) for t in transforms]
            mats = [m if m.ndim else np.full(self.num_labels, float(m), np.float32) for m in mats]
            self._args = [op + (mat,) for op, mat in zip(ops, mats)]
            n, c = self._unary.shape
            self._prepared = _kernels.prepare(self._args, self.num_labels, n, c, np.float32) if ops else ()
        return self._prepared

    @adaptive_threads
    def start(self) -> np.ndarray:
        """``softmax(unary)``: the first marginals ``(L, N)`` float32, a new array."""
        with self._lock:
            _kernels.softmax_rows(self._unary, self._q, self.num_labels)
            return _kernels.channels_first(
                self._q, self.num_labels, np.empty((self.num_labels, self.num_points), np.float32)
            )

    def _load(self, q: np.ndarray) -> None:
        src = np.ascontiguousarray(q, dtype=np.float32)
        _kernels.channels_last(src, self._q)

    @adaptive_threads
    def step(self, q: np.ndarray, out: np.ndarray) -> np.ndarray:
        """One mean-field iteration from marginals ``q (L, N)``: the next marginals in ``out (L, N)`` float32,
        C-contiguous (``out`` may be ``q`` itself).
        """
        with self._lock:
            prepared = self._prepare()
            self._load(q)
            if not self._args:  # no pairwise term: the marginals are the unary's softmax
                _kernels.softmax_rows(self._unary, self._q, self.num_labels)
                return _kernels.channels_first(self._q, self.num_labels, out)
            _kernels.mean_field(
                self._unary, self.num_labels, 1, self._args, q0=self._q, out=out, transpose=True, prepared=prepared
            )
            return out

    @adaptive_threads
    def free_energy_terms(self, q: np.ndarray) -> tuple[float, float, float]:
        """For marginals ``q (L, N)``: ``(sum q log q, sum q (U + sum_k T_k message_k(q)), max |sum_l q - 1|)``,
        the first two summed in float64 (densecrf's ``klDivergence`` is the first minus the second).

        Raises:
            ValueError: ``q`` is not finite or has negative values.
        """
        with self._lock:
            prepared = self._prepare()
            self._load(q)
            qp = self._q
            if self._out is None:
                self._out = np.empty_like(self._unary)
            logits = self._unary
            if self._args:
                logits = _kernels.mean_field(
                    self._unary,
                    self.num_labels,
                    1,
                    self._args,
                    q0=qp,
                    return_logits=True,
                    transpose=False,
                    q_out=self._out,
                    prepared=prepared,
                )
            sums = _kernels.free_energy_sums(qp, logits, self.num_labels)
            if sums["nonfinite"]:
                raise ValueError("q contains NaN or infinite values.")
            if sums["negative"]:
                raise ValueError("q must be marginals: non-negative and summing to 1 over labels (dimension 1).")
            return sums["entropy"], sums["energy"], sums["deviation"]

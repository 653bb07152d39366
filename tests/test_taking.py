"""Work taking in the compiled loops: the atomic operations, and the fused loop's block pass, in which a thread
without a run left computes blocks of another's run (the result must not depend on who computed what)."""

from __future__ import annotations

import numba
import numpy as np
import pytest
from numba import njit, prange

from crfrnn import _kernels
from crfrnn._kernels.layout import BLOCK
from crfrnn._kernels.taking import add, claim, publish, read, take

TWO = min(2, numba.config.NUMBA_NUM_THREADS)


@njit(parallel=True, cache=False)
def _hand_out(pieces, threads):  # pragma: no cover - compiled
    """Every thread takes pieces until none is left and claims each once; returns (taken count, claims)."""
    counter = np.zeros(1, np.int64)
    owner = np.zeros(pieces, np.int64)
    done = np.zeros(pieces, np.int64)
    for t in prange(threads):
        while True:
            i = take(counter, 0)
            if i >= pieces:
                break
            if claim(owner, i, t + 1):
                publish(done, i, 7)
            claim(owner, i, 99)  # already claimed: no effect
    total = 0
    for i in range(pieces):
        total += read(done, i)
    return counter[0], owner, total


class TestAtomics:
    def test_every_piece_taken_once_and_claimed_once(self):
        counted, owner, total = _hand_out(10_000, 4)
        assert counted == 10_000 + 4  # each thread's last take finds nothing left
        assert owner.min() >= 1 and owner.max() <= 4  # the second claim never took
        assert total == 7 * 10_000

    def test_add_returns_the_value_before(self):
        @njit(cache=False)
        def f(a):
            before = add(a, 1, -5)
            return before, a[1]

        assert f(np.array([0, 3], np.int64)) == (3, -2)

    def test_other_types_are_refused_when_compiled(self):
        @njit(cache=False)
        def f(a):
            return take(a, 0)

        with pytest.raises(numba.core.errors.TypingError):
            f(np.zeros(2, np.int32))


def _problem(dtype, num_labels=5, h=48, w=160, self_weight=0.0):
    """A two-kernel mean field of ``h * w`` points (30 blocks) with random unary and factors."""
    import torch

    from crfrnn.crf import spatial_features
    from crfrnn.lattice import PermutohedralLattice

    tdt = torch.float32 if dtype == np.float32 else torch.float64
    rng = np.random.default_rng(0)
    n = h * w
    pos = spatial_features(1, h, w, 3.0).to(tdt)
    colour = torch.from_numpy(rng.random((1, n, 3)).astype(dtype)) * 4  # features (B, N, D)
    kernels = []
    for feats in (pos, torch.cat([pos, colour], 2)):
        ops = PermutohedralLattice(feats).operators(tdt)
        pre = rng.uniform(0.5, 1.5, n).astype(dtype)
        post = rng.uniform(0.5, 1.5, n).astype(dtype)
        kernels.append((ops, pre, post, np.full(n, self_weight, dtype), rng.uniform(-2, 2, num_labels).astype(dtype)))
    c = _kernels.padded_channels(num_labels, np.dtype(dtype))
    unary = np.zeros((n, c), dtype)
    unary[:, :num_labels] = rng.normal(size=(n, num_labels)) * 2
    return unary, kernels, num_labels, n, c


def _run(unary, kernels, num_labels, n, c, threads, runs, **kw):
    """The fused loop with ``runs`` partial sums at ``threads`` threads; returns (result, claims)."""
    dtype = unary.dtype
    parts = tuple(np.zeros((runs, ops.num_vertices + 1, c), dtype) for ops, *_ in kernels)
    prepared = _kernels.prepare(kernels, num_labels, n, c, dtype, parts=parts)
    before = numba.get_num_threads()
    numba.set_num_threads(threads)
    try:
        out = _kernels.mean_field(unary.copy(), num_labels, 4, kernels, prepared=prepared, **kw)
    finally:
        numba.set_num_threads(before)
    return out.copy(), prepared.claims.copy()


@pytest.mark.skipif(TWO < 2, reason="numba has one thread here")
class TestHelping:
    @pytest.mark.parametrize("dtype", [np.float32, np.float64])
    @pytest.mark.parametrize(
        "options",
        [
            {},
            {"return_logits": True},
            {"transpose": False},
            {"self_weight": 0.7},
            {"self_weight": 0.7, "transpose": False},
        ],
        ids=["marginals", "logits", "padded", "self-exclusion", "self-exclusion-padded"],
    )
    def test_a_helper_computes_blocks_and_the_result_is_the_same(self, dtype, options):
        """One run on two threads: the second thread has no run of its own and helps the owner from the run's end
        (blocks marked 3 in the claims); the marginals are the same bit for bit as one thread's, with every output
        path (labels first, logits, the padded layout, self-exclusion, which reads each block's last marginals)."""
        options = dict(options)
        problem = _problem(dtype, self_weight=options.pop("self_weight", 0.0))
        alone, claims = _run(*problem, threads=1, runs=1, **options)
        assert (claims == 1).all()  # one thread: it computed every block itself
        helped = False
        for _ in range(20):  # which blocks the helper gets depends on timing; that it gets some, almost never
            got, claims = _run(*problem, threads=2, runs=1, **options)
            assert np.array_equal(got, alone)
            assert set(np.unique(claims)) <= {1, 3}
            helped = helped or bool((claims == 3).any())
            if helped:
                break
        assert helped, "the second thread never computed a block in 20 calls"

    def test_without_taking_work_the_owner_computes_every_block(self, monkeypatch):
        """``CRFRNN_TAKE_WORK=0`` (for side-by-side measurements): the second thread has no run and waits."""
        problem = _problem(np.float32)
        alone, _ = _run(*problem, threads=1, runs=1)
        monkeypatch.setenv("CRFRNN_TAKE_WORK", "0")
        for _ in range(3):
            got, claims = _run(*problem, threads=2, runs=1)
            assert np.array_equal(got, alone) and (claims == 1).all()

    def test_runs_of_their_own_give_the_same_sums_as_one_thread(self):
        """Two runs, each thread its own, helping where one finishes first: the same as one thread."""
        problem = _problem(np.float32, h=96)
        alone, _ = _run(*problem, threads=1, runs=2)
        for _ in range(5):
            got, claims = _run(*problem, threads=2, runs=2)
            assert np.array_equal(got, alone)

    def test_more_threads_than_blocks(self):
        problem = _problem(np.float32, h=4, w=60)  # 240 points: one block
        assert -(-problem[3] // BLOCK) == 1
        alone, _ = _run(*problem, threads=1, runs=1)
        got, claims = _run(*problem, threads=TWO, runs=1)
        assert np.array_equal(got, alone) and (claims == 1).all()

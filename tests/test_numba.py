"""The compiled CPU kernels: the vectorised exp, the padded channel layout and the unary preparation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from crfrnn._kernels import construct, filtering, simd


@pytest.fixture(scope="module")
def kernels():
    from numba import njit

    from crfrnn import _kernels

    @njit
    def exp(x, scratch):
        _kernels.exp_inplace(x, scratch)

    @njit
    def log(x, scratch):
        _kernels.log_inplace(x, scratch)

    return _kernels, exp, log


class TestExp:
    @pytest.mark.parametrize("dtype", [np.float32, np.float64])
    def test_reference(self, kernels, dtype):
        _, exp, _ = kernels
        x = np.concatenate([np.linspace(-86.9, 88.0, 200_001), [0.0, -1e-30, 1e-30, -0.5, 0.5]]).astype(dtype)
        y = x.copy()
        exp(y, np.empty(x.size, np.int32))
        ref = np.exp(x.astype(np.float64))
        rel = np.abs(y - ref) / ref
        # float32: within 3 ulp (the softmax kernels compile it with FMA contraction, which rounds differently)
        assert rel.max() < (4e-7 if dtype == np.float32 else 1e-15), rel.max()

    def test_underflow_is_tiny_not_nan(self, kernels):
        _, exp, _ = kernels
        y = np.array([-87.5, -200.0, -1e30], np.float32)
        exp(y, np.empty(3, np.int32))
        assert np.isfinite(y).all() and (y >= 0).all() and (y < 2e-38).all()


class TestSoftmaxRows:
    """The row softmax (vector code for the dispatched padded channel counts, loops for the others)."""

    @pytest.mark.parametrize("dtype", [np.float32, np.float64])
    @pytest.mark.parametrize("c,cr", [(2, 2), (4, 3), (8, 5), (16, 13), (24, 21), (32, 32), (12, 11), (40, 33)])
    def test_reference(self, kernels, dtype, c, cr):
        numba_mod = kernels[0]
        rng = np.random.default_rng(c)
        n = 4 * 256 + 7  # whole groups of four rows and a remainder
        x = np.zeros((n, c), dtype)
        x[:, :cr] = rng.standard_normal((n, cr)) * 20
        x[:5, :cr] -= 1e4  # every logit of the row far below 0: the maximum must be taken, not assumed
        x[5:9, :cr] = 0.0  # ties
        x[9, 0] = 1e3  # one dominant label
        out = np.full_like(x, np.nan)
        numba_mod.softmax_rows(x, out, cr)
        z = x[:, :cr].astype(np.float64)
        ref = np.exp(z - z.max(1, keepdims=True))
        ref /= ref.sum(1, keepdims=True)
        assert np.abs(out[:, :cr] - ref).max() < (1e-6 if dtype == np.float32 else 1e-14)
        assert (out[:, cr:] == 0).all()
        assert out[9, 0] == 1.0

    def test_rows_are_independent_of_their_neighbours(self, kernels):
        # rows go four at a time: a row's result must not depend on which group of four it falls in
        numba_mod = kernels[0]
        x = np.zeros((11, 24), np.float32)
        x[:, :21] = np.random.default_rng(1).standard_normal((11, 21)) * 5
        full = numba_mod.softmax_rows(x, np.empty_like(x), 21)
        for i in range(11):
            one = numba_mod.softmax_rows(x[i : i + 1].copy(), np.empty((1, 24), np.float32), 21)
            assert np.array_equal(one[0], full[i])


class TestAxpy:
    """The row updates of the splat and slice (vector code with a scalar remainder)."""

    @pytest.mark.parametrize("dtype", [np.float32, np.float64])
    @pytest.mark.parametrize("c", [1, 2, 4, 5, 12, 24, 37])
    def test_reference(self, kernels, dtype, c):
        from numba import njit

        @njit
        def run(dst, src, scale, rows, w):
            for i in range(rows.shape[0]):
                simd.axpy(dst, rows[i, 0], src, rows[i, 1], w, dst.shape[1])
                simd.axpy_scaled(dst, rows[i, 1], scale, src, rows[i, 0], w, dst.shape[1])

        rng = np.random.default_rng(c)
        dst = rng.standard_normal((9, c)).astype(dtype)
        src = rng.standard_normal((9, c)).astype(dtype)
        scale = rng.standard_normal(c).astype(dtype)
        rows = rng.integers(0, 9, (40, 2))
        want = dst.astype(np.float64)
        for a, b in rows:
            want[a] += 0.75 * src[b]
            want[b] += 0.75 * scale * src[a]
        run(dst, src, scale, rows, 0.75)
        assert np.allclose(dst, want, rtol=1e-5 if dtype == np.float32 else 1e-13, atol=1e-5)


class TestLog:
    @pytest.mark.parametrize("dtype", [np.float32, np.float64])
    def test_reference(self, kernels, dtype):
        log = kernels[2]
        x = np.concatenate([np.geomspace(1.2e-38, 3e38, 100_001), np.linspace(0.5, 2.0, 100_001), [1.0]]).astype(dtype)
        y = x.copy()
        log(y, np.empty(x.size, np.int32))
        ref = np.log(x.astype(np.float64))
        err = np.abs(y - ref) / np.maximum(np.abs(ref), 1.0)  # absolute near log = 0, relative elsewhere
        assert err.max() < (3e-7 if dtype == np.float32 else 1e-15), err.max()
        assert y[-1] == 0.0


class TestLayout:
    @pytest.mark.parametrize(
        "channels, dtype, expected",
        [
            (1, np.float32, 1),
            (2, np.float32, 2),
            (3, np.float32, 4),
            (4, np.float32, 4),
            (5, np.float32, 8),
            (8, np.float32, 8),
            (21, np.float32, 24),
            (21, np.float64, 24),
            (5, np.float64, 8),
            (3, np.float64, 4),
        ],
    )
    def test_padded_channels(self, kernels, channels, dtype, expected):
        assert kernels[0].padded_channels(channels, dtype) == expected

    @pytest.mark.parametrize("channels", [3, 7, 21])
    def test_padded_filter_equals_torch(self, channels):
        from crfrnn import PermutohedralLattice

        f = torch.rand(2, 500, 3) * 4
        v = torch.randn(2, 500, channels)
        a = PermutohedralLattice(f, backend="torch").filter(v)
        b = PermutohedralLattice(f, backend="numba").filter(v)
        assert b.shape == v.shape
        assert (a - b).abs().max() < 1e-5 * a.abs().max()


class TestUnaryFromScores:
    def test_probs(self, kernels):
        numba_mod = kernels[0]
        probs = torch.softmax(torch.randn(2, 5, 4, 6), 1)
        probs[0, :, 0, 0] = torch.tensor([1.0, 0, 0, 0, 0])
        u, q0, stats = numba_mod.unary_from_scores(probs, 1e-5, True)
        assert u.shape == q0.shape == (2 * 24, 8) and (u[:, 5:] == 0).all() and (q0[:, 5:] == 0).all()
        expected = probs.clamp_min(1e-5).log().permute(0, 2, 3, 1).reshape(48, 5)
        assert np.allclose(u[:, :5], expected.numpy(), atol=1e-6)
        assert np.allclose(q0[:, :5], torch.softmax(expected, 1).numpy(), atol=1e-6)
        assert stats["nonfinite"] == 0 and stats["negative"] == 0
        assert abs(stats["min_sum"] - 1) < 1e-5 and abs(stats["max_sum"] - 1) < 1e-5

    def test_logits_and_bad_values(self, kernels):
        numba_mod = kernels[0]
        logits = torch.randn(1, 3, 5, 5)
        logits[0, 1, 2, 2] = float("nan")
        logits[0, 2, 3, 3] = float("inf")
        u, q0, stats = numba_mod.unary_from_scores(logits, 1e-5, False)
        assert q0 is None
        assert stats["nonfinite"] == 2 and stats["negative"] == int((logits < 0).sum())
        finite = torch.isfinite(logits).permute(0, 2, 3, 1).reshape(25, 3).numpy()
        assert np.array_equal(u[:, :3][finite], logits.permute(0, 2, 3, 1).reshape(25, 3).numpy()[finite])


class TestScatter:
    @pytest.mark.parametrize("channels", [3, 8, 24, 40])
    def test_partial_sums_add_up_to_the_splat(self, kernels, channels):
        """Each run's partial sums hold exactly its points' weighted values; together they are the splat, for
        channel counts compiled as constants (8, 24) and not (3, 40)."""
        rng = np.random.default_rng(0)
        n, d1, m = 1001, 4, 37
        offsets = rng.integers(0, m, size=(n, d1)).astype(np.int32)
        weights = rng.random((n, d1))
        values = rng.standard_normal((n, channels))
        pre = rng.random(n)
        for runs in (1, 2, 3):
            parts = np.full((runs, m + 1, channels), np.nan)
            filtering.scatter_parts(values, pre, offsets, weights, parts)
            per = filtering.run_length(n, runs)
            for j in range(runs):
                expected = np.zeros((m + 1, channels))
                for p in range(j * per, min(n, (j + 1) * per)):
                    for r in range(d1):
                        expected[offsets[p, r]] += weights[p, r] * pre[p] * values[p]
                np.testing.assert_allclose(parts[j], expected, rtol=1e-12, atol=1e-12)
            assert not parts[:, m].any()  # the absent neighbour's row stays 0
            buf = filtering.reduce_parts(parts, np.empty((m + 1, channels)), 2)
            np.testing.assert_allclose(buf, parts.sum(0), rtol=1e-12, atol=1e-12)

    def test_same_sums_for_any_number_of_threads(self, kernels):
        """The runs are fixed by the sizes, not by the threads: the splat is the same bit for bit at 1 and 2
        threads."""
        import numba

        rng = np.random.default_rng(1)
        offsets = rng.integers(0, 500, size=(20_000, 6)).astype(np.int32)
        weights = rng.random((20_000, 6)).astype(np.float32)
        values = rng.random((20_000, 24)).astype(np.float32)
        pre = rng.random(20_000).astype(np.float32)
        before = numba.get_num_threads()
        out = []
        try:
            for threads in (1, min(2, numba.config.NUMBA_NUM_THREADS)):
                numba.set_num_threads(threads)
                parts = np.empty((2, 501, 24), np.float32)
                out.append(
                    filtering.reduce_parts(
                        filtering.scatter_parts(values, pre, offsets, weights, parts),
                        np.empty((501, 24), np.float32),
                        threads,
                    )
                )
        finally:
            numba.set_num_threads(before)
        assert np.array_equal(out[0], out[1])

    @pytest.mark.parametrize("threads", [1, 2, 5])
    def test_reduce_and_blur_taken_in_pieces(self, kernels, threads):
        """The sum of the partial sums and the blur hand out pieces of rows to the threads as they ask: any thread
        count (here more pieces than threads, and more threads than numba has) gives NumPy's result."""
        rng = np.random.default_rng(2)
        m, c, d1 = 5000, 8, 3  # five pieces of vertices
        parts = rng.random((3, m + 1, c))
        parts[:, m] = 0.0
        buf = filtering.reduce_parts(parts, np.full((m + 1, c), np.nan), threads)
        np.testing.assert_allclose(buf, parts[0] + parts[1] + parts[2], rtol=1e-15)
        neighbours = rng.integers(0, m + 1, size=(d1, 2, m)).astype(np.int32)
        expected = buf.copy()
        for j in range(d1):
            expected = np.vstack(
                [expected[:m] + 0.5 * (expected[neighbours[j, 0]] + expected[neighbours[j, 1]]), 0 * expected[m:]]
            )
        got = filtering.blur_vertices(buf.copy(), np.full((m + 1, c), np.nan), neighbours, False, threads)
        np.testing.assert_allclose(got, expected, rtol=1e-13)


class TestMatrixOnVertices:
    @pytest.mark.parametrize("dtype", [np.float32, np.float64])
    def test_same_marginals_as_point_by_point(self, kernels, dtype):
        """``S (B T) = (S B) T``: a label matrix applied to the blurred vertices gives the point-by-point result."""
        numba_mod = kernels[0]
        from crfrnn.crf import spatial_features
        from crfrnn.lattice import PermutohedralLattice

        tdt = torch.float32 if dtype == np.float32 else torch.float64
        h, w, num_labels = 30, 40, 5
        ops = PermutohedralLattice(spatial_features(1, h, w, 3.0).to(tdt)).operators(tdt)
        n = h * w
        assert ops.num_vertices + 1 < n
        rng = np.random.default_rng(0)
        c = numba_mod.padded_channels(num_labels, dtype)
        unary = np.zeros((n, c), dtype)
        unary[:, :num_labels] = rng.normal(size=(n, num_labels))
        pre, post = rng.uniform(0.5, 1.5, n).astype(dtype), rng.uniform(0.5, 1.5, n).astype(dtype)
        matrix = rng.normal(size=(num_labels, num_labels)).astype(dtype)
        kern = [(ops, pre, post, np.zeros(n, dtype), matrix)]
        prepared = numba_mod.prepare(kern, num_labels, n, c, dtype)
        assert prepared.on_vertices[0] and not prepared.has_self[0]
        point_by_point = prepared._replace(
            is_full=np.ones(1, np.bool_), on_vertices=np.zeros(1, np.bool_), diag=np.zeros_like(prepared.diag)
        )
        a = numba_mod.mean_field(unary, num_labels, 3, kern, prepared=prepared)
        b = numba_mod.mean_field(unary, num_labels, 3, kern, prepared=point_by_point)
        assert np.abs(a - b).max() < (1e-5 if dtype == np.float32 else 1e-12)
        # with self-exclusion the product stays point by point
        kern_self = [(ops, pre, post, np.full(n, 0.5, dtype), matrix)]
        prep_self = numba_mod.prepare(kern_self, num_labels, n, c, dtype)
        assert prep_self.has_self[0] and not prep_self.on_vertices[0] and prep_self.is_full[0]


class TestBuild:
    @pytest.mark.parametrize("d, points", [(2, 3000), (5, 20_000)])
    def test_float32_features_build_the_lattice_of_their_float64_values(self, kernels, d, points):
        """float32 features are read without a float64 copy: the same lattice as the same values in float64 (the
        kernels compute in float64 either way), the weights the float64 ones rounded."""
        gen = torch.Generator().manual_seed(d)
        feats = (torch.rand(points, d, generator=gen) * 30).float()
        single = construct.build(feats, 1, 62)
        double = construct.build(feats.double(), 1, 62)
        assert single is not None and double is not None
        assert single[1].dtype == torch.float32 and double[1].dtype == torch.float64
        for i in (0, 2, 3):  # offsets, ranks, neighbours
            assert torch.equal(single[i], double[i])
        assert torch.equal(single[1], double[1].float()) and single[4] == double[4]
        # a strided float32 view reads the same values
        wide = torch.zeros(points, 2 * d)
        wide[:, ::2] = feats
        assert all(torch.equal(a, b) for a, b in zip(construct.build(wide[:, ::2], 1, 62)[:4], single[:4]))


class TestInsertRuns:
    @pytest.mark.skipif(
        __import__("numba").config.NUMBA_NUM_THREADS < 2, reason="needs a process configured for 2 threads"
    )
    def test_a_busy_moment_takes_the_same_compiled_function(self, kernels, monkeypatch):
        """One thread of the moment (a busy machine) hashes through insert_runs too: which function runs follows
        the configured maximum, so a warm cache never lacks the one a busy moment needs (it compiled, with the
        half-minute message, in a process whose cache was filled on a quiet machine)."""
        import numba

        feats = torch.rand(20_000, 5, dtype=torch.float64) * 20
        before = numba.get_num_threads()
        try:
            numba.set_num_threads(2)
            quiet = construct.build(feats, 1, 62)
            monkeypatch.setattr(construct, "insert_all", lambda *a: pytest.fail("insert_all called on 20000 points"))
            numba.set_num_threads(1)
            busy = construct.build(feats, 1, 62)
        finally:
            numba.set_num_threads(before)
        assert quiet is not None and busy is not None
        for a, b in zip(quiet[:4], busy[:4]):
            assert torch.equal(a, b)
        assert quiet[4] == busy[4]

    @pytest.mark.parametrize("runs, points", [(1, 5001), (2, 5001), (3, 5001), (7, 5001), (2, 40001), (3, 40001)])
    def test_same_ids_as_sequential(self, kernels, runs, points):
        """The parallel hash gives the sequential first-seen ids and distinct codes, and a table that finds them
        (40001 points: the last pass's pieces of 16384 codes split runs and span their ends).
        """
        rng = np.random.default_rng(runs)
        d1 = 4
        # codes with repeats within and across runs, and runs of a point sharing the previous point's vertex
        codes = rng.integers(0, 3000, size=(points, d1)).astype(np.int64)
        codes[1::3] = codes[0:-1:3][: codes[1::3].shape[0]]
        codes = codes.reshape(-1)
        ids, uniq, table, qbits = construct.insert_all(codes, d1)
        ids2, uniq2, table2, qbits2 = construct.insert_runs(codes, d1, runs)
        assert np.array_equal(ids, ids2) and np.array_equal(uniq, uniq2)
        assert np.array_equal(uniq2[ids2], codes)
        deltas = np.array([1, -7, 13], np.int64)
        assert np.array_equal(
            construct.neighbour_ids(uniq, deltas, table, qbits), construct.neighbour_ids(uniq2, deltas, table2, qbits2)
        )

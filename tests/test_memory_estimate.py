"""The memory estimate follows the lattice's size (issue 25 item 5): small widths and many guide channels make the
lattice, and the peak, many times larger than a per-pixel constant says. ``benchmarks/bench_memory.py`` compares
the estimate with measured peaks; these tests check its structure and the advice of its error."""

from __future__ import annotations

import numpy as np
import pytest

from crfrnn.io import MemoryLimitError, check_memory, estimate_memory, kernel_spans, lattice_vertices


class TestLatticeVertices:
    def test_at_most_d_plus_one_per_point(self):
        assert lattice_vertices(1000, [1e6] * 5) == 6 * 1000  # a huge box: every corner its own vertex

    def test_at_most_the_box(self):
        assert lattice_vertices(10**6, [2.0, 3.0]) <= 1.4 * 3 * 4 + 1  # a small box: its cells

    def test_close_to_a_built_lattice_on_noise(self):
        import torch

        from crfrnn.lattice import PermutohedralLattice

        rng = np.random.default_rng(0)
        spans = [4.0, 5.0, 6.0]
        feats = rng.uniform(0, 1, (20000, 3)) * np.array(spans)
        built = PermutohedralLattice(torch.from_numpy(feats[None].astype(np.float32))).num_vertices
        assert built <= lattice_vertices(20000, spans) <= 1.6 * built


class TestEstimate:
    def test_small_widths_and_many_channels_cost_more(self):
        default = estimate_memory(375, 500, 21)
        small = estimate_memory(375, 500, 21, kernels=kernel_spans((375, 500), [255] * 3, 3, 0.01, 0.01))
        assert small > 8 * default  # measured: 6.7 GB against about 0.6 GB
        volume = kernel_spans((32, 32, 16), [255] * 8)
        assert estimate_memory(1, 32 * 32 * 16, 3, kernels=volume) > 2 * 2**30  # measured 3.4 GB
        assert estimate_memory(375, 500, 21) == estimate_memory(
            375, 500, 21, kernels=kernel_spans((375, 500), [255] * 3)
        )

    def test_spans_follow_widths_and_spacing(self):
        g, b = kernel_spans((11, 21), [100.0, 50.0], 2.0, [5.0, 10.0], [10.0, 5.0], spacing=(2.0, 1.0))
        assert g == [10.0, 10.0] and b == [4.0, 2.0, 10.0, 10.0]

    def test_no_lattice_is_a_lower_bound(self):
        assert estimate_memory(375, 500, 21, kernels=()) < estimate_memory(375, 500, 21)


class TestAdvice:
    def test_the_label_count_offered_fits(self):
        limit = 600 * 2**20
        with pytest.raises(MemoryLimitError, match=r"at most (\d+) fit") as exc:
            check_memory("a.png", (375, 500), 21, limit)
        fits = int(str(exc.value).split("at most ")[1].split()[0])
        assert estimate_memory(375, 500, fits) <= limit < estimate_memory(375, 500, fits + 1)

    def test_nothing_fits_is_said(self):
        with pytest.raises(MemoryLimitError) as exc:
            check_memory("a.png", (375, 500), 21, 2**20)
        text = str(exc.value)
        assert "at most 0" not in text and "No label count fits" in text and "at least" in text

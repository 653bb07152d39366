"""Prints the fuzz mode and seed in pytest's header, so that a nightly failure can be reproduced."""

from __future__ import annotations

import pytest

pytest.importorskip("hypothesis", reason="hypothesis drives the fuzz tests")

from fuzz_settings import NIGHTLY, SEED  # noqa: E402


def pytest_report_header(config):
    mode = "nightly" if NIGHTLY else "bounded (CI)"
    where = f"seed {SEED} (CRFRNN_FUZZ_SEED={SEED} reproduces)" if SEED is not None else "derandomised"
    return f"crfrnn fuzz: {mode}, {where}"

"""How hard the fuzz suite (``tests/fuzz``) tries: bounded and derandomised in CI, longer and random at night.

``CRFRNN_FUZZ=nightly`` multiplies the example counts by :data:`NIGHTLY_FACTOR` and draws examples from a
random seed, printed in pytest's header; ``CRFRNN_FUZZ_SEED=N`` reproduces a night's run (in either mode).
"""

from __future__ import annotations

import os
import random
from typing import Callable, TypeVar

from hypothesis import HealthCheck, seed, settings

F = TypeVar("F", bound=Callable)

NIGHTLY = os.environ.get("CRFRNN_FUZZ", "").lower() == "nightly"
NIGHTLY_FACTOR = 20
_SEED_TEXT = os.environ.get("CRFRNN_FUZZ_SEED")
#: the seed of a random run (nightly, or any run given CRFRNN_FUZZ_SEED); None: derandomised
SEED = int(_SEED_TEXT) if _SEED_TEXT else (random.randrange(2**32) if NIGHTLY else None)
#: seconds one hostile-file command may take before it counts as a hang
COMMAND_TIMEOUT_S = 120 if NIGHTLY else 60
#: address-space limit of a hostile-file command's process (bytes): a bomb fails, it does not swap
COMMAND_MEMORY = 3 << 30


def fuzz(examples: int = 150) -> Callable[[F], F]:
    """Hypothesis settings for one fuzz test: ``examples`` in CI (derandomised), more with a seed at night."""

    def wrap(test: F) -> F:
        conf = settings(
            max_examples=examples * (NIGHTLY_FACTOR if NIGHTLY else 1),
            deadline=None,
            derandomize=SEED is None,
            database=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large],
        )
        test = conf(test)
        return seed(SEED)(test) if SEED is not None else test

    return wrap

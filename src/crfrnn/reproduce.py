"""Reproducing the claims of the CRF-RNN paper at CPU scale (``crfrnn reproduce``, the project's main job).

The experiment, what it trains and compares and the files it writes, is described in
:mod:`crfrnn.workflow.experiment` (built on the public API only); its conclusions are checked in
:mod:`crfrnn.workflow.claims`. This module gathers their public names.
"""

from crfrnn.workflow.claims import CLAIMS, MARGIN, ROWS, check_claims, summarize  # noqa: F401 (MARGIN: importable)
from crfrnn.workflow.experiment import ReproduceConfig, reproduce

__all__ = ["CLAIMS", "ROWS", "ReproduceConfig", "check_claims", "reproduce", "summarize"]

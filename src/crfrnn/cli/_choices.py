"""The choices the sub-commands' flags offer, as plain tuples, so that building the parser imports no library.

Each is a copy of the library's constant (named in its comment); ``tests/cli/test_startup.py`` checks that the
copies still match, so a new choice in the library fails a test until it is added here.
"""

from __future__ import annotations

from typing import Tuple

__all__ = [
    "DATASETS",
    "FORMATS",
    "LAYOUTS",
    "LR_SCHEDULES",
    "NORMALIZATIONS",
    "OPTIMIZERS",
    "RESIZE_POLICIES",
    "STAGES",
]

#: crfrnn.io.LAYOUTS
LAYOUTS: Tuple[str, ...] = ("lhw", "hwl")
#: crfrnn.crf.NORMALIZATIONS
NORMALIZATIONS: Tuple[str, ...] = ("row", "symmetric", "column", "none")
#: crfrnn.models.pretrained.FORMATS
FORMATS: Tuple[str, ...] = ("caffe", "pytorch", "keras")
#: crfrnn.models.pretrained.RESIZE_POLICIES
RESIZE_POLICIES: Tuple[str, ...] = ("none", "shrink", "fit")
#: crfrnn.workflow.STAGES, DATASETS, OPTIMIZERS, LR_SCHEDULES
STAGES: Tuple[str, ...] = ("cnn", "crfrnn")
DATASETS: Tuple[str, ...] = ("synthetic", "voc", "folder")
OPTIMIZERS: Tuple[str, ...] = ("sgd", "adam")
LR_SCHEDULES: Tuple[str, ...] = ("poly", "constant")

"""Reading and writing files: images, a network's scores, label maps, volumes and checkpoints.

- :mod:`crfrnn.io.images`: :func:`read_rgb` (the one image reader of crfrnn, guarded against decompression
  bombs) and :func:`pair_by_stem` (images with their scores, by file stem);
- :mod:`crfrnn.io.scores`: :func:`read_scores`, a network's probabilities, logits or label map for an image,
  checked against it;
- :mod:`crfrnn.io.memory`: the memory refining an image needs, checked before allocating;
- :mod:`crfrnn.io.volumes`: N-d guides and scores (NumPy, NIfTI) and label volumes;
- :mod:`crfrnn.io.checkpoint`: self-describing model checkpoints.

Errors name the file and, where one fixes the problem, the parameter, in backticks (`layout='hwl'`); the
command line names its own flags instead.
"""

from __future__ import annotations

from crfrnn.io.checkpoint import load_checkpoint, load_model, save_checkpoint
from crfrnn.io.images import IMAGE_SUFFIXES, pair_by_stem, read_rgb
from crfrnn.io.memory import (
    DEFAULT_MEMORY_FRACTION,
    MEMORY_BYTES_PER_PIXEL,
    MEMORY_BYTES_PER_PIXEL_LABEL,
    MemoryLimitError,
    check_memory,
    default_memory_limit,
    estimate_memory,
    format_bytes,
    kernel_spans,
    lattice_vertices,
)
from crfrnn.io.scores import LAYOUTS, SCORE_SUFFIXES, ScoreMap, labels_of, read_scores
from crfrnn.io.volumes import (
    ARRAY_SUFFIXES,
    MAX_GUIDE_CHANNELS,
    Guide,
    is_array_path,
    read_guide,
    read_volume,
    read_volume_scores,
    write_labels,
)

__all__ = [
    "ARRAY_SUFFIXES",
    "DEFAULT_MEMORY_FRACTION",
    "Guide",
    "IMAGE_SUFFIXES",
    "LAYOUTS",
    "MAX_GUIDE_CHANNELS",
    "MEMORY_BYTES_PER_PIXEL",
    "MEMORY_BYTES_PER_PIXEL_LABEL",
    "MemoryLimitError",
    "SCORE_SUFFIXES",
    "ScoreMap",
    "check_memory",
    "default_memory_limit",
    "estimate_memory",
    "format_bytes",
    "is_array_path",
    "kernel_spans",
    "labels_of",
    "lattice_vertices",
    "load_checkpoint",
    "load_model",
    "pair_by_stem",
    "read_guide",
    "read_rgb",
    "read_scores",
    "read_volume",
    "read_volume_scores",
    "save_checkpoint",
    "write_labels",
]

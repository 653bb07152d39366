"""Evaluating segmentation networks the way the CRF-RNN paper compares them.

Three methods are compared on the same images (Zheng et al. 2015, Table 1):

- ``"cnn"``: the CNN alone (the backbone of a :class:`~crfrnn.models.CrfRnnSegmenter`, or a plain
  network returning logits);
- ``"cnn+densecrf"``: the CNN's logits refined offline by :func:`crfrnn.dense_crf` with fixed parameters
  (densecrf's by default, or those found by :func:`search_dense_crf`);
- ``"crfrnn"``: the full CNN + CRF-RNN network in eval mode (its ``num_eval_iterations``).

The CNN runs once per batch and its logits feed every method. For each method :func:`evaluate` accumulates
a confusion matrix (mean IoU, pixel accuracy, mean class accuracy, per-class IoU) and the same metrics in
bands of 1 to 20 pixels around ground-truth label boundaries (:class:`crfrnn.metrics.BoundaryAccuracy`),
where the paper's claim is that a CRF helps most. :func:`write_report` writes the results as JSON, a
Markdown table and a plot of boundary accuracy against band width.

Distributed evaluation: when :mod:`torch.distributed` is initialised, each process evaluates every
``world_size``-th image (starting at its rank) and the confusion matrices are summed across processes, so
every process returns the metrics of the whole data set.

The work is done in :mod:`crfrnn.workflow` (``predict``, ``validate``, ``report``); this module gathers its
public names.
"""

from crfrnn.workflow.predict import DEFAULT_SEARCH_GRID, DENSE_CRF_DEFAULTS, METHOD_TITLES, METHODS, predict
from crfrnn.workflow.report import PLOT_DPI, PLOT_SIZE, format_table, write_report
from crfrnn.workflow.validate import evaluate, search_dense_crf

__all__ = [
    "DEFAULT_SEARCH_GRID",
    "DENSE_CRF_DEFAULTS",
    "METHODS",
    "METHOD_TITLES",
    "PLOT_DPI",
    "PLOT_SIZE",
    "evaluate",
    "format_table",
    "predict",
    "search_dense_crf",
    "write_report",
]

"""Reproducing the claims of the CRF-RNN paper at CPU scale (``crfrnn reproduce``, the project's main job).

The paper (Zheng et al., ICCV 2015, Table 1) compares, on the same images:

(a) the CNN alone (FCN-8s);
(b) the same CNN followed by an offline dense CRF whose parameters were chosen on validation data;
(c) CNN + CRF-RNN trained end to end from (a), trained with T = 5 mean-field iterations and tested with T = 10;

and claims (b) > (a), (c) > (b), with the largest gains near object boundaries, and a small gain from testing
with T = 10 rather than T = 5. :func:`reproduce` runs that experiment on the built-in procedural data set
(:class:`crfrnn.data.SyntheticShapes`) with the small stride-8 network (:class:`crfrnn.models.SmallFCN`) in
place of FCN-8s, for several training seeds, and writes a report. For each seed:

1. train the CNN alone (stage 1; :func:`crfrnn.training.train`);
2. grid-search the offline dense CRF's parameters on the validation split (:func:`search_dense_crf`);
3. train CNN + CRF-RNN end to end from the stage-1 weights (stage 2, the paper's recipe);
4. two controls: the stage-1 CNN trained further for as many epochs as stage 2, with the same optimiser
   (does the gain come from the extra training alone?), and the stage-1 CNN with a CRF-RNN head at its
   initial parameters, not trained (does it come from the head without training?);
5. evaluate everything on the test split (mean IoU, accuracy, and accuracy in bands around boundaries).

Everything runs from a seed: the data set is generated on the fly (no downloads) and the results are the same
on every run on the same machine. Stages already finished in ``out_dir`` are not trained again, so an
interrupted reproduction continues where it stopped.

Files written to ``out_dir``: ``report.md`` (the tables, the claims checked with their numbers), ``results.json``
(every number, per seed and summarised), ``boundary.png`` (accuracy against band width), ``grid.png``
(predictions of every method on test images), ``config.yaml`` and per seed ``seed<N>/{cnn,crfrnn,cnn_longer}``
run directories (checkpoints and metrics logs of :func:`crfrnn.training.train`).

The experiment is :mod:`crfrnn.workflow.experiment` (built on the public API only) and its conclusions
:mod:`crfrnn.workflow.claims`; this module gathers their public names.
"""

from crfrnn.workflow.claims import CLAIMS, MARGIN, ROWS, check_claims, summarize  # noqa: F401 (MARGIN: importable)
from crfrnn.workflow.experiment import ReproduceConfig, reproduce

__all__ = ["CLAIMS", "ROWS", "ReproduceConfig", "check_claims", "reproduce", "summarize"]

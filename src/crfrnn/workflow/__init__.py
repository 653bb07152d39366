"""The workflow layer: training, evaluating and reproducing the paper, one job per module.

Training
--------
Training happens in two stages, as in the paper:

1. ``stage="cnn"``: train the segmentation CNN alone (e.g. ``small_fcn``, or ``fcn8s``).
2. ``stage="crfrnn"``: build the same CNN with a CRF-RNN head (``small_fcn_crfrnn``), copy the stage-1
   weights into its ``.backbone`` (``init_from``) and train both end to end. The CRF's kernel weights and its
   compatibility matrix get their own learning-rate multipliers.

Everything is described by one :class:`TrainConfig`; :func:`train` runs it::

    >>> from crfrnn.workflow import TrainConfig, train
    >>> cnn = train(TrainConfig(out_dir="runs/cnn", epochs=20))  # doctest: +SKIP
    >>> crf = train(TrainConfig(out_dir="runs/crf", stage="crfrnn", init_from="runs/cnn/best.pt",
    ...                         epochs=5, lr=1e-3))  # doctest: +SKIP

A run directory holds ``config.yaml`` (the resolved configuration), ``metrics.jsonl`` (one JSON object per
epoch), ``last.pt`` (written atomically after every epoch) and ``best.pt`` (best validation mean IoU). All
checkpoints are :mod:`crfrnn.io.checkpoint` files, so ``crfrnn.io.load_model("runs/crf/best.pt")``
rebuilds the trained network. ``train(config, resume=True)`` continues a run from ``last.pt`` exactly where it
stopped: weights, optimiser, learning-rate schedule, epoch and the random states (torch, numpy, python) of
every process are restored, and the data order of epoch ``e`` depends only on ``(seed, e)``.

**Learning rates for a mean loss.**
The paper sums the loss over the pixels of one 500x500 image (base rate 1e-13, momentum 0.99) and trains the
CRF's kernel weights at 10000x and its compatibility at 1000x the base rate. Here the loss is the mean
cross-entropy over the valid pixels of a batch, so the base rates are those usual for a mean loss (SGD 0.01,
momentum 0.9). The CRF parameters are few, shared by every pixel, of order 1 and start at sensible values
(kernel weights 3 and 5, Potts compatibility), but their gradients under a mean loss are small. The defaults
``crf_kernel_lr_mult=10`` and ``crf_compat_lr_mult=1`` keep the paper's ratio of 10 between the two while
moving the kernel weights by about 1e-2 to 1e-1 per epoch on the synthetic data, a change that matters
without destabilising the mean-field iterations. CRF parameters get no weight decay (decay would pull the
kernel weights to 0, i.e. switch the CRF off). With ``optimizer="adam"`` the step size no longer scales with
the gradient, so use multipliers near 1 there.

**Distributed training.**
Launch with ``torchrun --nproc_per_node=N -m crfrnn train ...`` (or ``python -m torch.distributed.run``).
:func:`train` detects the ``WORLD_SIZE``/``RANK``/``LOCAL_RANK`` environment, initialises the process group
(gloo on the CPU, nccl on CUDA) if it is not initialised yet and wraps the model in
``DistributedDataParallel``. ``batch_size`` is **per process**: the global batch is
``batch_size * WORLD_SIZE`` and each process's loss is the mean over its own valid pixels (DDP averages the
gradients). Each process sees a disjoint shard of every epoch (``DistributedSampler``, seeded with
``(seed, epoch)``); validation is sharded too and its confusion matrix all-reduced. BatchNorm statistics are
per process; the running statistics of rank 0 are broadcast to all ranks after every epoch (as DDP does before
every forward), so all ranks hold the same model. Only rank 0 writes files and shows progress.

Evaluation
----------
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

Evaluation is distributed like training: each process evaluates every ``world_size``-th image and the confusion
matrices are summed across processes. :func:`reproduce` runs the paper's whole comparison (see
:mod:`crfrnn.workflow._experiment`).

Modules
-------
- :mod:`~crfrnn.workflow._config`: :class:`~crfrnn.workflow._config.TrainConfig`, typed and validated;
- :mod:`~crfrnn.workflow._datasets`: data sets from a spec, and the training and validation sets of a config;
- :mod:`~crfrnn.workflow._build`: model, optimiser and schedule from a config;
- :mod:`~crfrnn.workflow._distributed`: processes, devices, threads and the collectives;
- :mod:`~crfrnn.workflow._seeding`: seeds and random states;
- :mod:`~crfrnn.workflow._rundir`: the run directory (config, metrics, checkpoints, resume checks, the lock);
- :mod:`~crfrnn.workflow._loop`: the training loop (epoch, validation, saving);
- :mod:`~crfrnn.workflow._predict`: the three methods of the paper's comparison;
- :mod:`~crfrnn.workflow._validate`: the one validation loop (evaluation, training's validation, CRF search);
- :mod:`~crfrnn.workflow._report`: tables, JSON, the boundary plot and the prediction grid;
- :mod:`~crfrnn.workflow._shards`: a job array's task's part of a list of inputs (``--shard K/N``);
- :mod:`~crfrnn.workflow._experiment` (with :mod:`~crfrnn.workflow._experiment_config` and
  :mod:`~crfrnn.workflow._claims`): the paper's experiment (``crfrnn reproduce``), built on the public API only.

This package gathers their public names (the old :mod:`crfrnn.training`, :mod:`crfrnn.evaluation` and
:mod:`crfrnn.reproduce` paths still import it, with a :class:`FutureWarning`, for one release). The attribute
``crfrnn.workflow._predict`` is the function :func:`~crfrnn.workflow._predict.predict`; ``from crfrnn.workflow._predict
import ...`` (or :func:`importlib.import_module`) reaches the module.
"""

from crfrnn.workflow._build import build_model, build_optimizer
from crfrnn.workflow._claims import CLAIMS, MARGIN, ROWS, check_claims, summarize
from crfrnn.workflow._config import DATASETS, IGNORE_INDEX, LR_SCHEDULES, OPTIMIZERS, STAGES, TrainConfig, load_config
from crfrnn.workflow._datasets import build_datasets
from crfrnn.workflow._experiment import reproduce
from crfrnn.workflow._experiment_config import ABLATIONS, ReproduceConfig
from crfrnn.workflow._loop import TrainingError, segmentation_loss, train
from crfrnn.workflow._predict import DEFAULT_SEARCH_GRID, METHOD_TITLES, METHODS, predict
from crfrnn.workflow._report import PLOT_DPI, PLOT_SIZE, format_table, write_report
from crfrnn.workflow._shards import parse_shard, shard_name, take_shard
from crfrnn.workflow._validate import evaluate, search_dense_crf

__all__ = [
    "ABLATIONS",
    "CLAIMS",
    "DATASETS",
    "DEFAULT_SEARCH_GRID",
    "IGNORE_INDEX",
    "LR_SCHEDULES",
    "MARGIN",
    "METHODS",
    "METHOD_TITLES",
    "OPTIMIZERS",
    "PLOT_DPI",
    "PLOT_SIZE",
    "ROWS",
    "ReproduceConfig",
    "STAGES",
    "TrainConfig",
    "TrainingError",
    "build_datasets",
    "build_model",
    "build_optimizer",
    "check_claims",
    "evaluate",
    "format_table",
    "load_config",
    "parse_shard",
    "predict",
    "reproduce",
    "search_dense_crf",
    "segmentation_loss",
    "shard_name",
    "summarize",
    "take_shard",
    "train",
    "write_report",
]

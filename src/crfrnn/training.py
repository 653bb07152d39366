"""Training segmentation networks and CRF-RNN end to end (the recipe of Zheng et al., ICCV 2015, section 6).

Training happens in two stages, as in the paper:

1. ``stage="cnn"``: train the segmentation CNN alone (e.g. ``small_fcn``, or ``fcn8s``).
2. ``stage="crfrnn"``: build the same CNN with a CRF-RNN head (``small_fcn_crfrnn``), copy the stage-1
   weights into its ``.backbone`` (``init_from``) and train both end to end. The CRF's kernel weights and its
   compatibility matrix get their own learning-rate multipliers.

Everything is described by one :class:`TrainConfig`; :func:`train` runs it::

    >>> from crfrnn.training import TrainConfig, train
    >>> cnn = train(TrainConfig(out_dir="runs/cnn", epochs=20))  # doctest: +SKIP
    >>> crf = train(TrainConfig(out_dir="runs/crf", stage="crfrnn", init_from="runs/cnn/best.pt",
    ...                         epochs=5, lr=1e-3))  # doctest: +SKIP

A run directory holds ``config.yaml`` (the resolved configuration), ``metrics.jsonl`` (one JSON object per
epoch), ``last.pt`` (written atomically after every epoch) and ``best.pt`` (best validation mean IoU). All
checkpoints are :mod:`crfrnn.io.checkpoint` files, so ``crfrnn.io.load_model("runs/crf/best.pt")``
rebuilds the trained network. ``train(config, resume=True)`` continues a run from ``last.pt`` exactly where it
stopped: weights, optimiser, learning-rate schedule, epoch and the random states (torch, numpy, python) of
every process are restored, and the data order of epoch ``e`` depends only on ``(seed, e)``.

Learning rates for a mean loss
------------------------------
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

Distributed training
--------------------
Launch with ``torchrun --nproc_per_node=N -m crfrnn train ...`` (or ``python -m torch.distributed.run``).
:func:`train` detects the ``WORLD_SIZE``/``RANK``/``LOCAL_RANK`` environment, initialises the process group
(gloo on the CPU, nccl on CUDA) if it is not initialised yet and wraps the model in
``DistributedDataParallel``. ``batch_size`` is **per process**: the global batch is
``batch_size * WORLD_SIZE`` and each process's loss is the mean over its own valid pixels (DDP averages the
gradients). Each process sees a disjoint shard of every epoch (``DistributedSampler``, seeded with
``(seed, epoch)``); validation is sharded too and its confusion matrix all-reduced. BatchNorm statistics are
per process; the running statistics of rank 0 are broadcast to all ranks after every epoch (as DDP does before
every forward), so all ranks hold the same model. Only rank 0 writes files and shows progress.

The work is done in :mod:`crfrnn.workflow` (``config``, ``datasets``, ``build``, ``loop``, ``rundir``, ``distributed``,
``seeding``, ``validate``); this module gathers its public names.
"""

from crfrnn.workflow.build import build_model, build_optimizer
from crfrnn.workflow.config import DATASETS, IGNORE_INDEX, LR_SCHEDULES, OPTIMIZERS, STAGES, TrainConfig, load_config
from crfrnn.workflow.datasets import build_datasets
from crfrnn.workflow.loop import TrainingError, segmentation_loss, train

__all__ = [
    "DATASETS",
    "IGNORE_INDEX",
    "LR_SCHEDULES",
    "OPTIMIZERS",
    "STAGES",
    "TrainConfig",
    "TrainingError",
    "build_datasets",
    "build_model",
    "build_optimizer",
    "load_config",
    "segmentation_loss",
    "train",
]

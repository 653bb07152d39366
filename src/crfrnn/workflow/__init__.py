"""The workflow layer: training, evaluating and reporting, one job per module.

- :mod:`~crfrnn.workflow.config`: :class:`~crfrnn.workflow.config.TrainConfig`, typed and validated;
- :mod:`~crfrnn.workflow.datasets`: data sets from a spec, and the training and validation sets of a config;
- :mod:`~crfrnn.workflow.build`: model, optimiser and schedule from a config;
- :mod:`~crfrnn.workflow.distributed`: processes, devices, threads and the collectives;
- :mod:`~crfrnn.workflow.seeding`: seeds and random states;
- :mod:`~crfrnn.workflow.rundir`: the run directory (config, metrics, checkpoints, resume checks, the lock);
- :mod:`~crfrnn.workflow.loop`: the training loop (epoch, validation, saving);
- :mod:`~crfrnn.workflow.predict`: the three methods of the paper's comparison;
- :mod:`~crfrnn.workflow.validate`: the one validation loop (evaluation, training's validation, CRF search);
- :mod:`~crfrnn.workflow.report`: tables, JSON, the boundary plot and the prediction grid;
- :mod:`~crfrnn.workflow.experiment` and :mod:`~crfrnn.workflow.claims`: the paper's experiment
  (``crfrnn reproduce``), built on the public API only.

:mod:`crfrnn.training`, :mod:`crfrnn.evaluation` and :mod:`crfrnn.reproduce` re-export the public names.
"""

__all__: list[str] = []

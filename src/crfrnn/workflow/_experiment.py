"""Reproducing the claims of the CRF-RNN paper at CPU scale (``crfrnn reproduce``, the project's main job).

The paper (Zheng et al., ICCV 2015, Table 1) compares, on the same images:

(a) the CNN alone (FCN-8s);
(b) the same CNN followed by an offline dense CRF whose parameters were chosen on validation data;
(c) CNN + CRF-RNN trained end to end from (a), trained with T = 5 mean-field iterations and tested with T = 10;

and claims (b) > (a), (c) > (b), with the largest gains near object boundaries, and a small gain from testing
with T = 10 rather than T = 5. :func:`reproduce` runs that experiment on the built-in procedural data set
(:class:`crfrnn.data.SyntheticShapes`) with the small stride-8 network (:class:`crfrnn.models.SmallFCN`) in
place of FCN-8s, for several training seeds, and writes a report. For each seed:

1. train the CNN alone (stage 1; :func:`crfrnn.workflow.train`);
2. grid-search the offline dense CRF's parameters on the validation split (:func:`crfrnn.workflow.search_dense_crf`);
3. train CNN + CRF-RNN end to end from the stage-1 weights (stage 2, the paper's recipe);
4. two controls: the stage-1 CNN trained further for as many epochs as stage 2, with the same optimiser
   (does the gain come from the extra training alone?), and the stage-1 CNN with a CRF-RNN head at its
   initial parameters, not trained (does it come from the head without training?);
5. on request (``ablations``), the paper's ablations (:data:`ABLATIONS`), each a stage-2 run from the same
   stage-1 weights with one thing changed: one scalar weight per kernel instead of per-class ``L x L`` weights,
   a symmetric compatibility instead of a free one, the CRF trained alone on the fixed CNN instead of end to end;
6. evaluate everything on the test split (mean IoU, accuracy, and accuracy in bands around boundaries).

The runs are shared out over worker processes (``workers``), each with its share of the CPU threads: on a 2-core
machine two single-threaded processes finish sooner than one on two threads (``benchmarks/bench_reproduce.py``).

Everything runs from a seed: the data set is generated on the fly (no downloads) and the results are the same
on every run on the same machine. Stages already finished in ``out_dir`` are not trained again, so an
interrupted reproduction continues where it stopped.

Files written to ``out_dir``: ``report.md`` (the tables, the claims checked with their numbers), ``results.json``
(every number, per seed and summarised), ``boundary.png`` (accuracy against band width), ``grid.png``
(predictions of every method on test images), ``config.yaml`` and per seed ``seed<N>/{cnn,crfrnn,cnn_longer}``
run directories (checkpoints and metrics logs of :func:`crfrnn.workflow.train`).

The settings are in :mod:`crfrnn.workflow._experiment_config`, one seed's stages in :mod:`crfrnn.workflow._stages`,
the worker processes in :mod:`crfrnn.workflow._workers`, the conclusions in :mod:`crfrnn.workflow._claims`.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable, Optional

import torch
import yaml
from tqdm.auto import tqdm

from crfrnn._utils.files import atomic_write_text
from crfrnn._utils.safe_load import load_yaml
from crfrnn.io.checkpoint import load_model
from crfrnn.workflow._claims import check_claims, machine_description, plot_summary, report_markdown, summarize
from crfrnn.workflow._experiment_config import ABLATIONS, ReproduceConfig
from crfrnn.workflow._report import jsonable, save_method_grid
from crfrnn.workflow._stages import run_seed, splits
from crfrnn.workflow._workers import run_parallel

__all__ = ["ABLATIONS", "ReproduceConfig", "reproduce"]


#: settings that may change when a reproduction is continued: how the work is spread over the CPU, and which
#: ablations run (each has runs of its own; the others are reused)
#: the unit of each part of ``results.json`` (written into it as ``"units"``): the metrics are fractions, the claims'
#: gains percentage points, as they were before this key existed
_RESULT_UNITS = {
    "per_seed": "metrics (mean_iou, pixel_accuracy, ...) as fractions in [0, 1]; seconds in seconds",
    "summary": "fractions in [0, 1] (mean, std, min, max over seeds)",
    "claims": "gain_mean_iou, gains_per_seed, gain_in_band, gain_overall and margin in percentage points",
    "seconds": "seconds (this invocation's wall time)",
}

_RESUMABLE = ("workers", "threads", "ablations", "device")


def reproduce(
    config: ReproduceConfig, *, progress: bool = True, log: Optional[Callable[[str], None]] = None
) -> dict[str, Any]:
    """Run the reproduction described by ``config`` and write its report (see the module docstring).

    Args:
        config: the settings (:class:`ReproduceConfig`, or ``ReproduceConfig.quick(out_dir)``).
        progress: show a progress bar over all training epochs.
        log: called with one line per finished seed and per file written (default: print).

    Returns:
        The content of ``results.json``: ``config``, ``per_seed`` (every row's metrics, the dense CRF search,
        the learned CRF parameters, seconds per stage), ``summary`` (:func:`summarize`), ``claims``
        (:func:`check_claims`), ``seconds`` and ``files``.
    """
    if not isinstance(config, ReproduceConfig):
        raise TypeError(f"config must be a ReproduceConfig, got {type(config).__name__}.")
    out = Path(config.out_dir)
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"'{out}' exists and is not a directory; pass a folder for --out.")
    out.mkdir(parents=True, exist_ok=True)
    saved = out / "config.yaml"
    if saved.is_file():
        previous = load_yaml(saved.read_text(encoding="utf-8")) or {}
        changed = sorted(k for k, v in config.to_dict().items() if k not in _RESUMABLE and previous.get(k) != v)
        if changed:
            raise ValueError(
                f"'{out}' holds a reproduction with other settings ({', '.join(changed)} differ); choose another "
                "--out, or delete that folder to start again."
            )
    atomic_write_text(saved, yaml.safe_dump(config.to_dict(), sort_keys=False))
    log = log or (lambda line: print(line, flush=True))
    workers, threads = config.resolved_workers()

    data = splits(config)
    start = time.perf_counter()
    total_epochs = len(config.seeds) * (config.cnn_epochs + (2 + len(config.ablations)) * config.crf_epochs)
    with tqdm(total=total_epochs, unit="epoch", disable=not progress, dynamic_ncols=True) as bar:
        say = (lambda line: bar.write(line)) if progress else log
        say(
            f"{len(config.seeds)} seed(s) in {workers} process(es), {threads or torch.get_num_threads()} thread(s) each"
        )
        if workers > 1:
            assert threads is not None  # resolved for several workers
            per_seed = run_parallel(config, workers, threads, bar, say)
        else:
            if threads is not None:
                torch.set_num_threads(threads)
            per_seed = [run_seed(config, seed, data, bar, say) for seed in config.seeds]
    seconds = time.perf_counter() - start

    summary = summarize(per_seed)
    claims = check_claims(summary, per_seed)
    files = {"report": str(out / "report.md"), "results": str(out / "results.json")}
    spread = len(per_seed) > 1
    try:
        plot_summary(
            summary,
            out / "boundary.png",
            "Accuracy near ground-truth boundaries"
            + (" (mean and range over seeds)" if spread else f" (one seed: {per_seed[0]['seed']})"),
        )
        files["boundary"] = str(out / "boundary.png")
    except ImportError as err:
        log(f"boundary.png not written: matplotlib is needed ({err}); pip install 'crfrnn[repro]'")
    if config.grid_images:  # the first seed's networks
        first = per_seed[0]["checkpoints"]
        cnn, crfrnn = load_model(first["cnn"])[0], load_model(first["crfrnn"])[0]
        runs = [(cnn, ("cnn", "cnn+densecrf"), per_seed[0]["dense_crf_params"]), (crfrnn, ("crfrnn",), None)]
        save_method_grid(out / "grid.png", data[2], runs, config.grid_images)
        files["grid"] = str(out / "grid.png")
    machine = machine_description(workers, threads or torch.get_num_threads())
    results = {
        "units": _RESULT_UNITS,
        "config": config.to_dict(),
        "class_names": list(data[0].class_names),
        "per_seed": per_seed,
        "summary": summary,
        "claims": claims,
        "seconds": seconds,
        "machine": machine,
        "files": files,
    }
    atomic_write_text(files["results"], json.dumps(jsonable(results), indent=2) + "\n")
    atomic_write_text(files["report"], report_markdown(config, summary, claims, per_seed, seconds, machine))
    return results

"""``crfrnn refine --images DIR --probs DIR``: a folder of images, in this process or in worker processes, and
under torchrun a share of it per rank (:mod:`crfrnn.cli._ranks`).
"""

from __future__ import annotations

import argparse
import multiprocessing
import re
import signal
import sys
import threading
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor, as_completed
from functools import partial
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple

from crfrnn._utils.progress import Progress
from crfrnn._utils.threads import free_cpus
from crfrnn.cli import CommandError
from crfrnn.cli._batch import Summary, is_complete, shard_of
from crfrnn.cli._outputs import check_outputs
from crfrnn.cli._ranks import Ranks, join_ranks
from crfrnn.cli._refine_steps import refine_one
from crfrnn.io import pair_by_stem
from crfrnn.workflow._shards import take_shard

__all__ = ["run_folder"]


#: suffixes of the files refine reads and writes: an output directory named so is a mistaken file name
_FILE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".npy", ".npz", ".nii", ".gz", ".yaml", ".json")


def _output_dir(path: Optional[str], option: str) -> Optional[Path]:
    if path is None:
        return None
    directory = Path(path)
    if directory.exists() and not directory.is_dir():
        raise CommandError(f"with --images, {option} must be a directory, but '{path}' is a file.", 2)
    if not directory.exists() and directory.suffix.lower() in _FILE_SUFFIXES:
        raise CommandError(
            f"with --images, {option} names the directory that gets one file per image, but '{path}' looks like a "
            f"file name ({directory.suffix}); give a directory such as '{directory.with_suffix('')}'.",
            2,
        )
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise CommandError(f"could not create the directory '{path}' for {option}: {err}", 1) from err
    return directory


def _worker_count(jobs: Optional[int], count: int, device: Any = None) -> int:
    """How many images to refine at once: ``jobs`` (worker processes) if given, else one per free CPU.

    Without ``--jobs`` the images are refined side by side in threads of this process, one compiled-kernel thread
    each (no start-up cost; part of every call, building the lattices, scales less than linearly with threads,
    so one image per thread beats every thread on one image). ``--jobs N`` starts ``N`` worker processes instead.
    """
    if jobs is not None:
        return max(1, min(jobs, count))
    if device is not None and device.type != "cpu":  # one process and thread feed the GPU
        return 1
    cpus = free_cpus()
    return min(cpus, count) if cpus > 1 and count >= 2 else 1


def _refine_target(args: argparse.Namespace, target: tuple) -> Tuple[Path, Optional[str], List[str]]:
    """One pair: ``(image_path, failure message or None, notes)``; never raises but for KeyboardInterrupt."""
    stem, image_path, probs_path, out, save_probs, overlay = target
    try:
        return image_path, None, refine_one(args, image_path, probs_path, out, save_probs, overlay)
    except CommandError as err:
        return image_path, str(err), []
    except Exception as err:  # anything else fails this pair only; KeyboardInterrupt still stops the run
        text = " ".join(str(err).split()) or "(no message)"
        return image_path, f"{type(err).__name__}: {text}", []


def _refine_in_this_process(args: argparse.Namespace, targets: list) -> Iterator[Tuple[Path, Optional[str], List[str]]]:
    for target in targets:
        yield _refine_target(args, target)


def _worker_init() -> None:
    import numba
    import torch

    numba.set_num_threads(1)
    torch.set_num_threads(1)


def _refine_in_processes(
    args: argparse.Namespace, targets: list, jobs: int
) -> Iterator[Tuple[Path, Optional[str], List[str]]]:
    """Refine in ``jobs`` spawned single-threaded processes, yielding results as they finish."""
    pool = ProcessPoolExecutor(
        max_workers=jobs, mp_context=multiprocessing.get_context("spawn"), initializer=_worker_init
    )
    # the workers start with Ctrl-C ignored (inherited through exec, so Python installs no handler in them): this
    # process stops them on an interrupt, and they print no tracebacks of their own
    main_thread = threading.current_thread() is threading.main_thread()  # only it may set handlers
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN) if main_thread else None
    try:
        try:
            futures = [pool.submit(partial(_refine_target, args), target) for target in targets]
        finally:
            if main_thread:
                signal.signal(signal.SIGINT, previous)
        for future in as_completed(futures):
            yield future.result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _refine_in_threads(
    args: argparse.Namespace, targets: list, jobs: int
) -> Iterator[Tuple[Path, Optional[str], List[str]]]:
    """Refine in ``jobs`` threads of this process, one image per thread and one compiled-kernel thread each."""

    def init() -> None:
        import numba

        numba.set_num_threads(1)

    with ThreadPoolExecutor(max_workers=jobs, initializer=init) as pool:
        futures = [pool.submit(_refine_target, args, target) for target in targets]
        try:
            for future in as_completed(futures):
                yield future.result()
        finally:
            for future in futures:
                future.cancel()


def _plan(args: argparse.Namespace, shard: Optional[Tuple[int, int]]) -> Tuple[Path, list, List[Tuple[str, str]]]:
    """The output folder, this shard's targets ``(stem, image, scores, out, save_probs, overlay)`` and its unpaired
    files ``(name, reason)``, after the folder-level checks (missing folders, outputs on inputs).
    """
    try:
        pairs, problems = pair_by_stem(args.images_dir, args.probs_dir)
    except NotADirectoryError as err:
        raise CommandError(str(err), 2) from err
    if not pairs and not problems:
        raise CommandError(f"no images in '{args.images_dir}' and no scores in '{args.probs_dir}'.", 2)
    inputs = [("--images", Path(args.images_dir)), ("--probs", Path(args.probs_dir))]
    pngs = [(o, None if p is None else Path(p)) for o, p in (("-o/--output", args.output), ("--overlay", args.overlay))]
    check_outputs(pngs, inputs, kind="directory")  # both write <stem>.png
    check_outputs(
        [("--save-probs", None if args.save_probs is None else Path(args.save_probs))], inputs, kind="directory"
    )
    out_dir = _output_dir(args.output, "-o/--output")
    assert out_dir is not None  # -o/--output is required
    probs_dir = _output_dir(args.save_probs, "--save-probs")
    overlay_dir = _output_dir(args.overlay, "--overlay")
    # one list of every input (pairs and unpaired files) sorted by the stem the outputs are named after
    entries: list = [(stem, (stem, image_path, probs_path)) for stem, image_path, probs_path in pairs]
    entries += [(Path(name).stem, (name, reason)) for name, reason in problems]
    if shard is not None:
        entries = take_shard(entries, *shard, key=lambda e: e[0])
    targets, unpaired = [], []
    for _, entry in entries:
        if len(entry) == 2:
            unpaired.append(entry)
            continue
        stem, image_path, probs_path = entry
        out = out_dir / f"{stem}.png"
        save_probs = None if probs_dir is None else probs_dir / f"{stem}.npy"
        overlay = None if overlay_dir is None else overlay_dir / f"{stem}.png"
        targets.append((stem, image_path, probs_path, out, save_probs, overlay))
    return out_dir, targets, unpaired


def _tell_notes(notes: List[str], seen: Dict[str, int], progress: Progress) -> None:
    """Print each kind of note once (file names taken out); count how often it came again in ``seen``."""
    for note in notes:
        kind = re.sub(r"'[^']*'", "''", note)
        if kind in seen:
            seen[kind] += 1
        else:
            seen[kind] = 0
            progress.write(f"crfrnn refine: note: {note}")


def _inputs_of_rank(args: argparse.Namespace, world: int, rank: int) -> List[Tuple[Path, list]]:
    """Rank ``rank``'s inputs and their outputs, for the summary of a rank that did not report."""
    _, targets, unpaired = _plan(args, (rank, world))
    return [(Path(name), []) for name, _ in unpaired] + [(t[1], list(t[3:])) for t in targets]


def run_folder(args: argparse.Namespace) -> int:
    """Refine the pairs of ``--images`` and ``--probs`` (this ``--shard``'s), skipping complete ones unless
    ``--overwrite``; writes the summary; returns 0, or 1 if any failed. Under torchrun, this rank's share.
    """
    ranks = join_ranks("refine", args)
    try:
        return _run_share(args, ranks)
    finally:
        if ranks is not None:
            ranks.close()


def _run_share(args: argparse.Namespace, ranks: Optional[Ranks]) -> int:
    shard = shard_of(args) if ranks is None else ranks.shard
    out_dir, targets, unpaired = _plan(args, shard)
    summary = Summary("refine", None if ranks is not None else shard, None if ranks is None else ranks.rank)
    for name, reason in unpaired:
        print(f"crfrnn refine: skipped '{name}': {reason}", file=sys.stderr)
        summary.add(Path(name), [], "failed", reason)
    start = time.perf_counter()
    todo = []
    for target in targets:
        if not args.overwrite and is_complete(target[3:]):
            summary.add(target[1], target[3:], "skipped", scores=target[2])
        else:
            todo.append(target)
    skipped = len(targets) - len(todo)
    if skipped:
        print(
            f"crfrnn refine: skipping {skipped} of {len(targets)} images whose outputs exist (--overwrite redoes them)",
            file=sys.stderr,
        )
    if ranks is not None and args.jobs is None:  # under torchrun a rank is one worker (OMP_NUM_THREADS threads)
        jobs = 1
    else:
        jobs = _worker_count(args.jobs, len(todo), getattr(args, "torch_device", None))
    if jobs > 1 and args.jobs is None:
        print(f"crfrnn refine: {len(todo)} images, {jobs} side by side (one thread each)", file=sys.stderr)
        results = _refine_in_threads(args, todo, jobs)
    elif jobs > 1:
        print(f"crfrnn refine: {len(todo)} images in {jobs} worker processes, one thread each", file=sys.stderr)
        results = _refine_in_processes(args, todo, jobs)
    else:
        results = _refine_in_this_process(args, todo)
    by_image = {target[1]: target for target in todo}
    done = 0
    seen: Dict[str, int] = {}  # a note told once, with the file names taken out: how often it came again
    progress = Progress(len(todo), "crfrnn refine", "image", enabled=ranks is None or ranks.is_main)
    with progress:
        for image_path, failure, notes in results:
            target = by_image[image_path]
            progress.update()
            if failure is not None:
                progress.write(f"crfrnn refine: failed '{image_path}': {failure}")
                summary.add(image_path, target[3:], "failed", failure, scores=target[2])
                continue
            _tell_notes(notes, seen, progress)
            summary.add(image_path, target[3:], "done", scores=target[2])
            done += 1
            if ranks is not None:
                ranks.maybe_die(done)
    repeated = sum(seen.values())
    if repeated:
        print(
            f"crfrnn refine: note: {repeated} more notes like those above for other files were not repeated.",
            file=sys.stderr,
        )
    failed = summary.totals()["failed"]  # this rank's
    try:
        if ranks is None:
            written = summary.write(out_dir)
        else:
            written = ranks.finish(summary, out_dir, partial(_inputs_of_rank, args, ranks.world))
    except OSError as err:
        raise CommandError(f"could not write the summary in '{out_dir}': {err}", 1) from err
    everyone = summary.totals()  # on rank 0 under torchrun, every rank's records
    elapsed = time.perf_counter() - start
    extra = f" ({len(unpaired)} without a partner)" if unpaired else ""
    if skipped:
        extra += f", {skipped} skipped (outputs exist)"
    if ranks is not None:
        extra += f" by rank {ranks.rank} of {ranks.world}"
        if ranks.is_main:
            extra += f" ({everyone['done']} done, {everyone['failed']} failed by all ranks)"
    elif shard is not None:
        extra += f" in shard {shard[0]}/{shard[1]}"
    print(
        f"crfrnn refine: {done} done, {failed} failed{extra}, {elapsed:.1f} s; labels in '{out_dir}', "
        f"summary '{written}'"
    )
    return 0 if failed == 0 and everyone["failed"] == 0 else 1

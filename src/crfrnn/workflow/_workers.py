"""The worker processes of a parallel reproduction: :func:`run_parallel` shares every seed's stages out over
``python -m crfrnn.workflow._seed_worker`` processes, each running :func:`worker_main`.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import json
import os
import queue as queue_module
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any, Callable, Optional

from crfrnn._utils.files import atomic_write_text
from crfrnn.workflow._distributed import set_threads
from crfrnn.workflow._experiment_config import ReproduceConfig
from crfrnn.workflow._loop import TrainingError
from crfrnn.workflow._report import jsonable
from crfrnn.workflow._stages import run_seed, search_stage, splits, stage1_checkpoint, stage_keys, train_stages

__all__ = ["PipeBar", "run_parallel", "worker_main"]


class PipeBar:
    """What :func:`~crfrnn.workflow._stages.run_seed` calls on its progress bar, written as JSON lines for the
    parent process.
    """

    def __init__(self, stream: Any, seed: int) -> None:
        self.stream, self.seed = stream, seed

    def send(self, kind: str, value: Any) -> None:
        self.stream.write(json.dumps({"kind": kind, "seed": self.seed, "value": jsonable(value)}) + "\n")
        self.stream.flush()

    def update(self, n: int = 1) -> None:
        self.send("update", n)

    def set_description(self, text: str) -> None:
        self.send("description", text)

    def set_postfix(self, **values: Any) -> None:
        self.send("postfix", values)


def worker_main(argv: Optional[list[str]] = None) -> int:
    """``python -m crfrnn.workflow._seed_worker CONFIG_JSON THREADS``: a worker process of :func:`run_parallel`.

    Reads jobs from stdin, one JSON line each: ``{"seed": N, "job": KEY}`` trains one of
    :func:`~crfrnn.workflow._stages.stage_keys`, ``{"seed": N, "job": "search"}`` searches the dense CRF,
    ``{"seed": N, "job": "evaluate", "times": {...}}`` gives the seed's record. Answers on stdout in JSON lines
    (progress, log lines, then ``"done"`` with the job's seconds, ``"record"`` or ``"error"``).
    """
    config_path, threads = (argv if argv is not None else sys.argv[1:])[:2]
    values = json.loads(Path(config_path).read_text(encoding="utf-8"))
    values["seeds"], values["ablations"] = tuple(values["seeds"]), tuple(values["ablations"])
    config = ReproduceConfig(**{**values, "threads": int(threads), "workers": 1})
    set_threads(int(threads), None)
    data = None
    for line in sys.stdin:
        job = json.loads(line)
        bar = PipeBar(sys.stdout, int(job["seed"]))
        try:
            if job["job"] == "evaluate":
                data = data or splits(config)
                record = run_seed(config, bar.seed, data, bar, functools.partial(bar.send, "log"), job["times"])
                bar.send("record", record)
            elif job["job"] == "search":
                data = data or splits(config)
                times: dict[str, float] = {}
                search_stage(config, bar.seed, stage1_checkpoint(config, bar.seed), data[1], data[3], bar, times)
                bar.send("done", times)
            else:
                times = {}
                train_stages(config, bar.seed, [job["job"]], bar, times)
                bar.send("done", times)
        except Exception as err:  # reported to the parent, which raises it again
            bar.send("error", {"type": type(err).__name__, "message": str(err)})
    return 0


def run_parallel(
    config: ReproduceConfig, workers: int, threads: int, bar: Any, log: Callable[[str], None]
) -> list[dict]:
    """Every seed's runs shared out over ``workers`` Python processes with ``threads`` threads each.

    The jobs are each seed's training runs (:func:`~crfrnn.workflow._stages.stage_keys`; stage 1 first, the others
    once it is done), its dense CRF search (once stage 1 is done) and its evaluation (once everything else is); a
    free worker takes the first ready one, stage-1 runs first because everything waits on them, so no core idles
    while one seed finishes. Plain subprocesses rather than :mod:`multiprocessing`: a script that calls
    :func:`~crfrnn.workflow._experiment.reproduce` needs no ``if __name__ == "__main__"`` guard, and no forked torch
    or numba thread pool is inherited. The workers' warnings go to ``worker<K>.log`` in ``out_dir``.

    Args:
        config: the reproduction; its ``out_dir`` receives the workers' configuration file and logs.
        workers: the number of worker processes.
        threads: the threads of each worker (``OMP_NUM_THREADS``, ``MKL_NUM_THREADS``, ``NUMBA_NUM_THREADS``).
        bar: the progress bar (``update`` and ``set_description``), which the workers' progress drives.
        log: called with each log line of the workers.

    Returns:
        Each seed's record, in the order of ``config.seeds``.

    Raises:
        TrainingError, ValueError, TypeError or RuntimeError: the first error of a job (a worker's own exception
            type where it is one of these), or a worker process that ended during a job.
    """
    out = Path(config.out_dir)
    spec = out / "worker_config.json"
    atomic_write_text(spec, json.dumps(config.to_dict()))
    pool = _Pool(config, bar, log)
    try:
        pool.start(workers, threads, spec)
        while (pool.todo or pool.busy) and not pool.errors:
            pool.dispatch()
            pool.receive()
    finally:
        pool.stop(out)
        spec.unlink(missing_ok=True)
    if pool.errors:
        seed, err = pool.errors[0]
        kind = {"TrainingError": TrainingError, "ValueError": ValueError, "TypeError": TypeError}.get(
            err["type"], RuntimeError
        )
        raise kind(f"seed {seed}: {err['message']}")
    return [pool.records[s] for s in config.seeds]


def _worker_env(threads: int) -> dict[str, str]:
    """The environment of a worker: ``threads`` threads, and this crfrnn first on the path."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), NUMBA_NUM_THREADS=str(threads))
    source = str(Path(__file__).resolve().parents[2])  # this crfrnn, even when not installed
    env["PYTHONPATH"] = os.pathsep.join([source] + [p for p in [env.get("PYTHONPATH")] if p])
    return env


class _Pool:
    """The state of :func:`run_parallel`: the jobs left, the workers and what each is doing, and the results."""

    def __init__(self, config: ReproduceConfig, bar: Any, log: Callable[[str], None]) -> None:
        self.config, self.bar, self.log = config, bar, log
        self.stages = stage_keys(config)
        self.todo = [(seed, key) for seed in config.seeds for key in [*self.stages, "search", "evaluate"]]
        rank = {"cnn": 0, "search": 1, "evaluate": 3}  # then the stage-2 runs (2); the search needs stage 1 only
        self.todo.sort(key=lambda job: (rank.get(job[1], 2), config.seeds.index(job[0])))
        self.finished: dict[int, dict[str, float]] = {seed: {} for seed in config.seeds}
        self.records: dict[int, dict] = {}
        self.status: dict[int, str] = {}
        self.errors: list[tuple[int, dict]] = []
        self.messages: "queue_module.Queue[tuple[int, Optional[dict]]]" = queue_module.Queue()
        self.procs: list[subprocess.Popen] = []
        self.logs: list[collections.deque[str]] = []
        self.readers: list[threading.Thread] = []
        self.busy: dict[int, tuple[int, str]] = {}

    def ready(self, job: tuple[int, str]) -> bool:
        """Whether ``job`` (seed, key) can start: what it needs of its seed is done."""
        seed, key = job
        done = self.finished[seed]
        if key == "cnn":
            return True
        if key == "evaluate":
            return all(f"train_{k}" in done for k in self.stages) and "search_dense_crf" in done
        return "train_cnn" in done

    def read(self, worker: int, stream: Any) -> None:
        """Put each JSON line of a worker's stdout on the queue, then ``None`` when it closes."""
        for line in stream:
            try:
                self.messages.put((worker, json.loads(line)))
            except json.JSONDecodeError:  # something else printed on stdout
                self.messages.put((worker, {"kind": "log", "value": line.rstrip()}))
        self.messages.put((worker, None))  # the worker closed its stdout: it has ended

    @staticmethod
    def collect(lines: "collections.deque[str]", stream: Any) -> None:
        """Keep the last lines of a worker's stderr."""
        lines.extend(stream)  # the worker's warnings, written to worker<K>.log at the end

    def start(self, workers: int, threads: int, spec: Path) -> None:
        """Start the worker processes, with a thread reading each one's stdout and one its stderr."""
        env = _worker_env(threads)
        for k in range(workers):
            proc = subprocess.Popen(
                [sys.executable, "-m", "crfrnn.workflow._seed_worker", str(spec), str(threads)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env=env,
            )
            self.logs.append(collections.deque(maxlen=10000))
            threading.Thread(target=self.read, args=(k, proc.stdout), daemon=True).start()
            self.readers.append(threading.Thread(target=self.collect, args=(self.logs[k], proc.stderr), daemon=True))
            self.readers[-1].start()
            self.procs.append(proc)

    def dispatch(self) -> None:
        """Give each free worker the first ready job."""
        if not self.busy and not any(self.ready(j) for j in self.todo):  # cannot happen; never wait for nothing
            raise RuntimeError(f"reproduce: no job can start ({self.todo[:3]}...); this is a bug, please report it.")
        for k in range(len(self.procs)):
            job = next((j for j in self.todo if self.ready(j)), None) if k not in self.busy else None
            if job is None:
                continue
            self.todo.remove(job)
            self.busy[k] = job
            payload = {"seed": job[0], "job": job[1], "times": self.finished[job[0]]}
            try:
                self.procs[k].stdin.write(json.dumps(payload) + "\n")  # type: ignore[union-attr]
                self.procs[k].stdin.flush()  # type: ignore[union-attr]
            except BrokenPipeError:  # the worker has died; its reader reports how
                pass

    def receive(self) -> None:
        """Wait for the next message of a worker and act on it."""
        worker, message = self.messages.get()
        if message is None:
            if worker in self.busy:
                self.ended(worker)
            return
        seed: Any
        value: Any
        kind, seed, value = message["kind"], message.get("seed"), message.get("value")
        if kind == "update":
            self.bar.update(value)
        elif kind == "log":
            self.log(value)
        elif kind == "done":
            self.finished[seed].update(value)
            self.busy.pop(worker)
        elif kind == "record":
            self.records[seed] = value
            self.busy.pop(worker)
        elif kind == "error":
            self.errors.append((seed, value))
        else:
            self.status[seed] = (
                value
                if kind == "description"
                else f"seed {seed}: " + ", ".join(f"{k} {v}" for k, v in value.items() if k != "seed")
            )
            running = {j[0] for j in self.busy.values()}
            self.bar.set_description(" | ".join(self.status[s] for s in sorted(self.status) if s in running))

    def ended(self, worker: int) -> None:
        """A worker process ended during a job: an error of its seed, with the last lines it wrote on stderr."""
        self.procs[worker].wait()
        self.readers[worker].join(timeout=5)
        tail = [line.rstrip() for line in list(self.logs[worker])[-5:]]
        message = f"its worker process ended (exit code {self.procs[worker].wait()}): " + " / ".join(tail)
        self.errors.append((self.busy[worker][0], {"type": "RuntimeError", "message": message}))

    def stop(self, out: Path) -> None:
        """End the workers (killing them after an error or an interruption) and write their logs to ``out``."""
        for proc in self.procs:
            if proc.stdin is not None:
                with contextlib.suppress(OSError):  # a dead worker's pipe
                    proc.stdin.close()  # a worker ends when its stdin does
            if self.errors or self.todo or self.busy:
                proc.kill()  # interrupted or failed: stop the others too
            proc.wait()
        for k, (reader, lines) in enumerate(zip(self.readers, self.logs)):
            reader.join(timeout=5)
            atomic_write_text(out / f"worker{k}.log", "".join(lines))

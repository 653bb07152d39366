"""One seed of a parallel ``crfrnn reproduce`` (started by :func:`crfrnn.workflow.experiment._run_parallel`)."""

from crfrnn.workflow.experiment import _worker_main

if __name__ == "__main__":
    raise SystemExit(_worker_main())

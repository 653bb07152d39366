"""One seed of a parallel ``crfrnn reproduce`` (started by :func:`crfrnn.workflow._workers.run_parallel`)."""

from crfrnn.workflow._workers import worker_main

if __name__ == "__main__":
    raise SystemExit(worker_main())

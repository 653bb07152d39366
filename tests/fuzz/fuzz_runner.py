"""Runs ``crfrnn`` commands in this process under a memory limit and reports, as JSON on stdout, each one's exit
code, stderr and whether an exception escaped: ``python fuzz_runner.py LIMIT_BYTES TIMEOUT_S CASES.json``.

One process runs many cases (importing torch once); a case that hangs past ``TIMEOUT_S`` is stopped by an alarm
and reported as such.
"""

from __future__ import annotations

import contextlib
import io
import json
import resource
import signal
import sys
import traceback


class Hang(BaseException):
    pass


def _alarm(signum, frame):
    raise Hang()


def main() -> None:
    limit, timeout, cases_file = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    from crfrnn.cli import main as crfrnn

    signal.signal(signal.SIGALRM, _alarm)
    results = []
    for name, argv in json.load(open(cases_file)):
        err, out = io.StringIO(), io.StringIO()
        escaped = None
        signal.alarm(timeout)
        try:
            with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
                try:
                    code = crfrnn(argv)
                except SystemExit as exit_:  # argparse
                    code = exit_.code if isinstance(exit_.code, int) else 2
        except Hang:
            code, escaped = None, f"hang: still running after {timeout} s"
        except BaseException:  # noqa: B036 - the report of an escaped exception is what this runner is for
            code, escaped = None, traceback.format_exc()
        finally:
            signal.alarm(0)
        results.append({"name": name, "code": code, "stderr": err.getvalue(), "escaped": escaped})
    json.dump(results, sys.stdout)


if __name__ == "__main__":
    main()

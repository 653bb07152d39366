"""A fresh process's first call: crfrnn with an empty kernel cache (cold), with a full one (warm), and pydensecrf.

Each measurement is a new Python process that imports the library, makes the 500x375 photo and its 21-label
probabilities (``bench_refine.make_inputs``), then times three ``dense_crf`` calls (T=5, densecrf's parameters):

- cold: ``NUMBA_CACHE_DIR`` pointed at an empty temporary folder, so every kernel compiles (what a new user's
  very first call pays, once per machine and user);
- warm: the same folder again, now full (what every later process pays: loading the compiled kernels);
- pydensecrf: ``import pydensecrf.densecrf`` and the same three calls (``DenseCRF2D``, 5 iterations).

Printed per run: import, first, second and third call (wall seconds) and the CPU seconds of the whole process;
then the issue-24 ratios: cold first call (target <= 30 s), warm first call / later call (target <= 1.5x), and
each against pydensecrf's import + first call. Runs alternate cold, warm, pydensecrf --rounds times; medians.

    python benchmarks/bench_first_call.py --rounds 3
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))

CHILD = r"""
import json, sys, time
t0 = time.perf_counter()
sys.path.insert(0, {here!r})
tool = {tool!r}
if tool == "crfrnn":
    from crfrnn import dense_crf
else:
    import pydensecrf.densecrf as dcrf
    from pydensecrf.utils import unary_from_softmax
t1 = time.perf_counter()
import numpy as np
from bench_refine import make_inputs
image, probs = make_inputs(375, 500, 21, seed=0)

def call():
    if tool == "crfrnn":
        dense_crf(image, probs, num_iterations=5)
    else:
        d = dcrf.DenseCRF2D(500, 375, 21)
        d.setUnaryEnergy(unary_from_softmax(probs))
        d.addPairwiseGaussian(sxy=3, compat=3)
        d.addPairwiseBilateral(sxy=80, srgb=13, rgbim=image, compat=10)
        np.array(d.inference(5))

times = []
for _ in range(3):
    s = time.perf_counter()
    call()
    times.append(time.perf_counter() - s)
print(json.dumps({{"import": t1 - t0, "calls": times, "cpu": time.process_time()}}))
"""


def run(tool: str, cache: str) -> dict:
    env = dict(os.environ, NUMBA_CACHE_DIR=cache, CRFRNN_QUIET="1")
    code = CHILD.format(here=HERE, tool=tool)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--no-pydensecrf", action="store_true", help="leave pydensecrf out")
    args = parser.parse_args()
    rows: dict = {"cold": [], "warm": [], "pydensecrf": []}
    for r in range(args.rounds):
        with tempfile.TemporaryDirectory() as cache:
            rows["cold"].append(run("crfrnn", cache))
            rows["warm"].append(run("crfrnn", cache))
        if not args.no_pydensecrf:
            rows["pydensecrf"].append(run("pydensecrf", cache=tempfile.gettempdir()))
        for name, got in rows.items():
            if got and len(got) == r + 1:
                g = got[-1]
                calls = ", ".join(f"{t:.2f}" for t in g["calls"])
                print(f"round {r + 1} {name:10s} import {g['import']:.2f} s, calls {calls} s, cpu {g['cpu']:.1f} s")

    def med(name: str, key) -> float:
        return statistics.median(key(g) for g in rows[name])

    cold_first = med("cold", lambda g: g["calls"][0])
    warm_first = med("warm", lambda g: g["calls"][0])
    warm_later = med("warm", lambda g: min(g["calls"][1:]))
    warm_total = med("warm", lambda g: g["import"] + g["calls"][0])
    print(
        f"cold first call {cold_first:.1f} s (target <= 30 s); "
        f"its process's CPU {med('cold', lambda g: g['cpu']):.1f} s"
    )
    print(
        f"warm first call {warm_first:.2f} s / later call {warm_later:.2f} s = "
        f"{warm_first / warm_later:.2f}x (target <= 1.5x)"
    )
    if rows["pydensecrf"]:
        py_total = med("pydensecrf", lambda g: g["import"] + g["calls"][0])
        print(
            f"import + first call: crfrnn warm {warm_total:.2f} s, pydensecrf {py_total:.2f} s, "
            f"ratio {warm_total / py_total:.2f}"
        )


if __name__ == "__main__":
    main()

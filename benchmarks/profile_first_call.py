"""Where a warm process's first ``dense_crf`` call spends the time its later calls do not (issue 24).

A first child process fills a temporary ``NUMBA_CACHE_DIR`` (every kernel compiles); a second one, with the same
folder, imports crfrnn, makes the 500x375 photo and its 21-label probabilities (``bench_refine.make_inputs``),
then runs cProfile around its first ``dense_crf`` call (T=5, densecrf's parameters) and around its second. Printed:
both calls' CPU and wall seconds, the functions whose cumulative and own time grew the most from the second call to
the first (first minus second), and what numba did on the first call: which dispatchers loaded from the cache
(each an index file read, unpickling, a library rebuilt from object code and linked) and which numba modules were
imported during it.

With ``--processes N`` it profiles nothing: N warm processes each print the CPU seconds
(``time.process_time``, all threads) of their first and second call, and the medians and their ratio follow
(issue 24's target: first <= 1.5x later). CPU time moves less than wall time on a machine shared with other work.

    python benchmarks/profile_first_call.py            # top 25 of each
    python benchmarks/profile_first_call.py --top 40 --cache DIR   # reuse a full cache folder (skips the fill)
    python benchmarks/profile_first_call.py --processes 5          # first/later CPU ratio, median of 5
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

FILL = r"""
import sys
sys.path.insert(0, {here!r})
from crfrnn import dense_crf
from bench_refine import make_inputs
image, probs = make_inputs(375, 500, 21, seed=0)
dense_crf(image, probs, num_iterations=5)
"""

CHILD = r"""
import cProfile, pstats, sys, time
sys.path.insert(0, {here!r})
from crfrnn import dense_crf
from bench_refine import make_inputs
image, probs = make_inputs(375, 500, 21, seed=0)
top = {top}

from numba.core import caching
loads = []
_load = caching.Cache._load_overload
def counted(self, sig, target_context):
    data = _load(self, sig, target_context)
    loads.append(getattr(self._py_func, "__qualname__", "?") + ("" if data is not None else " (missed)"))
    return data
caching.Cache._load_overload = counted

def profiled():
    before = set(sys.modules)
    prof = cProfile.Profile()
    c0, w0 = time.process_time(), time.perf_counter()
    prof.enable()
    dense_crf(image, probs, num_iterations=5)
    prof.disable()
    c1, w1 = time.process_time(), time.perf_counter()
    return prof, c1 - c0, w1 - w0, sorted(set(sys.modules) - before)

p1, cpu1, wall1, mods1 = profiled()
n_loads = list(loads)
p2, cpu2, wall2, _ = profiled()
print(f"first call: cpu {{cpu1:.3f}} s, wall {{wall1:.3f}} s; second: cpu {{cpu2:.3f}} s, wall {{wall2:.3f}} s; "
      f"ratio cpu {{cpu1 / cpu2:.2f}}x, wall {{wall1 / wall2:.2f}}x")
print(f"dispatchers loaded from the cache on the first call: {{len(n_loads)}}: {{', '.join(n_loads)}}")
print(f"modules imported during the first call: {{len(mods1)}}")
for m in mods1:
    print("   ", m)

s1 = pstats.Stats(p1).stats
s2 = pstats.Stats(p2).stats

def name(k):
    f, line, fn = k
    f = f.replace(sys.prefix, "<venv>")
    return f"{{fn}} ({{f}}:{{line}})"

rows = []
for k, v in s1.items():
    cc, nc, tt, ct, _ = v
    o = s2.get(k, (0, 0, 0.0, 0.0, None))
    rows.append((ct - o[3], tt - o[2], nc - o[1], k))
for label, idx in (("cumulative", 0), ("own", 1)):
    print(f"\ntop {{top}} by {{label}} time, first call minus second (seconds, extra calls):")
    for r in sorted(rows, key=lambda r: -r[idx])[:top]:
        print(f"  {{r[idx]:8.4f}}  {{r[2]:6d}}  {{name(r[3])}}")
"""

RATIO = r"""
import json, sys, time
sys.path.insert(0, {here!r})
from crfrnn import dense_crf
from bench_refine import make_inputs
image, probs = make_inputs(375, 500, 21, seed=0)
cpu = []
for _ in range(2):
    c = time.process_time()
    dense_crf(image, probs, num_iterations=5)
    cpu.append(time.process_time() - c)
print(json.dumps(cpu))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--cache", help="a NUMBA_CACHE_DIR already filled by a previous run (else a fresh one)")
    parser.add_argument("--processes", type=int, default=0, help="measure the CPU ratio in this many processes")
    args = parser.parse_args()

    def child(code: str, cache: str) -> str:
        env = dict(os.environ, NUMBA_CACHE_DIR=cache, CRFRNN_QUIET="1")
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
        return out.stdout

    with tempfile.TemporaryDirectory() as tmp:
        cache = args.cache or tmp
        if not args.cache:
            child(FILL.format(here=HERE), cache)
        if not args.processes:
            print(child(CHILD.format(here=HERE, top=args.top), cache))
            return
        runs = []
        for i in range(args.processes):
            runs.append(json.loads(child(RATIO.format(here=HERE), cache).strip().splitlines()[-1]))
            print(f"process {i + 1}: first call {runs[-1][0]:.3f} s CPU, second {runs[-1][1]:.3f} s CPU")
        first = statistics.median(r[0] for r in runs)
        second = statistics.median(r[1] for r in runs)
        print(f"median: first {first:.3f} s, second {second:.3f} s CPU, ratio {first / second:.2f}x (target <= 1.5x)")


if __name__ == "__main__":
    main()

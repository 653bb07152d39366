"""What a cold first call compiles: every numba compilation of ``dense_crf`` with an empty kernel cache, timed.

A child process with ``NUMBA_CACHE_DIR`` pointed at an empty temporary folder (and ``CRFRNN_QUIET=1``) listens to
numba's ``numba:compile`` events, then runs bench_first_call's workload once: the 500x375 photo with 21 labels
(``bench_refine.make_inputs(375, 500, 21, seed=0)``), ``dense_crf(image, probs, num_iterations=5)``. Each
compilation is recorded with its function, its signature and its duration: wall seconds and the CPU seconds of the
compiling thread (``time.thread_time``: compiles run on the calling thread, and a thread's CPU time moves much less
with the machine's load than wall time). A compilation that triggers others (a kernel calling a helper compiled
apart) is reported with its own time: its duration less its nested compilations'.

Printed: one row per compilation sorted by own CPU time (own CPU, own wall, nested depth, function, signature),
functions compiled for more than one signature in the call (each extra signature is compile time wasted: make the
callers pass one type), and the totals, next to the first call's wall and the process's CPU seconds.

The library takes as many threads as CPUs are free at the call (``crfrnn._utils.threads``); which kernels compile
no longer depends on it (the vertex hash compiles ``insert_runs`` wherever numba may start 2 threads or more), but
the compile's wall time does. The child sees every CPU as free, as on a quiet machine, unless ``--loaded``.

    python benchmarks/profile_compile.py
    python benchmarks/profile_compile.py --rounds 2 --top 30   # two child processes, each row's median
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
import json, sys, threading, time
sys.path.insert(0, {here!r})
from numba.core import event

records = []
stack = threading.local()


class Listener(event.Listener):
    def on_start(self, ev):
        frames = getattr(stack, "frames", None)
        if frames is None:
            frames = stack.frames = []
        frames.append([time.perf_counter(), time.thread_time(), 0.0, 0.0])

    def on_end(self, ev):
        frames = stack.frames
        w0, c0, nested_w, nested_c = frames.pop()
        wall = time.perf_counter() - w0
        cpu = time.thread_time() - c0
        if frames:  # the enclosing compilation's nested time
            frames[-1][2] += wall
            frames[-1][3] += cpu
        data = ev.data or {{}}
        disp = data.get("dispatcher")
        fn = getattr(disp, "py_func", None)
        name = (getattr(fn, "__module__", "?") or "?") + "." + (getattr(fn, "__qualname__", "?") or "?")
        sig = "(" + ", ".join(str(a) for a in data.get("args", ())) + ")"
        records.append(dict(name=name, sig=sig, disp=id(disp), wall=wall, cpu=cpu, own_wall=wall - nested_w,
                            own_cpu=cpu - nested_c, depth=len(frames)))


event.register("numba:compile", Listener())
if {idle!r}:  # as on an idle machine: every configured thread
    import crfrnn._utils.threads as threads
    threads.free_cpus = lambda *args, **kwargs: 1 << 16
from crfrnn import dense_crf
from bench_refine import make_inputs
image, probs = make_inputs(375, 500, 21, seed=0)
t = time.perf_counter()
dense_crf(image, probs, num_iterations=5)
first = time.perf_counter() - t
print(json.dumps(dict(records=records, first=first, cpu=time.process_time())))
"""


def run_child(idle: bool) -> dict:
    """One child process with an empty kernel cache: its compilations, first call's wall and process CPU."""
    with tempfile.TemporaryDirectory() as cache:
        env = dict(os.environ, NUMBA_CACHE_DIR=cache, CRFRNN_QUIET="1")
        code = CHILD.format(here=HERE, idle=idle)
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
        if out.returncode != 0:
            raise SystemExit(f"the child process failed:\n{out.stderr}")
        return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=1, help="child processes; each row is their median")
    parser.add_argument("--top", type=int, default=0, help="print only the first TOP rows (0: all)")
    parser.add_argument("--json", help="also write the raw records of every round to this file")
    parser.add_argument(
        "--loaded",
        action="store_true",
        help="let the library lower its thread count to the CPUs free now (as it does) instead of using them all",
    )
    args = parser.parse_args()
    rounds = [run_child(not args.loaded) for _ in range(args.rounds)]
    rows: dict = {}
    for got in rounds:
        seen: dict = {}
        for r in got["records"]:
            key = (r["name"], r["sig"])
            k = seen[key] = seen.get(key, 0) + 1  # the same signature twice in one call: a separate row
            rows.setdefault((*key, k), []).append(r)
            r["kernel"] = (r["name"], r["disp"]) if got is rounds[0] else None
    table = []
    for (name, sig, _), recs in rows.items():
        table.append(
            dict(
                name=name,
                sig=sig,
                own_cpu=statistics.median(r["own_cpu"] for r in recs),
                own_wall=statistics.median(r["own_wall"] for r in recs),
                depth=min(r["depth"] for r in recs),
                seen=len(recs),
                kernel=recs[0]["kernel"],
            )
        )
    table.sort(key=lambda r: -r["own_cpu"])
    shown = table[: args.top] if args.top else table
    print(f"{'own cpu s':>9} {'own wall s':>10} {'depth':>5}  function (signature)")
    for r in shown:
        sig = r["sig"] if len(r["sig"]) <= 160 else r["sig"][:157] + "..."
        print(f"{r['own_cpu']:9.2f} {r['own_wall']:10.2f} {r['depth']:5d}  {r['name']} {sig}")
    if len(shown) < len(table):
        print(f"... {len(table) - len(shown)} more rows, {sum(r['own_cpu'] for r in table[len(shown) :]):.2f} s")
    # one dispatcher (one function of this library; numba's own overloads compile per type by design) compiled
    # more than once in one call; closures built per constant (_mean_field_for(c), _simplices_for(d)) are separate
    by_kernel: dict = {}
    for r in table:
        if r["kernel"] is not None and r["name"].startswith("crfrnn."):
            by_kernel.setdefault(r["kernel"], []).append(r)
    dups = {n: rs for n, rs in by_kernel.items() if len(rs) > 1}
    print(f"\nfunctions of crfrnn compiled for more than one signature: {len(dups)}")
    if dups:
        for (n, _), rs in sorted(dups.items(), key=lambda kv: -sum(r["own_cpu"] for r in kv[1])):
            print(f"  {n}: {len(rs)} compilations, {sum(r['own_cpu'] for r in rs):.2f} s own cpu")
            for r in rs:
                print(f"      {r['own_cpu']:6.2f} s {r['sig']}")
    totals = [sum(r["own_cpu"] for r in got["records"]) for got in rounds]
    walls = [sum(r["own_wall"] for r in got["records"]) for got in rounds]
    print(
        f"\ntotal: {len(table)} compilations, {statistics.median(totals):.2f} s compile cpu "
        f"({statistics.median(walls):.2f} s wall); first call {statistics.median(g['first'] for g in rounds):.2f} s "
        f"wall, process cpu {statistics.median(g['cpu'] for g in rounds):.2f} s "
        f"(per round: {', '.join(f'{t:.2f}' for t in totals)} s compile cpu)"
    )
    if args.json:
        sys.path.insert(0, os.path.join(os.path.dirname(HERE), "src"))
        from crfrnn._utils.files import atomic_write_text

        atomic_write_text(args.json, json.dumps(rounds, indent=1))


if __name__ == "__main__":
    main()

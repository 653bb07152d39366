"""CrfRnn's training step under torch.compile against eager mode, on this machine's CPU (or --device cuda).

Forward + backward of a training-mode ``CrfRnn`` (T=5), medians of --repeats calls after a warm-up (the first
compiled call compiles; its time is printed apart), side by side in one run:

- eager, the default path (on the CPU: the compiled numba forward and backward, ``crfrnn/crf/_compiled.py``);
- eager, the PyTorch-ops path (``backend="torch"``: sparse CSR products, what other devices run);
- ``torch.compile(crf, fullgraph=True)`` with inductor (the lattice as custom operators,
  ``crfrnn/lattice/_custom_ops.py``).

    python benchmarks/bench_compile.py                     # 96x96, batch 8, 7 labels: crfrnn train's step
    python benchmarks/bench_compile.py --size 375 500 --batch 1 --labels 21
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _harness import report  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, nargs=2, default=(96, 96), metavar=("H", "W"))
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--labels", type=int, default=7)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json")
    args = parser.parse_args()
    import torch

    from crfrnn import CrfRnn

    torch._dynamo.config.capture_dynamic_output_shape_ops = True  # the lattice's vertex count (docs/engine.md)
    device = torch.device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    h, w = args.size
    g = torch.Generator().manual_seed(0)
    image = (torch.rand(args.batch, 3, h, w, generator=g) * 255).to(device)
    unary = torch.randn(args.batch, args.labels, h, w, generator=g).to(device).requires_grad_(True)
    eager = CrfRnn(args.labels, num_iterations=5).to(device).train()
    torch_ops = CrfRnn(args.labels, num_iterations=5, backend="torch").to(device).train()
    compiled = torch.compile(CrfRnn(args.labels, num_iterations=5).to(device).train(), fullgraph=True)

    def step(model):
        def run():
            unary.grad = None
            model(unary, image).square().mean().backward()
            sync()

        return run

    t = time.perf_counter()
    step(compiled)()
    first = time.perf_counter() - t
    print(
        f"CrfRnn fwd+bwd, {h}x{w}, B={args.batch}, L={args.labels}, T=5, {device}, torch {torch.__version__}; "
        f"first compiled call (compiling) {first:.1f} s"
    )
    runs = {
        "eager (default path)": step(eager),
        "eager (backend='torch')": step(torch_ops),
        "torch.compile (inductor)": step(compiled),
    }
    times: dict[str, list[float]] = {name: [] for name in runs}
    for fn in runs.values():
        fn()  # warm-up
    for _ in range(args.repeats):  # interleaved: the machine's drift hits every path alike
        for name, fn in runs.items():
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
    base = statistics.median(times["eager (default path)"])
    rows = {}
    for name, ts in times.items():
        rows[name] = statistics.median(ts)
        print(f"{name:<28} {rows[name] * 1e3:8.1f} ms   {rows[name] / base:5.2f}x of the default path")
    report(
        {
            "benchmark": "bench_compile",
            "size": [h, w],
            "batch": args.batch,
            "labels": args.labels,
            "first_compiled_call_s": first,
            "median_s": rows,
        },
        args.json,
    )


if __name__ == "__main__":
    main()

"""Where torch.compile breaks the graph of CrfRnn's differentiable (device-agnostic) path.

Runs ``torch._dynamo.explain`` on a training-mode ``CrfRnn`` with the PyTorch lattice backend (the GPU path, here on
the CPU; capture only, no code generation) and prints the number of graphs and breaks and each distinct reason with
the line that causes it. The lattice's construction has data-dependent sizes (the number of vertices) and its
filter is a sparse product, so a graph without breaks needs them as opaque custom ops; the input checks read
tensors (``float(x.min())``), which a compiled caller can skip.

    python benchmarks/graph_breaks.py
    python benchmarks/graph_breaks.py --size 32 32 --labels 5
"""

from __future__ import annotations

import argparse
import logging


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, nargs=2, default=(8, 8), metavar=("H", "W"))
    parser.add_argument("--labels", type=int, default=3)
    parser.add_argument("--iterations", type=int, default=2)
    args = parser.parse_args()

    import torch
    import torch._dynamo as dynamo

    from crfrnn import CrfRnn

    logging.getLogger("torch._dynamo").setLevel(logging.ERROR)
    h, w = args.size
    crf = CrfRnn(args.labels, num_iterations=args.iterations, backend="torch").train()
    unary = torch.randn(1, args.labels, h, w, requires_grad=True)
    image = torch.rand(1, 3, h, w) * 255
    explained = dynamo.explain(crf)(unary, image)
    print(f"CrfRnn train mode, backend='torch', {h}x{w}, L={args.labels}, T={args.iterations}: "
          f"{explained.graph_count} graphs, {explained.graph_break_count} breaks")
    seen: dict[str, int] = {}
    where: dict[str, str] = {}
    for brk in explained.break_reasons:
        reason = str(brk.reason).splitlines()[0][:120]
        seen[reason] = seen.get(reason, 0) + 1
        if brk.user_stack and reason not in where:
            frame = brk.user_stack[-1]
            where[reason] = f"{frame.filename.split('/src/')[-1]}:{frame.lineno}"
    for reason, count in sorted(seen.items(), key=lambda kv: -kv[1]):
        print(f"{count:4d} x {reason}  ({where.get(reason, '?')})")


if __name__ == "__main__":
    main()

"""Where torch.compile breaks the graph of CrfRnn's differentiable (device-agnostic) path.

Runs ``torch._dynamo.explain`` on a training-mode ``CrfRnn``, with fixed and with learned widths (capture only, no
code generation), and prints the
number of graphs and breaks and each distinct reason with the line that causes it, twice: with PyTorch's default
settings, and with ``torch._dynamo.config.capture_dynamic_output_shape_ops = True``. Under the compiler the lattice
goes through custom operators (``crfrnn.lattice._custom_ops``) and the input checks become device-side assertions;
the only operator left with a data-dependent output size is the lattice's construction (its vertex count), which dynamo
captures only with that setting.

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
    unary = torch.randn(1, args.labels, h, w, requires_grad=True)
    image = torch.rand(1, 3, h, w) * 255
    for learned in (False, True):
        crf = CrfRnn(args.labels, num_iterations=args.iterations, learn_widths=learned).train()
        for capture in (False, True):
            dynamo.reset()
            with dynamo.config.patch(capture_dynamic_output_shape_ops=capture):
                explained = dynamo.explain(crf)(unary, image)
            print(
                f"CrfRnn train mode{', learned widths' if learned else ''}, {h}x{w}, L={args.labels}, "
                f"T={args.iterations}, capture_dynamic_output_shape_ops={capture}: {explained.graph_count} graphs, "
                f"{explained.graph_break_count} breaks"
            )
            _reasons(explained)


def _reasons(explained) -> None:
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

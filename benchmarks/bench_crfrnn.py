"""The CrfRnn layer: forward and forward+backward times and peak memory at 500x375 with 21 labels.

Training mode (the unrolled T iterations that back-propagation needs), batch size 1, float32, on the
CPU with the default backend. Each time is the median of --repeats calls after a warm-up call; the
bilateral lattice is built inside every call (as in training, where every image is new; the spatial
lattice depends only on the image size and is kept). "Saved for bwd" is what autograd keeps between
forward and backward (distinct tensors, counted with saved_tensors_hooks): the activation memory that
grows with T, B, L and N. "Peak" is the resident memory the first forward+backward at this size adds in
a fresh child process (after a warm-up call on a 64x48 input), temporaries and allocator growth
included.

    python benchmarks/bench_crfrnn.py            # T = 5 and 10, plus the memory-efficient mode
    python benchmarks/bench_crfrnn.py --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _harness import in_child, peak_memory, report, time_it  # noqa: E402


def setup(h: int, w: int, num_labels: int, batch: int, iters: int, memory_efficient: bool):
    import torch
    from skimage.data import astronaut
    from skimage.transform import resize

    from crfrnn import CrfRnn

    img = torch.from_numpy(resize(astronaut(), (h, w), anti_aliasing=True) * 255).float().permute(2, 0, 1)
    image = img[None].expand(batch, -1, -1, -1).contiguous()
    g = torch.Generator().manual_seed(0)
    unary = torch.randn(batch, num_labels, h // 8, w // 8, generator=g)
    unary = torch.nn.functional.interpolate(unary, size=(h, w), mode="bilinear").requires_grad_(True)
    crf = CrfRnn(num_labels, num_iterations=iters, memory_efficient=memory_efficient).train()

    def forward():
        with torch.no_grad():
            return crf(unary, image)

    def forward_backward():
        crf.zero_grad(set_to_none=True)
        unary.grad = None
        crf(unary, image).square().mean().backward()

    from crfrnn._utils.profiling import saved_activation_bytes

    # what autograd keeps for backward (what grows with T, B, L and N)
    forward_backward.saved_activation_bytes = lambda: saved_activation_bytes(lambda: crf(unary, image))  # type: ignore
    return forward, forward_backward


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, nargs=2, default=(375, 500), metavar=("H", "W"))
    parser.add_argument("--labels", type=int, default=21)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--no-memory", action="store_true")
    parser.add_argument("--json")
    parser.add_argument("--child", nargs=6, metavar=("H", "W", "L", "B", "T", "EFFICIENT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        h, w, num_labels, batch, iters, eff = map(int, args.child)
        _, fwd_bwd = setup(h, w, num_labels, batch, iters, bool(eff))
        _, warm = setup(48, 64, num_labels, batch, iters, bool(eff))  # kernels loaded, pools still small
        print(json.dumps({"peak_bytes": peak_memory(fwd_bwd, warmup=warm)}))
        return

    h, w = args.size
    rows = []
    print(f"CrfRnn, {w}x{h}, L={args.labels}, B={args.batch}, train mode")
    print(f"{'T':>3} {'mode':>17} | {'forward':>10} | {'fwd+bwd':>10} | ratio | saved for bwd | peak fwd+bwd")
    for iters in (5, 10):
        for eff in (False, True):
            fwd, fwd_bwd = setup(h, w, args.labels, args.batch, iters, eff)
            row = {
                "iterations": iters,
                "memory_efficient": eff,
                "forward": time_it(fwd, repeats=args.repeats),
                "forward_backward": time_it(fwd_bwd, repeats=args.repeats),
            }
            row["ratio"] = row["forward_backward"]["median"] / row["forward"]["median"]
            row["saved_bytes"] = fwd_bwd.saved_activation_bytes()
            if not args.no_memory:
                child = in_child(
                    __file__, ["--child", str(h), str(w), str(args.labels), str(args.batch), str(iters), str(int(eff))]
                )
                row["peak_bytes"] = child["peak_bytes"]
            mem = f"{row['peak_bytes'] / 2**20:8.0f} MB" if "peak_bytes" in row else ""
            print(
                f"{iters:>3} {'memory-efficient' if eff else 'default':>17} | "
                f"{row['forward']['median'] * 1e3:7.1f} ms | {row['forward_backward']['median'] * 1e3:7.1f} ms | "
                f"{row['ratio']:4.2f}x | {row['saved_bytes'] / 2**20:10.0f} MB | {mem}",
                flush=True,
            )
            rows.append(row)
    report(
        {"benchmark": "bench_crfrnn", "size": [h, w], "labels": args.labels, "batch": args.batch, "rows": rows},
        args.json,
    )


if __name__ == "__main__":
    main()

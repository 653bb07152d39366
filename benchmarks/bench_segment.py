"""``crfrnn segment`` with the released network: time per image of FCN-8s and of the CRF-RNN head, apart.

The full-size network (VGG-16 FCN-8s, 21 classes, CRF-RNN with T = 10, as released) with random weights
(:func:`crfrnn.models.released_network`; the weights do not change the cost), on 500 x 375 photos padded
to 500 x 500 as the released code does, for batches of 1 and 4. Each time is the median of --repeats
calls after --warmup calls, divided by the batch size; the spread (min, max, interquartile range) is in
the JSON. The two parts are the library calls ``crfrnn segment`` makes: ``model(image, use_crf=False)``
(padding, preprocessing, FCN-8s) and ``model.crf(unary, guide)`` (the mean-field iterations on the
padded 500 x 500 map, bilateral lattice built inside the call).

    python benchmarks/bench_segment.py                     # CPU, batch 1 and 4
    python benchmarks/bench_segment.py --device cuda --json segment.json
    python benchmarks/bench_segment.py --quick             # a tiny network and image: checks that it runs
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _harness import report, time_it  # noqa: E402


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--height", type=int, default=375)
    parser.add_argument("--width", type=int, default=500)
    parser.add_argument("--iterations", type=int, default=10, help="mean-field iterations (released: 10)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="tiny network and image, one repeat (a smoke run)")
    parser.add_argument("--json", metavar="FILE", help="write the results as JSON")
    args = parser.parse_args(argv)

    import torch

    from crfrnn.models import released_network

    torch.manual_seed(args.seed)
    if args.quick:
        args.height, args.width, args.repeats, args.warmup = 40, 48, 1, 1
        model = released_network(widths=(4, 4, 8, 8, 8), fc_width=16, num_iterations=args.iterations, pad_to=64)
    else:
        model = released_network(num_iterations=args.iterations)
    device = torch.device(args.device)
    model = model.to(device).eval()
    for p in model.parameters():  # random weights: the score layers start at zero, which would give a flat unary
        torch.nn.init.normal_(p, std=0.01)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    rows = []
    for batch in args.batch_sizes:
        g = torch.Generator().manual_seed(args.seed + batch)
        image = (torch.rand(batch, 3, args.height, args.width, generator=g) * 255).to(device)
        with torch.no_grad():
            padded = model.pad(image)
            unary = model.backbone(padded)
            guide = model.crf_input(padded)

            def fcn() -> None:
                model(image, use_crf=False)
                sync()

            def crf() -> None:
                model.crf(unary, guide)
                sync()

            t_fcn = time_it(fcn, warmup=args.warmup, repeats=args.repeats)
            t_crf = time_it(crf, warmup=args.warmup, repeats=args.repeats)
        row = {
            "batch": batch,
            "fcn8s": t_fcn,
            "crfrnn": t_crf,
            "fcn8s_per_image_s": t_fcn["median"] / batch,
            "crfrnn_per_image_s": t_crf["median"] / batch,
        }
        rows.append(row)
        print(
            f"batch {batch}: FCN-8s {row['fcn8s_per_image_s'] * 1e3:8.1f} ms/image, "
            f"CRF-RNN (T={args.iterations}) {row['crfrnn_per_image_s'] * 1e3:8.1f} ms/image"
        )
    result = {
        "benchmark": "segment",
        "image": [args.height, args.width],
        "padded_to": list(model.pad_to),
        "iterations": args.iterations,
        "device": str(device),
        "quick": args.quick,
        "rows": rows,
    }
    report(result, args.json)
    return result


if __name__ == "__main__":
    main()

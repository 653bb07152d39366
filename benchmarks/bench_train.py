"""Training at the speed of inference: CrfRnn forward+backward (train mode) against dense_crf's inference.

At 500x375 with 21 labels and T=5 (the paper's training setting), in one run: the inference time of
``crfrnn.dense_crf`` at the same T with the layer's widths (3, 160, 3: the same lattices; the reference, both
lattices built), and ``CrfRnn`` forward+backward in train
mode on the compiled differentiable path (the default on the CPU) and on the PyTorch-ops path (``compiled=False``,
what training ran before), batch 1 and batch 4. Medians of --repeats calls after a warm-up; every image is a new
image (the bilateral lattice is built inside every call; the spatial one is kept by the layer's cache, as in
training). ``dense_crf``, batch 1 and batch 4 are called in turn, so that the ratios between them are not moved by
the machine's drift. "saved" is what autograd keeps between forward and backward.

    python benchmarks/bench_train.py                 # quiet machine, default threads
    python benchmarks/bench_train.py --busy          # with one competing CPU-bound process: default vs 1 thread
    python benchmarks/bench_train.py --json out.json

It ends with one optimiser step of ``crfrnn train`` stage 2 at its defaults (the CRF's share of the step, on both
paths; --skip-step leaves it out).
"""

from __future__ import annotations

import argparse
import functools
import multiprocessing as mp
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _harness import report, time_it  # noqa: E402


def _spin(stop) -> None:  # pragma: no cover - a competing process
    x = 0
    while not stop.is_set():
        for _ in range(100_000):
            x += 1


def setup(h: int, w: int, num_labels: int, batch: int, iters: int):
    import numpy as np
    import torch
    from skimage.data import astronaut
    from skimage.transform import resize

    from crfrnn import CrfRnn

    img = torch.from_numpy(resize(astronaut(), (h, w), anti_aliasing=True) * 255).float().permute(2, 0, 1)
    image = img[None].expand(batch, -1, -1, -1).contiguous()
    g = torch.Generator().manual_seed(0)
    unary = torch.randn(batch, num_labels, h // 8, w // 8, generator=g)
    unary = torch.nn.functional.interpolate(unary, size=(h, w), mode="bilinear").requires_grad_(True)
    crf = CrfRnn(num_labels, num_iterations=iters).train()

    def forward_backward(split: bool = False):
        import time

        crf.zero_grad(set_to_none=True)
        unary.grad = None
        t0 = time.perf_counter()
        loss = crf(unary, image).square().mean()
        t1 = time.perf_counter()
        loss.backward()
        if split:  # (forward, backward) seconds
            return t1 - t0, time.perf_counter() - t1

    probs = torch.softmax(unary.detach()[0], 0).numpy()
    photo = np.ascontiguousarray(img.permute(1, 2, 0).numpy().astype(np.uint8))

    def inference():
        from crfrnn import dense_crf

        # the CrfRnn's widths, so that both build the same lattices
        return dense_crf(
            photo,
            probs,
            num_iterations=iters,
            gaussian_sxy=3.0,
            bilateral_sxy=160.0,
            bilateral_srgb=3.0,
            normalization="row",
        )

    def saved_bytes():
        from crfrnn._utils.profiling import saved_activation_bytes

        return saved_activation_bytes(lambda: crf(unary, image))

    return inference, forward_backward, saved_bytes


@functools.lru_cache(None)
def _engine():
    import crfrnn.crf.functional as functional

    return functional, functional.infer


def torch_ops(enabled: bool) -> None:
    """Route CrfRnn's mean field through the PyTorch-ops path (``compiled=False``) or back to the default."""
    functional, infer = _engine()
    functional.infer = functools.partial(infer, compiled=False) if enabled else infer


def run(args, label: str) -> dict:
    import numba
    import torch

    h, w = args.size
    inference, fb1, saved1 = setup(h, w, args.labels, 1, args.iterations)
    _, fb4, _ = setup(h, w, args.labels, 4, args.iterations)
    row = {"condition": label, "threads": (torch.get_num_threads(), numba.get_num_threads())}
    # the reference, batch 1 and batch 4 called in turn (the machine's drift reaches the three alike)
    fns = {"dense_crf": inference, "compiled_b1": fb1}
    if not args.skip_batch:
        fns["compiled_b4"] = fb4
    row.update(alternated(fns, args.repeats))
    row["compiled_saved_bytes"] = saved1()
    torch_ops(True)
    try:
        row["torch_b1"] = time_it(fb1, repeats=args.repeats)
        row["torch_saved_bytes"] = saved1()
    finally:
        torch_ops(False)
    ref = row["dense_crf"]["median"]
    parts = [fb1(split=True) for _ in range(args.repeats)]
    row["compiled_b1_forward"] = statistics.median(p[0] for p in parts)
    row["compiled_b1_backward"] = statistics.median(p[1] for p in parts)
    print(f"[{label}] dense_crf T={args.iterations}: {ref * 1e3:.0f} ms")
    print(
        f"  CrfRnn B=1 compiled, timed apart: forward {row['compiled_b1_forward'] * 1e3:.0f} ms, backward "
        f"{row['compiled_b1_backward'] * 1e3:.0f} ms"
    )
    print(
        f"  CrfRnn fwd+bwd B=1 compiled: {row['compiled_b1']['median'] * 1e3:.0f} ms = "
        f"{row['compiled_b1']['median'] / ref:.2f}x dense_crf (target <= 2.2x); "
        f"saved {row['compiled_saved_bytes'] / 2**20:.0f} MB"
    )
    print(
        f"  CrfRnn fwd+bwd B=1 torch ops: {row['torch_b1']['median'] * 1e3:.0f} ms = "
        f"{row['torch_b1']['median'] / ref:.2f}x dense_crf; saved {row['torch_saved_bytes'] / 2**20:.0f} MB"
    )
    print(f"  compiled / torch ops: {row['compiled_b1']['median'] / row['torch_b1']['median']:.2f}x")
    if "compiled_b4" in row:
        print(
            f"  compiled B=4 / B=1: {row['compiled_b4']['median'] / row['compiled_b1']['median']:.2f}x (target <= 4x)"
        )
    return row


def alternated(fns: dict, repeats: int) -> dict:
    """``{name: {"median": seconds, "times": [...]}}`` with the functions called in turn, after a warm-up of each."""
    import statistics
    import time

    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
    return {name: {"median": statistics.median(ts), "times": ts} for name, ts in times.items()}


def training_step(args) -> dict:
    """The CRF's share of one optimiser step of ``crfrnn train`` stage 2 at its defaults (small_fcn_crfrnn, a batch of
    8 images of the built-in 96x96 data set, 7 labels, T=5), compiled path against PyTorch ops."""
    import warnings

    import torch

    from crfrnn.data import SyntheticShapes
    from crfrnn.models import create

    torch.manual_seed(0)
    data = SyntheticShapes(8, size=(96, 96), seed=0)
    model = create("small_fcn_crfrnn", num_classes=data.num_classes).train()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    image = torch.stack([data[i][0] for i in range(8)])
    target = torch.stack([data[i][1] for i in range(8)])
    warnings.filterwarnings("ignore", message="CRF-RNN head on an untrained backbone")  # timing only

    def step(use_crf: bool):
        def run():
            opt.zero_grad(set_to_none=True)
            out = model(image, use_crf=use_crf)
            torch.nn.functional.cross_entropy(out, target).backward()
            opt.step()

        return run

    row = {
        "cnn_only": time_it(step(False), repeats=args.repeats),
        "compiled": time_it(step(True), repeats=args.repeats),
    }
    torch_ops(True)
    try:
        row["torch"] = time_it(step(True), repeats=args.repeats)
    finally:
        torch_ops(False)
    cnn = row["cnn_only"]["median"]
    print(f"[training step, crfrnn train stage 2 defaults] CNN alone {cnn * 1e3:.0f} ms")
    for name in ("torch", "compiled"):
        t = row[name]["median"]
        print(
            f"  with the CRF ({'compiled' if name == 'compiled' else 'torch ops'}): {t * 1e3:.0f} ms, "
            f"the CRF is {(t - cnn) / t:.0%} of the step"
        )
    return row


def interleaved(args) -> dict:
    """Compiled fwd+bwd with the default threads and with one, alternated call by call (drift cancels)."""
    import statistics
    import time

    import numba
    import torch

    h, w = args.size
    _, fb, _ = setup(h, w, args.labels, 1, args.iterations)
    fb()
    before = (torch.get_num_threads(), numba.get_num_threads())
    times: dict[str, list[float]] = {"default": [], "one": []}
    for _ in range(args.repeats):
        for mode in ("default", "one"):
            torch.set_num_threads(1 if mode == "one" else before[0])
            numba.set_num_threads(1 if mode == "one" else before[1])
            t = time.perf_counter()
            fb()
            times[mode].append(time.perf_counter() - t)
    torch.set_num_threads(before[0])
    numba.set_num_threads(before[1])
    default, one = statistics.median(times["default"]), statistics.median(times["one"])
    return {"default_s": default, "one_thread_s": one, "ratio": default / one}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, nargs=2, default=(375, 500), metavar=("H", "W"))
    parser.add_argument("--labels", type=int, default=21)
    parser.add_argument("--iterations", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--busy", action="store_true", help="also run with one competing CPU-bound process")
    parser.add_argument("--skip-batch", action="store_true")
    parser.add_argument("--skip-step", action="store_true", help="skip the crfrnn train stage 2 step")
    parser.add_argument("--json")
    args = parser.parse_args()
    rows = [run(args, "quiet")]
    step = None if args.skip_step else training_step(args)
    if args.busy:
        import numba
        import torch

        stop = mp.Event()
        proc = mp.Process(target=_spin, args=(stop,), daemon=True)
        proc.start()
        try:
            rows.append(run(args, "busy, default threads"))
            before = (torch.get_num_threads(), numba.get_num_threads())
            torch.set_num_threads(1)
            numba.set_num_threads(1)
            try:
                rows.append(run(args, "busy, 1 thread"))
            finally:
                torch.set_num_threads(before[0])
                numba.set_num_threads(before[1])
            ratio = rows[1]["compiled_b1"]["median"] / rows[2]["compiled_b1"]["median"]
            print(f"busy: default threads / 1 thread, compiled fwd+bwd: {ratio:.2f}x (target <= 1)")
            alternated = interleaved(args)
            rows.append({"condition": "busy, alternated", **alternated})
            print(
                f"busy, alternated call by call: default {alternated['default_s'] * 1e3:.0f} ms, 1 thread "
                f"{alternated['one_thread_s'] * 1e3:.0f} ms: {alternated['ratio']:.2f}x (target <= 1)"
            )
        finally:
            stop.set()
            proc.join()
    report(
        {
            "benchmark": "bench_train",
            "size": list(args.size),
            "labels": args.labels,
            "iterations": args.iterations,
            "rows": rows,
            "training_step": step,
        },
        args.json,
    )


if __name__ == "__main__":
    main()

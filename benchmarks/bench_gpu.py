"""dense_crf and CrfRnn on a CUDA GPU: forward and forward+backward times and peak GPU memory.

At 500x375 and 1000x750, 21 labels, batch 1 and 8, T=5 and 10, float32, on the device-agnostic PyTorch path
(lattices built on the GPU), with each lattice backend of --backends. Each time is the median of --repeats calls
after a warm-up, with ``torch.cuda.synchronize()`` around every call; peak memory is
``torch.cuda.max_memory_allocated`` during the call over what was allocated before it, printed against the bytes
autograd saves for the backward (counted with ``torch.autograd.graph.saved_tensors_hooks``, each storage once) as
a ratio (issue 23's target: peak within 1.5x of the saved tensors at 500x375, batch 8, T=5).
Without a GPU it says so and exits 0.

    python benchmarks/bench_gpu.py
    python benchmarks/bench_gpu.py --sizes 375x500 --batches 1 --iterations 5 --repeats 3   # a quick look
    python benchmarks/bench_gpu.py --json out.json
    python benchmarks/bench_gpu.py --compile    # also CrfRnn under torch.compile(fullgraph=True), fwd+bwd
    python benchmarks/bench_gpu.py --backends torch,triton    # each lattice backend in turn (default: torch)

With ``--compile`` the first call of each configuration compiles (not timed: it is the warm-up).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _harness import report  # noqa: E402


def _size(text: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"sizes are HxW, e.g. 375x500, got {text!r}") from None
    return h, w


def _time(fn, repeats: int, cuda: bool) -> tuple[float, int]:
    import torch

    sync = torch.cuda.synchronize if cuda else (lambda: None)
    fn()  # warm-up (kernels, allocator pools)
    sync()
    times = []
    peak = 0
    for _ in range(repeats):
        if cuda:
            before = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
        t = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t)
        if cuda:
            peak = max(peak, torch.cuda.max_memory_allocated() - before)
    return statistics.median(times), peak


def _saved_bytes(fn) -> int:
    """Bytes autograd keeps for the backward pass of ``fn()`` (each storage once), then the backward is run."""
    import torch

    storages: dict[int, int] = {}

    def pack(t):
        storage = t.untyped_storage()
        storages[storage.data_ptr()] = max(storages.get(storage.data_ptr(), 0), storage.nbytes())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    out.square().mean().backward()
    return sum(storages.values())


def _backends(text: str) -> list[str]:
    names = [v.strip() for v in text.split(",") if v.strip()]
    if not names or any(v not in ("torch", "triton") for v in names):
        raise argparse.ArgumentTypeError(f"backends are a comma-separated list of torch, triton; got {text!r}")
    return names


def _measure(crf_rnn, dense_crf, image, logits, probs, iters: int, args, cuda: bool, backend: str) -> dict:
    """Time dense_crf, CrfRnn forward and forward+backward (and the compiled one) for one configuration."""
    import torch

    h, w = image.shape[-2:]
    device = image.device
    crf = crf_rnn(args.labels, num_iterations=iters, backend=backend).to(device).train()
    unary = logits.clone().requires_grad_(True)

    def infer():
        with torch.no_grad():
            return dense_crf(image, probs, num_iterations=iters, backend=backend)

    def forward():
        with torch.no_grad():
            return crf(unary, image)

    def forward_backward():
        crf.zero_grad(set_to_none=True)
        unary.grad = None
        crf(unary, image).square().mean().backward()

    t_inf, _ = _time(infer, args.repeats, cuda)
    t_fwd, _ = _time(forward, args.repeats, cuda)
    t_fb, peak = _time(forward_backward, args.repeats, cuda)
    saved = _saved_bytes(lambda: crf(unary, image))  # what the backward needs: O(T B L N), docs/engine.md
    row = {
        "backend": backend,
        "size": [h, w],
        "batch": image.shape[0],
        "iterations": iters,
        "dense_crf_s": t_inf,
        "forward_s": t_fwd,
        "forward_backward_s": t_fb,
        "peak_bytes": peak,
        "saved_bytes": saved,
        "peak_over_saved": peak / saved if saved else None,  # issue 23's target: at most 1.5
    }
    if args.compile:
        compiled = torch.compile(crf, fullgraph=True)

        def compiled_forward_backward():
            crf.zero_grad(set_to_none=True)
            unary.grad = None
            compiled(unary, image).square().mean().backward()

        row["compiled_forward_backward_s"], _ = _time(compiled_forward_backward, args.repeats, cuda)
        row["compiled_over_eager"] = row["compiled_forward_backward_s"] / t_fb  # issue 23's target: at most 1
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=_size, nargs="+", default=[(375, 500), (750, 1000)])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--iterations", type=int, nargs="+", default=[5, 10])
    parser.add_argument("--labels", type=int, default=21)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json")
    parser.add_argument(
        "--backends", type=_backends, default=["torch"], help="comma-separated lattice backends: torch, triton"
    )
    parser.add_argument("--compile", action="store_true", help="also time torch.compile(CrfRnn, fullgraph=True)")
    parser.add_argument(
        "--device", default="cuda", help="cuda (default); cpu runs the same script logic (a smoke test)"
    )
    args = parser.parse_args()

    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        print("bench_gpu: no CUDA GPU here (torch.cuda.is_available() is False); nothing to measure.")
        return 0
    from crfrnn import CrfRnn, dense_crf

    device = torch.device(args.device)
    cuda = device.type == "cuda"
    name = torch.cuda.get_device_name(device) if cuda else "cpu (torch path)"
    print(f"{name}, torch {torch.__version__}, {args.labels} labels")
    print(
        f"{'backend':>7} {'size':>9} {'B':>2} {'T':>3} | {'dense_crf':>10} | {'CrfRnn fwd':>10} | {'fwd+bwd':>10} | "
        "peak fwd+bwd | saved | peak/saved" + (" | compiled fwd+bwd | compiled/eager" if args.compile else "")
    )
    if args.compile:
        torch._dynamo.config.capture_dynamic_output_shape_ops = True  # the lattice's vertex count (docs/engine.md)
    rows = []
    g = torch.Generator(device="cpu").manual_seed(0)
    for h, w in args.sizes:
        for batch in args.batches:
            image = (torch.rand(batch, 3, h, w, generator=g) * 255).to(device)
            logits = torch.randn(batch, args.labels, h // 8, w // 8, generator=g)
            logits = torch.nn.functional.interpolate(logits, size=(h, w), mode="bilinear").to(device)
            probs = torch.softmax(logits, 1)
            for backend, iters in [(bk, it) for bk in args.backends for it in args.iterations]:
                # the model, its input and the closures over them live in _measure's frame only, so they are
                # freed when it returns and empty_cache() can hand their memory back before the next configuration
                row = _measure(CrfRnn, dense_crf, image, logits, probs, iters, args, cuda, backend)
                rows.append(row)
                extra = (
                    f" | {row['compiled_forward_backward_s'] * 1e3:7.1f} ms | {row['compiled_over_eager']:5.2f}x"
                    if args.compile
                    else ""
                )
                print(
                    f"{backend:>7} {h:>4}x{w:<4} {batch:>2} {iters:>3} | {row['dense_crf_s'] * 1e3:7.1f} ms | "
                    f"{row['forward_s'] * 1e3:7.1f} ms | {row['forward_backward_s'] * 1e3:7.1f} ms | "
                    f"{row['peak_bytes'] / 2**20:8.0f} MB | {row['saved_bytes'] / 2**20:6.0f} MB | "
                    f"{row['peak_over_saved'] or 0:5.2f}x" + extra,
                    flush=True,
                )
                if cuda:
                    torch.cuda.empty_cache()
    report({"benchmark": "bench_gpu", "labels": args.labels, "device": name, "rows": rows}, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())

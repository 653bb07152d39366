"""How `crfrnn reproduce` should share the CPU: seeds in worker processes, or one process with all the threads.

Runs the same reduced reproduction (the full preset's data, 2 seeds, 2 stage-1 epochs, 1 stage-2 epoch, one
ablation, a small search, 50 test images) twice into fresh folders: one process with torch's default threads
(``workers=1``), then one single-threaded worker process per core (``workers=None``, the default). Prints both
wall times and their ratio (the numbers of the two runs differ slightly: thread counts change the order of
floating-point sums; ``tests/test_reproduce.py`` checks that equal thread counts give equal numbers). Time nothing
else meanwhile.

    python benchmarks/bench_reproduce.py
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _harness import report  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json")
    args = parser.parse_args()
    import torch

    from crfrnn.workflow import ReproduceConfig, reproduce

    grid = {"bilateral_sxy": [3.0, 80.0], "bilateral_srgb": [5.0], "bilateral_compat": [10.0], "gaussian_compat": [1.0]}
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, workers in (("one process, default threads", 1), ("worker processes (default)", None)):
            config = ReproduceConfig(
                out_dir=os.path.join(tmp, str(workers)),
                seeds=(0, 1),
                cnn_epochs=2,
                crf_epochs=1,
                num_test=50,
                search_images=10,
                grid_images=0,
                workers=workers,
                ablations=("crf_alone",),
                search_grid=grid,
            )
            t = time.perf_counter()
            result = reproduce(config, progress=False, log=lambda line: None)
            rows[name] = {
                "seconds": time.perf_counter() - t,
                "machine": result["machine"],
                "mean_iou": [s["rows"]["crfrnn"]["mean_iou"] for s in result["per_seed"]],
            }
            print(f"{name:<32} {rows[name]['seconds']:7.1f} s  ({result['machine']})", flush=True)
    a, b = rows.values()
    print(
        f"worker processes / one process: {b['seconds'] / a['seconds']:.2f}x "
        f"(torch's default threads: {torch.get_num_threads()})"
    )
    report({"benchmark": "bench_reproduce", "rows": rows}, args.json)


if __name__ == "__main__":
    main()

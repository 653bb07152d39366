"""Scale: the folder commands under torchrun (one share per rank, one summary), and progress off a terminal."""

from __future__ import annotations

import importlib.util
import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Dict

import numpy as np
import pytest
from PIL import Image

from crfrnn._utils.progress import Progress
from crfrnn.cli import main

_HERE = Path(__file__).resolve().parent
_SRC = _HERE.parents[1] / "src"


def _load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


R = _load("_refine_tests_ranks", _HERE / "test_cli_refine.py")  # scene(): a tiny picture and its probabilities

N_IMAGES = 6
LINE = re.compile(r"^crfrnn refine: (\d+)/(\d+) images, [\d.e+]+ (images/s|s/image), (about .+ left|.+ in all)$")


@pytest.fixture
def pairs(tmp_path: Path):
    images, scores = tmp_path / "images", tmp_path / "probs"
    images.mkdir()
    scores.mkdir()
    for i in range(N_IMAGES):
        image, _, probs = R.scene(seed=i)
        Image.fromarray(image).save(images / f"p{i}.png")
        np.save(scores / f"p{i}.npy", probs)
    return images, scores


def _outputs(folder: Path) -> Dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if not p.name.startswith("summary")}


def test_progress_lines_off_a_terminal():
    out = io.StringIO()
    with Progress(3, "crfrnn demo", "image", file=out, interval=3600.0) as progress:
        for _ in range(3):
            progress.update()
        progress.set_postfix(loss="0.5")
    lines = out.getvalue().splitlines()
    assert len(lines) == 1, lines  # the interval never passed: the last line alone
    assert lines[0].startswith("crfrnn demo: 3/3 images, ") and lines[0].endswith("in all (loss 0.5)"), lines
    quiet = io.StringIO()
    with Progress(3, "crfrnn demo", "image", file=quiet, interval=0.0, enabled=False) as progress:
        progress.update(3)
    assert quiet.getvalue() == ""


def test_refine_folder_prints_rate_and_time_left_when_stderr_is_a_pipe(pairs, tmp_path, monkeypatch, capsys):
    images, scores = pairs
    monkeypatch.setenv("CRFRNN_PROGRESS_SECONDS", "0")
    assert (
        main(["refine", "--images", str(images), "--probs", str(scores), "-o", str(tmp_path / "o"), "--jobs", "1"]) == 0
    )
    lines = [line for line in capsys.readouterr().err.splitlines() if LINE.match(line)]
    counts = [int(LINE.match(line).group(1)) for line in lines]
    assert counts == list(range(1, N_IMAGES + 1)), lines  # one line per image at interval 0, the last one too
    assert "left" in lines[0] and lines[-1].endswith("in all"), lines


def test_fit_says_its_best_epoch_off_a_terminal(tmp_path, monkeypatch, capsys):
    from crfrnn.data import SyntheticShapes, save_label_png
    from crfrnn.fit import degraded_probs

    for name in ("images", "probs", "masks"):
        (tmp_path / name).mkdir()
    ds = SyntheticShapes(4, size=24, seed=2)
    for i in range(4):
        image, mask = ds[i]
        Image.fromarray(image.permute(1, 2, 0).numpy().astype(np.uint8)).save(tmp_path / "images" / f"s{i}.png")
        np.save(tmp_path / "probs" / f"s{i}.npy", degraded_probs(mask.numpy(), ds.num_classes, seed=i))
        save_label_png(tmp_path / "masks" / f"s{i}.png", mask.numpy())
    monkeypatch.setenv("CRFRNN_PROGRESS_SECONDS", "0")
    folders = [str(tmp_path / n) for n in ("images", "probs", "masks")]
    args = ["fit", *folders, "--epochs", "2", "--fixed-widths", "--val-fraction", "0.5", "-o", str(tmp_path / "c.yaml")]
    assert main(args) == 0
    err = capsys.readouterr().err
    assert re.search(r"^crfrnn fit: 1/2 epochs, .* left \(train [\d.]+, val [\d.]+, best \d\)$", err, re.M), err
    assert re.search(r"^crfrnn fit: \d/2 epochs, .* in all", err, re.M), err
    assert re.search(r"^crfrnn fit: best epoch \d of \d \(validation loss [\d.]+", err, re.M), err


def test_shard_under_torchrun_is_refused(pairs, tmp_path, monkeypatch, capsys):
    images, scores = pairs
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    code = main(
        ["refine", "--images", str(images), "--probs", str(scores), "-o", str(tmp_path / "o"), "--shard", "0/2"]
    )
    assert code == 2
    err = capsys.readouterr().err
    assert "--shard 0/2 and torchrun (WORLD_SIZE=2) both split the folder" in err and "Drop --shard" in err


def _gloo() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_gloo_available()


@pytest.mark.skipif(not _gloo(), reason="torch.distributed with gloo is not available")
def test_torchrun_ranks_share_the_folder_and_a_rerun_finishes_a_killed_one(pairs, tmp_path, capsys):
    images, scores = pairs
    single = tmp_path / "single"
    assert main(["refine", "--images", str(images), "--probs", str(scores), "-o", str(single), "--jobs", "1"]) == 0
    out = tmp_path / "ranks"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "3"]
    command += ["-m", "crfrnn", "refine", "--images", str(images), "--probs", str(scores), "-o", str(out)]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(_SRC), os.environ.get("PYTHONPATH", "")]))
    env |= {"CRFRNN_QUIET": "1", "CRFRNN_DIST_WAIT_SECONDS": "60", "CRFRNN_DIST_JOIN_SECONDS": "60"}
    # rank 1 is killed (SIGKILL) after its first image; torchrun then stops the others
    killed = subprocess.run(command, env=env | {"CRFRNN_TEST_KILL_RANK": "1:1"}, capture_output=True, text=True)
    assert killed.returncode != 0, killed.stderr
    if (out / "summary.json").exists():  # rank 0 saw rank 1 go before torchrun stopped it: rank 1's inputs failed
        first = json.loads((out / "summary.json").read_text())
        # rank 2 may have been stopped by torchrun before it reported too (a race between the ranks and torchrun)
        missing = first["missing_ranks"]
        assert 1 in missing and set(missing) <= {1, 2}, first
        failed = sorted(Path(r["input"]).stem for r in first["records"] if r["status"] == "failed")
        assert failed == sorted(f"p{i}" for i in range(N_IMAGES) if i % 3 in missing), first
        for k in missing:
            assert all(f"rank {k} of 3 stopped" in r.get("error", "") for r in first["records"] if r.get("rank") == k)
    partial = _outputs(out)
    assert "p1.png" in partial and "p4.png" not in partial, sorted(partial)  # rank 1 takes p1, p4
    rerun = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert _outputs(out) == _outputs(single)  # every output, byte for byte as one process writes it
    summary = json.loads((out / "summary.json").read_text())
    assert summary["ranks"] == 3 and summary["missing_ranks"] == [] and summary["totals"]["failed"] == 0
    records = {Path(r["input"]).stem: r for r in summary["records"]}
    assert sorted(records) == [f"p{i}" for i in range(N_IMAGES)]
    assert {k: r["rank"] for k, r in records.items()} == {f"p{i}": i % 3 for i in range(N_IMAGES)}
    assert records["p4"]["status"] == "done" and records["p1"]["status"] == "skipped"
    assert sorted(p.name for p in out.iterdir() if p.name.startswith("summary")) == ["summary.json"]


@pytest.fixture
def half_world(tmp_path, monkeypatch):
    """This process as rank 0 of a run of 2 whose rank 1 never reports: a gloo group of one process (so that the
    barrier passes at once) under torchrun's environment variables for two."""
    if not _gloo():
        pytest.skip("torch.distributed with gloo is not available")
    import torch.distributed as dist

    store = dist.FileStore(str(tmp_path / "store"), 1)
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    yield
    if dist.is_initialized():
        dist.destroy_process_group()


def test_a_rank_that_never_reports_has_its_inputs_failed(pairs, tmp_path, half_world, capsys):
    images, scores = pairs
    out = tmp_path / "out"
    (out).mkdir()
    stale = {"token": "an earlier run", "rank": 1, "records": [{"input": "x", "status": "done"}]}
    (out / "summary-rank-1-of-2.json").write_text(json.dumps(stale))  # another run's: not taken
    assert main(["refine", "--images", str(images), "--probs", str(scores), "-o", str(out)]) == 1
    captured = capsys.readouterr()
    assert "by rank 0 of 2 (3 done, 3 failed by all ranks)" in captured.out, captured.out
    summary = json.loads((out / "summary.json").read_text())
    assert summary["ranks"] == 2 and summary["missing_ranks"] == [1]
    records = {Path(r["input"]).stem: r for r in summary["records"]}
    assert sorted(records) == [f"p{i}" for i in range(N_IMAGES)]
    for i in range(N_IMAGES):
        record = records[f"p{i}"]
        assert record["rank"] == i % 2 and record["status"] == ("done" if i % 2 == 0 else "failed"), record
    assert "rank 1 of 2 stopped before reporting" in records["p1"]["error"]
    assert records["p1"]["outputs"] == [str(out / "p1.png")] and not (out / "p1.png").exists()
    assert (out / "summary-rank-0-of-2.json").exists()  # kept while a rank is missing

"""Job arrays and resuming: ``--shard K/N``, skipping complete outputs, ``--overwrite`` and the summary file of
``crfrnn refine --images`` and ``crfrnn segment``."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Dict, Tuple

import numpy as np
import pytest
from PIL import Image

from crfrnn.cli import main
from crfrnn.workflow._shards import parse_shard, shard_name, take_shard

_HERE = Path(__file__).resolve().parent


def _load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


R = _load("_refine_tests", _HERE / "test_cli_refine.py")  # scene(): a tiny picture and its probabilities

N_IMAGES = 5


def _folder_files(folder: Path) -> Dict[str, bytes]:
    """Every output file's bytes by name (the summaries left out)."""
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if not p.name.startswith("summary")}


def _summary(path: Path) -> dict:
    return json.loads(path.read_text())


def _one_line_error(capsys: pytest.CaptureFixture, command: str, *needles: str) -> str:
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"crfrnn {command}: error: "), err
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


@pytest.fixture
def pairs(tmp_path: Path) -> Tuple[Path, Path]:
    """``N_IMAGES`` tiny images and their probabilities, the files named so that listing order is not sorted
    order."""
    images, scores = tmp_path / "images", tmp_path / "probs"
    images.mkdir()
    scores.mkdir()
    for i, name in enumerate(["d", "b", "e", "a", "c"][:N_IMAGES]):
        image, _, probs = R.scene(seed=i)
        Image.fromarray(image).save(images / f"{name}.png")
        np.save(scores / f"{name}.npy", probs)
    return images, scores


def refine(images: Path, scores: Path, out: Path, *extra: object) -> int:
    return main(["refine", "--images", str(images), "--probs", str(scores), "-o", str(out), *map(str, extra)])


class TestRefine:
    def test_shards_partition_the_folder(self, pairs, tmp_path, capsys):
        images, scores = pairs
        assert refine(images, scores, tmp_path / "all", "--save-probs", tmp_path / "all") == 0
        whole = _folder_files(tmp_path / "all")
        assert len(whole) == 2 * N_IMAGES
        union: Dict[str, bytes] = {}
        taken = []
        for k in range(3):
            out = tmp_path / "shards"
            assert refine(images, scores, out, "--save-probs", out, "--shard", f"{k}/3") == 0
            summary = _summary(out / f"summary-{k}-of-3.json")
            assert summary["shard"] == {"index": k, "count": 3}
            names = [Path(r["input"]).stem for r in summary["records"]]
            assert all(r["status"] == "done" and r["shard"] == f"{k}/3" for r in summary["records"])
            # every third of the sorted stems, from the k-th
            assert names == sorted("abcde")[k::3]
            taken += names
            produced = {n: b for n, b in _folder_files(out).items() if Path(n).stem in names}
            assert not set(produced) & set(union)
            union |= produced
        assert sorted(taken) == sorted("abcde")  # each input in exactly one shard
        assert union == whole  # byte for byte
        assert "in shard 2/3" in capsys.readouterr().out

    def test_rerun_skips_complete_outputs_and_overwrite_redoes_them(self, pairs, tmp_path, capsys):
        images, scores = pairs
        out, overlays = tmp_path / "out", tmp_path / "overlays"
        assert refine(images, scores, out, "--overlay", overlays) == 0
        capsys.readouterr()
        written = [*out.glob("*.png"), *overlays.iterdir()]
        for p in written:
            p.write_bytes(b"stub")  # an existing file is a complete one: a rerun leaves it as it is
        (overlays / "c.png").unlink()  # as if the run was killed while writing c's overlay
        assert refine(images, scores, out, "--overlay", overlays) == 0
        captured = capsys.readouterr()
        assert "skipping 4 of 5 images whose outputs exist" in captured.err
        assert "1 done, 0 failed, 4 skipped" in captured.out
        statuses = {Path(r["input"]).stem: r["status"] for r in _summary(out / "summary.json")["records"]}
        assert statuses == {"a": "skipped", "b": "skipped", "c": "done", "d": "skipped", "e": "skipped"}
        assert [p.name for p in written if p.read_bytes() != b"stub"] == ["c.png", "c.png"]  # labels, overlay
        assert refine(images, scores, out, "--overlay", overlays, "--overwrite") == 0
        assert "5 done, 0 failed" in capsys.readouterr().out
        assert not [p for p in written if p.read_bytes() == b"stub"]

    def test_summary_lists_every_input_with_its_status(self, pairs, tmp_path, capsys):
        images, scores = pairs
        out = tmp_path / "out"
        assert refine(images, scores, out, "--shard", "0/1") == 0
        capsys.readouterr()
        (out / "b.png").unlink()
        (out / "e.png").unlink()
        (scores / "e.npy").write_bytes(b"not a numpy file")
        Image.fromarray(R.scene()[0]).save(images / "lonely.png")  # an image without scores
        assert refine(images, scores, out, "--shard", "0/1") == 1
        summary = _summary(out / "summary-0-of-1.json")
        records = {Path(r["input"]).stem: r for r in summary["records"]}
        assert sorted(records) == ["a", "b", "c", "d", "e", "lonely"]
        assert summary["totals"] == {"inputs": 6, "done": 1, "skipped": 3, "failed": 2}
        assert records["b"]["status"] == "done" and records["b"]["outputs"] == [str(out / "b.png")]
        assert records["b"]["scores"] == str(scores / "b.npy") and records["b"]["input"] == str(images / "b.png")
        assert records["a"]["status"] == "skipped"
        assert records["e"]["status"] == "failed" and "e.npy" in records["e"]["error"]
        assert "\n" not in records["e"]["error"]
        assert records["lonely"]["status"] == "failed" and "no scores file" in records["lonely"]["error"]
        assert not (out / "e.png").exists()

    @pytest.mark.parametrize("bad", ["3/2", "a/b", "0/0", "2/2", "-1/2", "1", "1/2/3", ""])
    def test_bad_shard_is_refused_naming_the_flag(self, bad, pairs, tmp_path, capsys):
        images, scores = pairs
        assert refine(images, scores, tmp_path / "out", f"--shard={bad}") == 2
        _one_line_error(capsys, "refine", "--shard", "K/N", repr(bad))
        assert not (tmp_path / "out").exists()

    def test_shard_needs_a_folder(self, pairs, tmp_path, capsys):
        images, scores = pairs
        argv = ["refine", str(images / "a.png"), str(scores / "a.npy"), "-o", str(tmp_path / "a.png")]
        assert main([*argv, "--shard", "0/2"]) == 2
        _one_line_error(capsys, "refine", "--shard", "--images")


@pytest.fixture
def fake_network(monkeypatch):
    """``crfrnn segment`` with a stand-in for the released network (the sharding, not the network, is tested
    here; tests/cli/test_cli_segment.py runs the real one): labels from the photo's colours, and the Keras port's
    refusal of an image wider than 500 with ``--resize none``."""
    import crfrnn.models
    from crfrnn.models.pretrained import Segmentation

    calls = []

    def segment_images(model, images, *, resize=None, return_probs=False, **_):
        calls.append(len(images))
        if resize == "none" and any(max(im.shape[:2]) > 500 for im in images):
            raise ValueError("an image is larger than 500 pixels; pass resize='shrink'.")
        results = []
        for im in images:
            labels = (im.astype(np.int64).sum(2) * 21 // 766).astype(np.int64)
            probs = np.eye(21, dtype=np.float32)[labels].transpose(2, 0, 1) if return_probs else None
            results.append(Segmentation(labels, probs, im.shape[:2]))
        return results

    # the command imports the network's functions when it runs: patch them where it finds them
    monkeypatch.setattr(crfrnn.models, "load_pretrained", lambda *a, **k: type("M", (), {"num_classes": 21}))
    monkeypatch.setattr(crfrnn.models, "segment_images", segment_images)
    return calls


@pytest.fixture
def photos(tmp_path: Path) -> Path:
    folder = tmp_path / "photos"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name in ("c", "a", "b", "d"):
        Image.fromarray((rng.random((20, 24, 3)) * 255).astype(np.uint8)).save(folder / f"{name}.png")
    return folder


def segment(photos: Path, out: Path, *extra: str) -> int:
    return main(["segment", str(photos), "--weights", "released.caffemodel", "-o", str(out), "--no-progress", *extra])


class TestSegment:
    def test_shards_partition_and_resume(self, fake_network, photos, tmp_path, capsys):
        assert segment(photos, tmp_path / "all", "--probs") == 0
        whole = _folder_files(tmp_path / "all")
        out = tmp_path / "shards"
        for k in range(3):
            assert segment(photos, out, "--probs", "--shard", f"{k}/3") == 0
            records = _summary(out / f"summary-{k}-of-3.json")["records"]
            assert [Path(r["input"]).stem for r in records] == sorted("abcd")[k::3]
            assert all(r["status"] == "done" and len(r["outputs"]) == 2 for r in records)
        assert _folder_files(out) == whole  # byte for byte
        capsys.readouterr()
        (out / "b_probs.npy").unlink()
        assert segment(photos, out, "--probs") == 0
        captured = capsys.readouterr()
        assert "skipping 3 of 4 images whose outputs exist" in captured.err
        assert "segmented 1 of 1 images" in captured.out and "3 skipped" in captured.out
        statuses = {Path(r["input"]).stem: r["status"] for r in _summary(out / "summary.json")["records"]}
        assert statuses == {"a": "skipped", "b": "done", "c": "skipped", "d": "skipped"}
        assert _folder_files(out) == whole
        assert segment(photos, out, "--probs", "--overwrite") == 0
        assert "segmented 4 of 4 images" in capsys.readouterr().out

    def test_a_failure_does_not_stop_the_others(self, fake_network, photos, tmp_path, capsys):
        Image.fromarray(np.zeros((12, 520, 3), np.uint8)).save(photos / "wide.png")
        (photos / "junk.png").write_bytes(b"not a png")
        out = tmp_path / "out"
        assert segment(photos, out, "--resize", "none", "--batch-size", "3") == 1
        summary = _summary(out / "summary.json")
        statuses = {Path(r["input"]).stem: r["status"] for r in summary["records"]}
        assert statuses == {"a": "done", "b": "done", "c": "done", "d": "done", "junk": "failed", "wide": "failed"}
        assert summary["totals"] == {"inputs": 6, "done": 4, "skipped": 0, "failed": 2}
        assert all("error" in r for r in summary["records"] if r["status"] == "failed")
        assert fake_network == [3, 2, 1, 1]  # the batch holding the wide photo was retried one photo at a time

    @pytest.mark.parametrize("bad", ["3/2", "a/b", "0/0"])
    def test_bad_shard_is_refused_naming_the_flag(self, bad, photos, tmp_path, capsys):
        assert segment(photos, tmp_path / "out", f"--shard={bad}") == 2
        _one_line_error(capsys, "segment", "--shard", "K/N", repr(bad))


class TestLibrary:
    @pytest.mark.parametrize("count", [1, 2, 3, 7, 12])
    def test_take_shard_partitions(self, count):
        items = [f"x{i:02d}" for i in range(10)][::-1]
        parts = [take_shard(items, k, count) for k in range(count)]
        assert sorted(x for part in parts for x in part) == sorted(items)
        assert sum(map(len, parts)) == len(items)
        assert max(map(len, parts)) - min(map(len, parts)) <= 1

    def test_parse_and_name(self):
        assert parse_shard("0/4") == (0, 4) and parse_shard(" 3 / 4 ") == (3, 4)
        assert shard_name(3, 4) == "3-of-4"
        for bad in ("4/4", "x", "0/0", "-1/3"):
            with pytest.raises(ValueError, match="K/N"):
                parse_shard(bad)
        with pytest.raises(ValueError, match="index"):
            take_shard([1, 2], 2, 2)
        with pytest.raises(ValueError, match="count"):
            take_shard([1, 2], 0, 0)

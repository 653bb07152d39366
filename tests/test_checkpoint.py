"""crfrnn.io.checkpoint: checkpoints hold tensors and plain values only, and are read without unpickling code."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
import torch

from crfrnn.io.checkpoint import load_checkpoint, load_model, save_checkpoint
from crfrnn.models import create


class _Payload:
    """Unpickling this runs ``touch <path>``: what a hostile "checkpoint" does."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return os.system, (f"touch '{self.path}'",)


def _hostile(tmp_path: Path, name: str = "evil.pt", *, looks_like_ours: bool = True) -> tuple[Path, Path]:
    marker = tmp_path / "pwned"
    payload = {"format": "crfrnn-checkpoint-v1", "x": _Payload(marker)} if looks_like_ours else _Payload(marker)
    path = tmp_path / name
    torch.save(payload, path)
    return path, marker


def _small(tmp_path: Path, name: str = "ok.pt", **extra) -> Path:
    model = create("small_fcn", num_classes=3, width=4)
    return save_checkpoint(
        tmp_path / name,
        model,
        model_name="small_fcn",
        model_kwargs={"num_classes": 3, "width": 4},
        num_classes=3,
        **extra,
    )


class TestLoadIsSafe:
    @pytest.mark.parametrize("looks_like_ours", [True, False])
    @pytest.mark.parametrize("loader", [load_checkpoint, load_model])
    def test_code_in_a_checkpoint_does_not_run(self, loader, looks_like_ours, tmp_path):
        path, marker = _hostile(tmp_path, looks_like_ours=looks_like_ours)
        with pytest.raises(ValueError, match=r"refusing to load .*evil\.pt.*could run code"):
            loader(path)
        assert not marker.exists()

    def test_init_from_and_resume_do_not_run_code(self, tmp_path):
        from crfrnn.workflow import TrainConfig, train

        path, marker = _hostile(tmp_path)
        config = TrainConfig(
            out_dir=str(tmp_path / "run"),
            init_from=str(path),
            num_train=2,
            num_val=0,
            image_size=32,
            crop_size=32,
            epochs=1,
            model_kwargs={"width": 4},
        )
        with pytest.raises(ValueError, match="refusing to load"):
            train(config, progress=False)
        run = tmp_path / "resume"
        run.mkdir()
        os.replace(path, run / "last.pt")
        with pytest.raises(ValueError, match="refusing to load"):
            train(TrainConfig(out_dir=str(run)), progress=False, resume=True)
        assert not marker.exists()

    def test_evaluate_command_does_not_run_code(self, tmp_path, capsys):
        from crfrnn.cli import main

        path, marker = _hostile(tmp_path)
        assert main(["evaluate", str(path), "--out", str(tmp_path / "ev")]) == 2
        err = capsys.readouterr().err
        assert "refusing to load" in err and "Traceback" not in err
        assert not marker.exists()


class TestCheckpoint:
    def test_round_trip_with_plain_extras(self, tmp_path):
        path = _small(tmp_path, epoch=3, rng={"numpy": torch.arange(4), "gauss": None}, names=("a", "b"))
        model, payload = load_model(path)
        assert payload["epoch"] == 3 and payload["rng"]["numpy"].tolist() == [0, 1, 2, 3]
        assert isinstance(model, torch.nn.Module)

    def test_permissions_follow_the_umask(self, tmp_path):
        old = os.umask(0o022)
        try:
            path = _small(tmp_path)
        finally:
            os.umask(old)
        assert stat.S_IMODE(path.stat().st_mode) == 0o644  # like config.yaml, not mkstemp's 0o600

    def test_missing_entries_are_named(self, tmp_path):
        payload = torch.load(_small(tmp_path), weights_only=True)
        del payload["num_classes"]
        torch.save(payload, tmp_path / "no_classes.pt")
        with pytest.raises(ValueError, match=r"no_classes\.pt lacks 'num_classes'"):
            load_model(tmp_path / "no_classes.pt")

    def test_cuda_without_cuda_says_so(self, tmp_path):
        if torch.cuda.is_available():
            pytest.skip("this machine has CUDA")
        with pytest.raises(ValueError, match="CUDA is not available.*map_location='cpu'"):
            load_checkpoint(_small(tmp_path), map_location="cuda")

    def test_not_a_checkpoint(self, tmp_path):
        (tmp_path / "junk.pt").write_bytes(b"junk")
        with pytest.raises(ValueError, match="cannot read checkpoint"):
            load_checkpoint(tmp_path / "junk.pt")
        torch.save({"weights": torch.ones(1)}, tmp_path / "other.pt")
        with pytest.raises(ValueError, match="not a crfrnn checkpoint"):
            load_checkpoint(tmp_path / "other.pt")


class TestBoundedCheckpoints:
    """Model arguments and declared sizes in a checkpoint are checked before anything is built or inflated."""

    def test_huge_width_is_refused_before_building(self, tmp_path):
        model = create("small_fcn", num_classes=2, width=4, depth=1)
        path = save_checkpoint(
            tmp_path / "c.pt", model, model_name="small_fcn", model_kwargs={"width": 60000}, num_classes=2
        )
        with pytest.raises(ValueError, match=r"'width'.*60000.*at most"):
            load_model(path)

    def test_nested_kwargs_are_bounded(self, tmp_path):
        model = create("small_fcn", num_classes=2, width=4, depth=1)
        kwargs = {"num_classes": 2, "backbone_kwargs": {"width": 4, "depth": 10**6}}
        path = save_checkpoint(
            tmp_path / "c.pt", model, model_name="small_fcn_crfrnn", model_kwargs=kwargs, num_classes=2
        )
        with pytest.raises(ValueError, match=r"'backbone_kwargs.depth'.*at most"):
            load_model(path)

    def test_zip_entry_declaring_a_huge_size_is_refused(self, tmp_path):
        import zipfile

        path = tmp_path / "bomb.pt"
        with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf, zf.open("bomb/data.pkl", "w") as fh:
            for _ in range(64):  # 64 MB of zeros, written 1 MB at a time: 64 KB on disk
                fh.write(bytes(1 << 20))
        with pytest.raises(ValueError, match="uncompressed"):
            load_checkpoint(path)

    def test_legitimate_checkpoint_still_loads(self, tmp_path):
        model = create("small_fcn", num_classes=3, width=8, depth=1)
        kwargs = {"num_classes": 3, "width": 8, "depth": 1}
        path = save_checkpoint(tmp_path / "c.pt", model, model_name="small_fcn", model_kwargs=kwargs, num_classes=3)
        assert isinstance(load_model(path)[0], torch.nn.Module)

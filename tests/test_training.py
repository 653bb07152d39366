"""Tests of training (crfrnn.workflow): configuration, model building, parameter groups, exact resume and DDP."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from crfrnn.io.checkpoint import load_checkpoint, load_model, save_checkpoint
from crfrnn.models import create
from crfrnn.workflow import (
    TrainConfig,
    build_model,
    build_optimizer,
    load_config,
    segmentation_loss,
    train,
)
from crfrnn.workflow._config import coerce_value
from crfrnn.workflow._distributed import state_hash

# A run that takes about a second: 8 images of 48x48, a width-8 SmallFCN, 2 steps per epoch.
TINY = dict(num_train=8, num_val=4, image_size=48, crop_size=48, batch_size=4, model_kwargs={"width": 8})
TINY_CRF = dict(TINY, model_kwargs={"backbone_kwargs": {"width": 8}}, num_iterations=2, num_eval_iterations=3)


def tiny(out: Path, **kw) -> TrainConfig:
    return TrainConfig(out_dir=str(out), **{**TINY, **kw})


def tiny_crf(out: Path, **kw) -> TrainConfig:
    return TrainConfig(out_dir=str(out), stage="crfrnn", **{**TINY_CRF, **kw})


def state_of(path: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(path)["state_dict"]


def assert_same_state(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# --------------------------------------------------------------------------------------------- config
class TestTrainConfig:
    def test_defaults(self, tmp_path):
        cfg = TrainConfig(out_dir=str(tmp_path))
        assert cfg.stage == "cnn" and cfg.model == "small_fcn" and cfg.dataset == "synthetic"
        assert (cfg.num_iterations, cfg.num_eval_iterations) == (5, 10)
        assert cfg.optimizer == "sgd" and cfg.workers == 0
        assert TrainConfig(out_dir=str(tmp_path), stage="crfrnn").model is None  # resolved when built

    def test_unknown_key_names_it_and_lists_valid_keys(self, tmp_path):
        with pytest.raises(KeyError) as info:
            TrainConfig.from_dict({"out_dir": str(tmp_path), "epohcs": 3})
        message = info.value.args[0]
        assert "'epohcs'" in message and "Did you mean 'epochs'" in message
        assert "batch_size" in message and "crf_kernel_lr_mult" in message

    def test_yaml_then_overrides(self, tmp_path):
        path = tmp_path / "c.yaml"
        path.write_text("out_dir: run\nepochs: 7\nlr: 1e-3\nbatch-size: 2\nmodel_kwargs: {width: 16}\n")
        cfg = load_config(path, epochs=3, seed=None)
        assert cfg.epochs == 3  # the override wins
        assert cfg.lr == 1e-3  # YAML 1.1 reads 1e-3 as a string: converted
        assert cfg.batch_size == 2 and cfg.model_kwargs == {"width": 16} and cfg.seed == 0

    def test_save_round_trip(self, tmp_path):
        cfg = tiny(tmp_path / "run", lr=0.05, stage="cnn")
        again = load_config(cfg.save(tmp_path / "c.yaml"))
        assert again == cfg

    def test_exceptions(self, tmp_path):
        with pytest.raises(ValueError, match="stage must be one of"):
            TrainConfig(out_dir="x", stage="crf")
        with pytest.raises(ValueError, match="batch_size must be >= 1"):
            TrainConfig(out_dir="x", batch_size=0)
        with pytest.raises(TypeError, match="epochs must be an integer"):
            TrainConfig(out_dir="x", epochs="many")
        with pytest.raises(ValueError, match="min_scale"):
            TrainConfig(out_dir="x", min_scale=2.0, max_scale=1.0)
        with pytest.raises(ValueError, match="no run directory"):
            TrainConfig.from_dict({"epochs": 1})
        with pytest.raises(FileNotFoundError, match="not found"):
            load_config(tmp_path / "missing.yaml")
        (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
        with pytest.raises(ValueError, match="mapping"):
            load_config(tmp_path / "list.yaml")

    def test_values_are_checked_against_the_real_type_hints(self):
        # the annotations are strings (``from __future__ import annotations``); parsing them as text once let
        # anything but "Optional[...]" through unchecked, e.g. a field annotated ``int | None``
        @dataclasses.dataclass
        class Extended(TrainConfig):
            limit: int | None = None
            ratio: float | None = None
            kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)

        assert Extended(out_dir="x", limit=3.0, ratio="0.5").limit == 3
        assert Extended(out_dir="x", ratio="0.5").ratio == 0.5
        assert Extended(out_dir="x").limit is None
        for field, value, message in (
            ("limit", "abc", "limit must be an integer, got 'abc'"),
            ("ratio", "abc", "ratio must be a number, got 'abc'"),
            ("kwargs", [1], "kwargs must be a mapping"),
        ):
            with pytest.raises(ValueError, match=message):
                Extended(out_dir="x", **{field: value})
        with pytest.raises(ValueError, match="epochs must be an integer, got 'abc'"):
            coerce_value("epochs", "abc", int | None)
        with pytest.raises(ValueError, match="epochs must not be None"):
            coerce_value("epochs", None, int)
        with pytest.raises(ValueError, match=r"mode: TrainConfig cannot check the annotation int \| str"):
            coerce_value("mode", 1, int | str)
        with pytest.raises(TypeError, match="epochs must be an integer"):  # still a TypeError for callers
            TrainConfig(out_dir="x", epochs="abc")


# ------------------------------------------------------------------------------------------ building
class TestBuildModel:
    def test_stage_model_mismatch(self, tmp_path):
        with pytest.raises(ValueError, match="stage 'cnn' trains the CNN alone.*small_fcn_crfrnn"):
            build_model(tiny(tmp_path, model="small_fcn_crfrnn"), 7)
        with pytest.raises(ValueError, match="stage 'crfrnn'.*'small_fcn' has none"):
            build_model(tiny_crf(tmp_path, model="small_fcn"), 7)
        with pytest.raises(ValueError, match="unknown model 'small_fnc'.*Did you mean 'small_fcn'"):
            build_model(tiny(tmp_path, model="small_fnc"), 7)
        with pytest.raises(FileNotFoundError, match="checkpoint not found"):
            build_model(tiny_crf(tmp_path, init_from=str(tmp_path / "nope.pt")), 7)

    def test_init_from_copies_backbone(self, tmp_path):
        torch.manual_seed(1)
        cnn = create("small_fcn", num_classes=7, width=8)
        with torch.no_grad():
            for p in cnn.parameters():
                p.add_(torch.randn_like(p))
        ckpt = save_checkpoint(
            tmp_path / "cnn.pt", cnn, model_name="small_fcn", model_kwargs={"num_classes": 7, "width": 8}, num_classes=7
        )
        # backbone_kwargs are taken from the checkpoint, the model name from its name + "_crfrnn"
        cfg = TrainConfig(out_dir=str(tmp_path), stage="crfrnn", init_from=str(ckpt), num_iterations=3)
        model, name, kwargs = build_model(cfg, 7)
        assert name == "small_fcn_crfrnn"
        assert kwargs["backbone_kwargs"] == {"width": 8}
        assert kwargs["crf_kwargs"] == {"num_iterations": 3, "num_eval_iterations": 10}
        assert_same_state(model.backbone.state_dict(), cnn.state_dict())
        rebuilt = create(name, **kwargs)  # the kwargs rebuild the architecture
        rebuilt.load_state_dict(model.state_dict())

    def test_init_from_wrong_architecture_or_classes(self, tmp_path):
        cnn = create("small_fcn", num_classes=7, width=8)
        ckpt = save_checkpoint(
            tmp_path / "cnn.pt", cnn, model_name="small_fcn", model_kwargs={"num_classes": 7, "width": 8}, num_classes=7
        )
        cfg = tiny_crf(tmp_path, init_from=str(ckpt), model_kwargs={"backbone_kwargs": {"width": 16}})
        with pytest.raises(ValueError, match="do not fit the backbone.*backbone_kwargs"):
            build_model(cfg, 7)
        with pytest.raises(ValueError, match="7 classes but the data set has 5"):
            build_model(tiny_crf(tmp_path, init_from=str(ckpt)), 5)

    def test_parameter_groups(self, tmp_path):
        cfg = tiny_crf(tmp_path, lr=0.02, crf_kernel_lr_mult=10.0, crf_compat_lr_mult=2.0, weight_decay=1e-4)
        model, _, _ = build_model(cfg, 7)
        groups = {g["name"]: g for g in build_optimizer(model, cfg).param_groups}
        assert set(groups) == {"cnn", "crf_kernel", "crf_compatibility"}
        assert groups["cnn"]["lr"] == pytest.approx(0.02) and groups["cnn"]["weight_decay"] == 1e-4
        assert groups["crf_kernel"]["lr"] == pytest.approx(0.2) and groups["crf_kernel"]["weight_decay"] == 0.0
        assert groups["crf_compatibility"]["lr"] == pytest.approx(0.04)
        ids = lambda ps: {id(p) for p in ps}  # noqa: E731
        assert ids(groups["crf_kernel"]["params"]) == ids([model.crf.spatial_weights, model.crf.bilateral_weights])
        assert ids(groups["crf_compatibility"]["params"]) == {id(model.crf.compatibility)}
        assert len(groups["cnn"]["params"]) == len(list(model.backbone.parameters()))

    def test_the_safe_start_gate_is_a_crf_parameter_without_weight_decay(self, tmp_path):
        cfg = tiny_crf(tmp_path, weight_decay=1e-4, model_kwargs={"safe_start": True})
        model, _, _ = build_model(cfg, 7)
        groups = {g["name"]: g for g in build_optimizer(model, cfg).param_groups}
        assert {id(model.crf_gate)} == {id(p) for p in groups["crf_other"]["params"]}
        assert groups["crf_other"]["weight_decay"] == 0.0
        assert id(model.crf_gate) not in {id(p) for p in groups["cnn"]["params"]}

    def test_freeze_backbone_trains_the_crf_alone(self, tmp_path):
        stage1 = train(tiny(tmp_path / "cnn", epochs=1), progress=False)
        result = train(
            tiny_crf(tmp_path / "crf", epochs=1, init_from=stage1["last_checkpoint"], freeze_backbone=True),
            progress=False,
        )
        model, _ = load_model(result["last_checkpoint"])
        start = load_checkpoint(stage1["last_checkpoint"])["state_dict"]
        for key, value in model.backbone.state_dict().items():  # weights and batch-norm statistics alike
            assert torch.equal(value, start[key]), key
        assert not torch.equal(model.crf.compatibility, 1 - torch.eye(7))  # the CRF did train
        from crfrnn.workflow._build import freeze_backbone

        groups = {g["name"] for g in build_optimizer(freeze_backbone(model), tiny_crf(tmp_path)).param_groups}
        assert groups == {"crf_kernel", "crf_compatibility"}  # nothing of the CNN left for the optimiser
        with pytest.raises(ValueError, match="needs a CNN with a CRF-RNN head"):
            freeze_backbone(create("small_fcn", num_classes=3))
        with pytest.raises(ValueError, match="freeze_backbone .* needs stage 'crfrnn'"):
            tiny(tmp_path, freeze_backbone=True)


class TestSegmentationLoss:
    def test_ignores_void_pixels(self):
        torch.manual_seed(0)
        logits, target = torch.randn(2, 4, 5, 6), torch.randint(0, 4, (2, 5, 6))
        target[0, :2] = 255
        valid = target != 255
        expected = -torch.log_softmax(logits, 1).gather(1, target.clamp(max=3)[:, None])[:, 0][valid].mean()
        torch.testing.assert_close(segmentation_loss(logits, target), expected)

    def test_all_void_gives_zero_not_nan(self):
        logits = torch.randn(1, 3, 4, 4, requires_grad=True)
        loss = segmentation_loss(logits, torch.full((1, 4, 4), 255))
        assert loss.item() == 0.0
        loss.backward()
        assert torch.equal(logits.grad, torch.zeros_like(logits))


# ------------------------------------------------------------------------------------------ training
class TestTrain:
    def test_run_directory(self, tmp_path):
        out = tmp_path / "run"
        result = train(tiny(out, epochs=2), progress=False)
        assert sorted(p.name for p in out.iterdir()) == [".lock", "best.pt", "config.yaml", "last.pt", "metrics.jsonl"]
        records = read_jsonl(out / "metrics.jsonl")
        assert [r["epoch"] for r in records] == [1, 2]
        for r in records:
            assert r["train_loss"] > 0 and 0 <= r["val_mean_iou"] <= 1 and 0 <= r["val_pixel_accuracy"] <= 1
            assert r["seconds"] > 0
        assert records[1]["train_loss"] < records[0]["train_loss"]
        assert load_config(out / "config.yaml") == tiny(out, epochs=2)
        model, payload = load_model(out / "last.pt")
        assert payload["epoch"] == 2 and payload["global_step"] == 4 and payload["stage"] == "cnn"
        assert payload["model"] == {"name": "small_fcn", "kwargs": {"width": 8, "num_classes": 7}}
        assert {"optimizer", "scheduler", "rng_states", "config", "metrics"} <= payload.keys()
        assert_same_state(model.state_dict(), result["model"].state_dict())
        best = load_checkpoint(out / "best.pt")
        assert best["epoch"] == result["best_epoch"]
        assert best["metrics"]["val_mean_iou"] == max(r["val_mean_iou"] for r in records)
        assert result["val_mean_iou"] == records[-1]["val_mean_iou"]

    def test_refuses_to_overwrite_a_run(self, tmp_path):
        train(tiny(tmp_path, epochs=1), progress=False)
        with pytest.raises(ValueError, match="already holds a run"):
            train(tiny(tmp_path, epochs=1), progress=False)

    @pytest.mark.filterwarnings("ignore:stage 'crfrnn' without init_from")
    @pytest.mark.parametrize("stage, workers", [("cnn", 0), ("crfrnn", 0), ("cnn", 2)])
    def test_resume_equals_uninterrupted(self, tmp_path, stage, workers):
        make = tiny if stage == "cnn" else tiny_crf
        # dropout on and random augmentation: the RNG states must really be restored; with workers, the
        # augmentation runs in the workers, seeded from (seed, epoch)
        train(make(tmp_path / "full", epochs=2, workers=workers), progress=False)
        part = train(make(tmp_path / "part", epochs=2, workers=workers), progress=False, stop_after=1)
        assert part["epoch"] == 1 and not part["completed"]
        assert load_checkpoint(tmp_path / "part" / "last.pt")["epoch"] == 1
        resumed = train(make(tmp_path / "part", epochs=2, workers=workers), progress=False, resume=True)
        assert resumed["epoch"] == 2 and resumed["completed"]
        assert_same_state(state_of(tmp_path / "part" / "last.pt"), state_of(tmp_path / "full" / "last.pt"))
        a, b = read_jsonl(tmp_path / "full" / "metrics.jsonl"), read_jsonl(tmp_path / "part" / "metrics.jsonl")
        assert [r["train_loss"] for r in a] == [r["train_loss"] for r in b]
        full_opt = load_checkpoint(tmp_path / "full" / "last.pt")["optimizer"]["state"]
        part_opt = load_checkpoint(tmp_path / "part" / "last.pt")["optimizer"]["state"]
        for k in full_opt:
            assert torch.equal(full_opt[k]["momentum_buffer"], part_opt[k]["momentum_buffer"])

    def test_resume_is_sensitive(self, tmp_path):
        """The equality above is not trivial: a run without restored RNG states ends elsewhere."""
        full = train(tiny(tmp_path / "full", epochs=2), progress=False)
        other = train(tiny(tmp_path / "other", epochs=2, seed=1), progress=False)
        a, b = full["model"].state_dict(), other["model"].state_dict()
        assert any(not torch.equal(a[k], b[k]) for k in a)
        # the same data order but different dropout/augmentation also changes the result
        train(tiny(tmp_path / "part", epochs=2), progress=False, stop_after=1)
        ckpt = load_checkpoint(tmp_path / "part" / "last.pt")
        ckpt["rng_states"] = []  # as if the states had not been saved: resume re-seeds
        torch.save(ckpt, tmp_path / "part" / "last.pt")
        with pytest.warns(UserWarning, match="re-seeded"):
            train(tiny(tmp_path / "part", epochs=2), progress=False, resume=True)
        c = state_of(tmp_path / "part" / "last.pt")
        assert any(not torch.equal(a[k], c[k]) for k in a)

    def test_resume_checks(self, tmp_path):
        with pytest.raises(FileNotFoundError, match="cannot resume"):
            train(tiny(tmp_path / "none", epochs=2), progress=False, resume=True)
        train(tiny(tmp_path / "run", epochs=2), progress=False, stop_after=1)
        with pytest.raises(ValueError, match=r"different settings \(lr: was 0.01, now 0.5\)"):
            train(tiny(tmp_path / "run", epochs=2, lr=0.5), progress=False, resume=True)
        # more epochs may be asked for on resume
        result = train(tiny(tmp_path / "run", epochs=3), progress=False, resume=True)
        assert result["epoch"] == 3
        assert [r["epoch"] for r in read_jsonl(tmp_path / "run" / "metrics.jsonl")] == [1, 2, 3]

    def test_two_stages(self, tmp_path):
        stage1 = train(tiny(tmp_path / "cnn", epochs=1), progress=False)
        result = train(tiny_crf(tmp_path / "crf", epochs=1, init_from=stage1["last_checkpoint"]), progress=False)
        model, payload = load_model(result["last_checkpoint"])
        assert payload["model"]["name"] == "small_fcn_crfrnn" and payload["stage"] == "crfrnn"
        assert model.crf.num_iterations == 2 and model.crf.num_eval_iterations == 3
        assert load_config(tmp_path / "crf" / "config.yaml").model == "small_fcn_crfrnn"
        record = read_jsonl(tmp_path / "crf" / "metrics.jsonl")[0]
        assert {"val_mean_iou", "val_mean_iou_cnn", "crf_spatial_weight_mean"} <= record.keys()
        # end to end: the CRF's parameters and the backbone both moved from their starting values
        assert not torch.equal(model.crf.compatibility, 1 - torch.eye(7))
        start = load_checkpoint(stage1["last_checkpoint"])["state_dict"]
        moved = [k for k, v in model.backbone.state_dict().items() if not torch.equal(v, start[k])]
        assert "classifier.weight" in moved


class TestRunDirectory:
    """Issue 10: one writer per run directory, a crash-cut metrics line does not block --resume."""

    def test_second_writer_is_refused(self, tmp_path):
        import fcntl

        out = tmp_path / "run"
        out.mkdir()
        with open(out / ".lock", "w") as held:  # another process (here: another open file) holds the lock
            fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
            held.write("4242\n")
            held.flush()
            with pytest.raises(ValueError, match=r"in use by another training process \(pid 4242, lock file"):
                train(tiny(out, epochs=1), progress=False)
        assert sorted(p.name for p in out.iterdir()) == [".lock"]  # nothing was written

    def test_stale_lock_of_a_dead_process_is_ignored(self, tmp_path):
        out = tmp_path / "run"
        out.mkdir()
        (out / ".lock").write_text("999999999\n")  # left by a run that was killed: nobody holds the lock
        assert train(tiny(out, epochs=1), progress=False)["epoch"] == 1
        assert (out / ".lock").read_text().strip() == str(os.getpid())

    def test_lock_is_released_after_a_failure(self, tmp_path):
        out = tmp_path / "run"
        with pytest.raises(ValueError):
            train(tiny(out, epochs=1, model="fcn8s_crfrnn"), progress=False)  # wrong stage: fails early
        assert train(tiny(out, epochs=1), progress=False)["epoch"] == 1

    def test_cut_last_metrics_line_is_dropped_on_resume(self, tmp_path):
        out = tmp_path / "run"
        train(tiny(out, epochs=2), progress=False, stop_after=1)
        with open(out / "metrics.jsonl", "a") as fh:
            fh.write('{"epoch": 2, "train_lo')  # the run died while writing epoch 2's record
        with pytest.warns(UserWarning, match=r"dropping the last line of '.*metrics\.jsonl'"):
            result = train(tiny(out, epochs=2), progress=False, resume=True)
        assert result["epoch"] == 2
        assert [r["epoch"] for r in read_jsonl(out / "metrics.jsonl")] == [1, 2]

    def test_broken_metrics_line_in_the_middle_names_the_file(self, tmp_path):
        out = tmp_path / "run"
        train(tiny(out, epochs=3), progress=False, stop_after=2)
        lines = (out / "metrics.jsonl").read_text().splitlines()
        (out / "metrics.jsonl").write_text(lines[0][:10] + "\n" + lines[1] + "\n")
        with pytest.raises(ValueError, match=r"metrics\.jsonl' line 1 is not JSON"):
            train(tiny(out, epochs=3), progress=False, resume=True)

    def test_checkpoint_permissions_match_the_other_files(self, tmp_path):
        import stat

        old = os.umask(0o027)
        try:
            train(tiny(tmp_path / "run", epochs=1), progress=False)
        finally:
            os.umask(old)
        modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in (tmp_path / "run").iterdir()}
        assert modes["last.pt"] == modes["best.pt"] == modes["config.yaml"] == modes["metrics.jsonl"] == 0o640

    def test_mask_label_outside_the_classes_names_the_file(self, tmp_path):
        import numpy as np
        from PIL import Image

        from crfrnn.data import save_label_png

        for d in ("img", "msk"):
            (tmp_path / d).mkdir()
        for i, top in enumerate((2, 40)):
            Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(tmp_path / "img" / f"a{i}.png")
            save_label_png(tmp_path / "msk" / f"a{i}.png", np.full((32, 32), top))
        config = tiny(
            tmp_path / "run",
            dataset="folder",
            images=str(tmp_path / "img"),
            masks=str(tmp_path / "msk"),
            num_classes=3,
            epochs=1,
            batch_size=2,
            num_val=0,
        )
        with pytest.raises(
            ValueError, match=r"mask '.*a1\.png' holds label\(s\) \[40\] outside the valid range 0\.\.2"
        ):
            train(config, progress=False)
        with pytest.raises(ValueError, match=r"target labels \[40\] are outside the valid range 0\.\.2"):
            segmentation_loss(torch.zeros(1, 3, 2, 2), torch.full((1, 2, 2), 40))

    def test_rng_states_are_plain(self, tmp_path):
        train(tiny(tmp_path / "run", epochs=1), progress=False)
        states = torch.load(tmp_path / "run" / "last.pt", weights_only=True)["rng_states"]
        assert isinstance(states[0]["numpy"]["keys"], torch.Tensor)
        assert isinstance(states[0]["python"]["state"], torch.Tensor)


# ------------------------------------------------------------------------------------------------ DDP
def test_distributed_two_processes(tmp_path):
    """torchrun with 2 CPU processes (gloo): rank 0 writes, every rank ends with the same model."""
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "crfrnn",
        "train",
        "--out",
        str(out),
        "--quiet",
        "--epochs",
        "2",
        "--num-train",
        "8",
        "--num-val",
        "5",
        "--image-size",
        "48",
        "--crop-size",
        "48",
        "--batch-size",
        "2",
        "--model-kwargs",
        "{width: 8}",
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    payload = load_checkpoint(out / "last.pt")
    assert payload["world_size"] == 2 and payload["epoch"] == 2
    assert payload["global_step"] == 4  # 8 images / (2 processes x batch 2) = 2 steps per epoch
    hashes = payload["state_hashes"]
    assert len(hashes) == 2 and hashes[0] == hashes[1]  # rank 1 hashed its own copy of the model
    assert len(payload["rng_states"]) == 2
    assert not torch.equal(payload["rng_states"][0]["torch"], payload["rng_states"][1]["torch"])
    model, _ = load_model(out / "last.pt")
    assert state_hash(model) == hashes[0]  # and rank 0 saved exactly that model
    records = read_jsonl(out / "metrics.jsonl")
    assert [r["epoch"] for r in records] == [1, 2]  # one line per epoch: only rank 0 writes
    # validation was sharded (3 + 2 images) and its confusion matrices summed: same as all 5 in one process
    from crfrnn.data import synthetic_splits
    from crfrnn.metrics import ConfusionMatrix

    val = synthetic_splits(0, num_train=8, num_val=5, num_test=0, size=48)[1]
    cm = ConfusionMatrix(7)
    with torch.no_grad():
        for image, mask in val:
            cm.update(model(image[None]).argmax(1), mask[None])
    assert records[-1]["val_mean_iou"] == pytest.approx(cm.compute()["mean_iou"], abs=1e-6)
    assert not list(out.glob("*.tmp"))


class TestBoundedConfig:
    """YAML aliases (billion laughs) and deep nesting are refused before they expand."""

    def test_aliases_are_refused(self, tmp_path):
        lines = ["a0: &a0 [x, x, x]"]  # a small billion laughs: each level three times the one before
        lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 3)}]" for i in range(1, 4)]
        path = tmp_path / "laughs.yaml"
        path.write_text("\n".join(lines) + "\nout_dir: run\n")
        with pytest.raises(ValueError, match="alias"):
            load_config(path)

    def test_deep_nesting_is_refused(self, tmp_path):
        path = tmp_path / "deep.yaml"
        path.write_text("out_dir: run\nmodel_kwargs: " + "[" * 100 + "]" * 100 + "\n")
        with pytest.raises(ValueError, match="deeper than 32"):
            load_config(path)

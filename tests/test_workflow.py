"""Tests of the helpers that crfrnn.workflow shares between training, evaluation and the reproduction.

Each idea has one implementation; these tests pin that the callers that used to carry their own copy agree
with it (training's validation and :func:`evaluate`, the data set opener and ``synthetic_splits``).
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from crfrnn.data import synthetic_splits
from crfrnn.models import create
from crfrnn.workflow import evaluate
from crfrnn.workflow._datasets import open_dataset, synthetic_spec
from crfrnn.workflow._distributed import resolve_device
from crfrnn.workflow._report import BoundaryCurve, finite, jsonable, plot_boundary, save_method_grid
from crfrnn.workflow._validate import validation_metrics


@pytest.fixture(scope="module")
def data():
    return synthetic_splits(3, num_train=0, num_val=4, num_test=0, size=24)[1]


class TestFinite:
    def test_smoke(self):
        assert finite(0.25) == 0.25 and finite(3) == 3.0 and isinstance(finite(3), float)
        assert finite(np.float32(0.5)) == 0.5

    def test_not_finite(self):
        for value in (math.nan, math.inf, -math.inf, None, True, False, "0.5", [1.0]):
            assert finite(value) is None, value


class TestJsonable:
    def test_strict_json(self):
        out = jsonable({"a": (1.0, math.nan), 2: torch.tensor([0.5, math.inf]), "n": np.int64(4)})
        assert out == {"a": [1.0, None], "2": [0.5, None], "n": 4}
        json.dumps(out, allow_nan=False)  # raises if a NaN slipped through


class TestResolveDevice:
    def test_smoke(self):
        assert resolve_device("cpu") == torch.device("cpu")
        assert resolve_device(torch.device("cpu")) == torch.device("cpu")
        assert resolve_device("auto") == torch.device("cuda" if torch.cuda.is_available() else "cpu")

    def test_exception(self):
        with pytest.raises(ValueError, match="not a valid torch device"):
            resolve_device("gpu7")
        if not torch.cuda.is_available():
            with pytest.raises(ValueError, match="CUDA is not available"):
                resolve_device("cuda")


class TestOpenDataset:
    def test_synthetic_matches_synthetic_splits(self, data):
        opened = open_dataset("synthetic", "val", num_images=4, synthetic={"seed": 3, "size": 24})
        assert len(opened) == len(data) == 4
        for k in range(4):
            for a, b in zip(opened[k], data[k]):
                assert torch.equal(a, b)

    def test_exception(self):
        with pytest.raises(ValueError, match="splits are"):
            open_dataset("synthetic", "validation", num_images=1)
        with pytest.raises(ValueError, match="num_images"):
            open_dataset("synthetic", "val")
        with pytest.raises(ValueError, match="voc_root"):
            open_dataset("voc", "val")
        with pytest.raises(ValueError, match="images and masks"):
            open_dataset("folder", images="x")
        with pytest.raises(ValueError, match="unknown data set kind"):
            open_dataset("coco")

    def test_synthetic_spec(self):
        payload = {
            "config": {"dataset": "synthetic", "image_size": 40, "data_seed": 5, "synthetic_kwargs": {"void_band": 1}}
        }
        assert synthetic_spec(payload) == {"seed": 5, "size": 40, "void_band": 1}
        assert synthetic_spec(payload, size=32, seed=0, void_band=2) == {"seed": 0, "size": 32, "void_band": 2}
        # without a training config: defaults, and the shapes read from the class names
        names = {"class_names": ["background", "box", "ring"]}
        assert synthetic_spec(names) == {"seed": 0, "size": 96, "shapes": ("box", "ring")}
        assert synthetic_spec({"class_names": ["background", "disk"]}) == {"seed": 0, "size": 96}  # not shapes


class TestOneValidationLoop:
    """Training's validation record is evaluate()'s numbers, not a second loop's."""

    @pytest.mark.parametrize("name", ["small_fcn", "small_fcn_crfrnn"])
    def test_equals_evaluate(self, data, name):
        torch.manual_seed(0)
        kwargs = {"width": 8} if name == "small_fcn" else {"backbone_kwargs": {"width": 8}}
        model = create(name, num_classes=7, **kwargs).train()
        record = validation_metrics(model, data, num_classes=7, batch_size=2, device=torch.device("cpu"))
        assert model.training  # the training flags are restored
        segmenter = name.endswith("_crfrnn")
        methods = ("cnn", "crfrnn") if segmenter else ("cnn",)
        full = evaluate(model, data, num_classes=7, methods=methods, batch_size=2, progress=False)["methods"]
        refined = full["crfrnn" if segmenter else "cnn"]
        assert record["val_mean_iou"] == refined["mean_iou"]
        assert record["val_pixel_accuracy"] == refined["pixel_accuracy"]
        assert record["val_mean_class_accuracy"] == refined["mean_class_accuracy"]
        assert len(record["val_per_class_iou"]) == 7
        if segmenter:
            assert record["val_mean_iou_cnn"] == full["cnn"]["mean_iou"]
        else:
            assert "val_mean_iou_cnn" not in record

    def test_leaves_the_global_random_state_alone(self, data):
        model = create("small_fcn", num_classes=7, width=8)
        state = torch.get_rng_state()
        validation_metrics(model, data, num_classes=7, batch_size=4, device=torch.device("cpu"))
        assert torch.equal(torch.get_rng_state(), state)


class TestPictures:
    def test_plot_boundary(self, tmp_path):
        pytest.importorskip("matplotlib")
        curve = BoundaryCurve(
            "CNN",
            {"pixel_accuracy": [(1, 50.0), (3, 60.0)], "mean_iou": [(1, 40.0), (3, 45.0)]},
            spread={"mean_iou": ([39.0, 44.0], [41.0, 46.0])},
            style="--",
        )
        path = plot_boundary(tmp_path / "b.png", [curve], title="t", xticks=[1, 3])
        assert Image.open(path).size == (1000, 400)

    def test_save_method_grid(self, tmp_path, data):
        cnn = create("small_fcn", num_classes=7, width=8)
        crf = create("small_fcn_crfrnn", num_classes=7, backbone_kwargs={"width": 8})
        runs = [(cnn, ("cnn", "cnn+densecrf"), None), (crf, ("crfrnn",), None)]
        path = save_method_grid(tmp_path / "g.png", data, runs, num_images=10)  # more than the data set holds
        width, height = Image.open(path).size
        # 24-pixel tiles up-scaled 5 times (to >= 100 px), 4 padding: image | truth | 3 methods, 4 rows, titles
        assert width == 4 + 5 * (120 + 4)
        assert height > 4 + 4 * (120 + 4)


class TestRunLock:
    def test_a_symlinked_lock_is_refused_and_its_target_kept(self, tmp_path):
        from crfrnn.workflow._rundir import RunLock

        outside = tmp_path / "outside.txt"
        outside.write_text("keep me\n")
        (tmp_path / "run").mkdir()
        (tmp_path / "run" / ".lock").symlink_to(outside)
        with pytest.raises(ValueError, match=r"'.*\.lock' is a symbolic link.*not follow"):
            RunLock.acquire(tmp_path / "run")
        assert outside.read_text() == "keep me\n"
        (tmp_path / "dangling").mkdir()
        (tmp_path / "dangling" / ".lock").symlink_to(tmp_path / "nowhere")  # not created through the link either
        with pytest.raises(ValueError, match="symbolic link"):
            RunLock.acquire(tmp_path / "dangling")
        assert not (tmp_path / "nowhere").exists()

    def test_a_lock_that_is_not_a_regular_file_is_refused(self, tmp_path):
        import os

        from crfrnn.workflow._rundir import RunLock

        os.mkfifo(tmp_path / ".lock")
        with pytest.raises(ValueError, match="not a regular file"):
            RunLock.acquire(tmp_path)
        (tmp_path / "hard").mkdir()
        outside = tmp_path / "outside.txt"
        outside.write_text("keep me\n")
        os.link(outside, tmp_path / "hard" / ".lock")
        with pytest.raises(ValueError, match="other links"):
            RunLock.acquire(tmp_path / "hard")
        assert outside.read_text() == "keep me\n"

    def test_a_plain_lock_is_taken_and_holds_the_pid(self, tmp_path):
        import os

        from crfrnn.workflow._rundir import RunLock

        lock = RunLock.acquire(tmp_path)
        assert lock is not None and (tmp_path / ".lock").read_text() == f"{os.getpid()}\n"
        lock.release()


def test_labels_of_scores_are_torchs_argmax():
    """The workflow's labelling (a compiled argmax on the CPU) gives ``argmax(1)``'s labels: ties, NaN, one label,
    volumes, strided and half-precision scores."""
    from crfrnn.workflow._predict import labels_of_scores

    g = torch.Generator().manual_seed(0)
    for shape in [(2, 5, 7, 9), (1, 21, 3, 4, 5), (3, 1, 4, 4), (0, 3, 4, 4)]:
        ties = torch.randint(0, 3, shape, generator=g).float()
        for scores in (ties, ties.double(), torch.randn(shape, generator=g), ties.half()):
            got = labels_of_scores(scores)
            assert got.dtype == torch.int64 and torch.equal(got, scores.argmax(1))
    scores = torch.randn(2, 6, 8, 8, generator=g)
    scores[1, 3, 2, 2] = float("nan")
    assert torch.equal(labels_of_scores(scores), scores.argmax(1))
    strided = torch.randn(2, 8, 8, 6, generator=g).permute(0, 3, 1, 2)
    assert torch.equal(labels_of_scores(strided), strided.argmax(1))

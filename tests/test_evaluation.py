"""Tests of evaluation (crfrnn.workflow) against independent NumPy / SciPy computations of the metrics."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from PIL import Image
from torch import nn

from crfrnn import dense_crf
from crfrnn.data import SyntheticShapes
from crfrnn.models import create
from crfrnn.params import DENSECRF_DEFAULTS as DENSE_CRF_DEFAULTS
from crfrnn.workflow import (
    METHOD_TITLES,
    PLOT_DPI,
    PLOT_SIZE,
    evaluate,
    format_table,
    predict,
    search_dense_crf,
    write_report,
)

WIDTHS = (1, 2, 5)
CODE = 30.0  # DecodeModel reads its prediction from the image's green channel: label = green / CODE


# ---------------------------------------------------------------------------------------------------------
# models whose output is known
# ---------------------------------------------------------------------------------------------------------
class DecodeModel(nn.Module):
    """A per-pixel "CNN" whose prediction is written in the image: label = round(green / CODE)."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.anchor = nn.Parameter(torch.zeros(()))  # gives the model a device
        self.calls = 0

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        labels = (image[:, 1] / CODE).round().long().clamp(0, self.num_classes - 1)
        return F.one_hot(labels, self.num_classes).permute(0, 3, 1, 2).to(image.dtype) * 5.0 + self.anchor


class FlipModel(nn.Module):
    """Two-region "CNN": label 1 where the red channel is bright, with isolated weak errors at ``flips``."""

    def __init__(self, flips: torch.Tensor, margin: float = 1.0) -> None:
        super().__init__()
        self.register_buffer("flips", flips)
        self.margin = margin
        self.calls = 0

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        labels = (image[:, 0] > 128).long() ^ self.flips.long()
        return F.one_hot(labels, 2).permute(0, 3, 1, 2).to(image.dtype) * self.margin


def decode_samples(sizes, num_classes, seed=0, void=True, absent=()):
    """``(image, target)`` pairs with blocky targets, void pixels, and a prediction coded in the image."""
    rng = np.random.default_rng(seed)
    classes = [c for c in range(num_classes) if c not in absent]
    samples, preds = [], []
    for h, w in sizes:
        coarse = rng.choice(classes, size=(h // 6 + 1, w // 6 + 1))
        target = np.kron(coarse, np.ones((6, 6), np.int64))[:h, :w]
        pred = target.copy()
        wrong = rng.random((h, w)) < 0.25
        pred[wrong] = rng.choice(classes, size=int(wrong.sum()))
        # a shifted copy: errors concentrate at the boundaries
        pred[:, 1:] = np.where(rng.random((h, w - 1)) < 0.3, pred[:, :-1], pred[:, 1:])
        if void:
            target[rng.random((h, w)) < 0.05] = 255
        image = np.stack([rng.uniform(0, 255, (h, w)), pred * CODE, rng.uniform(0, 255, (h, w))])
        samples.append((torch.from_numpy(image).float(), torch.from_numpy(target)))
        preds.append(pred)
    return samples, preds


def halves_sample(h=24, w=32):
    image = torch.full((3, h, w), 60.0)
    image[:, :, w // 2 :] = 190.0
    target = torch.zeros(h, w, dtype=torch.long)
    target[:, w // 2 :] = 1
    flips = torch.zeros(h, w, dtype=torch.bool)
    flips[2::6, 3::7] = True  # isolated pixels, away from the boundary
    return image, target, flips


# ---------------------------------------------------------------------------------------------------------
# independent reference
# ---------------------------------------------------------------------------------------------------------
def reference_metrics(preds, targets, num_classes, widths=WIDTHS, ignore=255):
    """Metrics from scratch: NumPy confusion matrices and SciPy's exact Euclidean distance transform."""
    ndimage = pytest.importorskip("scipy.ndimage")

    def scores(cm):
        tp = np.diag(cm)
        union = cm.sum(0) + cm.sum(1) - tp
        with np.errstate(invalid="ignore", divide="ignore"):
            iou = np.where(union > 0, tp / union, np.nan)
            acc = np.where(cm.sum(1) > 0, tp / cm.sum(1), np.nan)
        return {
            "mean_iou": float(np.nanmean(iou)),
            "per_class_iou": iou.tolist(),
            "pixel_accuracy": float(tp.sum() / cm.sum()),
            "mean_class_accuracy": float(np.nanmean(acc)),
            "num_pixels": int(cm.sum()),
        }

    cm = np.zeros((num_classes, num_classes), np.int64)
    bands = {w: np.zeros_like(cm) for w in widths}
    for p, t in zip(preds, targets):
        p, t = np.asarray(p), np.asarray(t)
        valid = t != ignore
        np.add.at(cm, (t[valid], p[valid]), 1)
        edge = np.zeros(t.shape, bool)
        for a, b in (
            ((slice(None), slice(0, -1)), (slice(None), slice(1, None))),
            ((slice(0, -1), slice(None)), (slice(1, None), slice(None))),
        ):
            differ = valid[a] & valid[b] & (t[a] != t[b])
            edge[a] |= differ
            edge[b] |= differ
        dist = ndimage.distance_transform_edt(~edge)
        for w in widths:
            keep = valid & (dist <= w)
            np.add.at(bands[w], (t[keep], p[keep]), 1)
    out = scores(cm)
    out["confusion_matrix"] = cm.tolist()
    out["boundary"] = {w: scores(m) for w, m in bands.items()}
    return out


def assert_matches(got, ref):
    assert got["confusion_matrix"] == ref["confusion_matrix"]
    for key in ("mean_iou", "pixel_accuracy", "mean_class_accuracy"):
        assert got[key] == pytest.approx(ref[key], abs=1e-12), key
    np.testing.assert_allclose(got["per_class_iou"], ref["per_class_iou"], atol=1e-12)
    assert [b["width"] for b in got["boundary"]] == sorted(ref["boundary"])
    for b in got["boundary"]:
        r = ref["boundary"][b["width"]]
        assert b["num_pixels"] == r["num_pixels"]
        assert b["pixel_accuracy"] == pytest.approx(r["pixel_accuracy"], abs=1e-12)
        assert b["mean_iou"] == pytest.approx(r["mean_iou"], abs=1e-12)


@pytest.fixture(scope="module")
def crfrnn_setup():
    torch.manual_seed(0)
    model = create("small_fcn_crfrnn", num_classes=7, backbone_kwargs={"width": 8}).eval()
    return model, SyntheticShapes(3, size=48, seed=1)


# ---------------------------------------------------------------------------------------------------------
# evaluate
# ---------------------------------------------------------------------------------------------------------
class TestEvaluate:
    def test_smoke(self, crfrnn_setup):
        model, data = crfrnn_setup
        r = evaluate(model, data, num_classes=7, boundary_widths=WIDTHS, progress=False)
        assert list(r["methods"]) == ["cnn", "crfrnn"]
        assert r["num_images"] == 3 and r["num_classes"] == 7 and r["boundary_widths"] == list(WIDTHS)
        assert r["dense_crf_params"] is None
        for m in r["methods"].values():
            assert 0.0 <= m["mean_iou"] <= 1.0 and m["num_pixels"] == 3 * 48 * 48
            assert len(m["per_class_iou"]) == 7 and m["seconds_per_image"] > 0
        json.dumps(r)  # JSON-friendly as returned

    def test_perfect_model(self):
        samples, _ = decode_samples([(30, 36), (24, 24)], 4)
        oracle = [(img.clone(), t) for img, t in samples]
        for img, t in oracle:  # write the target itself into the image (void -> 0: not counted anyway)
            img[1] = torch.where(t == 255, 0, t).float() * CODE
        r = evaluate(DecodeModel(4), oracle, num_classes=4, boundary_widths=WIDTHS, methods=["cnn"], progress=False)
        m = r["methods"]["cnn"]
        assert m["mean_iou"] == 1.0 and m["pixel_accuracy"] == 1.0 and m["mean_class_accuracy"] == 1.0
        assert all(b["pixel_accuracy"] == 1.0 and b["mean_iou"] == 1.0 for b in m["boundary"])
        assert m["num_pixels"] == sum(int((t != 255).sum()) for _, t in oracle)

    def test_known_predictions_match_reference(self):
        samples, preds = decode_samples([(30, 36), (24, 24), (18, 30)], 4, seed=3)
        r = evaluate(DecodeModel(4), samples, num_classes=4, methods=("cnn",), boundary_widths=WIDTHS, progress=False)
        ref = reference_metrics(preds, [t for _, t in samples], 4)
        assert 0.2 < ref["mean_iou"] < 0.9  # a case where the numbers mean something
        assert_matches(r["methods"]["cnn"], ref)

    def test_batched_with_padding_equals_one_by_one(self):
        samples, _ = decode_samples([(30, 36), (24, 24), (18, 30)], 4, seed=4)
        kwargs = dict(num_classes=4, methods=("cnn",), boundary_widths=WIDTHS, progress=False)
        one = evaluate(DecodeModel(4), samples, batch_size=1, **kwargs)
        two = evaluate(DecodeModel(4), samples, batch_size=2, **kwargs)
        assert one["methods"]["cnn"]["confusion_matrix"] == two["methods"]["cnn"]["confusion_matrix"]
        assert one["methods"]["cnn"]["boundary"] == two["methods"]["cnn"]["boundary"]

    def test_max_images(self):
        samples, preds = decode_samples([(30, 36), (24, 24), (18, 30)], 4, seed=5)
        r = evaluate(
            DecodeModel(4),
            samples,
            num_classes=4,
            methods=("cnn",),
            boundary_widths=WIDTHS,
            max_images=2,
            progress=False,
        )
        assert r["num_images"] == 2
        assert_matches(r["methods"]["cnn"], reference_metrics(preds[:2], [t for _, t in samples[:2]], 4))

    def test_segmenter_methods_match_direct_forward(self, crfrnn_setup):
        model, data = crfrnn_setup
        r = evaluate(model, data, num_classes=7, boundary_widths=WIDTHS, progress=False)
        images = [data[i][0][None] for i in range(len(data))]
        targets = [data[i][1] for i in range(len(data))]
        with torch.no_grad():
            cnn = [model(x, use_crf=False).argmax(1)[0] for x in images]
            full = [model(x).argmax(1)[0] for x in images]
        assert_matches(r["methods"]["cnn"], reference_metrics(cnn, targets, 7))
        assert_matches(r["methods"]["crfrnn"], reference_metrics(full, targets, 7))

    def test_cnn_runs_once_per_batch_in_eval_mode(self, crfrnn_setup):
        model, data = crfrnn_setup
        calls, crf_modes = [], []
        h1 = model.backbone.register_forward_hook(lambda *a: calls.append(1))
        h2 = model.crf.register_forward_hook(lambda mod, *a: crf_modes.append(mod.training))
        model.train()
        try:
            evaluate(model, data, num_classes=7, methods=("cnn", "cnn+densecrf", "crfrnn"), progress=False)
        finally:
            h1.remove()
            h2.remove()
        assert len(calls) == len(data)
        assert crf_modes == [False] * len(data)  # eval mode: the CRF ran num_eval_iterations
        assert model.training and model.crf.training and model.backbone.training  # flags restored
        model.eval()

    def test_dense_crf_is_applied(self):
        image, target, flips = halves_sample()
        model = FlipModel(flips)
        r = evaluate(
            model,
            [(image, target)],
            num_classes=2,
            methods=("cnn", "cnn+densecrf"),
            boundary_widths=WIDTHS,
            progress=False,
        )
        cnn, crf = r["methods"]["cnn"], r["methods"]["cnn+densecrf"]
        assert cnn["pixel_accuracy"] == pytest.approx(1 - flips.float().mean().item())
        assert crf["pixel_accuracy"] > 0.99 > cnn["pixel_accuracy"]
        assert crf["mean_iou"] > cnn["mean_iou"]
        with torch.no_grad():
            q = dense_crf(image[None], logits=model(image[None]), **DENSE_CRF_DEFAULTS)
        assert_matches(crf, reference_metrics([q.argmax(1)[0]], [target], 2))
        assert r["dense_crf_params"] == DENSE_CRF_DEFAULTS

    def test_dense_crf_params_are_used(self):
        image, target, flips = halves_sample()
        off = evaluate(
            FlipModel(flips),
            [(image, target)],
            num_classes=2,
            methods=("cnn", "cnn+densecrf"),
            dense_crf_params={"gaussian_compat": 0.0, "bilateral_compat": 0.0},
            progress=False,
        )
        assert off["methods"]["cnn+densecrf"]["confusion_matrix"] == off["methods"]["cnn"]["confusion_matrix"]
        assert off["dense_crf_params"]["bilateral_compat"] == 0.0

    def test_exception(self, crfrnn_setup):
        model, data = crfrnn_setup
        plain = DecodeModel(7)
        with pytest.raises(ValueError, match="CrfRnnSegmenter"):
            evaluate(plain, data, num_classes=7, methods=("cnn", "crfrnn"), progress=False)
        with pytest.raises(ValueError, match="unknown method"):
            evaluate(model, data, num_classes=7, methods=("cnn", "crf"), progress=False)
        with pytest.raises(ValueError, match="bilateral_srgb"):
            evaluate(
                model, data, num_classes=7, methods=("cnn+densecrf",), dense_crf_params={"srgb": 3}, progress=False
            )
        with pytest.raises(ValueError, match="empty"):
            evaluate(model, [], num_classes=7, progress=False)
        with pytest.raises(ValueError, match="batch_size"):
            evaluate(model, data, num_classes=7, batch_size=0, progress=False)
        with pytest.raises(ValueError, match="7 classes but num_classes=3"):
            evaluate(model, data, num_classes=3, methods=("cnn",), progress=False)
        with pytest.raises(ValueError, match="target labels"):  # data with labels the model does not know
            evaluate(DecodeModel(3), data, num_classes=3, methods=("cnn",), progress=False)

    def test_predict(self, crfrnn_setup):
        model, data = crfrnn_setup
        image = data[0][0][None]
        out = predict(model, image, methods=("crfrnn", "cnn"))
        assert list(out) == ["cnn", "crfrnn"]
        with torch.no_grad():
            assert torch.equal(out["cnn"], model(image, use_crf=False).argmax(1))
            assert torch.equal(out["crfrnn"], model(image).argmax(1))


# ---------------------------------------------------------------------------------------------------------
# distributed: every process evaluates a shard, the matrices are summed
# ---------------------------------------------------------------------------------------------------------
def _distributed_worker(rank: int, world_size: int, store_path: str, out_path: str) -> None:
    store = dist.FileStore(store_path, world_size)
    dist.init_process_group("gloo", store=store, rank=rank, world_size=world_size)
    try:
        samples, _ = decode_samples([(30, 36), (24, 24), (18, 30)], 4, seed=6)
        r = evaluate(DecodeModel(4), samples, num_classes=4, methods=("cnn",), boundary_widths=WIDTHS, progress=False)
        Path(f"{out_path}.{rank}").write_text(json.dumps(r))
    finally:
        dist.destroy_process_group()


def test_distributed_equals_single_process(tmp_path):
    samples, preds = decode_samples([(30, 36), (24, 24), (18, 30)], 4, seed=6)
    single = evaluate(DecodeModel(4), samples, num_classes=4, methods=("cnn",), boundary_widths=WIDTHS, progress=False)
    mp.spawn(_distributed_worker, args=(2, str(tmp_path / "store"), str(tmp_path / "r")), nprocs=2, join=True)
    for rank in range(2):
        r = json.loads((tmp_path / f"r.{rank}").read_text())
        assert r["num_images"] == 3
        assert r["methods"]["cnn"]["confusion_matrix"] == single["methods"]["cnn"]["confusion_matrix"]
        assert r["methods"]["cnn"]["boundary"] == single["methods"]["cnn"]["boundary"]


# ---------------------------------------------------------------------------------------------------------
# search_dense_crf
# ---------------------------------------------------------------------------------------------------------
class TestSearchDenseCrf:
    GRID = {"gaussian_compat": [0.0, 3.0], "bilateral_compat": [0.0, 10.0]}

    def test_table_and_best(self):
        image, target, flips = halves_sample()
        model = FlipModel(flips)
        data = [(image, target), (image.clone(), target.clone())]
        best, table = search_dense_crf(model, data, num_classes=2, grid=self.GRID, progress=False)
        assert model.calls == len(data)  # CNN logits computed once per image, reused by all 4 grid points
        assert [(row["gaussian_compat"], row["bilateral_compat"]) for row in table] == [
            (0.0, 0.0),
            (0.0, 10.0),
            (3.0, 0.0),
            (3.0, 10.0),
        ]
        cnn = evaluate(model, data, num_classes=2, methods=("cnn",), progress=False)["methods"]["cnn"]
        assert table[0]["mean_iou"] == pytest.approx(cnn["mean_iou"])  # no pairwise term: the CNN itself
        top = max(table, key=lambda row: row["mean_iou"])
        assert best["bilateral_compat"] == top["bilateral_compat"]
        assert best["gaussian_compat"] == top["gaussian_compat"]
        assert top["mean_iou"] > cnn["mean_iou"]
        assert set(best) == set(DENSE_CRF_DEFAULTS)
        for row in table:  # every row is what evaluate reports with those parameters
            params = {k: row[k] for k in self.GRID}
            again = evaluate(
                model, data, num_classes=2, methods=("cnn+densecrf",), dense_crf_params=params, progress=False
            )
            assert row["mean_iou"] == pytest.approx(again["methods"]["cnn+densecrf"]["mean_iou"])

    def test_base_params_and_max_images(self):
        image, target, flips = halves_sample()
        model = FlipModel(flips)
        best, table = search_dense_crf(
            model,
            [(image, target)] * 3,
            num_classes=2,
            grid={"bilateral_srgb": [5.0]},
            base_params={"num_iterations": 2},
            max_images=1,
            progress=False,
        )
        assert model.calls == 1 and len(table) == 1
        assert best["num_iterations"] == 2 and best["bilateral_srgb"] == 5.0

    def test_exception(self):
        image, target, flips = halves_sample()
        with pytest.raises(ValueError, match="unknown dense CRF parameter"):
            search_dense_crf(FlipModel(flips), [(image, target)], num_classes=2, grid={"sxy": [1]}, progress=False)
        with pytest.raises(ValueError, match="empty"):
            search_dense_crf(
                FlipModel(flips), [(image, target)], num_classes=2, grid={"bilateral_sxy": []}, progress=False
            )


# ---------------------------------------------------------------------------------------------------------
# reports
# ---------------------------------------------------------------------------------------------------------
def _reject_constant(name: str):
    raise ValueError(f"non-standard JSON constant {name}")


@pytest.fixture(scope="module")
def report_results():
    samples, _ = decode_samples([(30, 36), (24, 24)], 5, seed=7, absent=(4,))  # class 4 never appears
    return evaluate(DecodeModel(5), samples, num_classes=5, methods=("cnn",), progress=False)


class TestWriteReport:
    @pytest.fixture
    def results(self, report_results):
        return report_results

    def test_files(self, tmp_path, results):
        names = ["bg", "one", "two", "three", "four"]
        paths = write_report(results, tmp_path / "report", class_names=names, title="My run")
        assert set(paths) == {"results", "metrics", "boundary"}
        assert all(p.is_file() and p.parent == tmp_path / "report" for p in paths.values())

        data = json.loads(paths["results"].read_text(), parse_constant=_reject_constant)  # strict JSON
        assert {"num_images", "num_classes", "boundary_widths", "methods", "class_names"} <= set(data)
        cnn = data["methods"]["cnn"]
        assert cnn["per_class_iou"][4] is None  # NaN written as null
        assert cnn["mean_iou"] == pytest.approx(results["methods"]["cnn"]["mean_iou"])
        assert [b["width"] for b in cnn["boundary"]] == [1, 2, 3, 5, 8, 10, 15, 20]

        md = paths["metrics"].read_text()
        assert md.startswith("# My run")
        assert "| CNN |" in md and "## Per-class IoU" in md and "| 3: three |" in md
        assert f"{100 * results['methods']['cnn']['mean_iou']:.2f}" in md

        with Image.open(paths["boundary"]) as im:
            assert im.format == "PNG"
            assert im.size == (int(PLOT_SIZE[0] * PLOT_DPI), int(PLOT_SIZE[1] * PLOT_DPI))

    def test_all_methods_and_search(self, tmp_path, crfrnn_setup):
        model, data = crfrnn_setup
        r = evaluate(
            model, data, num_classes=7, methods=("cnn", "cnn+densecrf", "crfrnn"), max_images=1, progress=False
        )
        best, table = search_dense_crf(
            model, data, num_classes=7, grid={"bilateral_srgb": [5.0, 13.0]}, max_images=1, progress=False
        )
        r["dense_crf_search"] = {"best_params": best, "table": table, "num_images": 1}
        paths = write_report(r, tmp_path, plot=False)
        assert "boundary" not in paths and not (tmp_path / "boundary.png").exists()
        md = paths["metrics"].read_text()
        for title in METHOD_TITLES.values():
            assert f"| {title} |" in md
        assert "## Dense CRF parameter search" in md and "bilateral_srgb" in md
        loaded = json.loads(paths["results"].read_text())
        assert loaded["dense_crf_search"]["best_params"] == best
        assert write_report(loaded, tmp_path / "again", plot=False)["metrics"].read_text() == md  # round trip

    def test_format_table(self, results):
        text = format_table(results, widths=(1, 20, 99))
        lines = text.splitlines()
        assert lines[0].startswith("| method | mIoU") and "boundary acc. 1px" in lines[0]
        assert "boundary acc. 20px" in lines[0] and "99px" not in lines[0]
        assert len(lines) == 3 and lines[2].startswith("| CNN |")

    def test_exception(self, tmp_path, results):
        with pytest.raises(ValueError, match="evaluate"):
            write_report({"methods": {}}, tmp_path)
        (tmp_path / "file").write_text("x")
        with pytest.raises(NotADirectoryError):
            write_report(results, tmp_path / "file")


def test_nan_never_reaches_the_markdown(tmp_path):
    samples, _ = decode_samples([(24, 24)], 3, seed=8, absent=(2,))
    r = evaluate(DecodeModel(3), samples, num_classes=3, methods=("cnn",), progress=False)
    assert math.isnan(r["methods"]["cnn"]["per_class_iou"][2])
    md = write_report(r, tmp_path, plot=False)["metrics"].read_text()
    assert re.search(r"\bnan\b", md, flags=re.IGNORECASE) is None

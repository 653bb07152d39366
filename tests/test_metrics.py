"""Tests of crfrnn.metrics against straightforward numpy references."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from crfrnn.metrics import (
    BoundaryAccuracy,
    ConfusionMatrix,
    boundary_accuracy,
    boundary_band,
    boundary_mask,
    confusion_matrix,
    metrics_from_confusion_matrix,
    segmentation_metrics,
)

IGNORE = 255


# ---------------------------------------------------------------------------------------------------------
# numpy references
# ---------------------------------------------------------------------------------------------------------
def expected_confusion(pred, target, num_classes, ignore_index=IGNORE, mask=None):
    pred, target = np.asarray(pred).ravel(), np.asarray(target).ravel()
    keep = np.ones_like(target, dtype=bool) if mask is None else np.asarray(mask).ravel()
    out = np.zeros((num_classes, num_classes), dtype=np.int64)
    for p, t, k in zip(pred, target, keep):
        if k and t != ignore_index:
            out[t, p] += 1
    return out


def expected_metrics(matrix):
    m = matrix.astype(np.float64)
    ious, accs = [], []
    for c in range(len(m)):
        tp, fn, fp = m[c, c], m[c].sum() - m[c, c], m[:, c].sum() - m[c, c]
        ious.append(tp / (tp + fp + fn) if tp + fp + fn > 0 else math.nan)
        accs.append(tp / (tp + fn) if tp + fn > 0 else math.nan)
    present = [i for i in ious if not math.isnan(i)]
    present_acc = [a for a in accs if not math.isnan(a)]
    return {
        "per_class_iou": ious,
        "mean_iou": sum(present) / len(present) if present else math.nan,
        "pixel_accuracy": np.trace(m) / m.sum() if m.sum() > 0 else math.nan,
        "per_class_accuracy": accs,
        "mean_class_accuracy": sum(present_acc) / len(present_acc) if present_acc else math.nan,
    }


def expected_band(target, width, ignore_index=IGNORE, include_void_edges=False):
    """Brute force: Euclidean distance from every pixel to every boundary pixel."""
    target = np.asarray(target)
    squeeze = target.ndim == 2
    target = target[None] if squeeze else target
    out = np.zeros(target.shape, dtype=bool)
    for b, t in enumerate(target):
        h, w = t.shape
        boundary = np.zeros((h, w), dtype=bool)
        for y in range(h):
            for x in range(w):
                if t[y, x] == ignore_index:
                    continue
                for dy, dx in ((0, 1), (0, -1), (1, 0), (-1, 0)):
                    yy, xx = y + dy, x + dx
                    if 0 <= yy < h and 0 <= xx < w:
                        if t[yy, xx] == ignore_index:
                            boundary[y, x] |= include_void_edges
                        elif t[yy, xx] != t[y, x]:
                            boundary[y, x] = True
        by, bx = np.nonzero(boundary)
        if len(by) == 0:
            continue
        yy, xx = np.mgrid[:h, :w]
        d2 = (yy[..., None] - by) ** 2 + (xx[..., None] - bx) ** 2
        out[b] = np.sqrt(d2.min(-1)) <= width
    return out[0] if squeeze else out


def random_labels(rng, shape, num_classes, void_fraction=0.1, blob=1):
    """Random label maps; blob > 1 makes piecewise-constant regions (nearest up-sampling)."""
    *lead, h, w = shape
    small = rng.integers(0, num_classes, size=(*lead, -(-h // blob), -(-w // blob)))
    labels = small.repeat(blob, -2).repeat(blob, -1)[..., :h, :w]
    labels = np.where(rng.random(labels.shape) < void_fraction, IGNORE, labels)
    return labels


def assert_metrics_equal(got, expected):
    for key in ("mean_iou", "pixel_accuracy", "mean_class_accuracy"):
        np.testing.assert_allclose(got[key], expected[key], rtol=1e-12, err_msg=key)
    for key in ("per_class_iou", "per_class_accuracy"):
        np.testing.assert_allclose(got[key], expected[key], rtol=1e-12, err_msg=key)


# ---------------------------------------------------------------------------------------------------------
# confusion matrix
# ---------------------------------------------------------------------------------------------------------
# target / pred of the hand-worked example, 5 classes: class 3 only predicted, class 4 absent everywhere
HAND_TARGET = [[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 255, 255], [2, 2, 2, 2]]
HAND_PRED = [[0, 1, 1, 1], [0, 0, 1, 0], [2, 0, 1, 2], [2, 2, 2, 3]]


class TestConfusionMatrix:
    def test_smoke(self):
        cm = ConfusionMatrix(3)
        cm.update(torch.tensor([[0, 1], [2, 2]]), torch.tensor([[0, 1], [1, 255]]))
        out = cm.compute()
        assert out["num_pixels"] == 3
        assert out["confusion_matrix"].dtype == torch.int64

    def test_hand_worked_example(self):
        out = segmentation_metrics(torch.tensor(HAND_PRED), torch.tensor(HAND_TARGET), 5)
        expected = torch.tensor([[3, 1, 0, 0, 0], [1, 3, 0, 0, 0], [1, 0, 4, 1, 0], [0, 0, 0, 0, 0], [0, 0, 0, 0, 0]])
        torch.testing.assert_close(out["confusion_matrix"], expected)
        # IoU = TP / (TP + FP + FN): 3/6, 3/5, 4/6, 0/1 (only predicted), NaN (absent)
        np.testing.assert_allclose(out["per_class_iou"][:4], [0.5, 0.6, 2 / 3, 0.0])
        assert math.isnan(out["per_class_iou"][4])
        assert out["mean_iou"] == pytest.approx((0.5 + 0.6 + 2 / 3 + 0.0) / 4)
        assert out["pixel_accuracy"] == pytest.approx(10 / 14)
        assert out["mean_class_accuracy"] == pytest.approx((0.75 + 0.75 + 4 / 6) / 3)
        assert math.isnan(out["per_class_accuracy"][3]) and math.isnan(out["per_class_accuracy"][4])
        assert out["frequency_weighted_iou"] == pytest.approx((4 * 0.5 + 4 * 0.6 + 6 * 2 / 3) / 14)
        assert out["num_pixels"] == 14

    @pytest.mark.parametrize("seed", range(5))
    @pytest.mark.parametrize("shape", [(7, 9), (3, 6, 5)])
    def test_against_reference(self, seed, shape):
        rng = np.random.default_rng(seed)
        num_classes = int(rng.integers(2, 8))
        target = random_labels(rng, shape, num_classes, void_fraction=0.2)
        # a prediction that never uses some classes, so absent classes occur
        pred = rng.integers(0, max(1, num_classes - 2), size=shape)
        matrix = confusion_matrix(torch.from_numpy(pred), torch.from_numpy(target), num_classes)
        ref = expected_confusion(pred, target, num_classes)
        np.testing.assert_array_equal(matrix.numpy(), ref)
        assert_metrics_equal(metrics_from_confusion_matrix(matrix), expected_metrics(ref))

    def test_accumulates_over_batches(self):
        rng = np.random.default_rng(0)
        cm = ConfusionMatrix(4)
        preds = [rng.integers(0, 4, size=(2, 5, 6)) for _ in range(3)]
        targets = [random_labels(rng, (2, 5, 6), 4) for _ in range(3)]
        for p, t in zip(preds, targets):
            cm.update(torch.from_numpy(p), torch.from_numpy(t))
        ref = expected_confusion(np.stack(preds), np.stack(targets), 4)
        np.testing.assert_array_equal(cm.matrix.numpy(), ref)
        assert_metrics_equal(cm.compute(), expected_metrics(ref))
        cm.reset()
        assert cm.matrix.sum() == 0
        assert math.isnan(cm.compute()["mean_iou"]) and math.isnan(cm.compute()["pixel_accuracy"])

    def test_mask(self):
        rng = np.random.default_rng(1)
        pred, target = rng.integers(0, 3, size=(6, 7)), random_labels(rng, (6, 7), 3)
        mask = rng.random((6, 7)) < 0.5
        cm = ConfusionMatrix(3)
        cm.update(torch.from_numpy(pred), torch.from_numpy(target), torch.from_numpy(mask))
        np.testing.assert_array_equal(cm.matrix.numpy(), expected_confusion(pred, target, 3, mask=mask))

    @pytest.mark.parametrize("ignore_index", [255, -1, 3])
    def test_ignore_index(self, ignore_index):
        rng = np.random.default_rng(2)
        target = rng.integers(0, 3, size=(5, 5))
        target[rng.random((5, 5)) < 0.3] = ignore_index
        pred = rng.integers(0, 3, size=(5, 5))
        got = confusion_matrix(torch.from_numpy(pred), torch.from_numpy(target), 3, ignore_index=ignore_index)
        np.testing.assert_array_equal(got.numpy(), expected_confusion(pred, target, 3, ignore_index))

    @pytest.mark.parametrize("pred_dtype", [torch.uint8, torch.int16, torch.int32, torch.int64])
    @pytest.mark.parametrize("target_dtype", [torch.uint8, torch.int32, torch.int64])
    def test_dtypes(self, pred_dtype, target_dtype):
        # uint8 labels must not overflow in the bincount index (target * L + pred)
        rng = np.random.default_rng(3)
        num_classes = 21
        target = random_labels(rng, (2, 8, 8), num_classes)
        pred = rng.integers(0, num_classes, size=(2, 8, 8))
        got = confusion_matrix(
            torch.from_numpy(pred).to(pred_dtype), torch.from_numpy(target).to(target_dtype), num_classes
        )
        np.testing.assert_array_equal(got.numpy(), expected_confusion(pred, target, num_classes))

    def test_non_contiguous(self):
        rng = np.random.default_rng(4)
        pred, target = rng.integers(0, 3, size=(8, 6)), random_labels(rng, (8, 6), 3)
        got = confusion_matrix(torch.from_numpy(pred).t(), torch.from_numpy(target).t(), 3)
        np.testing.assert_array_equal(got.numpy(), expected_confusion(pred.T, target.T, 3))

    def test_device(self):
        cm = ConfusionMatrix(3, device="cpu")
        assert cm.matrix.device == torch.device("cpu")
        cm.update(torch.zeros(2, 2, dtype=torch.long), torch.zeros(2, 2, dtype=torch.long))
        assert cm.matrix.device == torch.device("cpu")

    @pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
    def test_cuda(self):
        rng = np.random.default_rng(5)
        pred, target = rng.integers(0, 3, size=(2, 6, 6)), random_labels(rng, (2, 6, 6), 3)
        cm = ConfusionMatrix(3)
        cm.update(torch.from_numpy(pred).cuda(), torch.from_numpy(target).cuda())
        assert cm.matrix.is_cuda
        np.testing.assert_array_equal(cm.matrix.cpu().numpy(), expected_confusion(pred, target, 3))

    def test_all_reduce_without_process_group_is_noop(self):
        cm = ConfusionMatrix(2)
        cm.update(torch.tensor([[0, 1]]), torch.tensor([[0, 0]]))
        before = cm.matrix.clone()
        assert cm.all_reduce() is cm
        torch.testing.assert_close(cm.matrix, before)

    def test_all_reduce_two_processes(self, tmp_path):
        mp.spawn(_all_reduce_worker, args=(2, str(tmp_path / "store")), nprocs=2, join=True)

    def test_exception(self):
        t = torch.zeros(2, 3, dtype=torch.long)
        with pytest.raises(TypeError, match=r"integer labels.*argmax\(1\)"):
            confusion_matrix(torch.zeros(2, 3), t, 2)
        with pytest.raises(ValueError, match=r"\(B, H, W\) or \(H, W\).*argmax\(1\)"):
            confusion_matrix(torch.zeros(1, 2, 2, 3, dtype=torch.long), t, 2)
        with pytest.raises(ValueError, match=r"same shape, got pred \(3, 2\) and target \(2, 3\)"):
            confusion_matrix(torch.zeros(3, 2, dtype=torch.long), t, 2)
        with pytest.raises(ValueError, match=r"pred labels must be in \[0, 2\).*\[0, 5\]"):
            confusion_matrix(torch.tensor([[0, 5, 1]]), torch.tensor([[0, 1, 1]]), 2)
        with pytest.raises(ValueError, match=r"target labels must be in \[0, 2\) or equal to ignore_index=255"):
            confusion_matrix(torch.tensor([[0, 1, 1]]), torch.tensor([[0, 7, 255]]), 2)
        with pytest.raises(ValueError, match="ignore_index=1 is a valid class"):
            ConfusionMatrix(3, ignore_index=1)
        with pytest.raises(ValueError, match="num_classes"):
            ConfusionMatrix(0)
        with pytest.raises(TypeError, match="torch.Tensor"):
            confusion_matrix(np.zeros((2, 3), dtype=np.int64), t, 2)
        with pytest.raises(ValueError, match="mask must be a bool tensor"):
            ConfusionMatrix(2).update(t, t, torch.ones(2, 3))


def _all_reduce_worker(rank, world_size, store_path):
    store = dist.FileStore(store_path, world_size)
    dist.init_process_group("gloo", store=store, rank=rank, world_size=world_size)
    try:
        cm = ConfusionMatrix(3)
        # rank r sees r + 1 pixels of class r predicted as class 0
        cm.update(torch.zeros(1, rank + 1, dtype=torch.long), torch.full((1, rank + 1), rank))
        cm.all_reduce()
        expected = torch.zeros(3, 3, dtype=torch.long)
        expected[0, 0], expected[1, 0] = 1, 2
        torch.testing.assert_close(cm.matrix, expected)
    finally:
        dist.destroy_process_group()


# ---------------------------------------------------------------------------------------------------------
# boundary bands
# ---------------------------------------------------------------------------------------------------------
class TestBoundaryBand:
    def test_smoke(self):
        band = boundary_band(torch.tensor([[0, 0, 0, 1, 1, 1]]), 1)
        assert band.dtype == torch.bool
        assert band.tolist() == [[False, True, True, True, True, False]]

    def test_boundary_mask_and_void(self):
        # a change of label is a boundary on both sides; void is never a boundary pixel, and label/void
        # transitions count only with include_void_edges
        t = torch.tensor([[0, 0, 1], [0, 255, 1], [0, 0, 0]])
        assert boundary_mask(t).tolist() == [[False, True, True], [False, False, True], [False, False, True]]
        assert boundary_mask(t, include_void_edges=True).tolist() == [
            [False, True, True],
            [True, False, True],
            [False, True, True],
        ]
        assert not boundary_mask(torch.tensor([[0, 255, 1]])).any()

    def test_euclidean_not_square(self):
        # a single boundary pair at the centre; (2, 2) away is at distance 2.83 > 2
        t = torch.zeros(9, 9, dtype=torch.long)
        t[4, 5:] = 1
        t[:4] = t[5:] = 255
        t[4, :4] = 255
        band = boundary_band(t, 2)
        np.testing.assert_array_equal(band.numpy(), expected_band(t.numpy(), 2))
        assert band[4, 4] and band[2, 4] and band[3, 3] and not band[2, 2]

    @pytest.mark.parametrize("seed", range(6))
    @pytest.mark.parametrize("include_void_edges", [False, True])
    def test_against_brute_force(self, seed, include_void_edges):
        rng = np.random.default_rng(seed)
        shape = (2, int(rng.integers(5, 17)), int(rng.integers(5, 17)))
        target = random_labels(rng, shape, int(rng.integers(2, 4)), void_fraction=0.05, blob=int(rng.integers(2, 5)))
        t = torch.from_numpy(target)
        for width in (0, 1, 2, 3, 4, 6, 20):
            got = boundary_band(t, width, include_void_edges=include_void_edges)
            np.testing.assert_array_equal(
                got.numpy(), expected_band(target, width, include_void_edges=include_void_edges), err_msg=str(width)
            )

    def test_no_boundary(self):
        assert not boundary_band(torch.ones(2, 5, 4, dtype=torch.uint8), 3).any()
        assert not boundary_band(torch.full((3, 3), 255), 3).any()
        assert boundary_band(torch.zeros(0, 4, 4, dtype=torch.long), 2).shape == (0, 4, 4)

    @pytest.mark.parametrize("dtype", [torch.uint8, torch.int32, torch.int64])
    def test_dtypes_and_2d(self, dtype):
        rng = np.random.default_rng(7)
        target = random_labels(rng, (9, 11), 3, blob=3)
        got = boundary_band(torch.from_numpy(target).to(dtype), 2)
        assert got.shape == (9, 11)
        np.testing.assert_array_equal(got.numpy(), expected_band(target, 2))

    def test_exception(self):
        with pytest.raises(ValueError, match="non-negative ints"):
            boundary_band(torch.zeros(3, 3, dtype=torch.long), -1)
        with pytest.raises(ValueError, match="non-negative ints"):
            boundary_band(torch.zeros(3, 3, dtype=torch.long), 1.5)
        with pytest.raises(TypeError, match="integer labels"):
            boundary_band(torch.zeros(3, 3), 1)
        with pytest.raises(ValueError, match=r"\(B, H, W\) or \(H, W\)"):
            boundary_band(torch.zeros(3, dtype=torch.long), 1)


class TestBoundaryAccuracy:
    def test_smoke(self):
        acc = BoundaryAccuracy(2, widths=(0, 1))
        acc.update(torch.tensor([[0, 0, 1, 1, 1, 1]]), torch.tensor([[0, 0, 0, 1, 1, 1]]))
        out = acc.compute()
        assert list(out) == [0, 1]
        assert out[0]["pixel_accuracy"] == 0.5 and out[1]["pixel_accuracy"] == 0.75
        assert out[1]["num_pixels"] == 4

    def test_default_widths(self):
        assert BoundaryAccuracy(3).widths == (1, 2, 3, 5, 8, 10, 15, 20)

    @pytest.mark.parametrize("seed", range(3))
    def test_against_reference(self, seed):
        rng = np.random.default_rng(seed)
        widths = (0, 1, 3, 5)
        acc = BoundaryAccuracy(4, widths=widths)
        preds, targets = [], []
        for _ in range(2):
            target = random_labels(rng, (2, 12, 14), 4, void_fraction=0.05, blob=3)
            pred = np.where(rng.random(target.shape) < 0.7, np.where(target == IGNORE, 0, target), 1)
            acc.update(torch.from_numpy(pred).int(), torch.from_numpy(target).to(torch.uint8))
            preds.append(pred)
            targets.append(target)
        pred, target = np.concatenate(preds), np.concatenate(targets)
        out = acc.compute()
        for w in widths:
            ref = expected_metrics(expected_confusion(pred, target, 4, mask=expected_band(target, w)))
            np.testing.assert_allclose(out[w]["pixel_accuracy"], ref["pixel_accuracy"], rtol=1e-12)
            np.testing.assert_allclose(out[w]["mean_iou"], ref["mean_iou"], rtol=1e-12)
        # the functional gives the same on one batch
        one = boundary_accuracy(torch.from_numpy(preds[0]), torch.from_numpy(targets[0]), 4, widths=widths)
        ref = expected_metrics(expected_confusion(preds[0], targets[0], 4, mask=expected_band(targets[0], 3)))
        np.testing.assert_allclose(one[3]["mean_iou"], ref["mean_iou"], rtol=1e-12)

    def test_perfect_prediction_and_reset(self):
        rng = np.random.default_rng(9)
        target = torch.from_numpy(random_labels(rng, (1, 10, 10), 3, void_fraction=0.0, blob=4))
        acc = BoundaryAccuracy(3, widths=(1, 2))
        acc.update(target, target)
        assert all(r["pixel_accuracy"] == 1.0 and r["mean_iou"] == 1.0 for r in acc.compute().values())
        acc.reset()
        assert all(math.isnan(r["pixel_accuracy"]) for r in acc.compute().values())

    def test_exception(self):
        with pytest.raises(ValueError, match="at least one"):
            BoundaryAccuracy(2, widths=())
        with pytest.raises(ValueError, match="non-negative ints"):
            BoundaryAccuracy(2, widths=(1, -2))
        with pytest.raises(ValueError, match="pred labels"):
            BoundaryAccuracy(2).update(torch.tensor([[0, 3]]), torch.tensor([[0, 1]]))

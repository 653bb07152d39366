from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from data_testutils import SBD_SPLITS, VOC_SPLITS
from PIL import Image

from crfrnn.data import (
    VOC_CLASSES,
    RandomCrop,
    SBDSegmentation,
    VOCSegmentation,
    save_label_png,
    voc_train_aug,
)


class TestVOCSegmentation:
    def test_smoke(self, voc_tree):
        root, data = voc_tree
        ds = VOCSegmentation(root, "train")
        assert len(ds) == 3
        assert ds.ids == VOC_SPLITS["train"]
        assert ds.num_classes == 21 and ds.class_names == VOC_CLASSES and ds.ignore_index == 255
        for k, i in enumerate(ds.ids):
            image, mask = ds[k]
            img_ref, mask_ref = data[i]
            h, w = mask_ref.shape
            assert image.shape == (3, h, w) and image.dtype == torch.float32
            assert mask.shape == (h, w) and mask.dtype == torch.int64
            # masks are lossless, and 255 (void) survives
            np.testing.assert_array_equal(mask.numpy(), mask_ref)
            assert (mask == 255).any()
            # images are RGB on 0..255 (not normalised); JPEG is lossy but close
            assert 0 <= image.min() and image.max() <= 255
            assert np.abs(image.permute(1, 2, 0).numpy() - img_ref).mean() < 4.0

    @pytest.mark.parametrize("split", ["train", "val", "trainval"])
    def test_split_by_name(self, voc_tree, split):
        root, _ = voc_tree
        expected = VOC_SPLITS["train"] + VOC_SPLITS["val"] if split == "trainval" else VOC_SPLITS[split]
        ds = VOCSegmentation(root, split)
        assert ds.ids == expected and ds.split == split

    def test_split_by_id_list_path(self, voc_tree, tmp_path):
        root, data = voc_tree
        id_file = tmp_path / "reduced_val.txt"
        id_file.write_text("# a comment\n2007_000121\n\n  2007_000032 1\n")
        for split in (str(id_file), id_file):
            ds = VOCSegmentation(root, split)
            assert ds.ids == ["2007_000121", "2007_000032"]
            np.testing.assert_array_equal(ds[0][1].numpy(), data["2007_000121"][1])

    def test_split_by_id_sequence(self, voc_tree):
        root, _ = voc_tree
        assert VOCSegmentation(root, ["2008_000006"]).ids == ["2008_000006"]

    @pytest.mark.parametrize("sub", ["", "VOCdevkit", "VOCdevkit/VOC2012"])
    def test_root_detection(self, voc_tree, sub):
        root, _ = voc_tree
        ds = VOCSegmentation(root / sub if sub else root, "val")
        assert ds.root == root / "VOCdevkit" / "VOC2012"
        assert ds.ids == VOC_SPLITS["val"]

    def test_transform(self, voc_tree):
        root, _ = voc_tree
        ds = VOCSegmentation(root, "train", transform=RandomCrop(8, generator=torch.Generator().manual_seed(0)))
        batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=3)))
        assert batch[0].shape == (3, 3, 8, 8) and batch[1].shape == (3, 8, 8)

    def test_exception_missing_root(self, tmp_path):
        missing = tmp_path / "nowhere"
        with pytest.raises(FileNotFoundError, match="nowhere"):
            VOCSegmentation(missing)
        with pytest.raises(FileNotFoundError, match="JPEGImages"):
            VOCSegmentation(tmp_path)

    def test_exception_missing_mask_dir(self, voc_tree):
        root, _ = voc_tree
        voc = root / "VOCdevkit" / "VOC2012"
        (voc / "SegmentationClass").rename(voc / "moved")
        with pytest.raises(FileNotFoundError, match="SegmentationClass"):
            VOCSegmentation(root)

    def test_exception_unknown_split(self, voc_tree):
        root, _ = voc_tree
        with pytest.raises(FileNotFoundError, match=r"unknown split 'tets'.*'train'"):
            VOCSegmentation(root, "tets")
        with pytest.raises(FileNotFoundError, match="id-list file not found"):
            VOCSegmentation(root, Path(root) / "missing.txt")

    def test_exception_empty_id_list(self, voc_tree, tmp_path):
        root, _ = voc_tree
        (tmp_path / "empty.txt").write_text("\n# nothing\n")
        with pytest.raises(ValueError, match="no ids"):
            VOCSegmentation(root, str(tmp_path / "empty.txt"))

    def test_exception_missing_listed_file(self, voc_tree):
        root, _ = voc_tree
        voc = root / "VOCdevkit" / "VOC2012"
        (voc / "JPEGImages" / "2007_000039.jpg").unlink()
        (voc / "SegmentationClass" / "2007_000121.png").unlink()
        with pytest.raises(FileNotFoundError) as info:
            VOCSegmentation(root, "train")
        assert str(voc / "JPEGImages" / "2007_000039.jpg") in str(info.value)
        with pytest.raises(FileNotFoundError) as info:
            VOCSegmentation(root, "val")
        assert str(voc / "SegmentationClass" / "2007_000121.png") in str(info.value)

    @pytest.mark.parametrize("damage", ["garbage", "truncated"])
    def test_exception_corrupt_image(self, voc_tree, damage):
        root, _ = voc_tree
        path = root / "VOCdevkit" / "VOC2012" / "JPEGImages" / "2007_000063.jpg"
        raw = path.read_bytes()
        path.write_bytes(b"not a jpeg at all" * 10 if damage == "garbage" else raw[: len(raw) // 2])
        ds = VOCSegmentation(root, "train")  # construction only checks existence
        ds[0]
        with pytest.raises(OSError) as info:
            ds[2]
        assert str(path) in str(info.value)

    def test_exception_corrupt_mask(self, voc_tree):
        root, _ = voc_tree
        path = root / "VOCdevkit" / "VOC2012" / "SegmentationClass" / "2007_000032.png"
        path.write_bytes(path.read_bytes()[:40])
        with pytest.raises(OSError) as info:
            VOCSegmentation(root, "train")[0]
        assert str(path) in str(info.value)

    def test_exception_rgb_mask(self, voc_tree):
        root, _ = voc_tree
        path = root / "VOCdevkit" / "VOC2012" / "SegmentationClass" / "2007_000032.png"
        Image.new("RGB", (28, 20), (128, 0, 0)).save(path)
        with pytest.raises(ValueError, match="palette") as info:
            VOCSegmentation(root, "train")[0]
        assert str(path) in str(info.value)

    def test_exception_size_mismatch(self, voc_tree):
        root, _ = voc_tree
        voc = root / "VOCdevkit" / "VOC2012"
        save_label_png(voc / "SegmentationClass" / "2007_000039.png", np.zeros((10, 12), np.uint8))
        with pytest.raises(ValueError, match="sizes differ") as info:
            VOCSegmentation(root, "train")[1]
        msg = str(info.value)
        assert str(voc / "JPEGImages" / "2007_000039.jpg") in msg
        assert str(voc / "SegmentationClass" / "2007_000039.png") in msg
        assert "24x24" in msg and "12x10" in msg


class TestSBDSegmentation:
    def test_smoke(self, sbd_tree):
        root, data = sbd_tree
        ds = SBDSegmentation(root, "train")
        assert ds.ids == SBD_SPLITS["train"]
        image, mask = ds[2]
        img_ref, mask_ref = data[ds.ids[2]]
        assert image.shape == (3, *mask_ref.shape) and image.dtype == torch.float32
        assert mask.dtype == torch.int64
        np.testing.assert_array_equal(mask.numpy(), mask_ref)
        assert np.abs(image.permute(1, 2, 0).numpy() - img_ref).mean() < 4.0

    @pytest.mark.parametrize("sub", ["", "benchmark_RELEASE", "benchmark_RELEASE/dataset"])
    def test_root_detection(self, sbd_tree, sub):
        root, _ = sbd_tree
        ds = SBDSegmentation(root / sub if sub else root, "val")
        assert ds.root == root / "benchmark_RELEASE" / "dataset"
        assert ds.ids == SBD_SPLITS["val"]

    def test_exception_missing_root(self, tmp_path):
        with pytest.raises(FileNotFoundError, match="benchmark_RELEASE"):
            SBDSegmentation(tmp_path)

    def test_exception_missing_listed_file(self, sbd_tree):
        root, _ = sbd_tree
        path = root / "benchmark_RELEASE" / "dataset" / "cls" / "2009_000002.mat"
        path.unlink()
        with pytest.raises(FileNotFoundError) as info:
            SBDSegmentation(root, "val")
        assert str(path) in str(info.value)

    def test_exception_corrupt_mat(self, sbd_tree):
        root, _ = sbd_tree
        path = root / "benchmark_RELEASE" / "dataset" / "cls" / "2009_000001.mat"
        path.write_bytes(b"MATLAB 5.0 MAT-file, but broken" + bytes(20))
        with pytest.raises(OSError) as info:
            SBDSegmentation(root, "train")[2]
        assert str(path) in str(info.value)

    def test_exception_mat_without_gtcls(self, sbd_tree):
        import scipy.io

        root, _ = sbd_tree
        path = root / "benchmark_RELEASE" / "dataset" / "cls" / "2009_000001.mat"
        scipy.io.savemat(path, {"GTinst": {"Segmentation": np.zeros((14, 18), np.uint8)}})
        with pytest.raises(ValueError, match="GTcls") as info:
            SBDSegmentation(root, "train")[2]
        assert str(path) in str(info.value)

    def test_exception_size_mismatch(self, sbd_tree):
        import scipy.io

        root, _ = sbd_tree
        path = root / "benchmark_RELEASE" / "dataset" / "cls" / "2009_000001.mat"
        scipy.io.savemat(path, {"GTcls": {"Segmentation": np.zeros((5, 5), np.uint8)}})
        with pytest.raises(ValueError, match="sizes differ") as info:
            SBDSegmentation(root, "train")[2]
        assert str(path) in str(info.value)

    def test_exception_scipy_missing(self, sbd_tree, monkeypatch):
        root, _ = sbd_tree
        ds = SBDSegmentation(root, "train")
        monkeypatch.setitem(sys.modules, "scipy", None)
        monkeypatch.setitem(sys.modules, "scipy.io", None)
        with pytest.raises(ImportError, match="pip install scipy"):
            ds[0]


class TestVOCTrainAug:
    def test_union_semantics(self, voc_tree, sbd_tree):
        voc_root, voc_data = voc_tree
        sbd_root, sbd_data = sbd_tree
        ds = voc_train_aug(voc_root, sbd_root)
        # VOC train + SBD train + SBD val, minus VOC val; duplicates once.
        expected = set(VOC_SPLITS["train"]) | set(SBD_SPLITS["train"]) | set(SBD_SPLITS["val"])
        expected -= set(VOC_SPLITS["val"])
        assert set(ds.ids) == expected
        assert len(ds) == len(ds.ids) == len(expected) == 7
        assert not set(ds.ids) & set(VOC_SPLITS["val"])
        src = dict(zip(ds.ids, ds.sources))
        # in both VOC and SBD -> the VOC annotation: VOC train id, and an id with a VOC mask outside the lists
        assert src["2007_000039"] == "voc" and src["2008_000006"] == "voc"
        assert src["2009_000001"] == "sbd" and src["2009_000003"] == "sbd"
        for k, i in enumerate(ds.ids):
            image, mask = ds[k]
            ref = voc_data[i][1] if src[i] == "voc" else sbd_data[i][1]
            np.testing.assert_array_equal(mask.numpy(), ref)
            assert image.shape[1:] == mask.shape
        k = ds.ids.index("2007_000039")
        assert (ds[k][1] == 255).any()  # VOC's void band, which the SBD version lacks

    def test_transform(self, voc_tree, sbd_tree):
        ds = voc_train_aug(voc_tree[0], sbd_tree[0], transform=RandomCrop(6))
        assert all(ds[k][1].shape == (6, 6) for k in range(len(ds)))

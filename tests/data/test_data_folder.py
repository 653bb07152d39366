from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from crfrnn.data import SegmentationFolder, save_label_png


def _write_pair(images, masks, stem, ext, h, w, value):
    img = np.full((h, w, 3), value, np.uint8)
    Image.fromarray(img).save(images / f"{stem}{ext}")
    mask = np.zeros((h, w), np.uint8)
    mask[0, :] = 255
    mask[1:, : w // 2] = value % 21
    save_label_png(masks / f"{stem}.png", mask)
    return img, mask


@pytest.fixture
def folders(tmp_path):
    images, masks = tmp_path / "images", tmp_path / "masks"
    images.mkdir()
    masks.mkdir()
    data = {}
    for k, (stem, ext) in enumerate([("b", ".png"), ("a", ".jpg"), ("c", ".BMP"), ("d", ".jpeg")]):
        data[stem] = _write_pair(images, masks, stem, ext, 6 + k, 8, 10 * (k + 1))
    (images / ".hidden.jpg").write_bytes(b"")  # ignored
    (masks / "README.txt").write_text("not a mask")  # ignored: masks are .png
    return images, masks, data


class TestSegmentationFolder:
    def test_smoke(self, folders):
        images, masks, data = folders
        ds = SegmentationFolder(images, masks)
        assert ds.ids == ["a", "b", "c", "d"] and len(ds) == 4
        for k, stem in enumerate(ds.ids):
            image, mask = ds[k]
            img_ref, mask_ref = data[stem]
            assert image.dtype == torch.float32 and image.shape == (3, *mask_ref.shape)
            assert mask.dtype == torch.int64
            np.testing.assert_array_equal(mask.numpy(), mask_ref)
            if stem in ("b", "c"):  # lossless formats
                np.testing.assert_array_equal(image.permute(1, 2, 0).numpy(), img_ref)
        assert ds.image_path(0).name == "a.jpg" and ds.mask_path(0).name == "a.png"

    def test_image_exts(self, folders):
        images, masks, _ = folders
        for path in masks.glob("[bcd].png"):
            path.unlink()
        assert SegmentationFolder(images, masks, image_exts=("jpg",)).ids == ["a"]

    def test_grayscale_index_mask(self, folders):
        images, masks, _ = folders
        Image.fromarray(np.full((6, 8), 3, np.uint8)).save(masks / "b.png")  # mode "L"
        ds = SegmentationFolder(images, masks)
        assert (ds[1][1] == 3).all()

    def test_exception_unpaired(self, folders):
        images, masks, _ = folders
        (masks / "a.png").unlink()
        save_label_png(masks / "zz_orphan.png", np.zeros((2, 2), int))
        with pytest.raises(FileNotFoundError, match="unpaired") as info:
            SegmentationFolder(images, masks)
        msg = str(info.value)
        assert str(images / "a.jpg") in msg and str(masks / "zz_orphan.png") in msg

    def test_exception_unpaired_lists_a_few(self, folders):
        images, masks, _ = folders
        for k in range(9):
            save_label_png(masks / f"extra{k}.png", np.zeros((2, 2), int))
        with pytest.raises(FileNotFoundError, match=r"(?s)9 mask\(s\) without an image.*and 4 more"):
            SegmentationFolder(images, masks)

    def test_exception_rgb_mask(self, folders):
        images, masks, _ = folders
        Image.new("RGB", (8, 6), (128, 0, 0)).save(masks / "a.png")
        ds = SegmentationFolder(images, masks)
        with pytest.raises(ValueError, match="palette") as info:
            ds[0]
        assert str(masks / "a.png") in str(info.value)

    def test_exception_duplicate_stem(self, folders):
        images, masks, _ = folders
        Image.new("RGB", (8, 6)).save(images / "a.png")
        with pytest.raises(ValueError, match="share the stem 'a'"):
            SegmentationFolder(images, masks)

    def test_exception_missing_dir(self, tmp_path):
        with pytest.raises(FileNotFoundError, match="missing_images"):
            SegmentationFolder(tmp_path / "missing_images", tmp_path)

    def test_exception_size_mismatch(self, folders):
        images, masks, _ = folders
        save_label_png(masks / "b.png", np.zeros((3, 3), int))
        with pytest.raises(ValueError, match="sizes differ") as info:
            SegmentationFolder(images, masks)[1]
        assert str(images / "b.png") in str(info.value) and str(masks / "b.png") in str(info.value)

    def test_exception_corrupt_image(self, folders):
        images, masks, _ = folders
        (images / "c.BMP").write_bytes(b"BM" + bytes(10))
        with pytest.raises(OSError, match="could not read image file") as info:
            SegmentationFolder(images, masks)[2]
        assert str(images / "c.BMP") in str(info.value)

from __future__ import annotations

import pytest
import torch

from crfrnn.data import (
    CenterCrop,
    Compose,
    PadTo,
    RandomCrop,
    RandomHorizontalFlip,
    RandomScale,
    pad_collate,
)

W_CODE = 16  # mask value of pixel (row, col) is row * W_CODE + col: unique and < 255 for H, W <= 15


def coord_sample(h: int, w: int):
    """Image whose channels hold each pixel's (row, col, 1); mask encoding the same coordinates."""
    rows = torch.arange(h, dtype=torch.float32)[:, None].expand(h, w)
    cols = torch.arange(w, dtype=torch.float32)[None, :].expand(h, w)
    image = torch.stack([rows, cols, torch.ones(h, w)])
    mask = (rows * W_CODE + cols).long()
    return image, mask


def assert_aligned(image, mask, ignore_index=255):
    """Every non-padded pixel's mask value matches the coordinates stored in the image."""
    valid = mask != ignore_index
    assert valid.any()
    expected = (image[0] * W_CODE + image[1]).round().long()
    assert torch.equal(mask[valid], expected[valid])


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


class TestRandomCrop:
    @pytest.mark.parametrize("seed", range(5))
    def test_aligned_when_larger(self, seed):
        image, mask = coord_sample(15, 13)
        img, msk = RandomCrop((7, 9), generator=gen(seed))(image, mask)
        assert img.shape == (3, 7, 9) and msk.shape == (7, 9) and msk.dtype == torch.int64
        assert (msk != 255).all()
        assert_aligned(img, msk)
        # a contiguous window: rows and columns increase by one
        assert torch.equal(img[0, 1:, 0] - img[0, :-1, 0], torch.ones(6))
        assert torch.equal(img[1, 0, 1:] - img[1, 0, :-1], torch.ones(8))

    @pytest.mark.parametrize("seed", range(5))
    def test_padding_mean_colour(self, seed):
        image, mask = coord_sample(5, 6)
        image[2] = torch.rand(5, 6, generator=gen(100 + seed)) * 255
        img, msk = RandomCrop((8, 10), generator=gen(seed))(image, mask)
        assert img.shape == (3, 8, 10)
        pad = msk == 255
        assert pad.sum() == 8 * 10 - 5 * 6  # the whole image is inside the crop
        mean = image.mean(dim=(1, 2))
        torch.testing.assert_close(img[:, pad], mean[:, None].expand(3, int(pad.sum())))
        assert_aligned(img, msk)

    def test_pad_value_and_ignore_index(self):
        image, mask = coord_sample(3, 3)
        img, msk = RandomCrop(5, pad_value=(1.0, 2.0, 3.0), ignore_index=250, generator=gen(0))(image, mask)
        pad = msk == 250
        assert pad.sum() == 25 - 9
        assert torch.equal(img[:, pad], torch.tensor([1.0, 2.0, 3.0])[:, None].expand(3, 16))
        img, msk = RandomCrop(5, pad_value=7.0, generator=gen(0))(image, mask)
        assert (img[:, msk == 255] == 7.0).all()

    def test_placement_is_random(self):
        image, mask = coord_sample(4, 4)
        offsets = {int((RandomCrop(10, generator=gen(s))(image, mask)[1] != 255).nonzero()[0, 0]) for s in range(30)}
        assert len(offsets) > 2

    def test_determinism(self):
        image, mask = coord_sample(15, 15)
        a = RandomCrop(6, generator=gen(3))(image, mask)
        b = RandomCrop(6, generator=gen(3))(image, mask)
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
        torch.manual_seed(11)
        c = RandomCrop(6)(image, mask)
        torch.manual_seed(11)
        d = RandomCrop(6)(image, mask)
        assert torch.equal(c[1], d[1])
        outs = {tuple(RandomCrop(6, generator=gen(s))(image, mask)[1][0, :2].tolist()) for s in range(10)}
        assert len(outs) > 1

    def test_input_not_modified(self):
        image, mask = coord_sample(5, 5)
        image0, mask0 = image.clone(), mask.clone()
        RandomCrop(8)(image, mask)
        RandomCrop(3)(image, mask)
        assert torch.equal(image, image0) and torch.equal(mask, mask0)

    @pytest.mark.parametrize("size", [0, (3,), (2, -1), "x", 2.5])
    def test_exception_size(self, size):
        with pytest.raises(ValueError, match="size"):
            RandomCrop(size)

    def test_exception_inputs(self):
        image, mask = coord_sample(5, 5)
        with pytest.raises(ValueError, match="differ in size"):
            RandomCrop(3)(image, mask[:4])
        with pytest.raises(TypeError, match="image.float()"):
            RandomCrop(3)(image.to(torch.uint8), mask)
        with pytest.raises(ValueError, match=r"\(C, H, W\)"):
            RandomCrop(3)(image[0], mask)
        with pytest.raises(ValueError, match="pad_value"):
            RandomCrop(8, pad_value=(1.0, 2.0))(image, mask)


class TestRandomHorizontalFlip:
    def test_flip(self):
        image, mask = coord_sample(6, 7)
        img, msk = RandomHorizontalFlip(p=1.0)(image, mask)
        assert torch.equal(img, image.flip(-1)) and torch.equal(msk, mask.flip(-1))
        assert_aligned(img, msk)
        assert img[1, 0, 0] == 6  # column 6 is now first
        img, msk = RandomHorizontalFlip(p=0.0)(image, mask)
        assert torch.equal(img, image) and torch.equal(msk, mask)

    def test_probability(self):
        image, mask = coord_sample(2, 3)
        flip = RandomHorizontalFlip(p=0.5, generator=gen(0))
        flips = sum(int(flip(image, mask)[1][0, 0] != 0) for _ in range(400))
        assert 150 < flips < 250

    def test_exception(self):
        with pytest.raises(ValueError, match="probability"):
            RandomHorizontalFlip(p=1.5)


class TestRandomScale:
    @pytest.mark.parametrize("scale", [0.5, 0.7, 1.0, 1.3, 2.0])
    def test_shape_and_alignment(self, scale):
        image, mask = coord_sample(14, 10)
        img, msk = RandomScale(scale, scale)(image, mask)
        assert img.shape == (3, round(14 * scale), round(10 * scale))
        assert msk.shape == img.shape[1:] and msk.dtype == mask.dtype
        # each output mask pixel comes from a source pixel within one pixel of the resampled coordinates
        row, col = (msk // W_CODE).float(), (msk % W_CODE).float()
        assert (row - img[0]).abs().max() <= 1.0 and (col - img[1]).abs().max() <= 1.0
        assert set(msk.unique().tolist()) <= set(mask.unique().tolist())  # nearest: no new labels

    def test_range_and_determinism(self):
        image, mask = coord_sample(10, 10)
        t = RandomScale(0.5, 1.5, generator=gen(0))
        sizes = [t(image, mask)[1].shape[0] for _ in range(50)]
        assert min(sizes) >= 5 and max(sizes) <= 15 and len(set(sizes)) > 3
        t2 = RandomScale(0.5, 1.5, generator=gen(0))
        assert sizes == [t2(image, mask)[1].shape[0] for _ in range(50)]

    def test_exception(self):
        with pytest.raises(ValueError, match="min_scale"):
            RandomScale(1.5, 0.5)
        with pytest.raises(ValueError, match="min_scale"):
            RandomScale(0.0, 1.0)


class TestCenterCropPadTo:
    def test_center_crop(self):
        image, mask = coord_sample(9, 11)
        img, msk = CenterCrop((5, 7))(image, mask)
        assert img[0, 0, 0] == 2 and img[1, 0, 0] == 2
        assert_aligned(img, msk)
        img, msk = CenterCrop(13)(image, mask)  # pads evenly: 4 rows / 2 columns in total
        valid = (msk != 255).nonzero()
        assert valid[:, 0].min() == 2 and valid[:, 0].max() == 10
        assert valid[:, 1].min() == 1 and valid[:, 1].max() == 11
        assert_aligned(img, msk)

    def test_pad_to(self):
        image, mask = coord_sample(9, 11)
        img, msk = PadTo((12, 10), pad_value=0.0)(image, mask)
        assert img.shape == (3, 12, 11)  # never crops
        assert torch.equal(img[:, :9, :11], image) and torch.equal(msk[:9], mask)
        assert (msk[9:] == 255).all() and (img[:, 9:] == 0).all()


class TestCompose:
    def test_smoke(self):
        image, mask = coord_sample(15, 15)
        t = Compose(
            [
                RandomScale(0.6, 1.4, generator=gen(1)),
                RandomHorizontalFlip(generator=gen(2)),
                RandomCrop(12, generator=gen(3)),
            ]
        )
        for _ in range(10):
            img, msk = t(image, mask)
            assert img.shape == (3, 12, 12) and msk.shape == (12, 12)
        assert "RandomCrop" in repr(t)

    def test_flip_crop_aligned(self):
        image, mask = coord_sample(12, 12)
        t = Compose([RandomHorizontalFlip(p=1.0), RandomCrop(14, generator=gen(0))])
        img, msk = t(image, mask)
        assert_aligned(img, msk)

    def test_exception(self):
        with pytest.raises(TypeError, match="callable"):
            Compose([1])


class TestPadCollate:
    def test_smoke(self):
        batch = [coord_sample(5, 7), coord_sample(9, 4)]
        images, masks = pad_collate(batch)
        assert images.shape == (2, 3, 9, 7) and masks.shape == (2, 9, 7)
        assert torch.equal(images[0, :, :5, :7], batch[0][0]) and torch.equal(masks[1, :9, :4], batch[1][1])
        assert (masks[0, 5:] == 255).all() and (masks[1, :, 4:] == 255).all()
        torch.testing.assert_close(images[1, :, 0, 5], batch[1][0].mean(dim=(1, 2)))

    def test_size_divisor_and_loader(self):
        ds = [coord_sample(5 + k, 3 + k) for k in range(4)]
        images, masks = pad_collate(ds, size_divisor=8, ignore_index=254)
        assert images.shape == (4, 3, 8, 8) and (masks[0, 5:] == 254).all()
        loader = torch.utils.data.DataLoader(ds, batch_size=2, collate_fn=pad_collate)
        assert [b[1].shape for b in loader] == [(2, 6, 4), (2, 8, 6)]

    def test_exception(self):
        with pytest.raises(ValueError, match="empty"):
            pad_collate([])
        image, mask = coord_sample(3, 3)
        with pytest.raises(ValueError, match="same size"):
            pad_collate([(image, mask[:2])])

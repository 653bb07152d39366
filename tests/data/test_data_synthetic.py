from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from crfrnn.data import RandomCrop, SyntheticShapes, synthetic_splits

ndimage = pytest.importorskip("scipy.ndimage")

N = 40  # samples used for the statistical checks


@pytest.fixture(scope="module")
def samples():
    ds = SyntheticShapes(N, seed=0)
    return [ds[i] for i in range(N)]


class TestSyntheticShapes:
    def test_cardinality(self):
        ds = SyntheticShapes(3, size=(64, 80), seed=1)
        assert len(ds) == 3 and ds.num_classes == 7 and len(ds.class_names) == 7
        assert ds.class_names[0] == "background" and ds.ignore_index == 255
        image, mask = ds[2]
        assert image.shape == (3, 64, 80) and image.dtype == torch.float32
        assert mask.shape == (64, 80) and mask.dtype == torch.int64
        assert ds[-1][1].equal(mask)

    def test_value_ranges(self, samples):
        for image, mask in samples:
            assert 0 <= image.min() and image.max() <= 255
            assert torch.equal(image, image.round())  # like a decoded 8-bit image
            assert 0 <= mask.min() and mask.max() < 7
            assert image.std() > 5  # not blank
        means = torch.stack([im.mean(dim=(1, 2)) for im, _ in samples])
        assert means.std(dim=0).min() > 15  # colours vary from image to image

    def test_determinism(self):
        a = SyntheticShapes(10, seed=3)
        b = SyntheticShapes(100, seed=3)  # the length does not change sample i
        for i in (0, 7):
            ia, ma = a[i]
            ib, mb = b[i]
            assert torch.equal(ia, ib) and torch.equal(ma, mb)
            assert torch.equal(a[i][0], ia)  # repeated access
        assert not torch.equal(a[0][0], a[1][0])  # different indices differ
        c = SyntheticShapes(10, seed=4)
        assert not torch.equal(a[0][0], c[0][0]) and not torch.equal(a[0][1], c[0][1])

    def test_class_coverage(self, samples):
        counts = torch.zeros(7, dtype=torch.long)
        for _, mask in samples[:30]:
            counts += torch.bincount(mask.flatten(), minlength=7)
        assert (counts > 0).all(), counts
        frac = counts.float() / counts.sum()
        assert 0.6 < frac[0] < 0.9  # background dominates but objects are not rare
        assert (frac[1:] > 0.005).all()

    def test_thin_parts_not_negligible(self, samples):
        """Object pixels that a 5x5 morphological opening removes: parts narrower than ~5 px."""
        thin = total = 0
        for _, mask in samples:
            m = mask.numpy()
            for c in range(1, 7):
                region = m == c
                if region.any():
                    thin += (region & ~ndimage.binary_opening(region, np.ones((5, 5)))).sum()
                    total += region.sum()
        assert thin / total > 0.08

    def test_stride8_blurs_labels(self, samples):
        """Even a perfect stride-8 prediction (pooled one-hot, upsampled) misses many boundary pixels."""
        correct = total = 0
        for _, mask in samples:
            one_hot = F.one_hot(mask, 7).permute(2, 0, 1)[None].float()
            coarse = F.interpolate(F.avg_pool2d(one_hot, 8), size=mask.shape, mode="bilinear", align_corners=False)
            pred = coarse.argmax(1)[0]
            obj = mask > 0
            correct += (pred[obj] == mask[obj]).sum().item()
            total += obj.sum().item()
        assert correct / total < 0.9

    def test_boundaries_are_colour_edges(self, samples):
        """Colour gradients on true label boundaries are clearly larger than inside objects."""
        on_boundary, inside = [], []
        for image, mask in samples:
            x, m = image.double(), mask.numpy()
            gx = (x[:, :, 1:] - x[:, :, :-1]).norm(dim=0).numpy()
            gy = (x[:, 1:, :] - x[:, :-1, :]).norm(dim=0).numpy()
            bx, by = m[:, 1:] != m[:, :-1], m[1:, :] != m[:-1, :]
            interior = ndimage.binary_erosion(m > 0, np.ones((5, 5)), border_value=1)
            for g, b, i in ((gx, bx, interior[:, 1:] & interior[:, :-1]), (gy, by, interior[1:] & interior[:-1])):
                on_boundary.append(g[b])
                inside.append(g[i])
        ratio = np.concatenate(on_boundary).mean() / np.concatenate(inside).mean()
        assert ratio > 2.0, ratio

    def test_colour_does_not_give_class(self, samples):
        """A colour-histogram Bayes classifier (512 bins, fit on half the samples) is near chance."""

        def bins(image):
            q = (image.long() // 32).reshape(3, -1)
            return (q[0] * 64 + q[1] * 8 + q[2]).numpy()

        hist = np.ones((7, 512))
        for image, mask in samples[: N // 2]:
            np.add.at(hist, (mask.flatten().numpy(), bins(image)), 1)
        hist /= hist.sum(axis=1, keepdims=True)
        pred = np.concatenate([hist[:, bins(im)].argmax(0) for im, _ in samples[N // 2 :]])
        true = np.concatenate([m.flatten().numpy() for _, m in samples[N // 2 :]])
        balanced_accuracy = np.mean([(pred[true == c] == c).mean() for c in range(7) if (true == c).any()])
        assert balanced_accuracy < 0.3, balanced_accuracy  # chance: 1/7

    def test_background_has_clutter(self, samples):
        """Background is not a plain gradient: clutter leaves colour structure a plane fit cannot explain."""
        residuals = []
        for image, mask in samples:
            h, w = mask.shape
            yy, xx = np.mgrid[0:h, 0:w]
            design = np.stack([np.ones(h * w), yy.ravel(), xx.ravel()], axis=1)
            colours = image.numpy().reshape(3, -1).T.astype(np.float64)
            bg = mask.numpy().ravel() == 0
            coef = np.linalg.lstsq(design[bg], colours[bg], rcond=None)[0]
            residuals.append(np.sqrt(((colours[bg] - design[bg] @ coef) ** 2).sum(axis=1).mean()))
        assert np.median(residuals) > 14.0  # noise and faint stripes alone give about 10

    def test_occlusion_and_border(self, samples):
        occluded = border = 0
        for _, mask in samples:
            m = mask.numpy()
            # an object-object boundary somewhere (objects overlap or touch)
            a, b = m[:, 1:], m[:, :-1]
            occluded += bool(((a != b) & (a > 0) & (b > 0)).any())
            border += bool((np.concatenate([m[0], m[-1], m[:, 0], m[:, -1]]) > 0).any())
        assert occluded > N // 3 and border > N // 2

    def test_void_band(self):
        assert all((SyntheticShapes(5, seed=2)[i][1] != 255).all() for i in range(5))  # off by default
        for width in (1, 2):
            ds = SyntheticShapes(5, seed=2, void_band=width)
            for i in range(5):
                _, labels, instances = ds.render(i)
                void = labels == 255
                assert 0 < void.mean() < 0.15
                # every void pixel touches a different instance (it lies on an outline)
                pad = np.pad(instances, 1, mode="edge")
                h, w = instances.shape
                shifts = ((0, 1), (0, -1), (1, 0), (-1, 0))
                neighbours = [pad[1 + dy : 1 + dy + h, 1 + dx : 1 + dx + w] for dy, dx in shifts]
                touches = np.any([n != instances for n in neighbours], axis=0)
                assert touches[void].all()
                # non-void labels are unchanged
                _, plain, _ = SyntheticShapes(5, seed=2).render(i)
                assert (labels[~void] == plain[~void]).all()
        one = (SyntheticShapes(5, seed=2, void_band=1).render(0)[1] == 255).sum()
        two = (SyntheticShapes(5, seed=2, void_band=2).render(0)[1] == 255).sum()
        assert two > one

    def test_shapes_subset(self):
        ds = SyntheticShapes(8, seed=0, shapes=("ring", "box"))
        assert ds.num_classes == 3 and ds.class_names == ("background", "ring", "box")
        values = torch.cat([ds[i][1].flatten() for i in range(8)]).unique().tolist()
        assert set(values) == {0, 1, 2}

    def test_transform_and_loader(self):
        ds = SyntheticShapes(6, size=(64, 64), transform=RandomCrop(48, generator=torch.Generator().manual_seed(0)))
        images, masks = next(iter(torch.utils.data.DataLoader(ds, batch_size=6)))
        assert images.shape == (6, 3, 48, 48) and masks.shape == (6, 48, 48)

    @pytest.mark.parametrize(
        "kwargs, match",
        [
            (dict(num_samples=-1), "num_samples"),
            (dict(num_samples=2, size=(8, 64)), "size"),
            (dict(num_samples=2, seed=-3), "seed"),
            (dict(num_samples=2, shapes=("disc",)), "unknown"),
            (dict(num_samples=2, shapes=("box", "box")), "distinct"),
            (dict(num_samples=2, num_objects=(4, 2)), "num_objects"),
            (dict(num_samples=2, void_band=3), "void_band"),
        ],
    )
    def test_exception(self, kwargs, match):
        with pytest.raises(ValueError, match=match):
            SyntheticShapes(**kwargs)

    def test_exception_index(self):
        ds = SyntheticShapes(2)
        with pytest.raises(IndexError, match="out of range"):
            ds[2]
        with pytest.raises(TypeError):
            ds[0.5]


class TestSyntheticSplits:
    def test_disjoint_and_stable(self):
        train, val, test = synthetic_splits(0, num_train=6, num_val=4, num_test=3, size=64)
        assert (len(train), len(val), len(test)) == (6, 4, 3)
        assert train[0][0].shape == (3, 64, 64)
        images = [ds[i][0] for ds in (train, val, test) for i in range(len(ds))]
        for a in range(len(images)):
            for b in range(a + 1, len(images)):
                assert not torch.equal(images[a], images[b])
        # val / test do not depend on the size of the training split
        _, val2, test2 = synthetic_splits(0, num_train=100, num_val=4, num_test=3, size=64)
        assert torch.equal(val[3][0], val2[3][0]) and torch.equal(test[0][1], test2[0][1])
        # different seeds give different splits
        _, val3, _ = synthetic_splits(1, num_train=1, num_val=1, num_test=1, size=64)
        assert not torch.equal(val[0][0], val3[0][0])

    def test_kwargs(self):
        train, val, _ = synthetic_splits(
            0, num_train=2, num_val=2, num_test=2, size=(48, 64), shapes=("star",), transform=RandomCrop(32)
        )
        assert train.num_classes == val.num_classes == 2
        assert train[0][0].shape == (3, 32, 32) and val[0][0].shape == (3, 48, 64)
        with pytest.raises(ValueError, match="num_val"):
            synthetic_splits(0, num_train=1, num_val=-1, num_test=1)

"""Tests of crfrnn.visualize: colours, overlays and grid layout, checked pixel by pixel."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from crfrnn.data import color_palette
from crfrnn.visualize import VOID_COLOR, colorize_labels, label_overlay, picture_grid, save_prediction_grid

PALETTE = color_palette(256)


def solid(h: int, w: int, rgb) -> np.ndarray:
    return np.broadcast_to(np.asarray(rgb, np.uint8), (h, w, 3)).copy()


def title_height(padding: int = 4) -> int:
    """Extra height the column titles add (measured: grid with titles minus grid without)."""
    tile = [[solid(5, 5, (0, 0, 0))]]
    return picture_grid(tile, titles=["x"], padding=padding).height - picture_grid(tile, padding=padding).height


class TestColorizeLabels:
    def test_palette_and_void(self):
        labels = torch.tensor([[0, 1, 2], [15, 255, 6]])
        rgb = colorize_labels(labels)
        assert rgb.dtype == np.uint8 and rgb.shape == (2, 3, 3)
        expected = PALETTE[[[0, 1, 2], [15, 255, 6]]]
        expected[1, 1] = VOID_COLOR
        np.testing.assert_array_equal(rgb, expected)
        assert tuple(colorize_labels(np.array([[255]]), void_color=(1, 2, 3))[0, 0]) == (1, 2, 3)

    def test_exception(self):
        with pytest.raises(ValueError, match="shape"):
            colorize_labels(np.zeros((1, 2, 3), np.int64))
        with pytest.raises(ValueError, match="255"):
            colorize_labels(np.array([[300]]))


class TestLabelOverlay:
    def test_blend(self):
        image = torch.full((3, 4, 5), 100.0)  # channels-first tensor on 0..255, as the data sets return
        labels = torch.zeros(4, 5, dtype=torch.long)
        labels[:, 2:] = 1
        labels[0, 0] = 255
        np.testing.assert_array_equal(label_overlay(image, labels, 0.0), solid(4, 5, (100, 100, 100)))
        full = label_overlay(image, labels, 1.0)
        np.testing.assert_array_equal(full[1:, :2], solid(3, 2, PALETTE[0]))
        np.testing.assert_array_equal(full[:, 2:], solid(4, 3, PALETTE[1]))
        assert tuple(full[0, 0]) == (100, 100, 100)  # void keeps the image by default
        half = label_overlay(image.permute(1, 2, 0).numpy().astype(np.uint8), labels, 0.5)  # (H, W, 3) uint8 too
        assert tuple(half[0, 3]) == (114, 50, 50)  # (100 + 128) / 2, 100 / 2, 100 / 2
        assert tuple(label_overlay(image, labels, 1.0, void_color=(9, 9, 9))[0, 0]) == (9, 9, 9)

    def test_exception(self):
        with pytest.raises(ValueError, match="alpha"):
            label_overlay(np.zeros((2, 2, 3), np.uint8), np.zeros((2, 2), np.int64), 1.5)
        with pytest.raises(ValueError, match="do not match"):
            label_overlay(np.zeros((2, 2, 3), np.uint8), np.zeros((3, 2), np.int64))
        with pytest.raises(ValueError, match="RGB image"):
            label_overlay(np.zeros((2, 2, 4), np.uint8), np.zeros((2, 2), np.int64))


class TestPictureGrid:
    def test_layout(self):
        colours = [[(255, 0, 0), (0, 255, 0), (0, 0, 255)], [(10, 20, 30), (40, 50, 60), (70, 80, 90)]]
        rows = [[solid(6, 8, c) for c in row] for row in colours]
        pad = 3
        grid = picture_grid(rows, padding=pad, background=(1, 1, 1))
        assert isinstance(grid, Image.Image) and grid.mode == "RGB"
        assert grid.size == (pad + 3 * (8 + pad), pad + 2 * (6 + pad))
        arr = np.asarray(grid)
        for i, row in enumerate(colours):
            for j, c in enumerate(row):
                y, x = pad + i * (6 + pad), pad + j * (8 + pad)
                np.testing.assert_array_equal(arr[y : y + 6, x : x + 8], solid(6, 8, c))
        assert tuple(arr[0, 0]) == (1, 1, 1) and tuple(arr[pad + 6, pad]) == (1, 1, 1)

    def test_titles_scale_and_uneven_tiles(self):
        rows = [[solid(4, 6, (255, 0, 0)), solid(2, 3, (0, 255, 0))]]
        grid = picture_grid(rows, titles=["a long column title that cannot fit", "b"], scale=3, padding=2)
        th = title_height(2)
        assert th > 0
        assert grid.size == (2 + 2 * (18 + 2), th + 2 + (12 + 2))
        arr = np.asarray(grid)
        y = th + 2
        np.testing.assert_array_equal(arr[y : y + 12, 2:20], solid(12, 18, (255, 0, 0)))  # up-scaled 3x
        np.testing.assert_array_equal(arr[y : y + 6, 22:31], solid(6, 9, (0, 255, 0)))  # top-left of its cell
        assert tuple(arr[y + 7, 22]) == (255, 255, 255)  # the rest of the cell is background
        assert (arr[:th] != 255).any()  # the titles were drawn
        assert (arr[:th, 20:22] == 255).all()  # ... and the long one was cut at its cell's edge

    def test_accepts_tensors_grey_and_pil(self):
        rows = [[torch.full((3, 4, 4), 7.0), np.full((4, 4), 9, np.uint8), Image.new("RGB", (4, 4), (1, 2, 3))]]
        arr = np.asarray(picture_grid(rows, padding=0))
        assert tuple(arr[0, 0]) == (7, 7, 7) and tuple(arr[0, 4]) == (9, 9, 9) and tuple(arr[0, 8]) == (1, 2, 3)

    def test_exception(self):
        tile = solid(2, 2, (0, 0, 0))
        with pytest.raises(ValueError, match="same number of tiles"):
            picture_grid([[tile, tile], [tile]])
        with pytest.raises(ValueError, match="2 columns"):
            picture_grid([[tile, tile]], titles=["one"])
        with pytest.raises(ValueError, match="at least one"):
            picture_grid([])
        with pytest.raises(ValueError, match="scale"):
            picture_grid([[tile]], scale=0)


class TestSavePredictionGrid:
    def test_layout_and_colours(self, tmp_path):
        n, h, w = 3, 48, 40
        images = torch.rand(n, 3, h, w) * 255  # a batched tensor works
        gt = torch.randint(0, 7, (n, h, w))
        gt[:, 0, 0] = 255
        columns = {
            "CNN": [torch.zeros(h, w, dtype=torch.long)] * n,
            "CNN + dense CRF": gt.clone(),
            "CRF-RNN": np.ones((n, h, w), np.int64),
        }
        path = save_prediction_grid(tmp_path / "sub" / "grid.png", images, columns, gt=gt, scale=2)
        assert path == tmp_path / "sub" / "grid.png"
        with Image.open(path) as im:
            arr = np.asarray(im.convert("RGB"))
        pad, cols, th = 4, 5, title_height()
        cell_h, cell_w = 2 * h, 2 * w
        assert arr.shape == (th + pad + n * (cell_h + pad), pad + cols * (cell_w + pad), 3)  # rows x columns tiles

        def tile(i: int, j: int) -> np.ndarray:
            y, x = th + pad + i * (cell_h + pad), pad + j * (cell_w + pad)
            return arr[y : y + cell_h : 2, x : x + cell_w : 2]  # undo the 2x nearest up-scaling

        for i in range(n):
            expected_image = images[i].permute(1, 2, 0).numpy().round().clip(0, 255).astype(np.uint8)
            np.testing.assert_array_equal(tile(i, 0), expected_image)
            expected_gt = colorize_labels(gt[i])
            np.testing.assert_array_equal(tile(i, 1), expected_gt)
            assert tuple(tile(i, 1)[0, 0]) == VOID_COLOR
            np.testing.assert_array_equal(tile(i, 2), solid(h, w, PALETTE[0]))
            np.testing.assert_array_equal(tile(i, 3), expected_gt)
            np.testing.assert_array_equal(tile(i, 4), solid(h, w, PALETTE[1]))

    def test_auto_scale_and_no_gt(self, tmp_path):
        images = [np.zeros((48, 48, 3), np.uint8)] * 2
        path = save_prediction_grid(tmp_path / "g.png", images, {"CNN": [np.zeros((48, 48), np.int64)] * 2})
        with Image.open(path) as im:
            assert im.size == (4 + 2 * (144 + 4), title_height() + 4 + 2 * (144 + 4))  # 48 px tiles scaled 3x

    def test_overlay(self, tmp_path):
        image = np.full((8, 8, 3), 200, np.uint8)
        path = save_prediction_grid(
            tmp_path / "o.png", [image], {"CNN": [np.zeros((8, 8), np.int64)]}, alpha=0.5, scale=1
        )
        with Image.open(path) as im:
            arr = np.asarray(im.convert("RGB"))
        y, x = title_height() + 4, 4 + 12
        assert tuple(arr[y, x]) == (100, 100, 100)

    def test_exception(self, tmp_path):
        images = [np.zeros((8, 8, 3), np.uint8)] * 2
        with pytest.raises(ValueError, match="1 label maps for 2 images"):
            save_prediction_grid(tmp_path / "x.png", images, {"CNN": [np.zeros((8, 8), np.int64)]})
        with pytest.raises(ValueError, match="size"):
            save_prediction_grid(tmp_path / "x.png", images, {"CNN": [np.zeros((8, 9), np.int64)] * 2})
        with pytest.raises(ValueError, match="empty"):
            save_prediction_grid(tmp_path / "x.png", [], {})
        with pytest.raises(TypeError, match="mapping"):
            save_prediction_grid(tmp_path / "x.png", images, [np.zeros((8, 8), np.int64)] * 2)


def find_swatch(arr: np.ndarray, colour, size: int = 6) -> list[tuple[int, int]]:
    """Top-left corners (y, x) of the ``size`` x ``size`` blocks of ``arr`` that are all ``colour``, one per blob."""
    match = (arr == np.asarray(colour, np.uint8)).all(-1).astype(np.int64)
    sums = np.pad(match, ((1, 0), (1, 0))).cumsum(0).cumsum(1)
    full = sums[size:, size:] - sums[:-size, size:] - sums[size:, :-size] + sums[:-size, :-size] == size * size
    corners: list[tuple[int, int]] = []
    for y, x in zip(*np.nonzero(full)):
        if not any(abs(y - cy) <= size and abs(x - cx) <= size for cy, cx in corners):
            corners.append((int(y), int(x)))
    return corners


class TestPredictionGridLegend:
    NAMES = ["background", "pan", "box", "triangle", "star", "ring", "table"]  # the synthetic data set's 7 classes

    @staticmethod
    def grid(tmp_path, labels, name="g.png", **kwargs) -> np.ndarray:
        images = [np.full(m.shape + (3,), 200, np.uint8) for m in labels]
        path = save_prediction_grid(tmp_path / name, images, {"CNN": labels}, **kwargs)
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))

    def test_legend_below_grid(self, tmp_path):
        labels = [np.zeros((20, 20), np.int64), np.ones((20, 20), np.int64)]
        plain = self.grid(tmp_path, labels, "plain.png")
        legend = self.grid(tmp_path, labels, "legend.png", class_names=self.NAMES)
        assert legend.shape[1] == plain.shape[1]  # no wider than the grid
        assert legend.shape[0] > plain.shape[0]  # the strip is below it
        np.testing.assert_array_equal(legend[: plain.shape[0]], plain)  # and leaves the grid as it was
        assert (legend[plain.shape[0] :] != 255).any()

    def test_swatches_have_the_label_colours_in_order(self, tmp_path):
        labels = [np.zeros((20, 20), np.int64)]  # only class 0 is shown; every class is listed
        strip = self.grid(tmp_path, labels, class_names=self.NAMES)[self.grid(tmp_path, labels, "p.png").shape[0] :]
        corners = []
        for k in range(len(self.NAMES)):
            found = find_swatch(strip, colorize_labels(np.array([[k]]))[0, 0])
            assert len(found) == 1, f"class {k}: {len(found)} swatches"
            corners.append(found[0])
        assert corners == sorted(corners)  # reading order, row after row (a row's swatches share their top)
        assert find_swatch(strip, VOID_COLOR) == []  # no void in the label maps, no void swatch

    def test_void_swatch_only_with_void(self, tmp_path):
        labels = [np.zeros((20, 20), np.int64)]
        labels[0][0, 0] = 255
        names = self.NAMES[:3]
        top = self.grid(tmp_path, labels, "p.png").shape[0]
        strip = self.grid(tmp_path, labels, class_names=names)[top:]
        assert len(find_swatch(strip, VOID_COLOR)) == 1
        last = find_swatch(strip, colorize_labels(np.array([[2]]))[0, 0])[0]
        assert find_swatch(strip, VOID_COLOR)[0] > last  # after the classes
        strip = self.grid(tmp_path, labels, "c.png", class_names=names, void_color=(1, 2, 3))[top:]
        assert len(find_swatch(strip, (1, 2, 3))) == 1  # in the colour the tiles give void
        labels[0][0, 0] = 0
        assert find_swatch(self.grid(tmp_path, labels, "n.png", class_names=names)[top:], VOID_COLOR) == []

    def test_wraps_within_the_grid(self, tmp_path):
        from crfrnn.data import VOC_CLASSES

        labels = [np.zeros((20, 20), np.int64)]
        plain = self.grid(tmp_path, labels, "p.png")
        names = list(VOC_CLASSES[:-1]) + ["a class name far too long to fit in the strip of such a narrow grid"]
        arr = self.grid(tmp_path, labels, class_names=names)
        assert arr.shape[1] == plain.shape[1]
        strip = arr[plain.shape[0] :]
        corners = [find_swatch(strip, colorize_labels(np.array([[k]]))[0, 0]) for k in range(len(names))]
        assert all(len(c) == 1 for c in corners)
        assert len({c[0][0] for c in corners}) > 2  # several rows
        assert (strip[:, -4:] == 255).all()  # nothing drawn in the right padding: the long name was shortened

    def test_exception(self, tmp_path):
        labels = [np.array([[0, 3], [1, 255]], np.int64)]
        with pytest.raises(ValueError, match=r"label 3 but class_names has only 3 names.*one name per label"):
            self.grid(tmp_path, labels, class_names=["a", "b", "c"])
        with pytest.raises(TypeError, match=r"class_names\[1\] is of type int"):
            self.grid(tmp_path, labels, class_names=["a", 1, "c", "d"])
        with pytest.raises(TypeError, match="sequence of strings"):
            self.grid(tmp_path, labels, class_names="abcd")
        with pytest.raises(ValueError, match="empty"):
            self.grid(tmp_path, labels, class_names=[])
        assert self.grid(tmp_path, labels, class_names=["a", "b", "c", "d"]).shape[0] > 0  # 255 needs no name

    def test_save_method_grid_takes_the_data_set_names(self, tmp_path):
        from torch.utils.data import Subset

        from crfrnn.data import synthetic_splits
        from crfrnn.models import create
        from crfrnn.workflow._report import save_method_grid

        data = synthetic_splits(3, num_train=0, num_val=2, num_test=0, size=24)[1]
        runs = [(create("small_fcn", num_classes=7, width=8), ("cnn",), None)]
        sizes = {}
        for name, dataset in (("set", data), ("subset", Subset(data, [0, 1])), ("plain", [data[0], data[1]])):
            with Image.open(save_method_grid(tmp_path / f"{name}.png", dataset, runs, 2)) as im:
                sizes[name] = im.size
        assert sizes["set"] == sizes["subset"]
        assert sizes["set"][0] == sizes["plain"][0] and sizes["set"][1] > sizes["plain"][1]  # a legend, below
        with Image.open(
            save_method_grid(tmp_path / "n.png", [data[0], data[1]], runs, 2, class_names=data.class_names)
        ) as im:
            assert im.size == sizes["set"]  # names given explicitly

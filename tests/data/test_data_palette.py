from __future__ import annotations

import ast
import doctest
import importlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import crfrnn.data
from crfrnn.data import color_palette, colorize, load_label_png, save_label_png


class TestColorPalette:
    def test_reference_values(self):
        pal = color_palette()
        assert pal.shape == (256, 3) and pal.dtype == np.uint8
        # published VOC colours: background, aeroplane, bicycle, person, tvmonitor, void
        assert pal[0].tolist() == [0, 0, 0]
        assert pal[1].tolist() == [128, 0, 0]
        assert pal[2].tolist() == [0, 128, 0]
        assert pal[15].tolist() == [192, 128, 128]
        assert pal[20].tolist() == [0, 64, 128]
        assert pal[255].tolist() == [224, 224, 192]
        assert len({tuple(c) for c in pal.tolist()}) == 256  # all distinct

    def test_cardinality(self):
        assert color_palette(21).shape == (21, 3)
        np.testing.assert_array_equal(color_palette(21), color_palette()[:21])

    @pytest.mark.parametrize("n", [0, 257, 2.5, True])
    def test_exception(self, n):
        with pytest.raises(ValueError, match="num_colors"):
            color_palette(n)


class TestLabelPng:
    def test_round_trip(self, tmp_path):
        rng = np.random.default_rng(0)
        labels = rng.integers(0, 21, (13, 17))
        labels[0, :] = 255
        path = tmp_path / "m.png"
        save_label_png(path, labels)
        with Image.open(path) as img:
            assert img.mode == "P"
            np.testing.assert_array_equal(np.array(img), labels)  # the VOC convention: values are indices
            assert img.getpalette()[3:6] == [128, 0, 0]
        out = load_label_png(path)
        assert out.dtype == np.int64 and out.shape == (13, 17)
        np.testing.assert_array_equal(out, labels)

    def test_tensor_input(self, tmp_path):
        labels = torch.arange(12).reshape(3, 4)
        save_label_png(tmp_path / "t.png", labels)
        np.testing.assert_array_equal(load_label_png(tmp_path / "t.png"), labels.numpy())

    def test_grayscale_index_png(self, tmp_path):
        labels = np.array([[0, 1, 2], [3, 255, 4]], np.uint8)
        Image.fromarray(labels).save(tmp_path / "g.png")  # mode "L"
        np.testing.assert_array_equal(load_label_png(tmp_path / "g.png"), labels)

    def test_exception_rgb(self, tmp_path):
        path = tmp_path / "rgb.png"
        Image.new("RGB", (4, 3), (128, 0, 0)).save(path)
        with pytest.raises(ValueError, match=r"palette \('P'\) or single-channel") as info:
            load_label_png(path)
        assert str(path) in str(info.value) and "RGB" in str(info.value)

    def test_exception_corrupt_and_missing(self, tmp_path):
        path = tmp_path / "bad.png"
        path.write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 5)
        with pytest.raises(OSError, match="could not read label file") as info:
            load_label_png(path)
        assert str(path) in str(info.value)
        with pytest.raises(FileNotFoundError, match="nope.png"):
            load_label_png(tmp_path / "nope.png")

    @pytest.mark.parametrize(
        "labels, err",
        [
            (np.full((2, 2), 256), ValueError),
            (np.full((2, 2), -1), ValueError),
            (np.zeros((2, 2, 3), int), ValueError),
            (np.full((2, 2), 0.5), TypeError),
        ],
    )
    def test_exception_bad_labels(self, tmp_path, labels, err):
        with pytest.raises(err):
            save_label_png(tmp_path / "x.png", labels)
        with pytest.raises(err):
            colorize(labels)

    def test_exception_missing_directory(self, tmp_path):
        with pytest.raises(FileNotFoundError, match="does not exist"):
            save_label_png(tmp_path / "no" / "x.png", np.zeros((2, 2), int))


class TestColorize:
    def test_values(self):
        labels = np.array([[0, 1], [15, 255]])
        out = colorize(labels)
        assert out.shape == (2, 2, 3) and out.dtype == np.uint8
        np.testing.assert_array_equal(out[1, 1], [224, 224, 192])
        np.testing.assert_array_equal(colorize(torch.from_numpy(labels)), out)


class TestPackage:
    def test_all_sorted_and_importable(self):
        assert list(crfrnn.data.__all__) == sorted(crfrnn.data.__all__)
        for name in crfrnn.data.__all__:
            assert hasattr(crfrnn.data, name), name

    def test_top_level_imports_are_light(self):
        """crfrnn.data imports only numpy, torch, PIL, the standard library, itself and the utilities at import time."""
        allowed = {"numpy", "torch", "PIL", "__future__"} | set(getattr(__import__("sys"), "stdlib_module_names", ()))
        pkg_dir = Path(crfrnn.data.__file__).parent
        for path in sorted(pkg_dir.glob("*.py")):
            tree = ast.parse(path.read_text())
            for node in tree.body:  # module level only: lazy imports inside functions are fine
                names = []
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0:
                    names = [node.module or ""]
                for name in names:
                    ok = name.split(".")[0] in allowed or name.startswith(("crfrnn.data", "crfrnn._utils"))
                    assert ok, f"{path.name} imports {name} at module level"

    @pytest.mark.parametrize("module", ["palette", "transforms", "collate", "synthetic"])
    def test_doctests(self, module):
        mod = importlib.import_module(f"crfrnn.data.{module}")
        result = doctest.testmod(mod, optionflags=doctest.ELLIPSIS)
        assert result.attempted > 0 and result.failed == 0

"""Fixtures: tiny PASCAL VOC and SBD trees written to tmp_path."""

from __future__ import annotations

from pathlib import Path
from typing import Dict, Tuple

import numpy as np
import pytest
from data_testutils import SBD_IDS, SBD_SPLITS, VOC_IDS, VOC_SPLITS, make_image, make_mask, write_jpeg

from crfrnn.data import save_label_png


@pytest.fixture
def voc_tree(tmp_path: Path) -> Tuple[Path, Dict[str, Tuple[np.ndarray, np.ndarray]]]:
    """``tmp/VOCdevkit/VOC2012`` with images, palette masks (with 255) and split lists."""
    voc = tmp_path / "VOCdevkit" / "VOC2012"
    (voc / "JPEGImages").mkdir(parents=True)
    (voc / "SegmentationClass").mkdir()
    (voc / "ImageSets" / "Segmentation").mkdir(parents=True)
    data = {}
    for k, (i, (h, w)) in enumerate(VOC_IDS.items()):
        img, mask = make_image(h, w, k), make_mask(h, w, k)
        write_jpeg(voc / "JPEGImages" / f"{i}.jpg", img)
        save_label_png(voc / "SegmentationClass" / f"{i}.png", mask)
        data[i] = (img, mask)
    lists = voc / "ImageSets" / "Segmentation"
    for name, ids in VOC_SPLITS.items():
        (lists / f"{name}.txt").write_text("\n".join(ids) + "\n")
    (lists / "trainval.txt").write_text("\n".join(VOC_SPLITS["train"] + VOC_SPLITS["val"]) + "\n")
    return tmp_path, data


@pytest.fixture
def sbd_tree(tmp_path: Path) -> Tuple[Path, Dict[str, Tuple[np.ndarray, np.ndarray]]]:
    """``tmp/sbd/benchmark_RELEASE/dataset`` with images, GTcls .mat files and split lists."""
    scipy_io = pytest.importorskip("scipy.io")
    ds = tmp_path / "sbd" / "benchmark_RELEASE" / "dataset"
    (ds / "img").mkdir(parents=True)
    (ds / "cls").mkdir()
    data = {}
    for k, (i, (h, w)) in enumerate(SBD_IDS.items()):
        img = make_image(h, w, 100 + k)
        # SBD masks have no void band; a constant class 7 block makes them distinguishable from VOC's.
        mask = np.zeros((h, w), dtype=np.uint8)
        mask[1 : h - 1, 2 : w - 2] = 7
        write_jpeg(ds / "img" / f"{i}.jpg", img)
        gt = {"Segmentation": mask, "Boundaries": np.zeros((1,), dtype=object), "CategoriesPresent": np.uint8(7)}
        scipy_io.savemat(ds / "cls" / f"{i}.mat", {"GTcls": gt})
        data[i] = (img, mask)
    for name, ids in SBD_SPLITS.items():
        (ds / f"{name}.txt").write_text("\n".join(ids) + "\n")
    return tmp_path / "sbd", data

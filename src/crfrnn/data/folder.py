"""A segmentation data set from two folders: images and same-named index masks."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from torch.utils.data import Dataset

from crfrnn.data._io import (
    PathLike,
    Sample,
    Transform,
    apply_transform,
    check_labels,
    check_same_size,
    read_image,
    read_mask_png,
    require_dir,
)

__all__ = ["SegmentationFolder"]


class SegmentationFolder(Dataset):
    """Pairs ``images_dir/<stem>.<ext>`` with ``masks_dir/<stem>.png`` by file stem.

    Masks must be palette ("P") or single-channel index PNGs whose pixel values are the class indices
    (255 = ignore), as written by :func:`crfrnn.data.save_label_png`. Colour-coded RGB masks are rejected
    with an error when loaded. Every image must have a mask and every mask an image.

    Args:
        images_dir: folder of images (RGB or greyscale; converted to RGB).
        masks_dir: folder of ``.png`` masks.
        transform: optional paired transform ``(image, mask) -> (image, mask)``.
        image_exts: accepted image extensions (case-insensitive).
        num_classes: if given, a mask with labels outside ``0..num_classes - 1`` (other than 255) raises a
            ValueError naming the file when it is loaded.

    Attributes:
        ids: the file stems, sorted.

    Sample:
        ``image`` float32 ``(3, H, W)`` on 0..255, ``mask`` int64 ``(H, W)``.
    """

    ignore_index: int = 255

    def __init__(
        self,
        images_dir: PathLike,
        masks_dir: PathLike,
        *,
        transform: Optional[Transform] = None,
        image_exts: Sequence[str] = (".jpg", ".jpeg", ".png", ".bmp"),
        num_classes: Optional[int] = None,
    ) -> None:
        if num_classes is not None and (
            isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1
        ):
            raise ValueError(f"SegmentationFolder: num_classes must be an int >= 1 or None, got {num_classes!r}.")
        self.num_classes = num_classes
        self.images_dir = Path(images_dir)
        self.masks_dir = Path(masks_dir)
        require_dir(self.images_dir, "SegmentationFolder", "Check the images_dir argument.")
        require_dir(self.masks_dir, "SegmentationFolder", "Check the masks_dir argument.")
        if isinstance(image_exts, str):
            image_exts = (image_exts,)
        exts = {e.lower() if e.startswith(".") else "." + e.lower() for e in image_exts}

        images = self._scan(self.images_dir, exts, "image")
        masks = self._scan(self.masks_dir, {".png"}, "mask")
        only_images = sorted(str(images[s]) for s in images.keys() - masks.keys())
        only_masks = sorted(str(masks[s]) for s in masks.keys() - images.keys())
        if only_images or only_masks:
            parts = []
            for files, what in (
                (only_images, f"image(s) without a mask '<stem>.png' in '{self.masks_dir}'"),
                (only_masks, f"mask(s) without an image ({sorted(exts)}) in '{self.images_dir}'"),
            ):
                if files:
                    shown = "\n  ".join(files[:5])
                    more = f"\n  ... and {len(files) - 5} more" if len(files) > 5 else ""
                    parts.append(f"{len(files)} {what}:\n  {shown}{more}")
            raise FileNotFoundError(
                "SegmentationFolder: unpaired files (images and masks are paired by file stem):\n"
                + "\n".join(parts)
                + "\nAdd the missing files or move the unpaired ones out of the folders."
            )
        if not images:
            raise FileNotFoundError(
                f"SegmentationFolder: no images with extensions {sorted(exts)} found in '{self.images_dir}'."
            )
        self.ids: List[str] = sorted(images)
        self._images = [images[s] for s in self.ids]
        self._masks = [masks[s] for s in self.ids]
        self.transform = transform

    @staticmethod
    def _scan(directory: Path, exts: set, what: str) -> Dict[str, Path]:
        found: Dict[str, Path] = {}
        for name in sorted(os.listdir(directory)):
            if name.startswith("."):
                continue
            stem, ext = os.path.splitext(name)
            if ext.lower() not in exts or not (directory / name).is_file():
                continue
            if stem in found:
                raise ValueError(
                    f"SegmentationFolder: two {what} files share the stem {stem!r}: '{found[stem]}' and "
                    f"'{directory / name}'. Keep one file per stem."
                )
            found[stem] = directory / name
        return found

    def __len__(self) -> int:
        return len(self.ids)

    def image_path(self, index: int) -> Path:
        """The image file of sample ``index``."""
        return self._images[index]

    def mask_path(self, index: int) -> Path:
        """The mask file of sample ``index``."""
        return self._masks[index]

    def __getitem__(self, index: int) -> Sample:
        ip, mp = self._images[index], self._masks[index]
        image = read_image(ip)
        mask = read_mask_png(mp)
        check_same_size(image, mask, ip, mp)
        check_labels(mask, mp, self.num_classes, self.ignore_index)
        return apply_transform(self.transform, image, mask)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(images_dir='{self.images_dir}', masks_dir='{self.masks_dir}', "
            f"num_samples={len(self)})"
        )

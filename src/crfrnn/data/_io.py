"""Private helpers shared by the file-backed data sets: reading images, masks and id lists."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, List, Optional, Sequence, Tuple, Union

import torch

from crfrnn._utils.files import PathLike
from crfrnn._utils.images import read_rgb
from crfrnn.data.palette import load_label_png

Sample = Tuple[torch.Tensor, torch.Tensor]
Transform = Callable[[torch.Tensor, torch.Tensor], Sample]

VOC_CLASSES: Tuple[str, ...] = (
    "background",
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
)


def read_image(path: PathLike) -> torch.Tensor:
    """Decode an image file to a float32 ``(3, H, W)`` RGB tensor on the 0..255 scale.

    Decoded by :func:`crfrnn._utils.images.read_rgb`, guarded against decompression bombs.
    """
    arr = read_rgb(path, what="image file", hint="; re-download it or remove its id from the list.")
    return torch.from_numpy(arr).permute(2, 0, 1).to(torch.float32).contiguous()


def read_mask_png(path: PathLike) -> torch.Tensor:
    """Decode a palette / index PNG to an int64 ``(H, W)`` tensor."""
    return torch.from_numpy(load_label_png(path))


def check_same_size(image: torch.Tensor, mask: torch.Tensor, image_path: PathLike, mask_path: PathLike) -> None:
    if tuple(image.shape[-2:]) != tuple(mask.shape[-2:]):
        ih, iw = image.shape[-2:]
        mh, mw = mask.shape[-2:]
        raise ValueError(
            f"image and mask sizes differ: image '{os.fspath(image_path)}' is {iw}x{ih} (WxH) but mask "
            f"'{os.fspath(mask_path)}' is {mw}x{mh}. Each mask must have exactly the size of its image; "
            "fix or remove this pair."
        )


def check_labels(mask: torch.Tensor, path: PathLike, num_classes: Optional[int], ignore_index: int = 255) -> None:
    """Raise ValueError naming ``path`` if ``mask`` holds labels outside ``[0, num_classes)`` other than void."""
    if num_classes is None or mask.numel() == 0:
        return
    bad = ((mask < 0) | (mask >= num_classes)) & (mask != ignore_index)
    if bool(bad.any()):
        values = sorted(int(v) for v in torch.unique(mask[bad])[:5])
        raise ValueError(
            f"mask '{os.fspath(path)}' holds label(s) {values} outside the valid range 0..{num_classes - 1} "
            f"(and {ignore_index} = void) of {num_classes} classes. Fix the mask, or use num_classes that covers "
            "its labels (the model must be built for as many classes)."
        )


def read_id_list(path: PathLike) -> List[str]:
    """Read an id-list file: one id per line (first whitespace-separated token); blank and '#' lines skipped."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"id-list file not found: '{path}'")
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise OSError(f"could not read id-list file '{path}': {e}") from e
    ids = []
    for line in lines:
        line = line.strip()
        if line and not line.startswith("#"):
            ids.append(line.split()[0])
    if not ids:
        raise ValueError(f"id-list file '{path}' contains no ids; expected one image id per line.")
    return ids


def resolve_split(split: Union[str, PathLike, Sequence[str]], list_dir: Path, what: str) -> Tuple[str, List[str]]:
    """Turn ``split`` (a split name, an id-list path or a sequence of ids) into ``(name, ids)``."""
    if isinstance(split, (list, tuple)):
        ids = [str(s) for s in split]
        if not ids:
            raise ValueError(f"{what}: the id sequence passed as split is empty.")
        return "<ids>", ids
    if isinstance(split, str):
        named = list_dir / f"{split}.txt"
        if os.sep not in split and "/" not in split and named.is_file():
            return split, read_id_list(named)
        if os.path.isfile(split):
            return Path(split).stem, read_id_list(split)
        available = sorted(p.stem for p in list_dir.glob("*.txt")) if list_dir.is_dir() else []
        raise FileNotFoundError(
            f"{what}: unknown split {split!r}: there is no file '{named}' and no id-list file at "
            f"'{os.path.abspath(split)}'. Pass a split name (available in '{list_dir}': {available}) or the path "
            "to an id-list file with one image id per line."
        )
    if isinstance(split, os.PathLike):
        return Path(split).stem, read_id_list(split)
    raise TypeError(
        f"{what}: split must be a split name, a path to an id-list file or a list of ids, got {type(split).__name__}."
    )


def check_files_exist(ids: Sequence[str], directory: Path, suffix: str, kind: str, list_desc: str) -> None:
    """Raise FileNotFoundError naming the missing ``directory/<id><suffix>`` files, if any."""
    try:
        present = set(os.listdir(directory))
    except OSError as e:
        raise FileNotFoundError(f"cannot list {kind} directory '{directory}': {e}") from e
    missing = [str(directory / f"{i}{suffix}") for i in ids if f"{i}{suffix}" not in present]
    if missing:
        shown = "\n  ".join(missing[:5])
        more = f"\n  ... and {len(missing) - 5} more" if len(missing) > 5 else ""
        raise FileNotFoundError(
            f"{len(missing)} {kind} file(s) listed in {list_desc} do not exist:\n  {shown}{more}\n"
            "Check that the data set is completely extracted, or remove these ids from the list."
        )


def require_dir(path: Path, what: str, hint: str = "") -> None:
    if not path.is_dir():
        raise FileNotFoundError(f"{what}: directory not found: '{path}'.{(' ' + hint) if hint else ''}")


def apply_transform(transform: Optional[Transform], image: torch.Tensor, mask: torch.Tensor) -> Sample:
    if transform is None:
        return image, mask
    out = transform(image, mask)
    if not (isinstance(out, (tuple, list)) and len(out) == 2):
        raise TypeError(
            f"transform must return a pair (image, mask), got {type(out).__name__}. "
            "Paired transforms take (image, mask) and return (image, mask)."
        )
    return out[0], out[1]

"""Hostile files, generated in the test, and the command lines that read them: the registry of the commands'
fuzz cases. A new command, or a new kind of file a command reads, joins :data:`COMMAND_CASES`.

Each builder writes its files under a folder and returns the ``crfrnn`` arguments that read them.
"""

from __future__ import annotations

import io
import pickle
import struct
import zipfile
import zlib
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

H = W = 12


class _Marker:
    """A pickle that, if unpickled, creates a file: that the file is absent shows nothing was unpickled."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


# ------------------------------------------------------------------------------------------------ files


def good_image(d: Path) -> Path:
    path = d / "image.png"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (H, W, 3), dtype=np.uint8)).save(path)
    return path


def good_probs(d: Path, name: str = "probs.npy") -> Path:
    path = d / name
    np.save(path, np.random.default_rng(1).dirichlet(np.ones(3), (H, W)).astype(np.float32).transpose(2, 0, 1))
    return path


def truncated(path: Path, keep: float = 0.5) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: max(1, int(len(data) * keep))])
    return path


def corrupt(path: Path) -> Path:
    data = bytearray(path.read_bytes())
    rng = np.random.default_rng(2)
    for i in rng.integers(8, len(data), 16):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))
    return path


def png_bomb(path: Path, side: int = 100_000) -> Path:
    """A PNG whose header declares ``side x side`` pixels over a few bytes of data."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\0" * 1024)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b""))
    return path


def npy_huge_header(path: Path) -> Path:
    """A .npy whose header declares 3 x 40000 x 40000 float32 (19 GB) over a few bytes."""
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": "<f4", "fortran_order": False, "shape": (3, 40000, 40000)})
    path.write_bytes(buf.getvalue() + bytes(64))
    return path


def npz_bomb(path: Path, megabytes: int = 64) -> Path:
    """A small .npz whose one member inflates to ``megabytes`` of zeros and declares 19 GB in its header."""
    head = io.BytesIO()
    np.lib.format.write_array_header_1_0(head, {"descr": "<f4", "fortran_order": False, "shape": (3, 40000, 40000)})
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z, z.open("probs.npy", "w", force_zip64=True) as fh:
        fh.write(head.getvalue())
        block = bytes(1 << 20)
        for _ in range(megabytes):
            fh.write(block)
    return path


def npz_not_npy(path: Path) -> Path:
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("probs.txt", "not an array")
    return path


def npy_object(path: Path, marker: Path) -> Path:
    with open(path, "wb") as fh:
        np.save(fh, np.array([_Marker(marker)], dtype=object), allow_pickle=True)
    return path


def pth_pickle(path: Path, marker: Path) -> Path:
    """A torch zip checkpoint whose data.pkl would create ``marker`` if it were unpickled."""
    import torch

    torch.save({"model": {}}, path)
    with zipfile.ZipFile(path) as z:
        entries = {i.filename: z.read(i.filename) for i in z.infolist()}
    key = next(k for k in entries if k.endswith("data.pkl"))
    entries[key] = pickle.dumps({"model": _Marker(marker)}, protocol=2)
    with zipfile.ZipFile(path, "w") as z:
        for name, data in entries.items():
            z.writestr(name, data)
    return path


def pth_compressed(path: Path) -> Path:
    """A torch zip checkpoint whose storage is deflated and declares 8 GB when inflated."""
    import torch

    torch.save({"model": {"w": torch.zeros(4)}}, path)
    with zipfile.ZipFile(path) as z:
        entries = {i.filename: z.read(i.filename) for i in z.infolist()}
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in entries.items():
            z.writestr(name, data)
    raw = bytearray(path.read_bytes())  # the central directory's uncompressed size of each entry: 8 GB
    offset = raw.find(b"PK\x01\x02")
    while offset >= 0:
        raw[offset + 24 : offset + 28] = struct.pack("<I", 0xFFFFFFF0)
        offset = raw.find(b"PK\x01\x02", offset + 4)
    path.write_bytes(bytes(raw))
    return path


def yaml_alias_bomb(path: Path) -> Path:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [*a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}]" for i in range(1, 30)]
    path.write_text("\n".join(lines) + "\n")
    return path


def yaml_deep(path: Path) -> Path:
    path.write_text("out_dir: x\nmodel_kwargs: " + "[" * 5000 + "]" * 5000 + "\n")
    return path


def yaml_tag(path: Path, marker: Path) -> Path:
    path.write_text(f"out_dir: !!python/object/apply:builtins.open ['{marker}', 'w']\n")
    return path


def h5_file(path: Path, mode: str, d: Path) -> Path:
    import h5py

    with h5py.File(path, "w") as f:
        g = f.create_group("conv1_1").create_group("conv1_1")
        if mode == "never_written":
            g.create_dataset("kernel:0", shape=(3, 3, 3, 2**34), dtype="f4", chunks=(3, 3, 3, 1024))
        elif mode == "external_storage":
            raw = d / "raw.bin"
            raw.write_bytes(bytes(3 * 3 * 3 * 8 * 4))
            g.create_dataset("kernel:0", shape=(3, 3, 3, 8), dtype="f4", external=[(str(raw), 0, 864)])
        elif mode == "external_link":
            with h5py.File(d / "other.h5", "w") as o:
                o.create_dataset("w", data=np.zeros((3, 3, 3, 8), np.float32))
            g["kernel:0"] = h5py.ExternalLink(str(d / "other.h5"), "w")
        elif mode == "wrong_layer_shape":
            g.create_dataset("kernel:0", data=np.zeros((5, 5, 7, 8), np.float32))
    return path


def odd_image(path: Path, kind: str) -> Path:
    rng = np.random.default_rng(3)
    if kind == "grey16":
        Image.fromarray(rng.integers(0, 65535, (H, W), dtype=np.uint16)).save(path)
    elif kind == "float_tiff":
        Image.fromarray(rng.random((H, W), dtype=np.float32) * 1e30).save(path)
    elif kind == "int32_tiff":
        Image.fromarray(rng.integers(-(2**31), 2**31 - 1, (H, W), dtype=np.int32)).save(path)
    return path


def nifti(path: Path, *, broken: bool) -> Path:
    import nibabel

    nibabel.save(nibabel.Nifti1Image(np.zeros((4, 4, 4), np.float32), np.eye(4)), str(path))
    return truncated(path, 0.6) if broken else path


# ---------------------------------------------------------------------------------------------- commands


def refine_probs(make: Callable[[Path], Path]) -> Callable[[Path], list[str]]:
    return lambda d: ["refine", str(good_image(d)), str(make(d)), "-o", str(d / "out.png")]


def refine_image(make: Callable[[Path], Path]) -> Callable[[Path], list[str]]:
    return lambda d: ["refine", str(make(d)), str(good_probs(d)), "-o", str(d / "out.png")]


def weights(command: str, make: Callable[[Path], Path]) -> Callable[[Path], list[str]]:
    if command == "segment":
        return lambda d: ["segment", str(good_image(d)), "--weights", str(make(d)), "-o", str(d / "out")]
    return lambda d: ["evaluate", "--weights", str(make(d)), "--out", str(d / "out"), "--num-images", "1"]


def checkpoint(make: Callable[[Path], Path]) -> Callable[[Path], list[str]]:
    return lambda d: ["evaluate", str(make(d)), "--out", str(d / "out"), "--num-images", "1", "--no-progress"]


def train_config(make: Callable[[Path], Path]) -> Callable[[Path], list[str]]:
    return lambda d: ["train", "--config", str(make(d)), "--epochs", "1", "--quiet"]


def train_init(make: Callable[[Path], Path]) -> Callable[[Path], list[str]]:
    tiny = ["--num-train", "2", "--num-val", "1", "--image-size", "16", "--crop-size", "16", "--batch-size", "2"]
    return lambda d: (
        ["train", "--out", str(d / "run"), "--stage", "crfrnn", "--init-from", str(make(d)), "--quiet"] + tiny
    )


def fit_probs(make: Callable[[Path], Path]) -> Callable[[Path], list[str]]:
    def argv(d: Path) -> list[str]:
        images, probs, labels = (d / "images", d / "probs", d / "labels")
        for sub in (images, probs, labels):
            sub.mkdir()
        for stem in ("a", "b", "c"):  # two good pairs, and a hostile one
            good_image(images).rename(images / f"{stem}.png")
            Image.fromarray(np.zeros((H, W), np.uint8)).save(labels / f"{stem}.png")
        for stem in ("b", "c"):
            good_probs(probs, f"{stem}.npy")
        made = make(d)
        made.rename(probs / ("a" + "".join(made.suffixes)))
        return ["fit", str(images), str(probs), str(labels), "-o", str(d / "p.yaml"), "--no-progress"]

    return argv


def good_weights(d: Path) -> Path:
    """A tiny valid CRF-RNN weight file (the released layer names, narrow layers), as tests/cli's segment tests
    write it."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "_pretrained_writers", Path(__file__).resolve().parents[1] / "models" / "test_pretrained.py"
    )
    writers = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(writers)
    fcn, crf = writers.reference_weights()
    return writers.write_pth(d / "crfasrnn_weights.pth", fcn, crf)


def segment_image(make: Callable[[Path], Path]) -> Callable[[Path], list[str]]:
    """``crfrnn segment`` of a hostile image (beside a good one, in a folder) with good weights."""

    def argv(d: Path) -> list[str]:
        photos = d / "photos"
        photos.mkdir()
        good_image(photos)
        made = make(d)
        made.rename(photos / made.name)
        weights_file = good_weights(d)
        return ["segment", str(photos), "--weights", str(weights_file), "-o", str(d / "out"), "--iterations", "1"]

    return argv


def train_folder(make: Callable[[Path], Path], *, as_mask: bool = False) -> Callable[[Path], list[str]]:
    """``crfrnn train --dataset folder`` whose images (or masks) folder holds a hostile file beside good pairs."""

    def argv(d: Path) -> list[str]:
        images, masks = d / "images", d / "masks"
        images.mkdir()
        masks.mkdir()
        for stem in ("a", "b", "c"):
            good_image(images).rename(images / f"{stem}.png")
            Image.fromarray(np.random.default_rng(3).integers(0, 3, (H, W)).astype(np.uint8)).save(
                masks / f"{stem}.png"
            )
        made = make(d)
        target = (masks if as_mask else images) / ("c" + "".join(made.suffixes))
        (masks if as_mask else images).joinpath("c.png").unlink()
        made.rename(target)
        tiny = ["--num-classes", "3", "--crop-size", "12", "--batch-size", "2", "--epochs", "1", "--quiet"]
        return [
            "train",
            "--out",
            str(d / "run"),
            "--dataset",
            "folder",
            "--images",
            str(images),
            "--masks",
            str(masks),
        ] + tiny

    return argv


def _marker(d: Path) -> Path:
    return d / "UNPICKLED"


#: (command, case name, builder(folder) -> argv): every command that reads a file, with each kind of hostile file
COMMAND_CASES: list[tuple[str, str, Callable[[Path], list[str]]]] = [
    ("refine", "npy truncated", refine_probs(lambda d: truncated(good_probs(d)))),
    ("refine", "npy corrupt", refine_probs(lambda d: corrupt(good_probs(d)))),
    ("refine", "npy huge header", refine_probs(lambda d: npy_huge_header(d / "p.npy"))),
    ("refine", "npy object array", refine_probs(lambda d: npy_object(d / "p.npy", _marker(d)))),
    ("refine", "npz bomb", refine_probs(lambda d: npz_bomb(d / "p.npz"))),
    ("refine", "npz member not npy", refine_probs(lambda d: npz_not_npy(d / "p.npz"))),
    ("refine", "npz truncated", refine_probs(lambda d: truncated(npz_bomb(d / "p.npz", 1), 0.3))),
    ("refine", "png truncated", refine_image(lambda d: truncated(_moved(d)))),
    ("refine", "png corrupt", refine_image(lambda d: corrupt(_moved(d)))),
    ("refine", "png bomb", refine_image(lambda d: png_bomb(d / "bomb.png"))),
    ("refine", "png 16-bit grey", refine_image(lambda d: odd_image(d / "g16.png", "grey16"))),
    ("refine", "tiff float", refine_image(lambda d: odd_image(d / "f.tif", "float_tiff"))),
    ("refine", "tiff int32", refine_image(lambda d: odd_image(d / "i.tif", "int32_tiff"))),
    ("refine", "tiff truncated", refine_image(lambda d: truncated(odd_image(d / "t.tif", "float_tiff")))),
    ("refine", "nifti probs truncated", refine_probs(lambda d: nifti(d / "p.nii.gz", broken=True))),
    ("segment", "h5 declared never written", weights("segment", lambda d: h5_file(d / "w.h5", "never_written", d))),
    ("segment", "h5 external storage", weights("segment", lambda d: h5_file(d / "w.h5", "external_storage", d))),
    ("segment", "h5 external link", weights("segment", lambda d: h5_file(d / "w.h5", "external_link", d))),
    ("segment", "h5 wrong layer shape", weights("segment", lambda d: h5_file(d / "w.h5", "wrong_layer_shape", d))),
    ("segment", "h5 truncated", weights("segment", lambda d: truncated(h5_file(d / "w.h5", "wrong_layer_shape", d)))),
    ("segment", "pth pickle", weights("segment", lambda d: pth_pickle(d / "w.pth", _marker(d)))),
    ("segment", "pth compressed", weights("segment", lambda d: pth_compressed(d / "w.pth"))),
    ("evaluate", "checkpoint pickle", checkpoint(lambda d: pth_pickle(d / "c.pt", _marker(d)))),
    ("evaluate", "checkpoint compressed", checkpoint(lambda d: pth_compressed(d / "c.pt"))),
    ("evaluate", "checkpoint truncated", checkpoint(lambda d: truncated(pth_compressed(d / "c.pt")))),
    ("evaluate", "weights h5 external link", weights("evaluate", lambda d: h5_file(d / "w.h5", "external_link", d))),
    ("train", "yaml alias bomb", train_config(lambda d: yaml_alias_bomb(d / "c.yaml"))),
    ("train", "yaml deep nesting", train_config(lambda d: yaml_deep(d / "c.yaml"))),
    ("train", "yaml python tag", train_config(lambda d: yaml_tag(d / "c.yaml", _marker(d)))),
    ("train", "init-from pickle", train_init(lambda d: pth_pickle(d / "c.pt", _marker(d)))),
    ("train", "init-from compressed", train_init(lambda d: pth_compressed(d / "c.pt"))),
    ("fit", "npz bomb", fit_probs(lambda d: npz_bomb(d / "p.npz"))),
    ("fit", "npy huge header", fit_probs(lambda d: npy_huge_header(d / "p.npy"))),
    ("fit", "npz member not npy", fit_probs(lambda d: npz_not_npy(d / "p.npz"))),
    ("segment", "png truncated", segment_image(lambda d: truncated(_moved(d)))),
    ("segment", "png corrupt", segment_image(lambda d: corrupt(_moved(d)))),
    ("segment", "png bomb", segment_image(lambda d: png_bomb(d / "bomb.png"))),
    ("segment", "png 16-bit grey", segment_image(lambda d: odd_image(d / "g16.png", "grey16"))),
    ("segment", "tiff float", segment_image(lambda d: odd_image(d / "f.tif", "float_tiff"))),
    ("train", "folder png truncated", train_folder(lambda d: truncated(_moved(d)))),
    ("train", "folder png bomb", train_folder(lambda d: png_bomb(d / "bomb.png"))),
    ("train", "folder tiff float", train_folder(lambda d: odd_image(d / "f.tif", "float_tiff"))),
    ("train", "folder mask png bomb", train_folder(lambda d: png_bomb(d / "bomb.png"), as_mask=True)),
    ("train", "folder mask 16-bit grey", train_folder(lambda d: odd_image(d / "g16.png", "grey16"), as_mask=True)),
]


def _moved(d: Path) -> Path:
    """A good image under another name (the case's own, so that it does not collide with the probabilities')."""
    return good_image(d).rename(d / "photo.png")

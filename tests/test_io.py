"""Tests of crfrnn._utils.files: every file is written to a temporary file and renamed into place."""

from __future__ import annotations

import ast
import os
import stat
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from crfrnn._utils import files as _io

SRC = Path(__file__).resolve().parents[1] / "src" / "crfrnn"


class _BreaksMidWrite:
    """A file object that writes part of the first chunk, then raises KeyboardInterrupt (as SIGINT would)."""

    def __init__(self, fh):
        self._fh = fh

    def write(self, data):
        self._fh.write(data[: max(1, len(data) // 2)])
        raise KeyboardInterrupt

    def __getattr__(self, name):
        return getattr(self._fh, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._fh.close()


def _figure():
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(1, 1))
    FigureCanvasAgg(fig)
    fig.subplots().plot([0, 1])
    return fig


WRITERS = {
    "bytes": lambda p: _io.atomic_write_bytes(p, b"x" * 100),
    "text": lambda p: _io.atomic_write_text(p, "hello " * 20),
    "torch": lambda p: _io.atomic_torch_save({"w": torch.ones(100)}, p),
    "numpy": lambda p: _io.atomic_np_save(p, np.ones(100)),
    "png": lambda p: _io.atomic_save_image(Image.new("RGB", (40, 30)), p),
    "figure": lambda p: _io.atomic_savefig(_figure(), p),
}


class TestAtomicWrites:
    @pytest.mark.parametrize("kind", sorted(WRITERS))
    def test_interrupted_write_leaves_nothing(self, kind, tmp_path, monkeypatch):
        real_fdopen = os.fdopen
        monkeypatch.setattr(_io.os, "fdopen", lambda *a, **k: _BreaksMidWrite(real_fdopen(*a, **k)))
        target = tmp_path / "out.png"
        with pytest.raises(KeyboardInterrupt):
            WRITERS[kind](target)
        assert list(tmp_path.iterdir()) == []  # no target, no temporary file

    @pytest.mark.parametrize("kind", sorted(WRITERS))
    def test_interrupted_write_keeps_the_old_file(self, kind, tmp_path, monkeypatch):
        target = tmp_path / "out.png"
        target.write_bytes(b"old")
        real_fdopen = os.fdopen
        monkeypatch.setattr(_io.os, "fdopen", lambda *a, **k: _BreaksMidWrite(real_fdopen(*a, **k)))
        with pytest.raises(KeyboardInterrupt):
            WRITERS[kind](target)
        assert target.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["out.png"]

    @pytest.mark.parametrize("kind", sorted(WRITERS))
    def test_smoke_and_permissions(self, kind, tmp_path):
        old = os.umask(0o027)
        try:
            path = WRITERS[kind](tmp_path / "out.png")
        finally:
            os.umask(old)
        assert path == tmp_path / "out.png" and path.stat().st_size > 0
        assert stat.S_IMODE(path.stat().st_mode) == 0o640  # 0o666 less the umask, not mkstemp's 0o600
        assert [p.name for p in tmp_path.iterdir()] == ["out.png"]

    def test_round_trips(self, tmp_path):
        _io.atomic_np_save(tmp_path / "a.npy", np.arange(5))
        assert np.load(tmp_path / "a.npy").tolist() == [0, 1, 2, 3, 4]
        _io.atomic_torch_save({"w": torch.arange(3)}, tmp_path / "a.pt")
        assert torch.load(tmp_path / "a.pt", weights_only=True)["w"].tolist() == [0, 1, 2]
        _io.atomic_save_image(Image.new("L", (4, 3), 7), tmp_path / "a.png")
        assert np.array(Image.open(tmp_path / "a.png")).tolist() == [[7] * 4] * 3

    def test_exceptions(self, tmp_path):
        with pytest.raises(FileNotFoundError, match="does not exist"):
            _io.atomic_write_text(tmp_path / "missing" / "a.txt", "x")
        with pytest.raises(ValueError, match="mode"):
            with _io.atomic_write(tmp_path / "a.txt", "a"):
                pass
        with pytest.raises(ValueError, match="image format"):
            _io.atomic_save_image(Image.new("L", (1, 1)), tmp_path / "a.unknown")
        with pytest.raises(ValueError, match="newline"):
            _io.append_line(tmp_path / "log", "a\nb")

    def test_append_line(self, tmp_path):
        _io.append_line(tmp_path / "log", "one")
        _io.append_line(tmp_path / "log", "two")
        assert (tmp_path / "log").read_text() == "one\ntwo\n"


# names of calls that write files; they must go through crfrnn._utils.files
_WRITE_ATTRS = {"savefig", "write_text", "write_bytes", "savez", "savez_compressed", "tofile", "dump", "safe_dump"}


def _direct_writes(tree: ast.AST) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        if isinstance(func, ast.Attribute):
            owner = func.value.id if isinstance(func.value, ast.Name) else None
            if func.attr == "save" and owner in ("torch", "np", "numpy"):
                found.append((node.lineno, f"{owner}.save("))
            elif func.attr == "save" and owner != "config":  # PIL's Image.save (TrainConfig.save uses _io)
                found.append((node.lineno, ".save("))
            elif func.attr in _WRITE_ATTRS and not (func.attr in ("dump", "safe_dump") and len(node.args) < 2):
                found.append((node.lineno, f".{func.attr}("))  # json.dump(obj, fh); json.dumps is fine
            elif func.attr == "open" and _write_mode(node, 0):
                found.append((node.lineno, ".open(<write mode>)"))
        elif isinstance(func, ast.Name) and func.id == "open" and _write_mode(node, 1):
            found.append((node.lineno, "open(<write mode>)"))
    return sorted(found)


def _write_mode(call: ast.Call, position: int) -> bool:
    mode = (
        call.args[position]
        if len(call.args) > position
        else next((k.value for k in call.keywords if k.arg == "mode"), None)
    )
    return isinstance(mode, ast.Constant) and isinstance(mode.value, str) and any(c in mode.value for c in "wax+")


def test_every_write_goes_through_the_helper():
    """src/ writes files only through crfrnn._utils.files (docstring examples are not code and are not checked)."""
    offenders = []
    for path in sorted(SRC.rglob("*.py")):
        if path == SRC / "_utils" / "files.py":
            continue
        for line, what in _direct_writes(ast.parse(path.read_text(encoding="utf-8"))):
            offenders.append(f"{path.relative_to(SRC.parent)}:{line}: {what}")
    assert offenders == [], "write these through crfrnn._utils.files:\n" + "\n".join(offenders)


def test_the_write_check_can_fail():
    code = "import torch, numpy as np\ntorch.save(x, p)\nnp.save(p, a)\nfig.savefig(p)\nimg.save(p)\nopen(p, 'w')\n"
    assert [w for _, w in _direct_writes(ast.parse(code))] == [
        "torch.save(",
        "np.save(",
        ".savefig(",
        ".save(",
        "open(<write mode>)",
    ]


class TestWriteLabels:
    """Labels are written in the smallest unsigned dtype that holds them, never wrapped around."""

    @pytest.mark.parametrize("suffix", [".npy", ".nii.gz"])
    @pytest.mark.parametrize(
        "top, dtype", [(1, np.uint8), (255, np.uint8), (256, np.uint16), (70000, np.uint32), (2**32 - 1, np.uint32)]
    )
    def test_values_kept_in_the_smallest_dtype(self, tmp_path, suffix, top, dtype):
        from crfrnn.io.volumes import write_labels

        if suffix != ".npy":
            nib = pytest.importorskip("nibabel")
        labels = np.zeros((2, 3, 4), np.int64)
        labels[1, 2, 3] = top
        path = write_labels(tmp_path / f"l{suffix}", labels)
        back = np.load(path) if suffix == ".npy" else np.asanyarray(nib.load(path).dataobj)
        assert back.dtype == dtype and np.array_equal(back, labels)

    @pytest.mark.parametrize(
        "labels, needle",
        [
            (np.array([[0, -1]]), "negative"),
            (np.array([[0, 2**32]]), "4294967296"),
            (np.array([[0.0, 1.5]]), "integer"),
        ],
    )
    def test_labels_no_dtype_holds_are_refused(self, tmp_path, labels, needle):
        from crfrnn.io.volumes import write_labels

        with pytest.raises((ValueError, TypeError), match=needle):
            write_labels(tmp_path / "l.npy", labels)
        assert not (tmp_path / "l.npy").exists()


class TestHighBitDepthImages:
    """16-bit and floating-point images are mapped to 0..255 or refused, never clipped into a wrong image."""

    def test_16_bit_grey_is_scaled_by_255_over_65535(self, tmp_path):
        from crfrnn.io import read_rgb

        values = np.array([[0, 1, 128, 129, 256, 32767], [32768, 40000, 65280, 65406, 65407, 65535]], np.uint16)
        expected = np.array([[0, 0, 0, 1, 1, 127], [128, 156, 254, 254, 255, 255]], np.uint8)
        for name in ("g16.png", "g16.tif"):
            Image.fromarray(values).save(tmp_path / name)  # mode "I;16"
            rgb = read_rgb(tmp_path / name)
            assert rgb.dtype == np.uint8 and rgb.shape == (2, 6, 3), name
            assert np.array_equal(rgb, np.repeat(expected[..., None], 3, axis=2)), (name, rgb[..., 0])

    def test_float_in_0_1_is_scaled_by_255(self, tmp_path):
        from crfrnn.io import read_rgb

        values = np.array([[0.0, 0.1, 0.5], [0.999, 1.0, 0.002]], np.float32)
        Image.fromarray(values).save(tmp_path / "f.tif")  # mode "F"
        rgb = read_rgb(tmp_path / "f.tif")
        assert (
            np.array_equal(rgb[..., 0], np.round(values * 255).astype(np.uint8)) and (rgb[..., 1] == rgb[..., 0]).all()
        )

    @pytest.mark.parametrize(
        "values, needles",
        [
            (np.array([[0.0, 300.0]], np.float32), ["floating-point", "0..300", "[0, 1]"]),
            (np.array([[0.0, np.nan]], np.float32), ["NaN"]),
            (np.array([[0, 70000]], np.int32), ["32-bit integer", "mode 'I'"]),
            (np.array([[0, 200]], np.int32), ["32-bit integer"]),  # no fixed range, even with small values
        ],
    )
    def test_modes_without_a_mapping_are_refused(self, tmp_path, values, needles):
        from crfrnn.io import read_rgb

        Image.fromarray(values).save(tmp_path / "x.tif")
        with pytest.raises(ValueError) as info:
            read_rgb(tmp_path / "x.tif")
        assert all(n in str(info.value) for n in needles) and "x.tif" in str(info.value), str(info.value)


def _npz_with_header(path: Path, shape: tuple, name: str = "scores.npy", dtype: str = "<f4") -> Path:
    """An .npz whose member holds only a .npy header declaring ``shape``: tiny on disk, huge if inflated."""
    import io
    import zipfile

    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": dtype, "fortran_order": False, "shape": shape})
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(name, header.getvalue() + b"\0" * 64)
    return path


class TestBoundedNumpyReads:
    """Sizes of .npy/.npz arrays are checked from their header before anything is inflated or allocated."""

    def test_npz_declaring_terabytes_is_refused_before_reading(self, tmp_path):
        from crfrnn.io import read_scores

        path = _npz_with_header(tmp_path / "bomb.npz", (2**38, 4))  # 4 TiB declared, a few hundred bytes on disk
        with pytest.raises(ValueError, match=r"declares .*\(274877906944, 4\).* at most"):
            read_scores(path, (4, 6))

    def test_compressed_member_larger_than_the_image_allows(self, tmp_path):
        from crfrnn.io import read_scores

        path = tmp_path / "big.npz"
        np.savez_compressed(path, scores=np.zeros((2, 300, 300), np.float32))  # inflates 700 KB for a 4x6 image
        with pytest.raises(ValueError, match="declares"):
            read_scores(path, (4, 6))

    def test_max_memory_bounds_the_array(self, tmp_path):
        from crfrnn.io import MemoryLimitError, read_scores

        path = _npz_with_header(tmp_path / "s.npz", (2, 4000, 4000))  # 128 MB declared, fits the image's bound
        with pytest.raises(MemoryLimitError, match="`max_memory`"):
            read_scores(path, (4000, 4000), max_memory=2**20)

    def test_member_that_is_not_npy(self, tmp_path):
        import zipfile

        from crfrnn.io import read_scores

        path = tmp_path / "odd.npz"
        with zipfile.ZipFile(path, "w") as zf:
            zf.writestr("notes.txt", b"hello")
        with pytest.raises(OSError, match=r"'notes.txt'.*not a \.npy array"):
            read_scores(path, (4, 6))

    def test_volume_scores_and_guides_are_bounded(self, tmp_path):
        from crfrnn.io import read_guide, read_volume_scores

        path = _npz_with_header(tmp_path / "v.npz", (2**12, 2**12, 2**6))  # 4 GB declared
        with pytest.raises(ValueError, match="declares"):
            read_volume_scores(path, (4, 5, 6))
        with pytest.raises(MemoryError, match="declares"):
            read_guide(path, max_bytes=2**30)

    def test_npy_header_is_checked_too(self, tmp_path):
        from crfrnn.io import read_scores

        path = tmp_path / "s.npy"
        np.save(path, np.zeros((3, 60, 60), np.float32))  # 10800 values: more than 256 x 4 x 6
        with pytest.raises(ValueError, match="declares"):
            read_scores(path, (4, 6))

    def test_legitimate_npz_still_reads(self, tmp_path):
        from crfrnn.io import read_scores

        path = tmp_path / "ok.npz"
        np.savez_compressed(path, other=np.zeros(3), scores=np.full((2, 4, 6), 0.5, np.float32))
        assert read_scores(path, (4, 6), key="scores").values.shape == (2, 4, 6)


class TestBoundedYamlAndZips:
    """Every YAML or torch zip a user hands over goes through crfrnn._utils.safe_load (docs/security.md)."""

    LAUGHS = "a0: &a0 [x, x, x]\n" + "".join(f"a{i}: &a{i} [*a{i - 1}, *a{i - 1}, *a{i - 1}]\n" for i in range(1, 4))

    def test_parameter_file_with_aliases_is_refused(self, tmp_path):
        from crfrnn.params import load_params

        path = tmp_path / "p.yaml"
        path.write_text(self.LAUGHS)
        with pytest.raises(ValueError, match="alias"):
            load_params(path)

    def test_model_kwargs_flag_with_aliases_is_refused(self, capsys):
        from crfrnn.cli import main

        with pytest.raises(SystemExit) as exit_info:  # argparse refuses the flag's value
            main(["train", "--model-kwargs", "{a: &x [1, 2], b: *x}", "--out", "unused"])
        assert exit_info.value.code == 2
        assert "mapping" in capsys.readouterr().err

    def test_pretrained_torch_file_declaring_a_huge_size_is_refused(self, tmp_path):
        import zipfile

        from crfrnn.models._weights import load_torch

        path = tmp_path / "bomb.pth"
        with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf, zf.open("bomb/data.pkl", "w") as fh:
            for _ in range(64):  # 64 MB of zeros, 1 MB at a time: about 64 KB on disk
                fh.write(bytes(1 << 20))
        with pytest.raises(ValueError, match="uncompressed"):
            load_torch(path)

    def test_plain_yaml_still_loads(self):
        from crfrnn._utils.safe_load import load_yaml

        assert load_yaml("a: [1, 2]\nb: {c: d}\n") == {"a": [1, 2], "b": {"c": "d"}}


class TestLabelsOf:
    """``labels_of``: the argmax over labels, computed label by label in a compiled loop, must be NumPy's."""

    @pytest.mark.parametrize("dtype", [np.float32, np.float64])
    @pytest.mark.parametrize("shape", [(21, 37, 53), (4, 6, 7, 9), (2, 1000), (3, 0, 5), (5,)])
    def test_same_as_numpy_with_ties(self, dtype, shape):
        from crfrnn.io import labels_of

        rng = np.random.default_rng(0)
        scores = rng.integers(0, 3, shape).astype(dtype)  # many ties: the first of equal maxima wins
        got = labels_of(scores)
        assert got.dtype == np.int64 and got.shape == shape[1:]
        np.testing.assert_array_equal(got, scores.argmax(0))
        noisy = rng.standard_normal(shape).astype(dtype)
        np.testing.assert_array_equal(labels_of(noisy), noisy.argmax(0))

    def test_infinities_nan_non_contiguous_and_other_types(self):
        from crfrnn.io import labels_of

        rng = np.random.default_rng(1)
        scores = rng.standard_normal((6, 20, 30)).astype(np.float32)
        scores[2, 3, 4] = np.inf
        scores[:, 5, 5] = -np.inf
        np.testing.assert_array_equal(labels_of(scores), scores.argmax(0))
        scores[4, 7, 8] = np.nan  # NumPy's rule: the first NaN
        scores[1, 7, 8] = np.nan
        np.testing.assert_array_equal(labels_of(scores), scores.argmax(0))
        strided = rng.standard_normal((30, 20, 6)).astype(np.float32).transpose(2, 1, 0)
        np.testing.assert_array_equal(labels_of(strided), strided.argmax(0))
        ints = rng.integers(0, 9, (5, 8, 8))
        np.testing.assert_array_equal(labels_of(ints), ints.argmax(0))
        half = rng.standard_normal((5, 8, 8)).astype(np.float16)
        np.testing.assert_array_equal(labels_of(half), half.argmax(0))

    def test_one_map_is_a_threshold(self):
        from crfrnn.io import labels_of

        p = np.array([[[0.2, 0.5, 0.7]]], np.float32)
        np.testing.assert_array_equal(labels_of(p), [[0, 0, 1]])
        np.testing.assert_array_equal(labels_of(np.log(p / (1 - p)), is_logits=True), [[0, 0, 1]])

"""Reading ``crfrnn_keras_model.h5`` (sadeepj/crfasrnn_keras) into the layout of :mod:`crfrnn.models._weights`.

``h5py`` (the ``keras`` extra) is imported only when a Keras file is read.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Optional

from torch import Tensor

from crfrnn.models._weights import CRF_NAMES, FCN_LAYERS, KERAS_CRF_LAYER, KERAS_CRF_WEIGHTS, Weights, weight_tensor

__all__ = ["keras_kernel_to_torch", "read_keras"]

#: most values one weight dataset may declare: FCN-8s' largest layer, fc6 (7 x 7 x 512 x 4096), rounded up
MAX_WEIGHT_VALUES = 2**27
#: most output channels of one FCN-8s layer (the released network's widest, fc6 and fc7, have 4096)
MAX_WIDTH = 4096
#: most labels a Keras file may declare (the released network has 21)
MAX_LABELS = 1024
#: the spatial kernel size of each layer of FCN-8s (the rest are VGG-16's 3 x 3 convolutions)
KERNEL_SIZE = {"fc6": 7, "fc7": 1, "score_fr": 1, "upscore2": 4, "score_pool4": 1, "upscore_pool4": 4}
KERNEL_SIZE.update({"score_pool3": 1, "upscore8": 16})
#: the layer of FCN-8s whose output feeds each layer (``None``: the image's 3 colours; ``"labels"``: score_fr's)
INPUT_OF = {"conv1_1": None, "fc6": "conv5_3", "fc7": "fc6", "score_fr": "fc7", "score_pool4": "conv4_3"}
INPUT_OF.update({"score_pool3": "conv3_3", "upscore2": "labels", "upscore_pool4": "labels", "upscore8": "labels"})


def keras_kernel_to_torch(kernel: Tensor, *, transposed: bool) -> Tensor:
    """A Keras convolution kernel in the layout of PyTorch.

    ``Conv2D`` stores ``(kh, kw, in, out)`` and :class:`torch.nn.Conv2d` wants ``(out, in, kh, kw)``;
    ``Conv2DTranspose`` stores ``(kh, kw, out, in)`` and :class:`torch.nn.ConvTranspose2d` wants
    ``(in, out, kh, kw)``. Both are the permutation ``(3, 2, 0, 1)``, with no spatial flip: TensorFlow,
    Caffe and PyTorch all compute cross-correlations (and their transposes).
    """
    if kernel.dim() != 4:
        raise ValueError(
            f"a Keras convolution kernel has 4 dimensions (kh, kw, ., .), got shape {tuple(kernel.shape)}."
        )
    del transposed  # the same permutation for both (see above); kept in the signature to document the layouts
    return kernel.permute(3, 2, 0, 1).contiguous()


def read_keras(path: Path) -> Weights:
    """The weights of ``crfrnn_keras_model.h5`` (sadeepj/crfasrnn_keras; needs ``h5py``)."""
    try:
        import h5py
    except ImportError:
        raise ImportError(
            f"reading the Keras weights {path} needs h5py: pip install 'crfrnn[keras]' (or pip install h5py)."
        ) from None
    try:
        fh = h5py.File(path, "r")
    except OSError as err:
        raise ValueError(f"{path}: not a readable HDF5 file (truncated or damaged?): {err}") from None
    with fh:
        if "model_weights" in fh and not isinstance(fh.get("model_weights", getlink=True), h5py.HardLink):
            raise ValueError(f"{path}: 'model_weights' is a link; links are refused (they can lead out of the file).")
        root = fh["model_weights"] if "model_weights" in fh else fh  # model.save() vs model.save_weights()
        names = sorted(root.keys())

        def layer_weights(name: str) -> dict[str, Any]:
            if name not in root or not isinstance(root.get(name, getlink=True), h5py.HardLink):
                return {}
            if not isinstance(root[name], h5py.Group):
                return {}
            found: dict[str, Any] = {}

            def visit(key: str, obj: Any) -> None:
                if isinstance(obj, h5py.Dataset):
                    found[key.rsplit("/", 1)[-1].split(":")[0]] = obj

            root[name].visititems(visit)
            _refuse_outside(h5py, root[name], found, f"{path}: {name}")
            return found

        def read(ds: Any, expected_dims: int, what: str, expected: Optional[tuple] = None) -> Tensor:
            if len(ds.shape) != expected_dims:
                raise ValueError(f"{path}: {what} has shape {ds.shape}, expected {expected_dims} dimensions.")
            if expected is not None and any(e is not None and int(d) != e for d, e in zip(ds.shape, expected)):
                shown = "(" + ", ".join("any" if e is None else str(e) for e in expected) + ")"
                raise ValueError(
                    f"{path}: {what} declares shape {ds.shape}, but the layer it is meant for has shape {shown} "
                    "(from the layers before it in the file); it is not read. Is this another network, or a "
                    "damaged file?"
                )
            values = math.prod(int(d) for d in ds.shape)  # declared: nothing read yet
            if values > MAX_WEIGHT_VALUES or values * ds.dtype.itemsize > 4 * MAX_WEIGHT_VALUES:
                raise ValueError(
                    f"{path}: {what} declares shape {ds.shape} of {ds.dtype} ({values} values), but at most "
                    f"{MAX_WEIGHT_VALUES} float32 values are expected (FCN-8s' largest layer, fc6); it is not read."
                )
            return weight_tensor(ds[()], path, what)  # the shape is known here: reading allocates what the file holds

        fcn: dict[str, Tensor] = {}
        widths: dict[Optional[str], int] = {None: 3}  # output channels of each layer read so far
        previous: Optional[str] = None
        for ours, name, _, transposed in FCN_LAYERS:
            weights = layer_weights(name)
            if "kernel" in weights:
                declared = weights["kernel"].shape  # nothing read yet
                out = int(declared[2 if transposed else 3]) if len(declared) == 4 else 0
                if out > (MAX_LABELS if ours == "score_fr" else MAX_WIDTH):
                    raise ValueError(_too_wide(path, name, declared, out, ours))
                expected = _expected_kernel(ours, previous, transposed, widths)
                kernel = read(weights["kernel"], 4, f"layer {name!r} kernel", expected)
                widths[ours] = out
                if ours == "score_fr":
                    widths["labels"] = out
                fcn[f"{ours}.weight"] = keras_kernel_to_torch(kernel, transposed=transposed)
            if "bias" in weights:
                out_width = widths.get(ours)
                fcn[f"{ours}.bias"] = read(weights["bias"], 1, f"layer {name!r} bias", (out_width,))
            previous = ours
        crf = None
        weights = layer_weights(KERAS_CRF_LAYER)
        if weights:
            missing = [n for n in KERAS_CRF_WEIGHTS if n not in weights]
            if missing:
                raise ValueError(f"{path}: the CRF-RNN layer {KERAS_CRF_LAYER!r} lacks {missing}.")
            # crfasrnn_keras crfrnn_layer.py: q = U - C (W_s S + W_b B), tf.matmul(W, x): rows = output label
            labels = widths.get("labels")
            crf = {
                key: read(weights[n], 2, f"{KERAS_CRF_LAYER}/{n}", (labels, labels))
                for key, n in zip(CRF_NAMES, KERAS_CRF_WEIGHTS)
            }
    return Weights(fcn, crf, names)


def _expected_kernel(
    ours: str, previous: Optional[str], transposed: bool, widths: dict[Optional[str], int]
) -> tuple[Optional[int], ...]:
    """The Keras shape ``(kh, kw, in, out)`` (transposed: ``(kh, kw, out, in)``) that layer ``ours`` must have,
    from the widths of the layers read before it (``None``: not known yet, any size).
    """
    size = KERNEL_SIZE.get(ours, 3)
    source = INPUT_OF.get(ours, previous)
    in_width = widths.get(source) if source in widths else None
    if transposed:  # the label-to-label upsamplings
        labels = widths.get("labels")
        return (size, size, labels, labels)
    if ours in ("score_fr", "score_pool4", "score_pool3"):
        return (size, size, in_width, widths.get("labels"))
    return (size, size, in_width, None)


def _too_wide(path: Path, name: str, declared: tuple, out: int, ours: str) -> str:
    bound = MAX_LABELS if ours == "score_fr" else MAX_WIDTH
    what = "labels" if ours == "score_fr" else "output channels"
    return (
        f"{path}: layer {name!r} kernel declares shape {declared}: {out} {what}, but at most {bound} are "
        "expected (the released FCN-8s "
        "has 4096 at most, and 21 labels); it is not read. Is this another network, or a damaged file?"
    )


def _refuse_outside(h5py: Any, group: Any, datasets: dict[str, Any], where: str) -> None:
    """Refuse links (soft, external: they can lead out of the file) and datasets stored outside the file
    (external storage, virtual datasets: other files, named pipes, devices), before anything is read.
    """
    links: list[tuple[str, Any]] = []
    group.visititems_links(lambda key, link: links.append((key, link)))  # raising inside it breaks h5py
    for key, link in links:
        if not isinstance(link, h5py.HardLink):
            raise ValueError(
                f"{where}/{key} is a {type(link).__name__}; links are refused in weight files (they can lead out "
                "of the file). Save the weights with Keras again."
            )
    for key, ds in datasets.items():
        if ds.external or ds.is_virtual:
            raise ValueError(
                f"{where}: {key!r} has external storage (its data lives outside the file), which is refused. "
                "Save the weights with Keras again."
            )

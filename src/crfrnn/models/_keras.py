"""Reading ``crfrnn_keras_model.h5`` (sadeepj/crfasrnn_keras) into the layout of :mod:`crfrnn.models._weights`.

``h5py`` (the ``keras`` extra) is imported only when a Keras file is read.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from torch import Tensor

from crfrnn.models._weights import CRF_NAMES, FCN_LAYERS, KERAS_CRF_LAYER, KERAS_CRF_WEIGHTS, Weights, weight_tensor

__all__ = ["keras_kernel_to_torch", "read_keras"]

#: most values one weight dataset may declare: FCN-8s' largest layer, fc6 (7 x 7 x 512 x 4096), rounded up
MAX_WEIGHT_VALUES = 2**27


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

        def read(ds: Any, expected_dims: int, what: str) -> Tensor:
            if len(ds.shape) != expected_dims:
                raise ValueError(f"{path}: {what} has shape {ds.shape}, expected {expected_dims} dimensions.")
            values = math.prod(int(d) for d in ds.shape)  # declared: nothing read yet
            if values > MAX_WEIGHT_VALUES or values * ds.dtype.itemsize > 4 * MAX_WEIGHT_VALUES:
                raise ValueError(
                    f"{path}: {what} declares shape {ds.shape} of {ds.dtype} ({values} values), but at most "
                    f"{MAX_WEIGHT_VALUES} float32 values are expected (FCN-8s' largest layer, fc6); it is not read."
                )
            return weight_tensor(ds[()], path, what)  # the shape is known here: reading allocates what the file holds

        fcn: dict[str, Tensor] = {}
        for ours, name, _, transposed in FCN_LAYERS:
            weights = layer_weights(name)
            if "kernel" in weights:
                kernel = read(weights["kernel"], 4, f"layer {name!r} kernel")
                fcn[f"{ours}.weight"] = keras_kernel_to_torch(kernel, transposed=transposed)
            if "bias" in weights:
                fcn[f"{ours}.bias"] = read(weights["bias"], 1, f"layer {name!r} bias")
        crf = None
        weights = layer_weights(KERAS_CRF_LAYER)
        if weights:
            missing = [n for n in KERAS_CRF_WEIGHTS if n not in weights]
            if missing:
                raise ValueError(f"{path}: the CRF-RNN layer {KERAS_CRF_LAYER!r} lacks {missing}.")
            # crfasrnn_keras crfrnn_layer.py: q = U - C (W_s S + W_b B), tf.matmul(W, x): rows = output label
            crf = {key: read(weights[n], 2, f"{KERAS_CRF_LAYER}/{n}") for key, n in zip(CRF_NAMES, KERAS_CRF_WEIGHTS)}
    return Weights(fcn, crf, names)


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

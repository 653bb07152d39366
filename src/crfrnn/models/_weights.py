"""The released network's weight files, read into one layout: which format a file is, and the Caffe and PyTorch
readers (the Keras one is :mod:`crfrnn.models._keras`). Used by :mod:`crfrnn.models.pretrained`.
"""

from __future__ import annotations

import math
import os
import pickle
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from torch import Tensor

from crfrnn._utils.safe_load import check_zip_sizes
from crfrnn.models._caffe import looks_like_caffemodel, read_caffemodel

__all__ = [
    "CAFFE_CRF_LAYER",
    "CRF_NAMES",
    "FCN_LAYERS",
    "FILE_NAME",
    "HDF5_MAGIC",
    "KERAS_CRF_LAYER",
    "KERAS_CRF_WEIGHTS",
    "PORT_CRF_KEYS",
    "Weights",
    "ZIP_MAGIC",
    "hdf5_signature",
    "load_torch",
    "read_caffe",
    "read_pytorch",
    "sniff",
    "weight_tensor",
]

# (module of FCN8s, layer name in the Caffe and Keras files, key prefix in the PyTorch port, transposed?)
FCN_LAYERS: tuple[tuple[str, str, str, bool], ...] = (
    *(
        (f"conv{s}_{i}", f"conv{s}_{i}", f"conv{s}_{i}", False)
        for s, n in ((1, 2), (2, 2), (3, 3), (4, 3), (5, 3))
        for i in range(1, n + 1)
    ),
    ("fc6", "fc6", "fc6", False),
    ("fc7", "fc7", "fc7", False),
    ("score_fr", "score-fr", "score_fr", False),
    ("upscore2", "score2", "upscore2", True),
    ("score_pool4", "score-pool4", "score_pool4", False),
    ("upscore_pool4", "score4", "upscore_pool4", True),
    ("score_pool3", "score-pool3", "score_pool3", False),
    ("upscore8", "upsample", "upscore8", True),
)
FILE_NAME = {ours: caffe for ours, caffe, _, _ in FCN_LAYERS}
CRF_NAMES = ("spatial", "bilateral", "compatibility")
CAFFE_CRF_LAYER = "inference1"
KERAS_CRF_LAYER = "crfrnn"
KERAS_CRF_WEIGHTS = ("spatial_ker_weights", "bilateral_ker_weights", "compatibility_matrix")
PORT_CRF_KEYS = tuple(f"crfrnn.{n}" for n in KERAS_CRF_WEIGHTS)

HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
ZIP_MAGIC = b"PK\x03\x04"


def hdf5_signature(fh: Any, size: int) -> bool:
    """Whether the open file ``fh`` holds an HDF5 superblock within its first ``size`` bytes."""
    offset = 0
    while offset + 8 <= size:  # the superblock sits at 0, 512, 1024, 2048, ... (after a user block)
        fh.seek(offset)
        if fh.read(8) == HDF5_MAGIC:
            return True
        offset = 512 if offset == 0 else offset * 2
    return False


def sniff(path: Path) -> Optional[str]:
    """The format of the weight file ``path`` from its first bytes (``None``: none of the three)."""
    with open(path, "rb") as fh:
        size = os.fstat(fh.fileno()).st_size
        head = fh.read(64)
        if head[:8] == HDF5_MAGIC or hdf5_signature(fh, min(size, 1 << 20)):
            return "keras"
        if head[:4] == ZIP_MAGIC or (len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5):
            return "pytorch"  # torch.save's zip archive, or the legacy format (a pickle, protocol 2-5)
        if looks_like_caffemodel(head, size):
            return "caffe"
    return None


@dataclass
class Weights:
    """A file's weights in the layout of :class:`FCN8s` / :class:`crfrnn.CrfRnn` (``U - mu (W_s S + W_b B)``)."""

    fcn: dict[str, Tensor]  # FCN8s state_dict keys
    crf: Optional[dict[str, Tensor]]  # "spatial", "bilateral", "compatibility"
    names: list[str]  # the layer (or key) names in the file, for error messages


def weight_tensor(array: Any, path: Path, what: str) -> Tensor:
    """``array`` as a contiguous float32 tensor; a ``ValueError`` naming ``what`` if it is not finite floats."""
    t = torch.as_tensor(np.asarray(array)) if not isinstance(array, Tensor) else array.detach()
    if not t.is_floating_point():
        raise ValueError(f"{path}: {what} holds {t.dtype} values, expected floating-point weights.")
    t = t.to(torch.float32).contiguous()
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"{path}: {what} contains NaN or infinite values (a damaged file?).")
    return t


def read_caffe(path: Path) -> Weights:
    """The weights of a ``.caffemodel`` (torrvision/crfasrnn)."""
    net = read_caffemodel(path)
    fcn: dict[str, Tensor] = {}
    for ours, name, _, _ in FCN_LAYERS:
        layer = net.layer(name)
        if layer is None or not layer.blobs:
            continue
        weight = layer.blobs[0]
        if len(weight.shape) != 4:
            raise ValueError(
                f"{path}: layer {name!r} has a weight blob of shape {weight.shape}; expected a 4-D "
                "(out, in, kh, kw) convolution blob. Is this an FCN-8s?"
            )
        fcn[f"{ours}.weight"] = weight_tensor(weight.data.reshape(weight.shape), path, f"layer {name!r} weight")
        if len(layer.blobs) > 1:
            bias = layer.blobs[1].data  # (out,) or the legacy (1, 1, 1, out)
            fcn[f"{ours}.bias"] = weight_tensor(bias.reshape(-1), path, f"layer {name!r} bias")
        if len(layer.blobs) > 2:
            raise ValueError(f"{path}: layer {name!r} has {len(layer.blobs)} blobs, expected a weight and a bias.")
    crf = None
    layer = net.layer(CAFFE_CRF_LAYER)
    if layer is not None and layer.blobs:
        if len(layer.blobs) != 3:
            raise ValueError(
                f"{path}: the CRF-RNN layer {CAFFE_CRF_LAYER!r} has {len(layer.blobs)} blobs, expected 3 "
                "(spatial weights, bilateral weights, compatibility)."
            )
        crf = {}
        for key, blob in zip(CRF_NAMES, layer.blobs):
            n = int(round(math.sqrt(blob.data.size)))
            if n * n != blob.data.size or any(d != 1 for d in blob.shape[:-2]):
                raise ValueError(
                    f"{path}: CRF-RNN blob {key!r} of layer {CAFFE_CRF_LAYER!r} has shape {blob.shape}, "
                    "expected (1, 1, L, L)."
                )
            # Caffe (meanfield_iteration.cpp): message = W_s S + W_b B, output = U - C message, rows = output label
            crf[key] = weight_tensor(blob.data.reshape(n, n), path, f"CRF-RNN blob {key!r}")
    names = [layer.name for layer in net.layers]
    return Weights(fcn, crf, names)


def load_torch(path: Path) -> Mapping[str, Any]:
    """The state dict in the PyTorch file ``path`` (``weights_only``: tensors, never arbitrary objects)."""
    check_zip_sizes(path)  # declared sizes, before anything is inflated
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise ValueError(
            f"{path}: refused to load: it holds more than tensors (weights_only=True refuses arbitrary Python "
            f"objects, which could run code). Only plain state dicts are read. ({err})"
        ) from None
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, ValueError) as err:
        raise ValueError(f"{path}: not a readable PyTorch checkpoint (truncated or damaged?): {err}") from None
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model_state_dict", "model"):
            if key in obj and isinstance(obj[key], Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping) or not all(isinstance(k, str) for k in obj):
        raise ValueError(f"{path}: expected a state dict (a mapping of names to tensors), got {type(obj).__name__}.")
    if obj and all(k.startswith("module.") for k in obj):  # saved from DataParallel
        obj = {k[len("module.") :]: v for k, v in obj.items()}
    return obj


def read_pytorch(path: Path) -> Weights:
    """The weights of ``crfasrnn_weights.pth`` (sadeepj/crfasrnn_pytorch)."""
    state = load_torch(path)
    known = {f"{prefix}.{p}" for _, _, prefix, _ in FCN_LAYERS for p in ("weight", "bias")} | set(PORT_CRF_KEYS)
    unexpected = sorted(k for k in state if k not in known)
    if unexpected:
        raise ValueError(
            f"{path}: unexpected keys {unexpected[:8]}{' ...' if len(unexpected) > 8 else ''}: this is not the "
            "crfasrnn_pytorch network (FCN-8s keys conv1_1..fc7, score_fr, upscore2, ..., crfrnn.*)."
        )
    for key, value in state.items():
        if not isinstance(value, Tensor):
            raise ValueError(f"{path}: entry {key!r} is a {type(value).__name__}, expected a tensor.")
    fcn = {
        f"{ours}.{p}": weight_tensor(state[f"{prefix}.{p}"], path, f"{prefix}.{p}")
        for ours, _, prefix, _ in FCN_LAYERS
        for p in ("weight", "bias")
        if f"{prefix}.{p}" in state
    }
    crf = None
    present = [k for k in PORT_CRF_KEYS if k in state]
    if present:
        missing = [k for k in PORT_CRF_KEYS if k not in state]
        if missing:
            raise ValueError(f"{path}: the CRF-RNN parameters are incomplete: missing {missing}.")
        spatial, bilateral, compat = (weight_tensor(state[k], path, k) for k in PORT_CRF_KEYS)
        # crfasrnn_pytorch/crfasrnn/crfrnn.py: cur_logits = C (W_s S + W_b B) + U, C initialised to I; this library
        # computes U - mu (...): mu = -C
        crf = {"spatial": spatial, "bilateral": bilateral, "compatibility": -compat}
    return Weights(fcn, crf, sorted(state))

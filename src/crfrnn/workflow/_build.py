"""Building the model, the optimiser and the schedule of a :class:`~crfrnn.workflow._config.TrainConfig`.

:func:`build_model` builds the network of a stage and loads ``init_from``; :func:`build_optimizer` and
:func:`build_scheduler` give the parameter groups (the CRF's learning-rate multipliers) and the schedule. The
data sets are built by :mod:`crfrnn.workflow._datasets`.
"""

from __future__ import annotations

import difflib
from typing import Any, Mapping, cast

import torch
from torch import Tensor, nn

from crfrnn.models.segmenter import CrfRnnSegmenter
from crfrnn.workflow._config import DEFAULT_MODELS, TrainConfig

__all__ = ["build_model", "build_optimizer", "build_scheduler", "freeze_backbone"]


def _backbone_state(payload: Mapping[str, Any]) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """The backbone weights and builder kwargs of a checkpoint (its whole model, or a segmenter's backbone)."""
    state = payload["state_dict"]
    kwargs = dict(payload["model"]["kwargs"])
    if any(k.startswith("backbone.") for k in state) and any(k.startswith("crf.") for k in state):
        state = {k[len("backbone.") :]: v for k, v in state.items() if k.startswith("backbone.")}
        kwargs = dict(kwargs.get("backbone_kwargs") or {})
    kwargs.pop("num_classes", None)
    return state, kwargs


def build_model(config: TrainConfig, num_classes: int) -> tuple[nn.Module, str, dict[str, Any]]:
    """Build the network of a config, checked against its stage, with ``init_from`` weights loaded.

    Returns:
        ``(model, name, kwargs)`` with ``crfrnn.models.create(name, **kwargs)`` rebuilding the architecture.

    Raises:
        FileNotFoundError: if ``init_from`` does not exist.
        ValueError: unknown model, a model that does not fit the stage, or ``init_from`` weights that do not fit.
    """
    from crfrnn.io.checkpoint import load_checkpoint
    from crfrnn.models import create, list_models

    init = load_checkpoint(config.init_from) if config.init_from is not None else None
    name = config.model
    if name is None:  # stage crfrnn: the CRF version of the stage-1 model
        guess = f"{init['model']['name']}_crfrnn" if init is not None else None
        name = guess if guess in list_models() else DEFAULT_MODELS["crfrnn"]
    if name not in list_models():
        close = difflib.get_close_matches(str(name), list_models(), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"unknown model {name!r}; valid names are {list_models()}.{hint}")
    kwargs = dict(config.model_kwargs)
    if kwargs.get("num_classes", num_classes) != num_classes:
        raise ValueError(
            f"model_kwargs has num_classes={kwargs['num_classes']} but the data set has {num_classes} classes."
        )
    kwargs["num_classes"] = num_classes
    if config.stage == "crfrnn":
        crf_kwargs = dict(kwargs.get("crf_kwargs") or {})
        for key in ("num_iterations", "num_eval_iterations"):
            wanted = getattr(config, key)
            if crf_kwargs.get(key, wanted) != wanted:
                raise ValueError(
                    f"model_kwargs.crf_kwargs.{key}={crf_kwargs[key]} contradicts {key}={wanted}; set {key} only."
                )
            crf_kwargs[key] = wanted
        kwargs["crf_kwargs"] = crf_kwargs
        if init is not None and "backbone_kwargs" not in kwargs:
            kwargs["backbone_kwargs"] = _backbone_state(init)[1]
    # checked by name before building (clearer than a keyword error), and on the built model after
    if config.stage == "cnn" and name.endswith("_crfrnn"):
        _check_stage("cnn", name, True)
    if config.stage == "crfrnn" and f"{name}_crfrnn" in list_models():
        _check_stage("crfrnn", name, False)
    try:
        model = create(name, **kwargs)
    except TypeError as err:
        raise ValueError(str(err)) from err
    segmenter = isinstance(model, CrfRnnSegmenter)
    _check_stage(config.stage, name, segmenter)
    if init is not None:
        if int(init["num_classes"]) != num_classes:
            raise ValueError(
                f"init_from '{config.init_from}' was trained with {init['num_classes']} classes but the data set has "
                f"{num_classes}; start from a checkpoint with the same classes."
            )
        state, init_kwargs = _backbone_state(init) if segmenter else (init["state_dict"], None)
        target = cast(nn.Module, model.backbone) if segmenter else model
        try:
            target.load_state_dict(state)
        except RuntimeError as err:
            detail = str(err).strip().splitlines()
            what = "the backbone of " if segmenter else ""
            hint = (
                f" Its builder kwargs were {init_kwargs}; pass the same backbone_kwargs."
                if segmenter
                else " Use a checkpoint of the same architecture."
            )
            raise ValueError(
                f"the weights of init_from '{config.init_from}' (model {init['model']['name']!r}) do not fit "
                f"{what}model {name!r}: {detail[0] if detail else err}.{hint}"
            ) from err
    return model, name, kwargs


def _check_stage(stage: str, name: str, has_crf: bool) -> None:
    from crfrnn.models import list_models

    if stage == "cnn" and has_crf:
        plain = name[: -len("_crfrnn")] if name.endswith("_crfrnn") else "small_fcn"
        raise ValueError(
            f"stage 'cnn' trains the CNN alone, but model {name!r} has a CRF-RNN head; use stage 'crfrnn' for it, "
            f"or a CNN such as {plain!r} for stage 'cnn'."
        )
    if stage == "crfrnn" and not has_crf:
        crf_names = [n for n in list_models() if n.endswith("_crfrnn")]
        raise ValueError(
            f"stage 'crfrnn' trains a CNN with a CRF-RNN head, but model {name!r} has none; use one of {crf_names} "
            f"(e.g. {name + '_crfrnn'!r} with init_from a stage-1 {name!r} checkpoint), or stage 'cnn'."
        )


def freeze_backbone(model: nn.Module) -> nn.Module:
    """Fix a segmenter's CNN (``TrainConfig.freeze_backbone``): its parameters stop requiring gradients, so the
    optimiser leaves them out and the backward stops at the CRF. Returns ``model``.

    Raises:
        ValueError: if ``model`` has no CRF-RNN head (nothing would be left to train).
    """
    if not isinstance(model, CrfRnnSegmenter) or model.crf is None:
        raise ValueError(f"freeze_backbone needs a CNN with a CRF-RNN head, got {type(model).__name__}.")
    for p in model.backbone.parameters():
        p.requires_grad_(False)
    return model


def build_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """The optimiser, with parameter groups: CNN (``lr``, ``weight_decay``), CRF kernel weights
    (``lr * crf_kernel_lr_mult``), CRF compatibility (``lr * crf_compat_lr_mult``), other CRF parameters
    (``lr``; learned widths, and the ``safe_start`` gate); CRF groups have no weight decay. Each group's ``name``
    says which it is.
    """
    crf = model.crf if isinstance(model, CrfRnnSegmenter) else None
    gate = getattr(model, "crf_gate", None) if crf is not None else None  # safe_start's gate belongs to the CRF
    crf_ids = {id(p) for p in crf.parameters()} if crf is not None else set()
    if gate is not None:
        crf_ids.add(id(gate))
    groups: list[dict[str, Any]] = [
        {
            "name": "cnn",
            "params": [p for p in model.parameters() if id(p) not in crf_ids and p.requires_grad],
            "lr": config.lr,
            "weight_decay": config.weight_decay,
        },
    ]
    if crf is not None:
        by_kind: dict[str, list[nn.Parameter]] = {"crf_kernel": [], "crf_compatibility": [], "crf_other": []}
        for pname, p in crf.named_parameters():
            if not p.requires_grad:
                continue
            leaf = pname.rsplit(".", 1)[-1]
            kind = (
                "crf_kernel"
                if leaf in ("spatial_weights", "bilateral_weights")
                else "crf_compatibility"
                if leaf == "compatibility"
                else "crf_other"
            )
            by_kind[kind].append(p)
        if gate is not None and gate.requires_grad:
            by_kind["crf_other"].append(gate)
        mult = {
            "crf_kernel": config.crf_kernel_lr_mult,
            "crf_compatibility": config.crf_compat_lr_mult,
            "crf_other": 1.0,
        }
        for kind, params in by_kind.items():
            if params:
                groups.append({"name": kind, "params": params, "lr": config.lr * mult[kind], "weight_decay": 0.0})
    groups = [g for g in groups if g["params"]]
    if config.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum)
    return torch.optim.Adam(groups, lr=config.lr, betas=(config.momentum, 0.999))


def build_scheduler(optimizer: torch.optim.Optimizer, config: TrainConfig, total_steps: int) -> Any:
    """The learning-rate schedule of a config over ``total_steps`` optimiser steps (stepped once per step)."""
    if config.lr_schedule == "constant":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    power, total = config.poly_power, max(1, total_steps)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: max(0.0, 1.0 - step / total) ** power)

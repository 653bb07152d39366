"""Tests of the crfrnn.models registry."""

from __future__ import annotations

import pytest
import torch

import crfrnn.models as models
from crfrnn.models import FCN8s, SmallFCN, create, list_models


def test_all_is_sorted_and_exported():
    assert models.__all__ == sorted(models.__all__)
    for name in models.__all__:
        assert hasattr(models, name)


def test_list_models():
    assert list_models() == ["fcn8s", "fcn8s_crfrnn", "small_fcn", "small_fcn_crfrnn"]


def test_create_small_fcn():
    model = create("small_fcn", num_classes=4, width=16, norm="group")
    assert isinstance(model, SmallFCN)
    assert model.num_classes == 4
    assert model(torch.rand(1, 3, 24, 24) * 255).shape == (1, 4, 24, 24)


def test_create_fcn8s():
    with torch.device("meta"):
        model = create("fcn8s", num_classes=7)
    assert isinstance(model, FCN8s)
    assert model.score_fr.out_channels == 7


def test_unknown_name_lists_valid_names():
    with pytest.raises(ValueError, match=r"valid names are \['fcn8s', 'fcn8s_crfrnn', 'small_fcn'.*'fcn8s'\?"):
        create("fcn8")


def test_unknown_kwarg_lists_accepted():
    with pytest.raises(TypeError, match=r"\['num_clases'\].*accepts \['num_classes', 'width'"):
        create("small_fcn", num_clases=3)


def test_kwargs_are_keyword_only():
    with pytest.raises(TypeError):
        create("small_fcn", 3)


def test_registering_twice_fails():
    with pytest.raises(ValueError, match="already registered"):
        models.register_model("small_fcn")(lambda: None)


@pytest.mark.parametrize("module", ["__init__", "_utils", "fcn8s", "segmenter", "small"])
def test_module_level_imports(module):
    # crfrnn.models imports torch and the standard library only; the CRF is imported when a CRF model is built
    import ast
    import sys
    from pathlib import Path

    tree = ast.parse((Path(models.__file__).parent / f"{module}.py").read_text())
    imported = set()
    for node in tree.body:  # module level only (TYPE_CHECKING blocks are not executed)
        if isinstance(node, ast.Import):
            imported |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            imported.add(node.module)
    allowed = set(sys.stdlib_module_names) | {"__future__", "torch", "numpy"}
    bad = {m for m in imported if m.split(".")[0] not in allowed and not m.startswith("crfrnn.models")}
    assert not bad, f"{module}.py imports {bad} at module level"


@pytest.mark.parametrize("name", ["small_fcn_crfrnn", "fcn8s_crfrnn"])
def test_create_crfrnn_models(name):
    import crfrnn
    from crfrnn.models import CrfRnnSegmenter

    ctx = torch.device("meta") if name == "fcn8s_crfrnn" else torch.device("cpu")
    with ctx:
        model = create(name, num_classes=3, crf_kwargs={"num_iterations": 2}, return_unary=True)
    assert isinstance(model, CrfRnnSegmenter)
    assert isinstance(model.crf, crfrnn.CrfRnn)
    assert model.num_classes == 3
    assert model.return_unary
    if name == "small_fcn_crfrnn":
        refined, unary = model.eval()(torch.rand(1, 3, 24, 24) * 255)
        assert refined.shape == unary.shape == (1, 3, 24, 24)

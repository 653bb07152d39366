"""CrfRnnSegmenter(safe_start=True): a gate on the CRF's contribution, 0 at the start (docs/training.md)."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F

from crfrnn import CrfRnn
from crfrnn.models import CrfRnnSegmenter, SmallFCN

NUM_CLASSES = 3


def _image(b=2, h=24, w=32):
    torch.manual_seed(0)
    return torch.rand(b, 3, h, w) * 255


def _pair(seed=0):
    """A default model and a gated one sharing the same (separately built, equal) weights."""
    torch.manual_seed(seed)
    default = CrfRnnSegmenter(SmallFCN(NUM_CLASSES, width=8), CrfRnn(NUM_CLASSES, num_iterations=2))
    gated = CrfRnnSegmenter(SmallFCN(NUM_CLASSES, width=8), CrfRnn(NUM_CLASSES, num_iterations=2), safe_start=True)
    gated.load_state_dict(default.state_dict())  # an ungated state dict: the gate becomes 1
    return default, gated


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_output_is_the_backbones_at_initialisation(mode):
    torch.manual_seed(0)
    model = CrfRnnSegmenter(SmallFCN(NUM_CLASSES, width=8), CrfRnn(NUM_CLASSES, num_iterations=2), safe_start=True)
    model.train(mode == "train")
    assert model.crf_gate.item() == 0.0
    image = _image()
    torch.manual_seed(1)  # the same dropout mask in both calls
    out = model(image)
    torch.manual_seed(1)
    unary = model(image, use_crf=False)
    torch.testing.assert_close(out, unary, rtol=0, atol=0)
    # while the CRF itself changes those logits a lot
    with torch.no_grad():
        assert (model.crf(unary, image) - unary).abs().max() > 1.0


def test_gate_receives_a_gradient_and_grows_into_the_crf():
    torch.manual_seed(0)
    model = CrfRnnSegmenter(SmallFCN(NUM_CLASSES, width=8), CrfRnn(NUM_CLASSES, num_iterations=2), safe_start=True)
    image = _image()
    target = torch.randint(0, NUM_CLASSES, (2, 24, 32))
    F.cross_entropy(model(image), target).backward()
    assert model.crf_gate.grad is not None and torch.isfinite(model.crf_gate.grad)
    assert model.crf_gate.grad.abs() > 1e-6
    # at gate 0 the CRF's parameters get no gradient yet; with the gate open they do
    assert all(p.grad is None or p.grad.abs().max() == 0 for p in model.crf.parameters())
    with torch.no_grad():
        model.crf_gate.fill_(0.5)
    model.zero_grad()
    F.cross_entropy(model(image), target).backward()
    assert model.crf.bilateral_weights.grad.abs().max() > 0


def test_gated_output_interpolates_between_backbone_and_crf():
    _, model = _pair()
    model.eval()
    image = _image()
    with torch.no_grad():
        unary = model(image, use_crf=False)
        full = model.crf(unary, image)
        model.crf_gate.fill_(0.25)
        torch.testing.assert_close(model(image), unary + 0.25 * (full - unary))


def test_ungated_state_dict_loads_strictly_as_gate_one():
    default, gated = _pair()
    assert "crf_gate" not in default.state_dict()
    assert gated.crf_gate.item() == 1.0
    image = _image()
    default.eval(), gated.eval()
    with torch.no_grad():
        torch.testing.assert_close(gated(image), default(image))
    # strict loading reported no missing key (load_state_dict would have raised); nothing else is affected
    result = gated.load_state_dict(default.state_dict(), strict=True)
    assert not result.missing_keys and not result.unexpected_keys


def test_gated_state_dict_round_trips_and_the_gate_is_kept():
    _, gated = _pair()
    with torch.no_grad():
        gated.crf_gate.fill_(0.3)
    other = CrfRnnSegmenter(SmallFCN(NUM_CLASSES, width=8), CrfRnn(NUM_CLASSES, num_iterations=2), safe_start=True)
    other.load_state_dict(gated.state_dict())
    assert other.crf_gate.item() == pytest.approx(0.3)
    # a gated state dict does not fit the paper's (ungated) network: strict loading says so
    plain = CrfRnnSegmenter(SmallFCN(NUM_CLASSES, width=8), CrfRnn(NUM_CLASSES, num_iterations=2))
    with pytest.raises(RuntimeError, match="crf_gate"):
        plain.load_state_dict(gated.state_dict())


def test_default_is_the_papers_network():
    torch.manual_seed(0)
    backbone, crf = SmallFCN(NUM_CLASSES, width=8).eval(), CrfRnn(NUM_CLASSES, num_iterations=2).eval()
    model = CrfRnnSegmenter(backbone, crf).eval()
    assert model.crf_gate is None and not model.safe_start
    assert "crf_gate" not in model.state_dict() and "crf_gate" not in dict(model.named_parameters())
    image = _image()
    with torch.no_grad():
        torch.testing.assert_close(model(image), crf(backbone(image), image), rtol=0, atol=0)
    assert "safe_start" not in repr(model)


def test_safe_start_needs_a_crf():
    with pytest.raises(ValueError, match="crf is None"):
        CrfRnnSegmenter(SmallFCN(NUM_CLASSES, width=8), None, safe_start=True)
    assert "safe_start=True" in repr(CrfRnnSegmenter(SmallFCN(NUM_CLASSES), CrfRnn(NUM_CLASSES), safe_start=True))


class Confident(torch.nn.Module):
    """A stand-in for a trained backbone: confident logits (the true-ish label scored 6 above the others)."""

    num_classes = NUM_CLASSES

    def forward(self, image):
        labels = (image[:, 0] > 127).long()
        return F.one_hot(labels, NUM_CLASSES).permute(0, 3, 1, 2).float() * 6.0


def _fresh(**kwargs):
    torch.manual_seed(0)
    return CrfRnnSegmenter(SmallFCN(NUM_CLASSES, width=8), CrfRnn(NUM_CLASSES, num_iterations=2), **kwargs)


class TestUntrainedBackboneWarning:
    def test_warns_once_when_training_on_a_fresh_backbone(self):
        model = _fresh().train()
        with pytest.warns(UserWarning, match=r"untrained backbone.*--stage cnn.*safe_start=True"):
            model(_image())
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            model(_image())  # once per model

    def test_warns_with_the_crf_frozen_too(self):
        model = _fresh().train()
        model.crf.requires_grad_(False)
        with pytest.warns(UserWarning, match="untrained backbone"):
            model(_image())

    @pytest.mark.parametrize("case", ["trained_backbone", "eval", "no_grad", "safe_start", "no_crf"])
    def test_silent_otherwise(self, case):
        model = {
            "trained_backbone": lambda: CrfRnnSegmenter(Confident(), CrfRnn(NUM_CLASSES, num_iterations=2)),
            "safe_start": lambda: _fresh(safe_start=True),
        }.get(case, _fresh)()
        model.train(case != "eval")
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            if case == "no_grad":
                with torch.no_grad():
                    model(_image())
            else:
                model(_image(), use_crf=case != "no_crf")
        assert model._backbone_checked == (case in ("trained_backbone",))

    def test_a_trained_small_fcn_does_not_warn(self):
        # a few steps of the CNN alone are enough to leave the near-uniform start
        model = _fresh().train()
        torch.manual_seed(0)
        image = _image(b=4)
        target = (image[:, 0] > 127).long()
        opt = torch.optim.SGD(model.backbone.parameters(), lr=0.05, momentum=0.9)
        for _ in range(20):
            opt.zero_grad()
            F.cross_entropy(model(image, use_crf=False), target).backward()
            opt.step()
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            model(image)


def test_registry_builds_and_checkpoints_restore_the_gate(tmp_path):
    from crfrnn.io.checkpoint import load_model, save_checkpoint
    from crfrnn.models import create

    kwargs = {
        "num_classes": NUM_CLASSES,
        "backbone_kwargs": {"width": 8},
        "crf_kwargs": {"num_iterations": 2},
        "safe_start": True,
    }
    model = create("small_fcn_crfrnn", **kwargs)
    assert model.safe_start and model.crf_gate.item() == 0.0
    assert create("small_fcn_crfrnn", num_classes=NUM_CLASSES).crf_gate is None  # the default: the paper's
    with torch.no_grad():
        model.crf_gate.fill_(0.4)
    path = save_checkpoint(
        tmp_path / "m.pt", model, model_name="small_fcn_crfrnn", model_kwargs=kwargs, num_classes=NUM_CLASSES
    )
    loaded, _ = load_model(path)
    assert loaded.crf_gate.item() == pytest.approx(0.4)

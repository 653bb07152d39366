"""``crfrnn.fit_crf`` and the parameter files of ``crfrnn.load_params`` / ``crfrnn.save_params``."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import crfrnn
from crfrnn import dense_crf, fit_crf, load_params, mean_field, save_params
from crfrnn.data import SyntheticShapes
from crfrnn.fit import degraded_probs, to_mean_field, width_gradients_available
from crfrnn.params import DENSECRF_DEFAULTS as FIT_DEFAULTS
from crfrnn.params import MAX_FILE_BYTES, PARAM_NAMES, check_params

FITTED = {
    "num_iterations": 4,
    "gaussian_sxy": 2.25,
    "gaussian_compat": 1.375,
    "bilateral_sxy": 31.7,
    "bilateral_srgb": 8.3,
    "bilateral_compat": 4.9,
    "normalization": "symmetric",
}


def problem(count: int = 8, size: int = 48, seed: int = 3):
    """Synthetic scenes, their ground truth and degraded-ground-truth "network" probabilities."""
    ds = SyntheticShapes(count, size=size, seed=seed)
    images, masks = [], []
    for i in range(count):
        image, mask = ds[i]
        images.append(image.permute(1, 2, 0).numpy().astype(np.uint8))
        masks.append(mask.numpy())
    probs = [degraded_probs(m, ds.num_classes, seed=i) for i, m in enumerate(masks)]
    return images, probs, masks


@pytest.fixture(scope="module")
def data():
    return problem(count=12, seed=4)


@pytest.fixture(scope="module")
def weights_fit(data):
    return fit_crf(*data, epochs=4, val_fraction=0.5, fit_widths=False, progress=False)


# --------------------------------------------------------------------------------------------------------
# parameter files
# --------------------------------------------------------------------------------------------------------
class TestParams:
    def test_round_trip_is_exact(self, tmp_path):
        params = {**FITTED, "gaussian_sxy": 0.1 + 0.2, "bilateral_srgb": [7.1, 8.0000000001, 9.3], "clip": 1e-6}
        path = save_params(params, tmp_path / "crf.yaml", comment="fitted\non two lines")
        text = path.read_text()
        assert text.startswith("# crfrnn dense CRF parameters") and "# on two lines" in text
        assert load_params(path) == params

    def test_numpy_and_torch_values_are_written_plainly(self, tmp_path):
        path = save_params(
            {"bilateral_compat": np.float32(2.5), "num_iterations": np.int64(3), "gaussian_sxy": torch.tensor(1.5)},
            tmp_path / "p.yaml",
        )
        assert load_params(path) == {"num_iterations": 3, "gaussian_sxy": 1.5, "bilateral_compat": 2.5}
        assert "!!" not in path.read_text()

    def test_loaded_params_drive_dense_crf(self, tmp_path, data):
        images, probs, _ = data
        path = save_params(FITTED, tmp_path / "crf.yaml")
        np.testing.assert_array_equal(
            dense_crf(images[0], probs[0], **load_params(path)), dense_crf(images[0], probs[0], **FITTED)
        )

    def test_files_of_the_previous_release_still_load(self, tmp_path):
        path = tmp_path / "old.yaml"
        path.write_text("iterations: 3\nbilateral_compat: 2.5\n")  # 'iterations' is now 'num_iterations'
        with pytest.warns(FutureWarning, match=r"old\.yaml': iterations= is now num_iterations="):
            assert load_params(path) == {"num_iterations": 3, "bilateral_compat": 2.5}
        with pytest.warns(FutureWarning, match="iterations= is now num_iterations="):
            assert check_params({"iterations": 2}) == {"num_iterations": 2}
        with pytest.warns(FutureWarning, match="iterations= is now num_iterations="):
            assert to_mean_field({"iterations": 2})["num_iterations"] == 2
        path.write_text("iterations: 3\nnum_iterations: 3\n")
        with pytest.raises(ValueError, match="both 'iterations' and 'num_iterations'"):
            load_params(path)

    def test_check_params_order_and_types(self):
        out = check_params({"bilateral_compat": 3, "num_iterations": 2, "bilateral_sxy": (40, 50)})
        assert list(out) == ["num_iterations", "bilateral_sxy", "bilateral_compat"]
        assert out == {"num_iterations": 2, "bilateral_sxy": [40.0, 50.0], "bilateral_compat": 3.0}
        assert set(PARAM_NAMES) >= set(FIT_DEFAULTS)

    @pytest.mark.parametrize(
        "text, error, match",
        [
            ("bilateral_sxyy: 80\n", ValueError, "unknown parameter.*bilateral_sxyy"),
            ("gaussian_sxy: -3\n", ValueError, "positive finite width"),
            ("bilateral_srgb: 0\n", ValueError, "positive finite width"),
            ("bilateral_sxy: .nan\n", ValueError, "positive finite width"),
            ("bilateral_compat: .nan\n", ValueError, "finite"),
            ("gaussian_compat: -1\n", ValueError, ">= 0"),
            ("bilateral_compat: .inf\n", ValueError, "finite"),
            ("bilateral_compat: ten\n", TypeError, "must be a number"),
            ("num_iterations: 2.5\n", TypeError, "whole number"),
            ("num_iterations: true\n", TypeError, "whole number"),
            ("num_iterations: 100000\n", ValueError, "0..1000"),
            ("bilateral_srgb: [1, 2, x]\n", TypeError, "positive number"),
            ("gaussian_sxy: [1, 2, 3, 4]\n", ValueError, "1 to 3 widths"),
            ("normalization: rows\n", ValueError, "one of"),
            ("clip: 1.5\n", ValueError, r"\(0, 1\)"),
            ("- 1\n- 2\n", ValueError, "mapping"),
            ("", ValueError, "empty"),
            ("a: [1, 2\n", ValueError, "not a valid YAML"),
            ("!!python/object/apply:os.system ['echo pwned']\n", ValueError, "not a valid YAML"),
            ("bilateral_compat: !!python/object/apply:builtins.float ['3']\n", ValueError, "not a valid YAML"),
            ("bilateral_compat: !!binary aGVsbG8=\n", TypeError, "must be a number"),
        ],
    )
    def test_bad_files_are_refused(self, tmp_path, text, error, match):
        path = tmp_path / "bad.yaml"
        path.write_text(text)
        with pytest.raises(error, match=match):
            load_params(path)

    def test_bad_bytes_size_and_missing(self, tmp_path):
        (tmp_path / "bin.yaml").write_bytes(b"\xff\xfe\x00garbage")
        with pytest.raises(ValueError, match="UTF-8"):
            load_params(tmp_path / "bin.yaml")
        (tmp_path / "big.yaml").write_text("# " + "x" * MAX_FILE_BYTES + "\nnum_iterations: 5\n")
        with pytest.raises(ValueError, match="larger than"):
            load_params(tmp_path / "big.yaml")
        with pytest.raises(FileNotFoundError, match="not found"):
            load_params(tmp_path / "missing.yaml")

    def test_save_refuses_bad_values_and_writes_nothing(self, tmp_path):
        for bad in ({"gaussian_sxy": float("nan")}, {"bilateral_sxy": 0.0}, {"sxy": 3.0}):
            with pytest.raises(ValueError):
                save_params(bad, tmp_path / "p.yaml")
        assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------------------------------------
# dense_crf's names and mean_field's
# --------------------------------------------------------------------------------------------------------
class TestMapping:
    @pytest.mark.parametrize("num_labels", [1, 3])
    def test_dense_crf_equals_mean_field(self, num_labels):
        g = torch.Generator().manual_seed(0)
        image = (torch.rand(24, 30, 3, generator=g) * 255).to(torch.uint8).numpy()
        probs = torch.rand(num_labels, 24, 30, generator=g)
        probs = probs if num_labels == 1 else probs / probs.sum(0)
        expected = dense_crf(image, probs.numpy(), **FITTED)
        if num_labels == 1:
            probs = torch.cat([1 - probs, probs])
        unary = probs.clamp_min(1e-5).log()[None]
        guide = torch.from_numpy(image).permute(2, 0, 1)[None].float()
        out = mean_field(unary, guide, **to_mean_field(FITTED)).softmax(1)[0]
        np.testing.assert_allclose(out[1:] if num_labels == 1 else out, expected, atol=2e-5)

    def test_names(self):
        assert to_mean_field(FITTED) == {
            "normalization": "symmetric",
            "num_iterations": 4,
            "theta_gamma": 2.25,
            "spatial_weight": 1.375,
            "theta_alpha": 31.7,
            "theta_beta": 8.3,
            "bilateral_weight": 4.9,
        }
        with pytest.raises(ValueError, match="unknown"):
            to_mean_field({"theta_alpha": 3.0})


# --------------------------------------------------------------------------------------------------------
# the fit
# --------------------------------------------------------------------------------------------------------
class TestFit:
    def test_fit_improves_validation(self, weights_fit):
        r = weights_fit
        m = r.metrics
        assert r.best_epoch > 0
        assert m["fitted"]["loss"] < 0.8 * m["initial"]["loss"]
        assert m["fitted"]["mean_iou"] > m["initial"]["mean_iou"]
        assert m["fitted"]["mean_iou"] > m["network"]["mean_iou"]
        assert r.history[0]["val_loss"] == pytest.approx(m["initial"]["loss"])
        assert min(h["val_loss"] for h in r.history) == pytest.approx(m["fitted"]["loss"])
        for key in ("gaussian_sxy", "bilateral_sxy", "bilateral_srgb", "num_iterations", "normalization"):
            assert r.params[key] == FIT_DEFAULTS[key]  # widths fixed
        assert r.params["bilateral_compat"] != FIT_DEFAULTS["bilateral_compat"]
        assert not set(r.train_indices) & set(r.val_indices) and len(r.val_indices) == 6
        assert "fitted CRF" in r.summary()

    def test_fitted_params_reproduce_the_reported_metrics(self, weights_fit, data, tmp_path):
        from crfrnn.metrics import ConfusionMatrix

        params = load_params(save_params(weights_fit.params, tmp_path / "crf.yaml"))
        assert params == weights_fit.params
        images, probs, masks = data
        cm = ConfusionMatrix(7)
        for i in weights_fit.val_indices:
            cm.update(torch.from_numpy(dense_crf(images[i], probs[i], **params).argmax(0)), torch.from_numpy(masks[i]))
        assert cm.compute()["mean_iou"] == pytest.approx(weights_fit.metrics["fitted"]["mean_iou"])

    @pytest.mark.skipif(not width_gradients_available(), reason="this build of mean_field has no width gradients")
    def test_widths_move_and_validation_improves(self, data, weights_fit):
        r = fit_crf(*data, epochs=4, val_fraction=0.5, progress=False)
        assert r.fit_widths
        moved = [k for k in ("gaussian_sxy", "bilateral_sxy", "bilateral_srgb") if r.params[k] != FIT_DEFAULTS[k]]
        assert moved == ["gaussian_sxy", "bilateral_sxy", "bilateral_srgb"]
        assert all(math.isfinite(r.params[k]) and r.params[k] > 0 for k in moved)
        assert r.metrics["fitted"]["loss"] < 0.8 * r.metrics["initial"]["loss"]
        assert r.metrics["fitted"]["loss"] < weights_fit.metrics["fitted"]["loss"]  # the widths help
        assert r.metrics["fitted"]["mean_iou"] > r.metrics["initial"]["mean_iou"]

    def test_fit_widths_without_gradients_is_a_clear_error(self, data, monkeypatch):
        import crfrnn.fit

        monkeypatch.setattr(crfrnn.fit, "_WIDTH_GRADIENTS", False)
        with pytest.raises(ValueError, match="fit_widths=False"):
            fit_crf(*data, epochs=1, fit_widths=True, progress=False)

    def test_early_stopping_and_binary_logits(self):
        # a binary network's foreground logit map (L = 1); a huge learning rate overshoots, so it stops early
        images, _, masks = problem(count=3, size=32, seed=1)
        masks = [(m > 0).astype(np.int64) for m in masks]
        fg = [np.log(degraded_probs(m, 2, seed=i)[1:] / degraded_probs(m, 2, seed=i)[:1]) for i, m in enumerate(masks)]
        masks[0][:4] = 255  # ignored pixels
        r = fit_crf(
            images,
            fg,
            masks,
            logits=True,
            epochs=6,
            lr=3.0,
            patience=1,
            num_iterations=2,
            fit_widths=False,
            init={"bilateral_compat": 0.0},
            progress=False,
        )
        assert r.params["num_iterations"] == 2 and len(r.history) <= 7
        assert r.stopped_early == (len(r.history) < 7)
        assert all(math.isfinite(h["val_loss"]) for h in r.history)

    @pytest.mark.parametrize(
        "change, match",
        [
            (lambda i, p, m: (i[:1], p[:1], m[:1]), "at least 2 images"),
            (lambda i, p, m: (i, p[:-1], m), "same length"),
            (lambda i, p, m: (i, p, [m[0] + 10] + m[1:]), "outside 0..6"),
            (lambda i, p, m: (i, [p[0] * 2] + p[1:], m), "not probabilities"),
            (lambda i, p, m: (i, p[:1] + [p[1][:3] / p[1][:3].sum(0)] + p[2:], m), "has 3 labels"),
            (lambda i, p, m: ([i[0][:10]] + i[1:], p, m), "does not match"),
            (lambda i, p, m: (i, p, [m[0].astype(np.float32)] + m[1:]), "integer"),
            (lambda i, p, m: (i, [p[0].tolist()] + p[1:], m), "NumPy array or a torch tensor"),
        ],
    )
    def test_bad_inputs(self, data, change, match):
        with pytest.raises((ValueError, TypeError), match=match):
            fit_crf(*change(*data), epochs=1, fit_widths=False, progress=False)

    def test_per_axis_widths_stay_fixed(self, data):
        r = fit_crf(*data, init={"bilateral_srgb": [10.0, 12.0, 14.0]}, epochs=1, fit_widths=False, progress=False)
        assert r.params["bilateral_srgb"] == [10.0, 12.0, 14.0]

    @pytest.mark.parametrize(
        "option, match",
        [
            ({"epochs": 0}, "epochs"),
            ({"val_fraction": 1.0}, "val_fraction"),
            ({"lr": float("nan")}, "lr"),
            ({"patience": 0}, "patience"),
            ({"init": {"bilateral_srgb": -1}}, "positive"),
            ({"init": {"sxy": 3}}, "unknown"),
            ({"num_iterations": 0}, "num_iterations"),
            ({"init": {"gaussian_sxy": [2, 3]}, "fit_widths": True}, "one number"),
        ],
    )
    def test_bad_options(self, data, option, match):
        with pytest.raises(ValueError, match=match):
            fit_crf(*data, **{"fit_widths": False, "progress": False, **option})


def test_degraded_probs():
    mask = np.zeros((20, 24), np.int64)
    mask[5:15, 6:18] = 2
    mask[0, 0] = 255
    p = degraded_probs(mask, 3, factor=4, noise=0.5, seed=1)
    assert p.shape == (3, 20, 24) and p.dtype == np.float32
    np.testing.assert_allclose(p.sum(0), 1, atol=1e-5)
    assert (p.argmax(0)[8:12, 10:14] == 2).all() and (p.argmax(0)[18:, :] == 0).all()
    np.testing.assert_array_equal(p, degraded_probs(mask, 3, factor=4, noise=0.5, seed=1))
    with pytest.raises(ValueError, match="outside"):
        degraded_probs(mask, 2)


def test_public_names():
    assert crfrnn.fit_crf is fit_crf and crfrnn.load_params is load_params and crfrnn.save_params is save_params
    assert isinstance(crfrnn.FitResult, type)

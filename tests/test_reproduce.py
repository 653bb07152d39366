"""crfrnn.workflow.reproduce: the paper's comparison end to end on tiny settings, its summary and its claim checks."""

from __future__ import annotations

import json
import math

import pytest

from crfrnn.workflow import MARGIN, ROWS, ReproduceConfig, check_claims, reproduce, summarize
from crfrnn.workflow._claims import plot_summary


def tiny(out_dir, **changes) -> ReproduceConfig:
    values = dict(
        seeds=(0, 1),
        num_train=8,
        num_val=4,
        num_test=4,
        image_size=40,
        width=8,
        batch_size=4,
        cnn_epochs=1,
        crf_epochs=1,
        train_iterations=2,
        test_iterations=3,
        search_images=2,
        search_grid={"bilateral_compat": [3.0, 10.0]},
        grid_images=2,
    )
    values.update(changes)
    return ReproduceConfig(out_dir=str(out_dir), **values)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("repro")
    lines = []
    config = tiny(out, workers=2, ablations=("scalar_weights", "symmetric_compatibility", "crf_alone"))
    return out, reproduce(config, progress=False, log=lines.append), lines  # two worker processes


class TestReproduce:
    def test_files(self, run):
        out, results, lines = run
        for name in ("report.md", "results.json", "boundary.png", "grid.png", "config.yaml"):
            assert (out / name).is_file(), name
        for seed in (0, 1):
            for stage in (
                "cnn",
                "crfrnn",
                "cnn_longer",
                "ablation_scalar_weights",
                "ablation_symmetric_compatibility",
                "ablation_crf_alone",
            ):
                assert (out / f"seed{seed}" / stage / "last.pt").is_file()
        saved = json.loads((out / "results.json").read_text())
        assert saved["config"]["seeds"] == [0, 1] and "2 process(es) x 1 thread(s)" in saved["machine"]
        assert lines[0] == "2 seed(s) in 2 process(es), 1 thread(s) each"
        assert sorted(line.split(":")[0] for line in lines[1:]) == ["seed 0", "seed 1"]
        assert not (out / "worker_config.json").exists() and (out / "worker0.log").is_file()
        search = json.loads((out / "seed0" / "dense_crf_search.json").read_text())  # a job of its own
        assert search["params"] == saved["per_seed"][0]["dense_crf_params"] and len(search["table"]) == 2
        report = (out / "report.md").read_text()
        for title in ROWS.values():
            assert title in report
        assert "## The paper's claims, checked" in report

    def test_summary_is_over_seeds(self, run):
        _, results, _ = run
        per_seed = results["per_seed"]
        assert [s["seed"] for s in per_seed] == [0, 1]
        for row in ROWS:
            values = [s["rows"][row]["mean_iou"] for s in per_seed]
            stats = results["summary"][row]["mean_iou"]
            assert stats["mean"] == pytest.approx(sum(values) / 2)
            assert stats["min"] == min(values) and stats["max"] == max(values) and stats["n"] == 2
            assert 0.0 <= stats["mean"] <= 1.0

    def test_stages_differ_where_they_should(self, run):
        _, results, _ = run
        rows = results["per_seed"][0]["rows"]
        assert rows["cnn"] != rows["crfrnn"]
        assert results["per_seed"][0]["dense_crf_params"]["bilateral_compat"] in (3.0, 10.0)
        assert len(results["per_seed"][0]["dense_crf_search"]) == 2

    def test_parallel_equals_sequential(self, run, tmp_path):
        _, results, _ = run
        config = tiny(
            tmp_path, workers=1, threads=1, ablations=("scalar_weights", "symmetric_compatibility", "crf_alone")
        )
        alone = reproduce(config, progress=False, log=lambda line: None)
        for a, b in zip(results["per_seed"], alone["per_seed"]):
            assert a["seed"] == b["seed"] and set(a["rows"]) == set(b["rows"])
            for row in a["rows"]:
                assert a["rows"][row]["mean_iou"] == b["rows"][row]["mean_iou"], row
        assert "1 process(es) x 1 thread(s)" in alone["machine"]

    def test_ablations_are_rows_and_claims(self, run):
        _, results, _ = run
        for row in ("crfrnn_scalar", "crfrnn_symmetric", "crfrnn_crf_alone"):
            assert row in results["summary"]
        ablations = [c for c in results["claims"] if c["claim"].startswith("ablation:")]
        assert [c["worse"] for c in ablations] == ["crfrnn_scalar", "crfrnn_symmetric", "crfrnn_crf_alone"]
        # each ablation is its own run: the scalar-weight layer learned one weight, the frozen CNN did not move
        import torch

        scalar = torch.load(results["per_seed"][0]["checkpoints"]["crfrnn_scalar"], weights_only=True)
        assert scalar["state_dict"]["crf.spatial_weights"].dim() == 0
        cnn = torch.load(results["per_seed"][0]["checkpoints"]["cnn"], weights_only=True)["state_dict"]
        alone = torch.load(results["per_seed"][0]["checkpoints"]["crfrnn_crf_alone"], weights_only=True)["state_dict"]
        for key, value in cnn.items():
            assert torch.equal(alone["backbone." + key], value), key

    def test_a_failing_seed_stops_the_run(self, tmp_path):
        with pytest.raises(ValueError, match="seed [01]: .*bilateral_sxy"):  # an error in a worker, raised here
            reproduce(
                tiny(tmp_path, workers=2, search_grid={"bilateral_sxy": [-1.0]}), progress=False, log=lambda line: None
            )

    def test_a_crashed_worker_is_reported_with_its_log(self, tmp_path, monkeypatch):
        fake = tmp_path / "python"
        fake.write_text("#!/bin/sh\necho 'boom: out of memory' >&2\nexit 3\n")
        fake.chmod(0o755)
        monkeypatch.setattr("sys.executable", str(fake))  # every worker process dies at once
        with pytest.raises(RuntimeError, match="exit code 3.*boom: out of memory"):
            reproduce(tiny(tmp_path / "out", workers=2), progress=False, log=lambda line: None)
        assert "boom" in (tmp_path / "out" / "worker0.log").read_text()

    def test_rerun_reuses_the_runs(self, run):
        out, results, _ = run
        again = reproduce(tiny(out), progress=False, log=lambda line: None)  # without the ablations: reused
        assert "crfrnn_scalar" not in again["summary"]
        for a, b in zip(results["per_seed"], again["per_seed"]):
            assert a["rows"]["crfrnn"]["mean_iou"] == b["rows"]["crfrnn"]["mean_iou"]
            assert b["seconds"]["train_cnn"] < a["seconds"]["train_cnn"] + 5

    def test_other_settings_in_the_same_folder(self, run):
        out, _, _ = run
        with pytest.raises(ValueError, match="other settings .*cnn_epochs"):
            reproduce(tiny(out, cnn_epochs=2), progress=False)

    def test_exception(self, tmp_path):
        with pytest.raises(ValueError, match="seeds"):
            ReproduceConfig(out_dir=str(tmp_path), seeds=())
        with pytest.raises(ValueError, match="cnn_epochs"):
            ReproduceConfig(out_dir=str(tmp_path), cnn_epochs=0)
        with pytest.raises(ValueError, match="cnn_lr"):
            ReproduceConfig(out_dir=str(tmp_path), cnn_lr=-1.0)
        # checked against the fields' type hints, like TrainConfig
        with pytest.raises(ValueError, match="num_test must be an integer, got 'many'"):
            ReproduceConfig(out_dir=str(tmp_path), num_test="many")
        with pytest.raises(ValueError, match="crf_kwargs must be a mapping"):
            ReproduceConfig(out_dir=str(tmp_path), crf_kwargs=[1])
        assert ReproduceConfig(out_dir=str(tmp_path), cnn_lr="1e-3").cnn_lr == 1e-3  # YAML 1.1 reads 1e-3 as text
        (tmp_path / "file").write_text("x")
        with pytest.raises(NotADirectoryError):
            reproduce(tiny(tmp_path / "file"), progress=False)
        with pytest.raises(TypeError, match="ReproduceConfig"):
            reproduce({"out_dir": str(tmp_path)})  # type: ignore[arg-type]

    def test_quick_preset(self, tmp_path):
        quick = ReproduceConfig.quick(str(tmp_path), cnn_epochs=3)
        full = ReproduceConfig(str(tmp_path))
        assert quick.seeds == (0,) and quick.cnn_epochs == 3 and quick.preset == "quick" and full.preset == "full"
        assert quick.crf_epochs < full.crf_epochs and quick.num_test < full.num_test and len(full.seeds) >= 5
        assert quick.ablations == () and full.ablations == ()  # five seeds in 25 minutes; ablations on request
        with pytest.raises(ValueError, match="ablations must be distinct names"):
            ReproduceConfig(str(tmp_path), ablations=("nope",))
        with pytest.raises(ValueError, match="workers must be >= 1"):
            ReproduceConfig(str(tmp_path), workers=0)
        assert ReproduceConfig(str(tmp_path), seeds=(0,), workers=4).resolved_workers()[0] == 1


def fake_seed(seed: int, **miou: float) -> dict:
    def row(value: float, band: float) -> dict:
        return {
            "mean_iou": value,
            "pixel_accuracy": 0.8 + value / 10,
            "mean_class_accuracy": value,
            "boundary": [
                {"width": 1, "pixel_accuracy": band, "mean_iou": value},
                {"width": 5, "pixel_accuracy": band + 0.1, "mean_iou": value},
            ],
        }

    return {"seed": seed, "rows": {name: row(v, 0.5 + 2 * v) for name, v in miou.items()}}


class TestClaims:
    def test_margin_and_sign(self):
        seeds = [
            fake_seed(0, cnn=0.30, **{"cnn+densecrf": 0.32, "crfrnn": 0.40, "crfrnn_t5": 0.405}),
            fake_seed(1, cnn=0.31, **{"cnn+densecrf": 0.315, "crfrnn": 0.41, "crfrnn_t5": 0.41}),
        ]
        claims = {c["claim"]: c for c in check_claims(summarize(seeds), seeds)}
        post = claims["dense CRF post-processing beats the CNN"]
        assert post["gains_per_seed"] == pytest.approx([2.0, 0.5]) and post["gain_mean_iou"] == pytest.approx(1.25)
        assert not post["holds"] and MARGIN == 1.0  # the mean clears the margin, seed 1 does not
        e2e = claims["end-to-end CRF-RNN beats post-processing"]
        assert e2e["gain_mean_iou"] == pytest.approx(8.75) and e2e["holds"]
        t10 = claims["testing with T=10 beats T=5 (paper: +0.2)"]
        assert t10["gain_mean_iou"] == pytest.approx(-0.25) and not t10["holds"]

    def test_a_negative_seed_fails_the_claim(self):
        seeds = [fake_seed(0, cnn=0.30, **{"cnn+densecrf": 0.36}), fake_seed(1, cnn=0.30, **{"cnn+densecrf": 0.29})]
        claim = check_claims(summarize(seeds), seeds)[0]
        assert claim["gain_mean_iou"] == pytest.approx(2.5) and not claim["holds"]

    def test_boundary_claim(self):
        seeds = [fake_seed(0, cnn=0.30, **{"cnn+densecrf": 0.33})]
        band = next(c for c in check_claims(summarize(seeds), seeds) if "boundaries" in c["claim"])
        # band accuracy 0.5 + 2 v: gain 6 points in the band; pixel accuracy 0.8 + v / 10: gain 0.3 overall
        assert band["gain_in_band"] == pytest.approx(6.0) and band["gain_overall"] == pytest.approx(0.3)
        assert band["holds"] and band["band_width"] == 1

    def test_every_seed_must_clear_the_margin(self):
        seeds = [fake_seed(0, cnn=0.30, **{"cnn+densecrf": 0.31}), fake_seed(1, cnn=0.30, **{"cnn+densecrf": 0.32})]
        assert check_claims(summarize(seeds), seeds)[0]["holds"]  # +1.0 and +2.0
        seeds[0]["rows"]["cnn+densecrf"]["mean_iou"] = 0.3099
        assert not check_claims(summarize(seeds), seeds)[0]["holds"]  # +0.99 on seed 0

    def test_ablation_claims(self):
        seeds = [
            fake_seed(s, cnn=0.3, crfrnn=0.40, crfrnn_scalar=0.39, crfrnn_symmetric=0.41, crfrnn_crf_alone=0.35)
            for s in (0, 1)
        ]
        claims = {c["worse"]: c for c in check_claims(summarize(seeds), seeds) if c["claim"].startswith("ablation")}
        assert claims["crfrnn_scalar"]["holds"] and claims["crfrnn_scalar"]["gain_mean_iou"] == pytest.approx(1.0)
        assert not claims["crfrnn_symmetric"]["holds"] and "(paper: +0.9)" in claims["crfrnn_symmetric"]["claim"]
        assert claims["crfrnn_crf_alone"]["gains_per_seed"] == pytest.approx([5.0, 5.0])

    def test_single_seed_has_zero_spread(self, tmp_path):
        stats = summarize([fake_seed(3, cnn=0.25)])["cnn"]["mean_iou"]
        assert stats["std"] == 0.0 and stats["n"] == 1 and not math.isnan(stats["mean"])

    def test_one_seed_draws_no_spread(self, tmp_path, monkeypatch):
        import crfrnn.workflow._claims as claims

        drawn = []
        monkeypatch.setattr(claims, "plot_boundary", lambda path, curves, **kw: drawn.append(curves))
        plot_summary(summarize([fake_seed(3, cnn=0.25)]), tmp_path / "one.png", "one")
        plot_summary(summarize([fake_seed(3, cnn=0.25), fake_seed(4, cnn=0.27)]), tmp_path / "two.png", "two")
        assert drawn[0][0].spread is None and drawn[1][0].spread is not None

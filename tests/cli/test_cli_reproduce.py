"""``crfrnn reproduce`` through the command line, end to end on reduced settings."""

from __future__ import annotations

import json

from crfrnn.cli import main


def test_quick_end_to_end(tmp_path, capsys):
    out = tmp_path / "quick"
    code = main(
        [
            "reproduce",
            "--quick",
            "--out",
            str(out),
            "--cnn-epochs",
            "1",
            "--crf-epochs",
            "1",
            "--num-train",
            "16",
            "--num-test",
            "8",
            "--threads",
            "1",
            "--no-progress",
        ]
    )
    assert code == 0
    report = (out / "report.md").read_text()
    assert "not decided by a quick run (1 seed, 1 CNN epochs)" in report and "does NOT hold" not in report
    assert "the stages' own times, summed over seeds" in report
    assert "`crfrnn reproduce --quick --cnn-epochs 1 --crf-epochs 1 --num-train 16 --num-test 8 --threads 1" in report
    printed = capsys.readouterr().out
    assert "| (a) CNN alone |" in printed and "(c) CRF-RNN end to end" in printed and "report.md" in printed
    results = json.loads((out / "results.json").read_text())
    assert "percentage points" in results["units"]["claims"] and "fractions" in results["units"]["summary"]
    assert results["config"]["seeds"] == [0] and results["config"]["cnn_epochs"] == 1
    assert results["config"]["num_test"] == 8 and results["per_seed"][0]["rows"]["cnn"]["mean_iou"] >= 0
    assert (out / "grid.png").stat().st_size > 0 and (out / "boundary.png").stat().st_size > 0


def test_bad_arguments(tmp_path, capsys):
    import pytest

    with pytest.raises(SystemExit) as exc:
        main(["reproduce", "--seeds", "0,0", "--out", str(tmp_path)])
    assert exc.value.code == 2 and "distinct" in capsys.readouterr().err
    (tmp_path / "taken").write_text("a file")
    assert main(["reproduce", "--out", str(tmp_path / "taken"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not a directory" in err[0]

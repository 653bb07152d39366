"""The commands' count flags are bounded: a huge value is an argparse error naming the flag and the bound, before
any file is read or any memory is allocated (issue 25)."""

from __future__ import annotations

import pytest

from crfrnn.cli import MAX_BATCH_SIZE, MAX_GRID, MAX_ITERATIONS, MAX_NUM_IMAGES, main

CASES = [
    (["refine", "a.png", "s.npy", "-o", "o.png", "--iterations"], MAX_ITERATIONS),
    (["fit", "i", "s", "l", "-o", "p.yaml", "--iterations"], MAX_ITERATIONS),
    (["segment", "a.png", "--weights", "w.pth", "-o", "out", "--iterations"], MAX_ITERATIONS),
    (["segment", "a.png", "--weights", "w.pth", "-o", "out", "--batch-size"], MAX_BATCH_SIZE),
    (["train", "--out", "o", "--iterations"], MAX_ITERATIONS),
    (["train", "--out", "o", "--eval-iterations"], MAX_ITERATIONS),
    (["train", "--out", "o", "--batch-size"], MAX_BATCH_SIZE),
    (["train", "--out", "o", "--val-batch-size"], MAX_BATCH_SIZE),
    (["evaluate", "ckpt.pt", "--num-images"], MAX_NUM_IMAGES),
    (["evaluate", "ckpt.pt", "--grid"], MAX_GRID),
    (["evaluate", "ckpt.pt", "--batch-size"], MAX_BATCH_SIZE),
]


@pytest.mark.parametrize("argv,bound", CASES, ids=[f"{a[0]} {a[-1]}" for a, _ in CASES])
def test_huge_count_is_an_argparse_error(capsys, argv, bound):
    with pytest.raises(SystemExit) as exit_:
        main([*argv, str(bound * 1000 + 7)])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {argv[-1]}" in err and f"must be <= {bound}" in err, err


@pytest.mark.parametrize("argv,bound", CASES[:4], ids=[f"{a[0]} {a[-1]}" for a, _ in CASES[:4]])
def test_bound_itself_parses(argv, bound):
    from crfrnn.cli import build_parser

    args = build_parser().parse_args([*argv, str(bound)])
    assert bound in vars(args).values()

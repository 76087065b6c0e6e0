import csv
from pathlib import Path

import pytest

from lifealign.metrics import summarize

PAPER = Path(__file__).resolve().parents[1] / ".." / "shared" / "paper"


def _paper_matrix(name):
    path = PAPER / name
    if not path.exists():
        pytest.skip(f"{path} not present")
    rows = list(csv.reader(path.open()))[1:]
    return [[float(x) if x else None for x in row[1:]] for row in rows]


def test_paper_order1_judge_matrix():
    s = summarize(_paper_matrix("judge_matrix_lifealign_order1.csv"))
    assert round(s["last"], 2) == 57.42
    assert round(s["ap"], 2) == 53.91
    assert round(s["bwt"], 2) == 0.37  # the paper's Table 1 prints 1.31 (see shared/paper/README.md)


def test_hand_computed_with_base_row():
    m = [[60, 40, 50],
         [50, 70, 55],
         [45, 65, 80]]
    base = [50, 45, 52]
    s = summarize(m, base)
    assert s["last"] == pytest.approx((45 + 65 + 80) / 3)
    assert s["ap"] == pytest.approx((60 + (50 + 70) / 2 + (45 + 65 + 80) / 3) / 3)
    assert s["bwt"] == pytest.approx(((45 - 60) + (65 - 70)) / 2)
    assert s["fwt"] == pytest.approx(((40 - 45) + (55 - 52)) / 2)
    assert s["forgetting"] == pytest.approx((max(60, 50) - 45 + (70 - 65)) / 2)


def test_upper_triangle_ignored():
    a = summarize([[60, None], [50, 70]])
    b = summarize([[60, 99.0], [50, 70]])
    assert a == b


def test_single_task():
    s = summarize([[55.0]], [50.0])
    assert s["last"] == 55 and s["bwt"] is None and s["fwt"] is None


def test_not_square_is_an_error():
    with pytest.raises(ValueError):
        summarize([[1, 2], [3]])

"""The run code's golden numbers (tests/goldens.py): every method's tiny run, the pair scorer and
SLMC must reproduce the stored numbers within tolerance. A failure means the numbers moved: bump
lifealign.run_code.RUN_CODE_VERSION and run `make goldens` (every committed run becomes stale), or
undo the change."""
import pytest

import goldens
from lifealign import losses
from lifealign.run_code import RUN_CODE_VERSION


@pytest.fixture(scope="module")
def actual():
    return goldens.compute_all()


@pytest.mark.parametrize("name", goldens.golden_names())
def test_golden_unchanged(actual, name):
    stored = goldens.load(name)
    assert stored["run_code_version"] <= RUN_CODE_VERSION
    moved = goldens.differences(stored["numbers"], actual[name])
    assert not moved, (f"golden {name} moved ({len(moved)} numbers), e.g. {moved[:5]}: bump RUN_CODE_VERSION in "
                       "src/lifealign/run_code.py and run `make goldens`, or undo the change")


def test_every_golden_file_is_checked():
    assert sorted(p.stem for p in goldens.GOLDEN_DIR.glob("*.json")) == sorted(goldens.golden_names())


def test_a_loss_constant_change_moves_the_goldens(monkeypatch):
    """The goldens are sensitive enough to see a small change of the loss: FPO's gamma 2 -> 2.2."""
    fpo = losses.fpo_loss
    monkeypatch.setitem(losses.PREFERENCE_LOSSES, "fpo", lambda *a, gamma=2.0, **k: fpo(*a, gamma=gamma * 1.1, **k))
    moved = goldens.compute_all({"run-fpo"})["run-fpo"]
    assert goldens.differences(goldens.load("run-fpo")["numbers"], moved)


def test_regenerate_refuses_moved_numbers_under_the_same_version(monkeypatch, tmp_path):
    stored = goldens.load("slmc")
    (tmp_path / "slmc.json").write_text(
        goldens.json.dumps({"run_code_version": RUN_CODE_VERSION, "numbers": {"theta=0.9,lambda=0.5": {}}}))
    monkeypatch.setattr(goldens, "GOLDEN_DIR", tmp_path)
    with pytest.raises(SystemExit, match="bump it"):
        goldens.main(["--regenerate", "slmc"])
    assert goldens.load("slmc")["numbers"] != stored["numbers"]  # left as it was
    (tmp_path / "slmc.json").write_text(
        goldens.json.dumps({"run_code_version": RUN_CODE_VERSION - 1, "numbers": {}}))
    goldens.main(["--regenerate", "slmc"])  # after a bump it rewrites: the same numbers, within tolerance
    regenerated = goldens.load("slmc")
    assert regenerated["run_code_version"] == RUN_CODE_VERSION
    assert not goldens.differences(stored["numbers"], regenerated["numbers"])

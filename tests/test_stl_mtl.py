"""STL (one fresh model per task) and MTL (one joint run), end to end on the tiny model."""
import pytest
import torch

from lifealign.config import Config
from lifealign.lora import lora_parameters
from lifealign.strategies import build_strategy

from test_run import run_cli

A, B, C = "hh-rlhf-harmless-base", "hh-rlhf-helpful-base", "safe-rlhf"
# Preference stage only: keeps the two STL runs short (the reset acts the same with SFT on).
STL_ARGS = ["method.name=stl", "method.sft=false"]


@pytest.fixture(scope="module")
def stl_run(fake_release, tmp_path_factory):
    """STL over [A, B, C], recording the LoRA matrices and optimizer count right after each task start."""
    import lifealign.strategies.stl as mod

    seen = []
    original = mod.STLReset.on_task_start

    def spy(self, loop, task):
        before = {n: p.detach().clone() for n, p in lora_parameters(loop.model).items()}
        original(self, loop, task)
        seen.append({"task": task, "before": before, "optimizers": len(loop.optimizers),
                     "after": {n: p.detach().clone() for n, p in lora_parameters(loop.model).items()}})

    mod.STLReset.on_task_start = spy
    try:
        tmp = tmp_path_factory.mktemp("stl")
        results = run_cli(fake_release, tmp / "out", tmp / "cache", STL_ARGS)
    finally:
        mod.STLReset.on_task_start = original
    return results, seen, tmp


def test_stl_resets_lora_and_optimizer_each_task(stl_run):
    results, seen, tmp = stl_run
    assert results["complete"] and results["method"] == {"name": "stl", "loss": "dpo", "plugins": ["stl"]}
    assert [s["task"] for s in seen] == [A, B, C]
    initial = seen[0]["after"]
    assert all(torch.count_nonzero(v) == 0 for n, v in initial.items() if "lora_B" in n)  # LoRA starts as a no-op
    for s in seen[1:]:
        assert any(not torch.equal(s["before"][n], initial[n]) for n in initial)  # the previous task trained
        assert all(torch.equal(s["after"][n], initial[n]) for n in initial)        # reset to the exact initial values
        assert s["optimizers"] == 0                                                  # fresh optimizer
    # the snapshot is saved with each task for resume
    state = torch.load(tmp / "out" / "tasks" / f"02-{B}" / "state.pt", weights_only=False)
    snap = state["strategy"]["stl"]["initial"]
    assert set(snap) == set(initial) and all(torch.equal(snap[n], initial[n].cpu()) for n in snap)
    # one model per task: the diagonal is what STL reports; all three rows differ
    digests = [t["adapter_digest"] for t in results["training"]]
    assert len(set(digests)) == 3


def test_stl_model_of_a_task_does_not_depend_on_earlier_tasks(stl_run, fake_release, tmp_path):
    results, _, tmp = stl_run
    # B at the same position (index 1, same stage seeds) after another task: the same model of B
    other = run_cli(fake_release, tmp_path / "out", tmp / "cache",
                    [*STL_ARGS, f"data.order=[{C}, {B}]"])
    assert other["training"][1]["task"] == B
    assert other["training"][1]["adapter_digest"] == results["training"][1]["adapter_digest"]
    row_b = results["metrics"]["reward_accuracy"]["matrix"][1]
    other_row_b = other["metrics"]["reward_accuracy"]["matrix"][1]
    order, other_order = results["order"], other["order"]
    assert other_row_b[other_order.index(B)] == row_b[order.index(B)]  # the diagonal m[B][B]
    assert other_row_b[other_order.index(C)] == row_b[order.index(C)]


def test_stl_and_mtl_registration():
    cfg = Config()
    cfg.method.name = "stl"
    assert build_strategy(cfg).describe() == {"name": "stl", "loss": "dpo", "plugins": ["stl"]}
    cfg.method.replay, cfg.method.loss = True, "fpo"  # the user's call: replay can still be added
    assert build_strategy(cfg).describe() == {"name": "stl", "loss": "fpo", "plugins": ["replay", "stl"]}
    cfg = Config()
    cfg.method.name = "mtl"
    s = build_strategy(cfg)
    assert s.joint is True and s.describe() == {"name": "mtl", "loss": "dpo", "plugins": []}


def test_mtl_one_joint_run_on_all_pairs(fake_release, tmp_path):
    results = run_cli(fake_release, tmp_path / "out", tmp_path / "cache", ["method.name=mtl"])
    assert results["complete"] and results["rows"] == ["joint"]
    assert results["method"] == {"name": "mtl", "loss": "dpo", "plugins": []}
    n_train = sum(results["data"][t]["train"]["used"] for t in results["order"])
    assert n_train == 3 * 8
    stages = results["training"][0]["stages"]
    assert stages["pref"]["examples"] == n_train and stages["sft"]["examples"] == n_train
    for metric in results["metrics"].values():
        assert len(metric["matrix"]) == 1 and len(metric["matrix"][0]) == 3
        assert set(metric["summary"]) == {"last"}
        assert metric["summary"]["last"] == pytest.approx(sum(metric["matrix"][0]) / 3)

"""CPPO (strategies/cppo.py): category weights (the CPPO paper's table), categories against running
stage statistics, the fallback below 3 pairs, the retention term, pi_old refresh per task, and one
end-to-end run through the CLI."""
import warnings
from types import SimpleNamespace

import pytest
import torch

from lifealign.config import Config
from lifealign.losses import dpo_loss
from lifealign.strategies import build_strategy
from lifealign.strategies.base import Stage
from lifealign.strategies.cppo import (CATEGORIES, HIGH_PERFORMANCE, HIGH_VARIANCE, MIN_PAIRS, NOISY, NORMAL,
                                       OVERFITTING, CPPOPlugin, RunningMoments, cppo_categories, cppo_weights)
from lifealign.training import collate_pairs

from test_run import run_cli

# Five samples, one per category. Margins and length-normalised log-probs: the outer four sit
# beyond mean +- 1 std on both axes (mean 0, population std sqrt(4*9/5) ~ 2.68 < 3), the last at the mean.
REWARD = torch.tensor([3.0, -3.0, 3.0, -3.0, 0.0])
LOGP = torch.tensor([3.0, 3.0, -3.0, -3.0, 0.0])
EXPECTED = [HIGH_PERFORMANCE, OVERFITTING, HIGH_VARIANCE, NOISY, NORMAL]
SFT, PREF = (Stage(kind, "t", 0, [], loss=None, collate=None) for kind in ("sft", "pref"))  # for direct hook calls


def test_categories_and_weights_take_the_documented_values():
    assert cppo_categories(REWARD, LOGP).tolist() == EXPECTED
    alpha, beta, cat = cppo_weights(REWARD, LOGP, k=1.0, lb=0.5, ub=2.0)
    assert cat.tolist() == EXPECTED
    # the CPPO paper's rule (and the LifeAlign authors' code): overfitting (likely, low reward) and
    # high-variance (unlikely, high reward) both get a high learning and a low retention weight
    #                     high-perf  overfit  high-var  noisy  normal
    assert alpha.tolist() == [2.0,      2.0,     2.0,      0.5,   1.0]
    assert beta.tolist() == [2.0,       0.5,     0.5,      0.5,   1.0]
    # explicit statistics replace the samples' own
    stats = (0.0, 1.0, 0.0, 1.0)
    assert cppo_categories(torch.tensor([2.0, 0.5]), torch.tensor([2.0, 2.0]), stats=stats).tolist() == [
        HIGH_PERFORMANCE, NORMAL]
    # shifted and scaled inputs give the same categories (only mean +- k std matters)
    assert cppo_categories(10 + 0.1 * REWARD, -50 + 7 * LOGP).tolist() == EXPECTED
    # a large k makes everything normal; equal values (std 0) are normal too, never NaN
    assert cppo_categories(REWARD, LOGP, k=5.0).tolist() == [NORMAL] * 5
    assert cppo_categories(torch.ones(4), torch.ones(4)).tolist() == [NORMAL] * 4
    # only one axis beyond its band -> normal
    assert cppo_categories(torch.tensor([3.0, -3.0, 0, 0, 0]), torch.tensor([0.0, 0, 3, -3, 0])).tolist() == [NORMAL] * 5
    assert len(CATEGORIES) == 5


def _flat(pairs):
    return [v for pair in pairs for v in pair]


def _batch(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    recs = []
    for i in range(n):
        c, r = torch.randint(3, 9, (2,), generator=g).tolist()
        recs.append({"ids": {"prompt": [1, 2, 3], "chosen": list(range(4, 4 + c)), "rejected": list(range(4, 4 + r))},
                     "ref": (-float(c), -float(r)), "old": (-float(c) - 1, -float(r) + 0.5)})
    return collate_pairs(recs, pad_id=0)


def _chosen_lengths(batch):
    """Response tokens of each chosen sequence, from the batch's scoring index."""
    return torch.bincount(batch["score_index"][:, 3]).chunk(2)[0].float()


def _outputs(batch, chosen, rejected, beta=0.1, chosen_counts=None):
    per_pair = dpo_loss(chosen, rejected, batch["ref_chosen_logps"], batch["ref_rejected_logps"], beta=beta)
    margin = beta * ((chosen - batch["ref_chosen_logps"]) - (rejected - batch["ref_rejected_logps"]))
    counts = _chosen_lengths(batch) if chosen_counts is None else chosen_counts
    return {"chosen_logps": chosen, "rejected_logps": rejected, "per_pair_loss": per_pair, "margin": margin,
            "chosen_counts": counts}


def test_extra_loss_is_weighted_loss_plus_retention():
    plugin = CPPOPlugin(k=1.0, retention=0.1)
    plugin.on_stage_start(SimpleNamespace(), SFT)  # resets stats; no scoring outside "pref"
    batch = _batch(6)
    chosen = torch.randn(6, generator=torch.Generator().manual_seed(1)) - 5
    rejected = torch.randn(6, generator=torch.Generator().manual_seed(2)) - 5
    out = _outputs(batch, chosen, rejected)
    extra = plugin.extra_loss(None, PREF, None, batch, out)
    lengths = _chosen_lengths(batch)
    alpha, beta, _ = cppo_weights(out["margin"], chosen / lengths)
    retention = 0.1 * ((chosen - batch["old_chosen_logps"]) ** 2 + (rejected - batch["old_rejected_logps"]) ** 2)
    total = out["per_pair_loss"].mean() + extra
    assert torch.allclose(total, (alpha * out["per_pair_loss"]).mean() + (beta * retention).mean())
    assert plugin.extra_loss(None, SFT, None, batch, {"logps": chosen}) is None  # plain SFT


def fresh(plugin):
    """The plugin at the start of a preference stage's statistics (what on_stage_start resets)."""
    plugin.on_stage_start(SimpleNamespace(), SFT)
    return plugin


def test_retention_zero_when_policy_equals_old_and_formula_otherwise():
    plugin = fresh(CPPOPlugin(retention=0.1))
    batch = _batch(4)
    # uniform reference and old scores: every pair has the same margin and log-prob, so all are
    # "normal" (alpha = beta = 1) and the extra term is the retention term alone
    flat = dict(batch, ref_chosen_logps=torch.full((4,), -5.0), ref_rejected_logps=torch.full((4,), -6.0),
                old_chosen_logps=torch.full((4,), -5.0), old_rejected_logps=torch.full((4,), -6.0))
    ones = torch.ones(4)  # equal lengths: equal per-token log-probs
    same = _outputs(flat, torch.full((4,), -5.0), torch.full((4,), -6.0), chosen_counts=ones)
    assert plugin.extra_loss(None, PREF, None, flat, same).item() == 0.0
    # chosen moved by 2, rejected by 1 on every pair: retention = 0.1 * (2^2 + 1^2)
    moved = _outputs(flat, torch.full((4,), -3.0), torch.full((4,), -7.0), chosen_counts=ones)
    assert fresh(plugin).extra_loss(None, PREF, None, flat, moved).item() == pytest.approx(0.5)
    # policy == old on a varied batch: the retention part is zero, what is left is mean((alpha-1) L)
    out = _outputs(batch, batch["old_chosen_logps"].clone(), batch["old_rejected_logps"].clone())
    lengths = _chosen_lengths(batch)
    alpha, _, _ = cppo_weights(out["margin"], out["chosen_logps"] / lengths)
    extra = fresh(plugin).extra_loss(None, PREF, None, batch, out)
    assert torch.allclose(extra, ((alpha - 1) * out["per_pair_loss"]).mean())
    plugin_no_alpha = fresh(CPPOPlugin(retention=0.1, lb=1.0, ub=1.0))  # weights all 1: only retention left
    assert plugin_no_alpha.extra_loss(None, PREF, None, batch, out).item() == 0.0


def test_below_three_pairs_weights_are_one_with_a_warning():
    assert MIN_PAIRS == 3
    plugin = fresh(CPPOPlugin())
    batch = _batch(1)
    chosen = torch.tensor([-4.0], requires_grad=True)
    out = _outputs(batch, chosen, torch.tensor([-6.0]))
    with pytest.warns(UserWarning, match="fewer than 3"):
        extra = plugin.extra_loss(None, PREF, None, batch, out)
    retention = 0.1 * ((-4.0 - batch["old_chosen_logps"]) ** 2 + (-6.0 - batch["old_rejected_logps"]) ** 2)
    assert torch.isfinite(extra) and extra.item() == pytest.approx(retention.item())
    extra.backward()
    assert torch.isfinite(chosen.grad).all()
    with warnings.catch_warnings():  # once per stage; 2 pairs seen: still weight 1
        warnings.simplefilter("error")
        assert plugin.extra_loss(None, PREF, None, batch, out).item() == pytest.approx(retention.item())
    assert plugin.moments.count == 2
    with pytest.warns(UserWarning, match="fewer than 3"):  # a new stage warns again
        fresh(plugin).extra_loss(None, PREF, None, batch, out)


def _direct(margin, logp, loss=None):
    """Outputs with the margins and (length 1) chosen log-probs given; retention 0 (policy = old)."""
    n = len(margin)
    chosen = torch.tensor(logp, dtype=torch.float32)
    outputs = {"chosen_logps": chosen, "rejected_logps": torch.zeros(n), "margin": torch.tensor(margin),
               "per_pair_loss": torch.ones(n) if loss is None else loss, "chosen_counts": torch.ones(n)}
    batch = {"old_chosen_logps": chosen.clone(), "old_rejected_logps": torch.zeros(n)}
    return batch, outputs


def test_categories_use_the_running_statistics_of_the_stage_not_the_micro_batch():
    plugin = fresh(CPPOPlugin(k=1.0, lb=0.5, ub=2.0))
    seen_r, seen_p = [], []
    for r, p in (([-1.0, 1.0, 0.0], [-1.0, 1.0, 0.0]), ([0.5, -0.5, 0.2], [0.3, -0.2, 0.1])):
        batch, out = _direct(r, p)
        plugin.extra_loss(None, PREF, None, batch, out)
        seen_r += r
        seen_p += p
    # a micro-batch of two pairs far above everything seen: by its own mean +- std both pairs sit
    # exactly on the band's edges (normal, or decided by rounding); against the stage's statistics
    # (this batch included) both are high-performance, alpha = 2 each, so mean((alpha - 1) * 1) = 1
    batch, out = _direct([5.0, 5.1], [5.0, 5.1])
    seen_r += [5.0, 5.1]
    seen_p += [5.0, 5.1]
    extra = plugin.extra_loss(None, PREF, None, batch, out)
    assert extra.item() == pytest.approx(1.0)
    r, p = torch.tensor(seen_r, dtype=torch.float64), torch.tensor(seen_p, dtype=torch.float64)
    expected = (r.mean(), r.std(unbiased=False), p.mean(), p.std(unbiased=False))
    assert plugin.moments.count == 8
    assert plugin.moments.stats() == pytest.approx([float(x) for x in expected])
    own = cppo_weights(torch.tensor([5.0, 5.1]), torch.tensor([5.0, 5.1]))[0]
    assert own.tolist() != [2.0, 2.0]  # what a per-micro-batch statistic would have given
    report = plugin.on_stage_end(None, PREF)
    assert report["pairs_seen"] == 8 and report["categories"]["high_performance"] >= 2
    assert report["reward_mean"] == pytest.approx(float(expected[0]))


def test_running_statistics_are_pooled_across_ranks(monkeypatch):
    """Under DDP every rank adds its micro-batch's count, sum and sum of squares (an all-reduce):
    here a simulated second rank holding the same values doubles every sum."""
    import torch.distributed as dist

    calls = []

    def all_reduce(tensor):
        calls.append(tensor.dtype)
        tensor.mul_(2)

    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_world_size", lambda: 2)
    monkeypatch.setattr(dist, "all_reduce", all_reduce)
    moments = RunningMoments()
    moments.update(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([0.0, 0.0, 3.0]))
    assert calls == [torch.float64] and moments.count == 6
    assert moments.stats() == pytest.approx([2.0, (2 / 3) ** 0.5, 1.0, 2 ** 0.5])


def test_registered_with_knobs_and_generic_switches():
    cfg = Config()
    cfg.method.name = "cppo"
    s = build_strategy(cfg)
    assert s.describe() == {"name": "cppo", "loss": "dpo", "plugins": ["cppo"]}
    cfg.method.replay, cfg.method.loss, cfg.method.cppo_k = True, "fpo", 0.5
    s = build_strategy(cfg)
    assert s.describe() == {"name": "cppo", "loss": "fpo", "plugins": ["replay", "cppo"]}
    assert s.plugin("cppo").k == 0.5


@pytest.fixture(scope="module")
def cppo_run(fake_release, tmp_path_factory):
    """An end-to-end CPPO run that records each task's pi_old scores of the first training pair."""
    import lifealign.strategies.cppo as mod

    seen = []
    original = mod.CPPOPlugin.on_stage_start

    def spy(self, loop, stage):
        original(self, loop, stage)
        if stage.name == "pref":
            first = loop.tasks[loop.order[0]].train[0]
            seen.append({"task": stage.task, "old": [r["old"] for r in stage.records],
                         "first_task_pair": first.get("old"), "ref": [r["ref"] for r in stage.records]})

    mod.CPPOPlugin.on_stage_start = spy
    try:
        tmp = tmp_path_factory.mktemp("cppo")
        results = run_cli(fake_release, tmp / "out", tmp / "cache", ["method.name=cppo", "method.replay=true"])
    finally:
        mod.CPPOPlugin.on_stage_start = original
    return results, seen


def test_end_to_end_and_pi_old_refreshed_each_task(cppo_run):
    results, seen = cppo_run
    assert results["complete"] and results["method"] == {"name": "cppo", "loss": "dpo", "plugins": ["replay", "cppo"]}
    assert [s["task"] for s in seen] == results["order"]
    # task 1: pi_old is the initial policy = the base model (LoRA B = 0), so old == ref
    assert _flat(seen[0]["old"]) == pytest.approx(_flat(seen[0]["ref"]), abs=1e-4)
    # later tasks: pi_old is the previous task's policy, so it moved away from the base model
    assert _flat(seen[1]["old"]) != pytest.approx(_flat(seen[1]["ref"]), abs=1e-3)
    # the replayed pair of task 1 was rescored by each later task with a different pi_old
    assert seen[1]["first_task_pair"] != pytest.approx(seen[2]["first_task_pair"], abs=1e-4)
    for i, tr in enumerate(results["training"]):
        report = tr["stages"]["pref"]["plugins"]["cppo"]
        epochs = results["config"]["pref"]["epochs"]
        assert sum(report["categories"].values()) == epochs * tr["stages"]["pref"]["examples"]
        assert report["pairs_seen"] == epochs * tr["stages"]["pref"]["examples"]  # the stage's statistics
        assert report["mean_retention"] >= 0
        assert "cppo" not in tr["stages"]["sft"]["plugins"]  # plain SFT
    for metric in results["metrics"].values():
        assert all(v == v for row in metric["matrix"] for v in row)  # no NaN


def test_pi_old_is_the_previous_task_end_not_after_sft(fake_release, tmp_path):
    """A direct hook call: pi_old scored at the preference stage start uses the snapshot taken at
    task start, even if the model moved in between (as the SFT stage does)."""
    from lifealign.runner import ContinualLoop
    from lifealign.config import load_config
    from test_run import TINY_ARGS

    cfg = load_config(None, TINY_ARGS + [f"data.dir={fake_release}", f"out={tmp_path / 'o'}",
                                         f"cache_dir={tmp_path / 'c'}", "data.order=[safe-rlhf]",
                                         "method.name=cppo"])
    loop = ContinualLoop(cfg)
    loop.setup()
    plugin = loop.strategy.plugin("cppo")
    records = loop.tasks["safe-rlhf"].train[:4]
    loop.ref_cache.fill(loop.model, records, loop.pad_id, 4, "fp32")
    plugin.on_task_start(loop, "safe-rlhf")
    lora_b = [p for n, p in loop.model.named_parameters() if "lora_B" in n]
    with torch.no_grad():
        for p in lora_b:
            p.add_(0.05)  # "the SFT stage moved the policy"
    moved = [p.detach().clone() for p in lora_b]
    plugin.on_stage_start(loop, Stage("pref", "safe-rlhf", 0, records, loss=None, collate=None))
    assert _flat(r["old"] for r in records) == pytest.approx(_flat(r["ref"] for r in records), abs=1e-4)
    assert all(torch.equal(p, m) for p, m in zip(lora_b, moved))  # current weights put back
    # the next task: snapshot of the moved policy -> pi_old changes
    plugin.on_task_start(loop, "next")
    plugin.on_stage_start(loop, Stage("pref", "next", 1, records, loss=None, collate=None))
    assert _flat(r["old"] for r in records) != pytest.approx(_flat(r["ref"] for r in records), abs=1e-3)

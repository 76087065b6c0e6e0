"""EWC, GEM and A-GEM baselines: the mechanisms act (penalty gradient, Fisher accumulation, gradient
projection applied by the optimizer), their state survives a save/load, and each runs end to end."""
import contextlib
import io
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from lifealign.config import ConfigError, MethodConfig, load_config
from lifealign.strategies import METHODS, build_strategy
from lifealign.strategies.base import Stage, Strategy
from lifealign.strategies.ewc import EWCPlugin, empirical_fisher, ewc_penalty
from lifealign.strategies.gem import AGEMPlugin, GEMPlugin, agem_project, flat_grad, gem_project, memory_gradient
from lifealign.training import trainable_parameters
from test_run import run_cli


# ---------------------------------------------------------------- a LoRA-like toy and a fake loop
class ToyLoRA(nn.Module):
    """y = (W + B A) x with W frozen, A and B trainable (names like PEFT's)."""

    def __init__(self, seed=0):
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.base = nn.Parameter(torch.randn(4, 3, generator=gen), requires_grad=False)
        self.lora_A = nn.Parameter(torch.randn(2, 3, generator=gen) * 0.5)
        self.lora_B = nn.Parameter(torch.randn(4, 2, generator=gen) * 0.5)

    def forward(self, x):
        return x @ (self.base + self.lora_B @ self.lora_A).T


def toy_collate(records):
    return {"x": torch.tensor([r["x"] for r in records]), "y": torch.tensor([r["y"] for r in records])}


def toy_loss(model, batch):
    per_example = ((model(batch["x"]) - batch["y"]) ** 2).sum(-1)
    return per_example.mean(), {"per_example": per_example}


def toy_records(n, seed):
    gen = torch.Generator().manual_seed(seed)
    return [{"x": torch.randn(3, generator=gen).tolist(), "y": torch.randn(4, generator=gen).tolist(),
             "prompt": f"q{seed}-{i}", "chosen": "yes", "rejected": "no"} for i in range(n)]


def fake_loop(model, tasks=None):
    return SimpleNamespace(model=model, cfg=SimpleNamespace(sft=SimpleNamespace(batch_size=3),
                                                            pref=SimpleNamespace(batch_size=3)),
                           autocast=contextlib.nullcontext, tasks=tasks or {})


def toy_stage(kind, task="t_new", task_index=2, records=None, loss=toy_loss):
    return Stage(kind, task, task_index, records or [], loss, toy_collate)


def roundtrip(state):
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=False)


# ---------------------------------------------------------------- EWC
def test_ewc_penalty_gradient_pulls_towards_the_anchor():
    gen = torch.Generator().manual_seed(1)
    theta = {"a": nn.Parameter(torch.randn(5, 3, generator=gen)), "b": nn.Parameter(torch.randn(7, generator=gen))}
    anchor = {n: p.detach() + torch.randn(p.shape, generator=gen) for n, p in theta.items()}
    fisher = {n: torch.rand(p.shape, generator=gen) + 0.1 for n, p in theta.items()}
    lam = 3.0
    penalty = ewc_penalty(theta, fisher, anchor, lam)
    expected = 0.5 * lam * sum((fisher[n] * (theta[n].detach() - anchor[n]) ** 2).sum() for n in theta)
    assert torch.allclose(penalty, expected)
    penalty.backward()
    inner = 0.0
    for n, p in theta.items():
        assert torch.allclose(p.grad, lam * fisher[n] * (p.detach() - anchor[n]), rtol=1e-6, atol=1e-7)
        inner += float((-p.grad * (anchor[n] - p.detach())).sum())
    assert inner > 0  # -grad points from theta towards theta*


def test_empirical_fisher_is_the_mean_squared_per_example_gradient():
    model = ToyLoRA()
    records = toy_records(5, seed=3)
    params = trainable_parameters(model)
    fisher = empirical_fisher(model, params, records, toy_collate, toy_loss, contextlib.nullcontext)
    assert set(fisher) == {"lora_A", "lora_B"}
    for name, p in params.items():
        manual = torch.zeros_like(p)
        for rec in records:
            (g,) = torch.autograd.grad(toy_loss(model, toy_collate([rec]))[0], [p])
            manual += g ** 2
        assert torch.allclose(fisher[name], manual / len(records), rtol=1e-5, atol=1e-7)
    assert all(p.grad is None for p in model.parameters())  # Fisher pass leaves .grad alone


def test_ewc_fisher_accumulates_over_stages_and_anchors_at_the_stage_end():
    model = ToyLoRA()
    plugin = EWCPlugin(lam=2.0, gamma=1.0, fisher_samples=4, seed=0, scope="stage")
    params = trainable_parameters(model)
    recs1, recs2 = toy_records(6, seed=1), toy_records(6, seed=2)

    loop = fake_loop(model)
    stage1 = toy_stage("sft", task="t1", task_index=0, records=recs1)
    assert plugin.extra_loss(loop, stage1, model, None, None) is None  # nothing consolidated yet
    plugin.on_stage_end(loop, stage1)
    f1 = {n: f.clone() for n, f in plugin.fisher.items()}
    sum1 = sum(float(f.sum()) for f in f1.values())
    assert torch.equal(plugin.anchor["lora_A"], model.lora_A.detach())

    with torch.no_grad():  # "train" the next task: the parameters move
        model.lora_A.add_(0.3)
        model.lora_B.sub_(0.2)
    stage2 = toy_stage("pref", task="t2", task_index=1, records=recs2)
    examples2 = plugin.fisher_examples(stage2)
    assert len(examples2) == 4
    f2 = empirical_fisher(model, params, examples2, toy_collate, toy_loss, contextlib.nullcontext)
    report = plugin.on_stage_end(loop, stage2)
    sum2 = sum(float(f.sum()) for f in plugin.fisher.values())
    assert sum2 > sum1 and report["consolidations"] == 2
    for n in params:
        assert torch.allclose(plugin.fisher[n], f1[n] + f2[n], rtol=1e-6, atol=1e-9)  # F1 + F2, not F2
        assert torch.equal(plugin.anchor[n], params[n].detach())  # anchored at the end of stage 2

    plugin.on_task_end(loop, "t2")  # the stage scope does nothing more at a task's end
    assert plugin.consolidations == 2

    decayed = EWCPlugin(gamma=0.5, fisher_samples=4)
    decayed.fisher = {n: f.clone() for n, f in f1.items()}
    decayed.consolidate(params, f2)
    assert torch.allclose(decayed.fisher["lora_B"], 0.5 * f1["lora_B"] + f2["lora_B"])


def toy_sft_loss(model, batch):
    """A second stage loss, distinct from toy_loss, to tell the two stages' Fishers apart."""
    return (model(batch["x"]).sum(-1) ** 2).mean(), {}


def test_ewc_task_scope_anchors_once_per_task_and_sums_both_stages_fishers():
    """The default scope: no consolidation at a stage's end; at the task's end F gains the Fisher of
    each stage (its own loss and records, at the task-end parameters) and theta* = the task-end
    parameters. The preference stage of a task is therefore not anchored at its own SFT end."""
    assert EWCPlugin().scope == MethodConfig().ewc_scope == "task"
    model = ToyLoRA()
    params = trainable_parameters(model)
    plugin = EWCPlugin(lam=2.0, fisher_samples=4, seed=0)
    sft_recs, pref_recs = toy_records(6, seed=1), toy_records(6, seed=2)
    loop = fake_loop(model)
    sft = toy_stage("sft", task="t1", task_index=0, records=sft_recs, loss=toy_sft_loss)
    plugin.on_task_start(loop, "t1")
    plugin.on_stage_start(loop, sft)
    report = plugin.on_stage_end(loop, sft)
    assert plugin.fisher == {} and plugin.anchor == {} and report["consolidations"] == 0
    with torch.no_grad():  # the preference stage trains
        model.lora_A.add_(0.3)
    pref = toy_stage("pref", task="t1", task_index=0, records=pref_recs)
    plugin.on_stage_start(loop, pref)
    assert plugin.extra_loss(loop, pref, model, None, None) is None  # no pull to t1's SFT end
    plugin.on_stage_end(loop, pref)
    assert plugin.consolidations == 0
    with torch.no_grad():  # parameters at the task's end differ from the preference stage's end
        model.lora_B.sub_(0.2)
    plugin.on_task_end(loop, "t1")
    assert plugin.consolidations == 1
    f_sft = empirical_fisher(model, params, plugin.fisher_examples(sft), toy_collate, toy_sft_loss,
                             contextlib.nullcontext)
    f_pref = empirical_fisher(model, params, plugin.fisher_examples(pref), toy_collate, toy_loss,
                              contextlib.nullcontext)
    for n in params:
        assert torch.allclose(plugin.fisher[n], f_sft[n] + f_pref[n], rtol=1e-6, atol=1e-9)
        assert not torch.allclose(plugin.fisher[n], f_pref[n])  # the SFT stage's Fisher is in it
        assert torch.equal(plugin.anchor[n], params[n].detach())  # anchored once, at the task's end
    # the next task: both stages pulled towards the one anchor; a second task end accumulates
    with torch.no_grad():
        model.lora_A.add_(0.1)
    plugin.on_task_start(loop, "t2")
    for kind in ("sft", "pref"):
        stage = toy_stage(kind, task="t2", task_index=1, records=toy_records(6, seed=3))
        plugin.on_stage_start(loop, stage)
        assert plugin.extra_loss(loop, stage, model, None, None) > 0
        plugin.on_stage_end(loop, stage)
    first = {n: f.clone() for n, f in plugin.fisher.items()}
    plugin.on_task_end(loop, "t2")
    assert plugin.consolidations == 2
    assert all((plugin.fisher[n] >= first[n]).all() and not torch.equal(plugin.fisher[n], first[n]) for n in params)
    with pytest.raises(ValueError, match="ewc_scope"):
        EWCPlugin(scope="epoch")
    assert build_strategy(load_config(None, ["method.name=ewc", "method.ewc_scope=stage"])).plugins[0].scope == "stage"


def test_ewc_state_survives_save_and_load():
    model = ToyLoRA()
    plugin = EWCPlugin(lam=5.0, fisher_samples=3, scope="stage")
    plugin.on_stage_end(fake_loop(model), toy_stage("sft", task="t1", task_index=0, records=toy_records(5, 4)))
    with torch.no_grad():
        model.lora_B.add_(0.1)
    loop, stage = fake_loop(model), toy_stage("pref")
    before = plugin.extra_loss(loop, stage, model, None, None)
    assert before > 0
    restored = EWCPlugin(lam=5.0, fisher_samples=3, scope="stage")
    restored.load_state_dict(roundtrip(plugin.state_dict()))
    assert restored.consolidations == 1
    for n in plugin.fisher:
        assert torch.equal(restored.fisher[n], plugin.fisher[n]) and torch.equal(restored.anchor[n], plugin.anchor[n])
    assert torch.equal(restored.extra_loss(loop, stage, model, None, None), before)
    assert restored.state_nbytes() == plugin.state_nbytes() == 2 * 4 * (6 + 8)


# ---------------------------------------------------------------- projections
def test_agem_projection_removes_the_conflict_and_keeps_a_harmless_gradient():
    g_ref = torch.tensor([1.0, 2.0, 0.0, -1.0])
    g = torch.tensor([-2.0, -1.0, 3.0, 0.5])
    assert torch.dot(g, g_ref) < 0
    new, projected = agem_project(g, g_ref)
    assert projected and abs(float(torch.dot(new, g_ref))) < 1e-6
    assert torch.allclose(new, g - torch.dot(g, g_ref) / torch.dot(g_ref, g_ref) * g_ref)
    harmless = torch.tensor([1.0, 0.0, 3.0, 0.5])
    same, projected = agem_project(harmless, g_ref)
    assert not projected and same is harmless


@pytest.mark.parametrize("margin", [0.0, 0.5])
def test_gem_projection_satisfies_every_memory_constraint(margin):
    gen = torch.Generator().manual_seed(5)
    G = torch.randn(3, 20, generator=gen)
    g = -G[0] - 0.5 * G[1] + 0.1 * torch.randn(20, generator=gen)
    assert (G @ g < 0).any()
    new, projected = gem_project(g, G, margin)
    assert projected
    assert (G @ new >= -1e-6).all()
    if margin == 0.0:  # the closest such gradient: moving towards g can only break a constraint
        for t in torch.linspace(0.05, 1, 20):
            candidate = new + t * (g - new)
            assert (G @ candidate < -1e-6).any() or torch.norm(candidate - g) >= torch.norm(new - g) - 1e-6
    fine = G[0] + G[1] + G[2]
    fine = fine + 10 * G.T @ torch.linalg.solve(G @ G.T, torch.ones(3))  # G @ fine > 0 everywhere
    assert (G @ fine > 0).all()
    same, projected = gem_project(fine, G, margin)
    assert not projected and same is fine


# ---------------------------------------------------------------- the hook in a training step
def _memory_setup(plugin_cls, **kwargs):
    model = ToyLoRA()
    plugin = plugin_cls(memory_size=4, **kwargs)
    earlier = {"t1": toy_records(6, seed=11), "t2": toy_records(6, seed=12)}
    loop = fake_loop(model)
    for i, (task, recs) in enumerate(earlier.items()):  # each earlier task's stage end adds its memory
        plugin.on_stage_end(loop, toy_stage("sft", task=task, task_index=i, records=recs))
    assert [len(m) for m in plugin.memories["sft"].values()] == [4, 4]
    stage = toy_stage("sft", task="t3", task_index=2)
    plugin.on_stage_start(loop, stage)
    params = list(trainable_parameters(model).values())
    mem_grads = [memory_gradient(model, params, recs, toy_collate, toy_loss, contextlib.nullcontext, 3)
                 for recs in plugin.memories["sft"].values()]
    return model, plugin, loop, stage, params, mem_grads


def _set_grad(params, flat):
    offset = 0
    for p in params:
        p.grad = flat[offset:offset + p.numel()].view_as(p).clone()
        offset += p.numel()


def _step(model, plugin, loop, stage, params, g, lr=0.1):
    """One optimizer step as the trainer runs it: grads set, hook, SGD step. Returns (update, grad seen)."""
    _set_grad(params, g)
    before = torch.cat([p.detach().reshape(-1).clone() for p in params])
    plugin.before_optimizer_step(loop, stage, model)
    applied = flat_grad(params)
    torch.optim.SGD(params, lr=lr).step()
    after = torch.cat([p.detach().reshape(-1) for p in params])
    return after - before, applied


@pytest.mark.parametrize("kind", ["gem", "agem"])
def test_projection_is_applied_by_the_optimizer(kind):
    if kind == "gem":
        model, plugin, loop, stage, params, mem = _memory_setup(GEMPlugin, margin=0.5)
    else:
        model, plugin, loop, stage, params, mem = _memory_setup(AGEMPlugin, sample_size=100)
    g_ref = memory_gradient(model, params, [r for m in plugin.memories["sft"].values() for r in m], toy_collate,
                            toy_loss, contextlib.nullcontext, 3)
    g = -(mem[0] + mem[1]) + 0.05 * torch.randn(mem[0].numel(), generator=torch.Generator().manual_seed(0))
    assert torch.dot(g, mem[0]) < 0 and torch.dot(g, mem[1]) < 0 and torch.dot(g, g_ref) < 0
    lr = 0.1
    update, applied = _step(model, plugin, loop, stage, params, g, lr)
    assert plugin._stats["projected"] == 1
    expected = gem_project(g, torch.stack(mem), 0.5)[0] if kind == "gem" else agem_project(g, g_ref)[0]
    assert torch.allclose(applied, expected, atol=1e-6)
    assert torch.allclose(update, -lr * expected, atol=1e-6)  # SGD applied the projected gradient
    assert not torch.allclose(update, -lr * g, atol=1e-3)  # ... not the original one
    checks = mem if kind == "gem" else [g_ref]
    for m in checks:
        assert float(torch.dot(applied, m)) >= -1e-6
        assert float(torch.dot(-update, m)) >= -1e-6 * lr


@pytest.mark.parametrize("kind", ["gem", "agem"])
def test_the_papers_optimizer_sgd_steps_by_minus_lr_times_the_projected_gradient(kind):
    """The optimizer comes from the plugin (Strategy.make_optimizer): plain SGD at method.sgd_lr, so
    the parameter update is exactly -sgd_lr * g~; `projection_optimizer=adamw` leaves the runner's."""
    cls, extra = (GEMPlugin, {"margin": 0.5}) if kind == "gem" else (AGEMPlugin, {"sample_size": 100})
    model, plugin, loop, stage, params, mem = _memory_setup(cls, sgd_lr=0.07, **extra)
    strategy = Strategy(kind, "dpo", [plugin])
    opt = strategy.make_optimizer(loop, "sft", params, SimpleNamespace(lr=2e-4))
    assert type(opt) is torch.optim.SGD and len(opt.param_groups) == 1
    group = opt.param_groups[0]
    assert group["lr"] == 0.07 and group["momentum"] == 0 and group["weight_decay"] == 0
    assert [id(p) for p in group["params"]] == [id(p) for p in params]
    g = -(mem[0] + mem[1])
    _set_grad(params, g)
    before = torch.cat([p.detach().reshape(-1).clone() for p in params])
    plugin.before_optimizer_step(loop, stage, model)
    projected = flat_grad(params)
    assert plugin._stats["projected"] == 1 and not torch.allclose(projected, g)
    for _ in range(2):  # stateless: the second step is -lr * g~ again, no momentum or moments
        opt.step()
        after = torch.cat([p.detach().reshape(-1).clone() for p in params])
        assert torch.allclose(after - before, -0.07 * projected, atol=1e-7)
        before = after
    adam = cls(memory_size=4, optimizer="adamw", **extra)
    assert Strategy(kind, "dpo", [adam]).make_optimizer(loop, "sft", params, SimpleNamespace(lr=2e-4)) is None
    with pytest.raises(ValueError, match="projection optimizer"):
        cls(optimizer="adam")


def test_projection_optimizer_options_reach_the_plugins():
    for name in ("gem", "agem"):
        plugin = build_strategy(load_config(None, [f"method.name={name}"])).plugins[0]
        assert (plugin.optimizer, plugin.sgd_lr) == ("sgd", MethodConfig().sgd_lr)
        plugin = build_strategy(load_config(None, [f"method.name={name}", "method.projection_optimizer=adamw",
                                                   "method.sgd_lr=0.5"])).plugins[0]
        assert (plugin.optimizer, plugin.sgd_lr) == ("adamw", 0.5)
    with pytest.raises(ConfigError, match="method.projection_optimizer = 'adam' is not allowed"):
        load_config(None, ["method.projection_optimizer=adam"])
    with pytest.raises(ConfigError, match="method.sgd_lr = 0.0: must be positive"):
        load_config(None, ["method.sgd_lr=0"])


@pytest.mark.parametrize("plugin_cls", [GEMPlugin, AGEMPlugin])
def test_no_projection_without_conflict(plugin_cls):
    model, plugin, loop, stage, params, mem = _memory_setup(plugin_cls)
    g = mem[0] + mem[1]
    assert torch.dot(g, mem[0]) > 0 and torch.dot(g, mem[1]) > 0
    update, applied = _step(model, plugin, loop, stage, params, g, lr=0.1)
    assert torch.equal(applied, g)  # the memory passes left the gradient exactly as it was
    assert torch.allclose(update, -0.1 * g, atol=1e-7)
    assert plugin._stats["projected"] == 0 and plugin._stats["steps"] == 1


def test_first_task_and_own_task_memory_are_not_constraints():
    model = ToyLoRA()
    plugin = GEMPlugin(memory_size=4)
    loop, stage = fake_loop(model), toy_stage("sft", task="t1", task_index=0, records=toy_records(5, 1))
    plugin.on_stage_start(loop, stage)
    params = list(trainable_parameters(model).values())
    g = torch.randn(sum(p.numel() for p in params))
    update, applied = _step(model, plugin, loop, stage, params, g)
    assert torch.equal(applied, g)
    report = plugin.on_stage_end(loop, stage)
    assert report["memory_tasks"] == [] and report["memory_added"] == 4
    assert plugin._earlier(stage) == {}  # t1's own memory never constrains t1
    assert plugin._earlier(toy_stage("pref", task="t2", task_index=1)) == {}  # nor an SFT memory a preference stage


@pytest.mark.parametrize("plugin_cls", [GEMPlugin, AGEMPlugin])
def test_memories_survive_save_and_load(plugin_cls):
    model, plugin, loop, stage, params, mem = _memory_setup(plugin_cls)
    restored = plugin_cls(memory_size=4)
    restored.load_state_dict(roundtrip(plugin.state_dict()))
    assert restored.memories == plugin.memories and restored.state_nbytes() == plugin.state_nbytes() > 0
    restored.on_stage_start(loop, stage)
    g = -(mem[0] + mem[1])
    _, applied_a = _step(model, plugin, loop, stage, params, g, lr=0.0)
    _, applied_b = _step(model, restored, loop, stage, params, g, lr=0.0)
    assert torch.equal(applied_a, applied_b) and not torch.equal(applied_a, g)


# ---------------------------------------------------------------- end to end on the tiny model
def test_methods_are_registered():
    assert {"ewc", "gem", "agem"} <= set(METHODS)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")  # reference log-probs computed once for the runs below


@pytest.mark.parametrize("scope", ["task", "stage"])
def test_ewc_end_to_end(fake_release, tmp_path, cache, scope):
    # batch 2: 4 steps a stage (with 2, the warm-up step has lr 0 and the penalty never sees a drift)
    results = run_cli(fake_release, tmp_path / "out", cache,
                      ["method.name=ewc", "method.ewc_fisher_samples=4", "sft.batch_size=2", "pref.batch_size=2",
                       f"method.ewc_scope={scope}"])
    assert results["complete"] and results["method"] == {"name": "ewc", "loss": "dpo", "plugins": ["ewc"]}
    reports = [t["stages"][s]["plugins"]["ewc"] for t in results["training"] for s in ("sft", "pref")]
    penalties = [r["mean_penalty"] for r in reports]
    sums = [r["fisher_sum"] for r in reports]
    if scope == "task":  # the penalty acts from the second task on; one consolidation per task
        assert penalties[:2] == [0, 0] and all(p > 0 for p in penalties[2:])
        assert [r["consolidations"] for r in reports] == [0, 0, 1, 1, 2, 2]
        assert sums[0] == sums[1] == 0 < sums[2] == sums[3] < sums[4] == sums[5]
    else:  # the penalty acts from the second stage on; one consolidation per stage
        assert penalties[0] == 0 and all(p > 0 for p in penalties[1:])
        assert [r["consolidations"] for r in reports] == [1, 2, 3, 4, 5, 6]
        assert all(b > a for a, b in zip(sums, sums[1:]))  # accumulated, never replaced
    n_lora = results["training"][0]["state_bytes"]["ewc"] // 8  # Fisher + anchor, fp32 each
    assert n_lora > 0 and all(t["state_bytes"]["ewc"] == 8 * n_lora for t in results["training"])


def _check_memory_reports(results, size):
    name, order = results["method"]["name"], results["order"]
    for i, task in enumerate(results["training"]):
        for stage in ("sft", "pref"):
            report = task["stages"][stage]["plugins"][name]
            assert report["memory_tasks"] == order[:i] and report["steps"] > 0
            assert report["memory_added"] == min(size, 8)
    nbytes = [t["state_bytes"][name] for t in results["training"]]
    assert 0 < nbytes[0] < nbytes[1] < nbytes[2]


def test_agem_end_to_end_and_the_optimizer_applies_the_projection(fake_release, tmp_path, cache, monkeypatch):
    """Through the real trainer: the runner's optimizer is SGD, every projected gradient is exactly
    what SGD.step then sees, and the step moves the parameters by -lr * g~ (lr: the group's scheduled
    learning rate). The fake tasks hardly conflict, so the projection is forced here (always remove
    the g_ref component)."""
    import lifealign.strategies.gem as gem_module

    seen = {"pending": None, "checked": 0, "mismatch": 0, "changed": 0, "bad_step": 0, "other_optimizers": 0}

    def forced(g, g_ref):
        out = g - torch.dot(g, g_ref) / torch.dot(g_ref, g_ref) * g_ref
        seen["pending"] = out.clone()
        seen["changed"] += int(not torch.allclose(out, g))
        return out, True

    original_step = torch.optim.SGD.step

    def step(self, *args, **kwargs):
        params = [p for group in self.param_groups for p in group["params"]]
        before = [p.detach().clone() for p in params]
        out = original_step(self, *args, **kwargs)
        if seen["pending"] is not None:
            grads = torch.cat([p.grad.reshape(-1).float() for p in params])
            moved = torch.cat([(p.detach() - b).reshape(-1) for p, b in zip(params, before)])
            lr = self.param_groups[0]["lr"]
            seen["checked"] += 1
            seen["mismatch"] += int(not torch.allclose(grads, seen["pending"], atol=1e-7))
            seen["bad_step"] += int(not torch.allclose(moved, -lr * seen["pending"], atol=1e-8))
            seen["pending"] = None
        return out

    def adamw_step(self, *args, **kwargs):
        seen["other_optimizers"] += 1

    monkeypatch.setattr(gem_module, "agem_project", forced)
    monkeypatch.setattr(torch.optim.SGD, "step", step)
    monkeypatch.setattr(torch.optim.AdamW, "step", adamw_step)
    results = run_cli(fake_release, tmp_path / "a", cache, ["method.name=agem", "method.sgd_lr=0.05"])
    assert results["complete"] and results["method"]["plugins"] == ["agem"]
    _check_memory_reports(results, 16)
    reports = [st["plugins"]["agem"] for t in results["training"][1:] for st in t["stages"].values()]
    assert seen["checked"] == sum(r["steps"] for r in reports) == sum(r["projected"] for r in reports) > 0
    assert seen["mismatch"] == 0 and seen["changed"] == seen["checked"]
    assert seen["bad_step"] == 0 and seen["other_optimizers"] == 0


def test_gem_end_to_end_with_replay_and_fpo(fake_release, tmp_path, cache):
    gem = run_cli(fake_release, tmp_path / "g", cache,
                  ["method.name=gem", "method.replay=true", "method.loss=fpo", "method.gem_memory_size=3"])
    assert gem["complete"] and gem["method"] == {"name": "gem", "loss": "fpo", "plugins": ["replay", "gem"]}
    _check_memory_reports(gem, 3)

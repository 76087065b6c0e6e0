"""O-LoRA and L2P baselines (strategies/olora.py, strategies/l2p.py): the mechanisms act, and each
method runs end to end (with a resume) on the tiny model."""
import inspect
import json
import math
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file

from lifealign.cli import main
from lifealign.config import load_config
from lifealign.lora import adapter_parameters, add_lora, lora_layers, lora_parameters
from lifealign.data import TaskData
from lifealign.models import load_model
from lifealign.reference import score_pairs
from lifealign.runner import ContinualLoop
from lifealign.strategies import build_strategy
from lifealign.strategies.base import Stage
from lifealign.strategies.l2p import L2P, PromptPool
from lifealign.strategies.olora import OLoRA, orthogonality_penalty
from lifealign.training import collate_pairs, encode_records

from test_run import run_cli

TARGETS = ["q_proj", "v_proj"]
# end-to-end runs on few pairs (one step per epoch, so no warmup: the first step must move), fast
SMALL = ["data.n_train=4", "data.n_test=3", "sft.warmup_ratio=0", "pref.warmup_ratio=0",
         "sft.scheduler=constant", "pref.scheduler=constant"]
SFT, PREF = (Stage(kind, "t", 0, [], loss=None, collate=None) for kind in ("sft", "pref"))  # for direct hook calls


def tiny_peft(seed=0):
    model, tokenizer = load_model("tiny-random-llama")
    torch.manual_seed(seed)
    return add_lora(model, 8, 16, 0.0, TARGETS), tokenizer


def fresh_base():
    return load_model("tiny-random-llama")[0].eval()


def fake_loop(model, tasks=None):
    cfg = load_config(None, ["model.name=tiny-random-llama"])
    return SimpleNamespace(model=model, cfg=cfg, tasks=tasks or {}, task_index=0)


def trainable(model):
    return sorted(n for n, p in model.named_parameters() if p.requires_grad)


def make_records(tokenizer, n=3):
    records = [{"prompt": f"question {i} about apples and rivers?", "chosen": f"Sure, answer {i}.",
                "rejected": f"No. Go away {i} times.", "index": i} for i in range(n)]
    return encode_records(tokenizer, records, 64, 40)


def task_dirs(out):
    return sorted(p for p in (Path(out) / "tasks").iterdir() if not p.name.startswith("."))


# ================================================================= O-LoRA
def test_orthogonality_penalty_by_hand():
    a_s = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    # A_s A_t^T = [[1, 0], [1, 0]] -> 2
    assert orthogonality_penalty([(a_s, torch.tensor([[1.0, 1.0, 0.0], [0.0, 0.0, 2.0]]))]).item() == 2.0
    # A_s A_t^T = [[-1, 0], [2, 0]] -> |-1| + |2| = 3 (absolute values, not a signed sum)
    assert orthogonality_penalty([(a_s, torch.tensor([[-1.0, 2.0, 0.0], [0.0, 0.0, 3.0]]))]).item() == 3.0
    # rows of A_t orthogonal to the rows of A_s -> exactly 0
    assert orthogonality_penalty([(a_s, torch.tensor([[0.0, 0.0, 5.0]]))]).item() == 0.0
    # several pairs add up
    pairs = [(a_s, torch.tensor([[1.0, 1.0, 0.0], [0.0, 0.0, 2.0]])), (a_s, torch.tensor([[0.0, -4.0, 1.0]]))]
    assert orthogonality_penalty(pairs).item() == 2.0 + 4.0


def _olora_three_adapters(lambda_l2=0.0):
    model, _ = tiny_peft()
    loop = fake_loop(model)
    plugin = OLoRA(lambda_orth=0.1, lambda_l2=lambda_l2)
    for index in range(3):
        loop.task_index = index
        plugin.on_task_start(loop, f"t{index}")
    return model, loop, plugin


def test_olora_penalty_zero_for_orthogonal_adapters_positive_otherwise():
    model, loop, plugin = _olora_three_adapters()
    layers = lora_layers(model)
    assert len(layers) == 4  # q_proj and v_proj of 2 layers
    # every adapter's A spans its own block of coordinates: rows e_0..7, e_8..15, e_16..23 (scaled)
    with torch.no_grad():
        for layer in layers:
            for block, name in enumerate(plugin.adapters):
                a = layer.lora_A[name].weight
                a.zero_()
                for j in range(8):
                    a[j, block * 8 + j] = 1.0 + j + block
    loss = plugin.extra_loss(loop, PREF, model, None, None)
    assert loss.item() == 0.0
    # one entry of the newest A on coordinate 3 overlaps row 3 of "default" (value 1 + 3 + 0 = 4)
    with torch.no_grad():
        layers[0].lora_A["olora2"].weight[5, 3] = -0.5
    loss = plugin.extra_loss(loop, PREF, model, None, None)
    assert loss.item() == pytest.approx(0.1 * abs(-0.5 * 4.0), rel=1e-6)
    # the gradient reaches the newest A only (the earlier ones are frozen)
    loss.backward()
    assert layers[0].lora_A["olora2"].weight.grad is not None
    assert layers[0].lora_A["default"].weight.grad is None and layers[0].lora_A["olora1"].weight.grad is None


def test_olora_l2_term():
    model, loop, plugin = _olora_three_adapters(lambda_l2=0.01)
    orth = orthogonality_penalty([(layer.lora_A[s].weight, layer.lora_A["olora2"].weight)
                                  for layer in lora_layers(model) for s in ("default", "olora1")])
    squares = sum(float(p.detach().square().sum()) for p in adapter_parameters(model, "olora2").values())
    assert squares > 0 and len(adapter_parameters(model, "olora2")) == 8  # A and B of 4 layers
    loss = plugin.extra_loss(loop, SFT, model, None, None)
    assert loss.item() == pytest.approx(0.1 * orth.item() + 0.01 * squares, rel=1e-5)


def test_olora_trainable_set_active_adapters_and_reference():
    model, _ = tiny_peft()
    loop = fake_loop(model)
    plugin = OLoRA()
    ids = torch.randint(4, 250, (2, 12))
    for index in range(3):
        loop.task_index = index
        plugin.on_task_start(loop, f"t{index}")
        newest = plugin.adapters[-1]
        assert trainable(model) == sorted(adapter_parameters(model, newest))
        assert list(model.base_model.active_adapters) == plugin.adapters
        with torch.no_grad():  # give the new adapter a non-zero update, as training would
            for p in adapter_parameters(model, newest).values():
                p.normal_(0, 0.5)
    assert plugin.adapters == ["default", "olora1", "olora2"]
    model.eval()
    with torch.no_grad():
        full = model(input_ids=ids).logits
        for drop in plugin.adapters:  # disabling any one adapter changes the output
            model.base_model.set_adapter([a for a in plugin.adapters if a != drop])
            assert not torch.allclose(model(input_ids=ids).logits, full, atol=1e-4)
        plugin._activate(model)
        assert torch.equal(model(input_ids=ids).logits, full)
        # the reference (adapter disabled) is the plain base model: ALL adapters off
        with model.disable_adapter():
            ref = model(input_ids=ids).logits
        assert torch.equal(ref, fresh_base()(input_ids=ids).logits)
    # leaving disable_adapter() makes every ACTIVE adapter trainable again (peft); the runner runs the
    # reference pass before each preference stage, and the stage start freezes the earlier ones again
    assert len(trainable(model)) == 24
    plugin.on_stage_start(loop, PREF)
    assert trainable(model) == sorted(adapter_parameters(model, "olora2"))


def test_olora_restore_rebuilds_adapters():
    model, loop, plugin = _olora_three_adapters()
    with torch.no_grad():
        for p in lora_parameters(model).values():
            p.normal_(0, 0.3)
    state = plugin.state_dict()
    assert state == {"adapters": ["default", "olora1", "olora2"]}
    model2, _ = tiny_peft(seed=1)
    plugin2 = OLoRA()
    plugin2.load_state_dict(state)
    plugin2.on_restore(fake_loop(model2))
    params, params2 = lora_parameters(model), lora_parameters(model2)
    assert set(params) == set(params2)
    with torch.no_grad():
        for name, value in params.items():
            params2[name].copy_(value)
    ids = torch.randint(4, 250, (2, 12))
    model.eval(), model2.eval()
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).logits, model2(input_ids=ids).logits)
    assert trainable(model2) == sorted(adapter_parameters(model2, "olora2"))
    assert plugin2.state_nbytes() == sum(p.numel() * 4 for name in ("default", "olora1")
                                         for p in adapter_parameters(model2, name).values())


def record_optimizer_params(monkeypatch):
    """What each stage's optimizer trains: (task index, stage, parameter names), from the runner."""
    seen = []
    original = ContinualLoop._optimizer

    def optimizer(self, stage, stage_cfg):
        opt = original(self, stage, stage_cfg)
        names = {id(p): n for n, p in self.model.named_parameters()}
        seen.append((self.task_index, stage, sorted(names[id(p)] for g in opt.param_groups for p in g["params"])))
        return opt

    monkeypatch.setattr(ContinualLoop, "_optimizer", optimizer)
    return seen


def reevaluate_matches(out, results):
    assert main(["eval", str(out)]) == 0  # restores every task in turn (on_restore) and evaluates again
    again = json.loads((Path(out) / "results.json").read_text())
    assert again["metrics"]["margin"] == results["metrics"]["margin"]


def test_olora_end_to_end_and_resume(fake_release, tmp_path, monkeypatch):
    seen = record_optimizer_params(monkeypatch)
    out = tmp_path / "out"
    results = run_cli(fake_release, out, tmp_path / "cache", SMALL + ["method.name=olora"])
    assert results["complete"] and results["method"] == {"name": "olora", "loss": "dpo", "plugins": ["olora"]}
    assert [s[:2] for s in seen] == [(t, st) for t in range(3) for st in ("sft", "pref")]
    names = ["default", "olora1", "olora2"]
    for task, _, params in seen:  # each stage's optimizer trains exactly the newest adapter
        assert len(params) == 8 and all(p.split(".")[-2] == names[task] for p in params)
    reports = [t["stages"]["pref"]["plugins"]["olora"] for t in results["training"]]
    assert [r["trained_adapter"] for r in reports] == names
    assert reports[0]["orth_penalty"] == 0.0 and reports[1]["orth_penalty"] > 0 and reports[2]["orth_penalty"] > 0

    # earlier adapters are bit-identical after later tasks; the newest one moved
    dirs = task_dirs(out)
    weights = [load_file(d / "lora.safetensors") for d in dirs]
    for i, w in enumerate(weights):
        assert {k.split(".")[-2] for k in w} == set(names[: i + 1])
    for later in (1, 2):
        for earlier in range(later):
            for key, value in weights[earlier].items():
                assert torch.equal(weights[later][key], value), key
    for i, w in enumerate(weights):  # each task's own adapter trained (B starts at zero)
        assert all(v.abs().sum() > 0 for k, v in w.items() if ".lora_B." in k and k.split(".")[-2] == names[i])
    # the saved PEFT folder holds every adapter
    assert (dirs[2] / "adapter" / "olora2" / "adapter_model.safetensors").exists()

    # resume after task 2: on_restore rebuilds the adapters, and the run ends where it ended before
    shutil.rmtree(dirs[2])
    again = run_cli(fake_release, out, tmp_path / "cache", SMALL + ["method.name=olora"])
    assert again["metrics"] == results["metrics"]
    resumed = load_file(task_dirs(out)[2] / "lora.safetensors")
    assert set(resumed) == set(weights[2]) and all(torch.equal(resumed[k], v) for k, v in weights[2].items())
    reevaluate_matches(out, results)


# ================================================================= L2P
def test_l2p_topk_selection_is_by_cosine():
    d = 4
    keys = torch.tensor([
        [100.0, -100.0, 0.0, 0.0],  # cos 0
        [1.0, 1.0, 0.0, 0.0],       # cos 1
        [1.0, 0.0, 0.0, 0.0],       # cos 0.707
        [0.0, 0.0, 1.0, 0.0],       # cos 0
        [1.0, 0.5, 0.0, 0.0],       # cos 0.949
        [50.0, 0.0, 50.0, 0.0],     # cos 0.5, but the largest dot product
    ])
    pool = PromptPool(torch.randn(6, 5, d), keys)
    query = torch.tensor([[1.0, 1.0, 0.0, 0.0], [0.0, 0.0, 2.0, 0.0]])
    idx, sim = pool.select(query, 3)
    assert idx[0].tolist() == [1, 4, 2]
    assert sim[0].tolist() == pytest.approx([1.0, 1.5 / math.sqrt(1.25 * 2), 1 / math.sqrt(2)], rel=1e-6)
    assert idx[1, :2].tolist() == [3, 5]  # cos 1, 0.707 (then a four-way tie at 0)
    # the surrogate loss trains the keys: its gradient reaches them
    (1 - sim).sum(-1).mean().backward()
    assert pool.keys.grad is not None and pool.keys.grad[1:3].abs().sum() > 0
    # the prompts of the selected keys are concatenated, most similar first
    emb = pool.prompt_embeddings(idx)
    assert emb.shape == (2, 15, d) and torch.equal(emb[0, :5], pool.prompts[1]) and torch.equal(emb[0, 5:10], pool.prompts[4])


def _l2p_setup():
    model, tokenizer = tiny_peft()
    records = make_records(tokenizer)
    plugin = L2P(pool_size=10, prompt_length=5, top_k=3, key_lambda=0.5, seed=0)
    loop = fake_loop(model, {"t": TaskData("t", records, [])})
    plugin.on_task_start(loop, "t")
    return model, tokenizer, records, plugin, loop


def test_l2p_reference_ignores_pool_policy_does_not():
    model, tokenizer, records, plugin, _ = _l2p_setup()
    ref_before = score_pairs(model, records, tokenizer.pad_token_id, use_adapter=False)
    pol_before = score_pairs(model, records, tokenizer.pad_token_id, use_adapter=True, share_prompt=False)
    with torch.no_grad():
        plugin.pool.prompts.add_(torch.randn_like(plugin.pool.prompts))
        plugin.pool.keys.add_(torch.randn_like(plugin.pool.keys))
    ref_after = score_pairs(model, records, tokenizer.pad_token_id, use_adapter=False)
    pol_after = score_pairs(model, records, tokenizer.pad_token_id, use_adapter=True, share_prompt=False)
    assert torch.equal(ref_before, ref_after)
    assert not torch.allclose(pol_before[:, :2], pol_after[:, :2])
    assert torch.equal(pol_before[:, 2:], pol_after[:, 2:])  # same response lengths
    # the reference is the plain base model (no prompts, no LoRA), and the policy is not it
    assert torch.equal(ref_after, score_pairs(fresh_base(), records, tokenizer.pad_token_id))
    assert not torch.allclose(pol_after[:, :2], ref_after[:, :2])
    with pytest.raises(ValueError, match="share_prompt=False"):  # the shared-prompt layout is refused, clearly
        score_pairs(model, records, tokenizer.pad_token_id, use_adapter=True)
    # the hooks also stay off under the LoRA layers' own switch
    model.base_model.disable_adapter_layers()
    assert not plugin.active()
    model.base_model.enable_adapter_layers()
    assert plugin.active()


def test_l2p_prompts_prepended_and_logits_unprompted_shape():
    model, tokenizer, records, plugin, _ = _l2p_setup()
    batch = collate_pairs(records, tokenizer.pad_token_id, share_prompt=False)
    seen = {}

    def grab(module, args, kwargs):
        seen["embeds"], seen["mask"] = kwargs["inputs_embeds"], kwargs["attention_mask"]

    handle = model.get_base_model().model.register_forward_pre_hook(grab, with_kwargs=True)
    model.eval()
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        base_logits = fresh_base()(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    handle.remove()
    b, t = batch["input_ids"].shape
    assert logits.shape == base_logits.shape == (b, t, 260)
    assert seen["embeds"].shape[:2] == (b, t + 15) and seen["mask"].shape == (b, t + 15)
    assert seen["mask"][:, :15].eq(1).all() and torch.equal(seen["mask"][:, 15:], batch["attention_mask"])
    # the query is the mean embedding of the PROMPT tokens: chosen and rejected rows select the same prompts
    emb = model.get_base_model().get_input_embeddings()
    query = plugin.query(emb(batch["input_ids"]), batch["input_ids"], batch["attention_mask"])
    for i, rec in enumerate(records):
        n = len(rec["ids"]["prompt"])
        expected = emb(torch.tensor(rec["ids"]["prompt"])).mean(0)
        assert torch.allclose(query[i], expected, atol=1e-6) and torch.allclose(query[i + len(records)], expected, atol=1e-6)
        assert n < batch["attention_mask"][i].sum()
    idx, _ = plugin.pool.select(query, 3)
    assert torch.equal(idx[: len(records)], idx[len(records):])
    assert torch.equal(seen["embeds"][:, :15], plugin.pool.prompt_embeddings(idx))
    assert plugin.fallbacks == 0


def test_l2p_generation_with_cache_matches_full_forward():
    from transformers import GenerationConfig

    model, tokenizer, records, plugin, _ = _l2p_setup()
    with torch.no_grad():
        plugin.pool.prompts.mul_(50)  # prompts that matter
    ids = torch.tensor([records[0]["ids"]["prompt"]])
    config = GenerationConfig(max_new_tokens=4, do_sample=False, pad_token_id=tokenizer.pad_token_id,
                              eos_token_id=None)
    model.eval()
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), generation_config=config,
                             return_dict_in_generate=True, output_logits=True)
        seq = ids
        for step in range(4):  # no cache: the whole sequence, prompted afresh, each step
            last = model(input_ids=seq, attention_mask=torch.ones_like(seq)).logits[:, -1]
            assert torch.allclose(out.logits[step], last, atol=1e-4)
            seq = torch.cat([seq, last.argmax(-1, keepdim=True)], 1)
    assert torch.equal(out.sequences, seq)
    # manual decoding with the cache the model returns (no attention mask, no positions given)
    cache_arg = "cache" if "cache" in inspect.signature(model.get_base_model().forward).parameters else "past_key_values"
    with torch.no_grad():
        first = model(input_ids=ids, use_cache=True)
        cache = first.cache if cache_arg == "cache" else first.past_key_values
        step = model(input_ids=seq[:, ids.shape[1]:ids.shape[1] + 1], use_cache=True, **{cache_arg: cache})
    assert torch.allclose(first.logits[:, -1], out.logits[0], atol=1e-4)
    assert torch.allclose(step.logits[:, -1], out.logits[1], atol=1e-4)
    # a left-padded batch (as lifealign.generation builds it) gives each row what it gets alone
    short = records[1]["ids"]["prompt"][:-7]
    pad = tokenizer.pad_token_id
    width = ids.shape[1]
    batch_ids = torch.tensor([[pad] * (width - len(short)) + short, ids[0].tolist()])
    batch_mask = torch.tensor([[0] * (width - len(short)) + [1] * len(short), [1] * width])
    with torch.no_grad():
        both = model.generate(input_ids=batch_ids, attention_mask=batch_mask, generation_config=config,
                              return_dict_in_generate=True, output_logits=True)
        alone = model.generate(input_ids=torch.tensor([short]), attention_mask=torch.ones(1, len(short), dtype=torch.long),
                               generation_config=config, return_dict_in_generate=True, output_logits=True)
    for step in range(4):
        assert torch.allclose(both.logits[step][0], alone.logits[step][0], atol=1e-4)
        assert torch.allclose(both.logits[step][1], out.logits[step][0], atol=1e-4)


def test_l2p_trains_only_the_pool_and_restores():
    model, tokenizer, records, plugin, loop = _l2p_setup()
    pool_names = ["base_model.model.l2p_pool.keys", "base_model.model.l2p_pool.prompts"]
    assert trainable(model) == pool_names
    score_pairs(model, records, tokenizer.pad_token_id, use_adapter=False)  # the runner's reference pass
    assert len(trainable(model)) == 2 + 8  # peft made the LoRA adapter trainable again ...
    plugin.on_stage_start(loop, SFT)
    assert trainable(model) == pool_names  # ... and the stage start freezes it
    lora_before = {n: p.detach().clone() for n, p in lora_parameters(model).items()}
    pool_before = {k: v.clone() for k, v in plugin.state_dict().items() if k != "usage"}
    batch = collate_pairs(records, tokenizer.pad_token_id, share_prompt=False)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=0.05)
    model.train()
    for _ in range(2):
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        loss = logits.float().logsumexp(-1).mean() + plugin.extra_loss(loop, SFT, model, batch, {})
        opt.zero_grad()
        loss.backward()
        opt.step()
    report = plugin.on_stage_end(loop, SFT)
    assert sum(report["prompt_usage"]) == 2 * 2 * len(records) * 3 and report["query_fallbacks"] == 0
    assert all(torch.equal(p, lora_before[n]) for n, p in lora_parameters(model).items())
    state = plugin.state_dict()
    assert not torch.equal(state["prompts"], pool_before["prompts"]) and not torch.equal(state["keys"], pool_before["keys"])
    assert plugin.state_nbytes() == (10 * 5 * 32 + 10 * 32) * 4
    # restart: a fresh model gets the same pool back and scores the same
    model2, _ = tiny_peft()
    plugin2 = L2P(seed=0)
    plugin2.load_state_dict(state)
    plugin2.on_restore(fake_loop(model2, loop.tasks))
    assert torch.equal(score_pairs(model, records, tokenizer.pad_token_id, share_prompt=False),
                       score_pairs(model2, records, tokenizer.pad_token_id, share_prompt=False))


def test_l2p_optimizer_trains_the_pool_at_the_l2p_learning_rate():
    """Strategy.make_optimizer gives AdamW with the prompts and keys in a group at method.l2p_lr; any
    other trainable parameter keeps the stage learning rate; a step moves the pool by that lr."""
    model, tokenizer, records, plugin, loop = _l2p_setup()
    assert plugin.lr == 0.03  # the default, method.l2p_lr
    pool = list(plugin.pool.parameters())
    other = torch.nn.Parameter(torch.zeros(3))
    opt = plugin.make_optimizer(loop, "sft", pool + [other], SimpleNamespace(lr=2e-4))
    assert type(opt) is torch.optim.AdamW
    assert [(g["lr"], [id(p) for p in g["params"]], g["weight_decay"]) for g in opt.param_groups] == [
        (0.03, [id(p) for p in pool], 0.0), (2e-4, [id(other)], 0.0)]
    # Adam's first step moves every coordinate with a nonzero gradient by lr (up to eps)
    before = plugin.pool.prompts.detach().clone()
    plugin.pool.prompts.grad = torch.ones_like(before)
    opt.step()
    assert torch.allclose(before - plugin.pool.prompts.detach(), torch.full_like(before, 0.03), rtol=1e-4)
    cfg = load_config(None, ["method.name=l2p", "method.l2p_lr=0.01"])
    assert build_strategy(cfg).plugin("l2p").lr == 0.01


def record_optimizer_lrs(monkeypatch):
    """Each stage optimizer's (class, group learning rates as built) from the runner."""
    seen = []
    original = ContinualLoop._optimizer

    def optimizer(self, stage, stage_cfg):
        opt = original(self, stage, stage_cfg)
        seen.append((type(opt).__name__, [g.get("initial_lr", g["lr"]) for g in opt.param_groups]))
        return opt

    monkeypatch.setattr(ContinualLoop, "_optimizer", optimizer)
    return seen


def test_l2p_end_to_end_and_resume(fake_release, tmp_path, monkeypatch):
    seen = record_optimizer_params(monkeypatch)
    lrs = record_optimizer_lrs(monkeypatch)
    out = tmp_path / "out"
    results = run_cli(fake_release, out, tmp_path / "cache", SMALL + ["method.name=l2p"])
    assert [s[:2] for s in seen] == [(t, st) for t in range(3) for st in ("sft", "pref")]
    assert all(params == ["base_model.model.l2p_pool.keys", "base_model.model.l2p_pool.prompts"]
               for _, _, params in seen)
    assert lrs == [("AdamW", [0.03])] * 6  # the pool trains at method.l2p_lr, not the stage lr
    assert results["complete"] and results["method"] == {"name": "l2p", "loss": "dpo", "plugins": ["l2p"]}
    assert results["metrics"]["reward_accuracy"]["base"] == [50.0, 50.0, 50.0]
    dirs = task_dirs(out)
    # LoRA never moved: every task's LoRA equals the run's initial adapter
    model, _ = tiny_peft(seed=0)
    initial = {n: p.detach() for n, p in lora_parameters(model).items()}
    for d in dirs:
        weights = load_file(d / "lora.safetensors")
        assert set(weights) == set(initial) and all(torch.equal(weights[k], v) for k, v in initial.items())
    # the pool did: it differs from its initialisation and between tasks
    states = [torch.load(d / "state.pt", weights_only=False)["strategy"]["l2p"] for d in dirs]
    emb = model.get_base_model().get_input_embeddings().weight
    init = PromptPool.initial(10, 5, emb.shape[1], emb.detach().float().std(), seed=0)
    previous = {"prompts": init.prompts.detach(), "keys": init.keys.detach()}
    for state in states:
        for key in ("prompts", "keys"):
            assert not torch.equal(state[key], previous[key]), key
        previous = state
    for task in results["training"]:
        for stage in ("sft", "pref"):
            report = task["stages"][stage]["plugins"]["l2p"]
            assert report["query_fallbacks"] == 0 and sum(report["prompt_usage"]) > 0
    # resume after task 2: the pool comes back from state.pt
    shutil.rmtree(dirs[2])
    again = run_cli(fake_release, out, tmp_path / "cache", SMALL + ["method.name=l2p"])
    assert again["metrics"] == results["metrics"]
    resumed = torch.load(task_dirs(out)[2] / "state.pt", weights_only=False)["strategy"]["l2p"]
    assert torch.equal(resumed["prompts"], states[2]["prompts"]) and torch.equal(resumed["keys"], states[2]["keys"])
    reevaluate_matches(out, results)


def test_methods_registered_with_knobs():
    cfg = load_config(None, ["method.name=olora", "method.olora_lambda_orth=0.3", "method.replay=true",
                             "method.loss=fpo"])
    strategy = build_strategy(cfg)
    assert strategy.describe() == {"name": "olora", "loss": "fpo", "plugins": ["replay", "olora"]}
    assert strategy.plugin("olora").lambda_orth == 0.3 and strategy.plugin("olora").lambda_l2 == 0.0
    cfg = load_config(None, ["method.name=l2p", "method.l2p_top_k=2"])
    strategy = build_strategy(cfg)
    assert strategy.describe() == {"name": "l2p", "loss": "dpo", "plugins": ["l2p"]}
    p = strategy.plugin("l2p")
    assert (p.pool_size, p.prompt_length, p.top_k, p.key_lambda) == (10, 5, 2, 0.5)

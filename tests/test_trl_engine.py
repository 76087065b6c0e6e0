"""`engine: trl`: the continual loop with TRL's DPOTrainer (FPOTrainer) as its preference stage."""
import types

import pytest
import torch

from lifealign.cli import main
from lifealign.config import ConfigError, load_config
from lifealign.integrations import trl_engine
from lifealign.losses import fpo_loss
from lifealign.lora import add_lora
from lifealign.models import build_tiny_model
from lifealign.pipeline import _comparable
from lifealign.strategies import build_strategy
from lifealign.training import collate_pairs, encode_records, make_preference_loss

from test_run import run_cli, tiny_overrides


def test_both_engines_give_the_same_per_pair_loss(tmp_path):
    """Same records, same reference: TRL's batch of our tokens scores like our shared-prompt batch."""
    model, tok = build_tiny_model(0)
    torch.manual_seed(0)
    model = add_lora(model)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.05)
    records = [{"prompt": f"Human: question {i} " + "x" * (3 * i) + "?\n\nAssistant:", "index": i,
                "chosen": "Assistant: " + "yes " * (i + 1), "rejected": "no, " * (2 * i + 1),
                "ref": (-30.0 - i, -32.0 + i)} for i in range(4)]
    encode_records(tok, records, 64, 40)
    cfg = load_config(None, [("out", str(tmp_path)), ("model.max_length", 64), ("method.gamma", 2.0)])
    loop = types.SimpleNamespace(cfg=cfg, out=tmp_path, precision="fp32", device="cpu", is_main=True, model=model,
                                 tokenizer=tok, strategy=build_strategy(cfg), loss_kwargs={"gamma": 2.0},
                                 _optimizer=lambda stage, stage_cfg: torch.optim.AdamW(
                                     [p for p in model.parameters() if p.requires_grad]))
    trainer = trl_engine.preference_trainer(loop, records, cfg.pref, seed=0)
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(4)])
    with torch.no_grad():
        theirs, _ = trainer.pair_losses(model, batch)
        _, outputs = make_preference_loss(fpo_loss, 0.1, gamma=2.0)(model, collate_pairs(records, tok.pad_token_id))
    torch.testing.assert_close(theirs, outputs["per_pair_loss"], rtol=1e-5, atol=1e-6)


def test_engine_trl_runs_the_loop(fake_release, tmp_path):
    results = run_cli(fake_release, tmp_path / "out", tmp_path / "cache", ["engine=trl"])
    assert results["complete"] and results["config"]["engine"] == "trl"
    pref = results["training"][0]["stages"]["pref"]
    assert pref["steps"] == 2 and pref["tokens"] > 0 and set(pref["train_means"]) == {"loss", "margin",
                                                                                      "reward_accuracy"}
    assert pref["plugins"]["slmc"]["matrices"] > 0  # SLMC consolidated after TRL's stage
    assert results["training"][1]["stages"]["pref"]["examples"] == 9  # replay: 8 + 1
    assert results["metrics"]["margin"]["matrix"][0][0] > 0


def test_engine_trl_refuses_step_hook_methods_before_training(fake_release, tmp_path, capsys):
    assert main(["run", "/dev/null", *tiny_overrides(fake_release, tmp_path / "out", tmp_path / "cache",
                                                     ["engine=trl", "method.name=ewc"])]) == 2
    err = capsys.readouterr().err
    assert "engine: trl cannot run method 'ewc'" in err and "use engine: ours" in err
    assert not (tmp_path / "out" / "tasks").exists()


def test_engine_key():
    assert load_config(None, [("engine", "trl")]).engine == "trl"
    with pytest.raises(ConfigError, match=r"engine = 'deepspeed' is not allowed; allowed values: \['ours', 'trl'\]"):
        load_config(None, [("engine", "deepspeed")])
    # runs committed before the key existed stay comparable at its default
    old = load_config(None).to_dict()
    del old["engine"]
    assert _comparable(old) == _comparable(load_config(None).to_dict())
    assert _comparable(old) != _comparable(load_config(None, [("engine", "trl")]).to_dict())

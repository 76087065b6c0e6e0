import pytest

from lifealign.config import ConfigError, load_config
from lifealign.strategies import build_strategy


def test_defaults_are_the_documented_cpu_scale():
    cfg = load_config()
    assert cfg.model.lora_r == 8 and cfg.model.lora_alpha == 16
    assert cfg.model.lora_targets == ["q_proj", "v_proj"]
    assert cfg.method.slmc_threshold == 0.9 and cfg.method.slmc_lambda == 0.5 and cfg.method.gamma == 2.0


def test_yaml_and_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("pref:\n  lr: 1e-5\nmethod:\n  name: er\n")
    cfg = load_config(path, ["pref.batch_size=4", "data.order=[safe-rlhf, hc3]", "method.loss=fpo"])
    assert cfg.pref.lr == 1e-5 and cfg.pref.batch_size == 4
    assert cfg.data.order == ["safe-rlhf", "hc3"]
    assert build_strategy(cfg).describe() == {"name": "er", "loss": "fpo", "plugins": ["replay"]}


@pytest.mark.parametrize("override,message", [
    ("pref.lrr=1", "unknown key pref.lrr; allowed keys: epochs, lr"),
    ("model.precision=fp16", "model.precision = 'fp16' is not allowed; allowed values: ['auto', 'bf16', 'fp32']"),
    ("data.n_train=many", "data.n_train = 'many'"),
    ("method.replay=3", "method.replay = 3"),
    ("nonsense", "--set expects key=value"),
    ("method.ewc_scope=epoch", "method.ewc_scope = 'epoch' is not allowed; allowed values: ['task', 'stage']"),
    ("method.projection_optimizer=adam", "method.projection_optimizer = 'adam' is not allowed"),
    ("method.l2p_lr=-1", "method.l2p_lr = -1.0: must be positive"),
    ("method.sgd_lr=0", "method.sgd_lr = 0.0: must be positive"),
])
def test_errors_name_the_key_and_allowed_values(override, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]").replace("(", r"\(")):
        load_config(None, [override])


def test_unknown_method_lists_the_registry():
    with pytest.raises(ConfigError, match="allowed values: .*lifealign.*seqft"):
        build_strategy(load_config(None, ["method.name=magic"]))


def test_replay_switch_removes_and_adds():
    assert build_strategy(load_config(None, ["method.replay=false"])).describe()["plugins"] == ["slmc"]
    assert build_strategy(load_config(None, ["method.name=seqft", "method.replay=true"])).describe()["plugins"] == ["replay"]

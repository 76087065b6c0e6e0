import pytest

from lifealign.config import ConfigError, config_from_dict, load_config
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


def test_method_keys_are_the_shared_ones_and_each_plugins_own():
    from lifealign.config import MethodConfig, MethodOptions
    from lifealign.strategies.base import PLUGINS
    from lifealign.strategies.ewc import EWCPlugin
    from lifealign.strategies.replay import Replay

    own = {key for plugin in PLUGINS if plugin.options for key in plugin.options.model_fields}
    assert set(MethodConfig.model_fields) == set(MethodOptions.model_fields) | own
    assert {"ewc_lambda", "slmc_threshold", "replay_cap", "l2p_lr", "cppo_k", "olora_lambda_orth"} <= own
    method = load_config().method  # one default per key, read by the config and the plugin alike
    assert (EWCPlugin().lam, Replay().cap) == (method.ewc_lambda, method.replay_cap) == (1e4, 3000)


def test_values_read_as_yaml_writes_them_and_nothing_else():
    cfg = load_config(None, ["pref.epochs=2", "sft.lr=1e-4", "method.slmc_stages=[pref]", "data.n_test=null"])
    assert cfg.pref.epochs == 2.0 and isinstance(cfg.pref.epochs, float) and cfg.sft.lr == 1e-4
    assert cfg.method.slmc_stages == ["pref"] and cfg.data.n_test is None
    assert config_from_dict(cfg.to_dict()).to_dict() == cfg.to_dict()
    for override, message in [("seed=true", "seed = True: expected int"), ("data.n_train='5'", "data.n_train = '5'"),
                              ("method.replay=1", "method.replay = 1"), ("pref=3", "pref: expected a mapping, got 3"),
                              ("method.slmc_stages=[rl]", "method.slmc_stages = 'rl' is not allowed")]:
        with pytest.raises(ConfigError, match=message.replace("[", r"\[")):
            load_config(None, [override])


def test_every_error_names_its_key_once_after_the_file(tmp_path):
    from lifealign.config import MethodConfig

    path = tmp_path / "c.yaml"
    path.write_text("sft: {batch_size: 0}\ndata: {order: 3}\nmethod: {ewc_scope: epoch, replay_fractoin: 0.1}\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    text = str(err.value)
    assert text.startswith(f"{path}: ")
    assert sorted(text.removeprefix(f"{path}: ").splitlines()) == sorted([
        "sft.batch_size = 0: must be greater than or equal to 1",
        "data.order = 3: expected str | list[str]",  # once, though both alternatives of the union failed
        "method.ewc_scope = 'epoch' is not allowed; allowed values: ['task', 'stage']",
        f"unknown key method.replay_fractoin; allowed keys: {', '.join(MethodConfig.model_fields)}",
    ])

"""Run configuration: nested dataclasses read from YAML, overridable with `--set key=value`.

Every key has a default; an unknown key or a value outside its allowed set is an error that names
the key and what is allowed.
"""
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import yaml


class ConfigError(ValueError):
    pass


@dataclass
class DataConfig:
    dir: str | None = None            # None: $LIFEALIGN_DATA_DIR, else ../shared/data/lifealign-release
    order: str | list = "order1"      # an order name (order1, order2, order3), or a list of task names
    n_train: int | None = 64          # pairs per task (None: all)
    n_test: int | None = 64
    on_invalid: str = "filter"        # empty or identical responses: "filter" (counted) or "error"


@dataclass
class ModelConfig:
    name: str = "smollm2-135m-instruct"   # also "tiny-random-llama", a local directory or a Hub id
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.0
    lora_targets: list = field(default_factory=lambda: ["q_proj", "v_proj"])
    precision: str = "auto"               # auto (bf16 where the hardware has it), bf16, fp32
    max_length: int = 256                 # prompt + response tokens
    max_prompt_length: int = 128          # prompts keep their end (the latest request)


@dataclass
class StageConfig:
    epochs: float = 1.0
    lr: float = 2e-4
    batch_size: int = 8                   # pairs (preference) or examples (SFT) per device step
    grad_accum: int = 1
    scheduler: str = "cosine"
    warmup_ratio: float = 0.1
    max_grad_norm: float = 1.0


@dataclass
class MethodConfig:
    name: str = "lifealign"               # see lifealign.strategies.METHODS
    loss: str | None = None               # dpo | fpo; None: the method's own
    replay: bool | None = None            # None: the method's own
    beta: float = 0.1
    gamma: float = 2.0
    slmc_threshold: float = 0.9
    slmc_lambda: float = 0.5
    slmc_stages: list = field(default_factory=lambda: ["sft", "pref"])
    replay_fraction: float = 0.2
    replay_cap: int = 3000
    sft: bool = True                      # run the SFT stage before the preference stage
    # EWC (strategies/ewc.py): penalty weight, online decay of the accumulated Fisher, examples per Fisher,
    # consolidation scope: "task" (one anchor per task, the Fisher of both stages; EWC's definition) or
    # "stage" (an anchor after every stage, as the authors' code does)
    ewc_lambda: float = 1e4
    ewc_gamma: float = 1.0
    ewc_fisher_samples: int = 64
    ewc_scope: str = "task"
    # GEM / A-GEM (strategies/gem.py): memory per task and stage, GEM QP margin, A-GEM reference sample,
    # the optimizer that applies the projected gradient ("sgd", as both papers, or the run's "adamw")
    # and the SGD learning rate (both stages; measured in docs/baselines.md)
    gem_memory_size: int = 16
    gem_margin: float = 0.5
    agem_sample_size: int = 16
    projection_optimizer: str = "sgd"
    sgd_lr: float = 0.1
    # CPPO (strategies/cppo.py): category threshold k (batch mean +- k*std), retention coefficient,
    # the lower / upper per-sample weights (alpha, beta in {lb, 1, ub})
    cppo_k: float = 1.0
    cppo_retention: float = 0.1
    cppo_lb: float = 0.5
    cppo_ub: float = 2.0
    # O-LoRA (strategies/olora.py): weight of sum |A_s A_t^T| and of ||new adapter||^2
    olora_lambda_orth: float = 0.1
    olora_lambda_l2: float = 0.0
    # L2P (strategies/l2p.py): prompt pool size, tokens per prompt, prompts selected, key-loss weight
    l2p_pool_size: int = 10
    l2p_prompt_length: int = 5
    l2p_top_k: int = 3
    l2p_key_lambda: float = 0.5
    l2p_lr: float = 0.03                  # prompts and keys (L2P paper and configs: Adam, lr 0.03)


@dataclass
class EvalConfig:
    batch_size: int = 16                  # pairs per forward pass
    generation: bool = False              # BLEU-4 / ROUGE-L of generated responses (and the judge's input)
    gen_prompts: int | None = 32          # test prompts per task that are generated for (None: all)
    max_new_tokens: int = 128
    gen_batch_size: int = 8
    sampling: bool = False                # False: greedy; True: the paper's temperature / top-p sampling
    temperature: float = 0.95
    top_p: float = 0.7
    judge: bool = False                   # score generations with an LLM judge (needs generation)
    judge_base_url: str | None = None     # None: $LIFEALIGN_JUDGE_BASE_URL
    judge_model: str | None = None        # None: $LIFEALIGN_JUDGE_MODEL
    judge_api_key_env: str = "LIFEALIGN_JUDGE_API_KEY"  # the key itself never enters the config


@dataclass
class Config:
    name: str = "lifealign"
    out: str = "runs/lifealign"
    seed: int = 0
    cache_dir: str | None = None          # None: $LIFEALIGN_CACHE or ~/.cache/lifealign
    progress: bool = True
    group_by_length: bool = True          # length-grouped training batches (less padding)
    engine: str = "ours"                  # preference-stage trainer: ours, or trl (TRL's DPOTrainer, as FPOTrainer)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    sft: StageConfig = field(default_factory=lambda: StageConfig(epochs=1.0, lr=2e-4))
    pref: StageConfig = field(default_factory=lambda: StageConfig(epochs=2.0, lr=2e-4))
    method: MethodConfig = field(default_factory=MethodConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def to_dict(self):
        return dataclasses.asdict(self)


CHOICES = {
    "engine": ["ours", "trl"],
    "data.on_invalid": ["filter", "error"],
    "model.precision": ["auto", "bf16", "fp32"],
    "method.loss": [None, "dpo", "fpo"],
    "method.ewc_scope": ["task", "stage"],
    "method.projection_optimizer": ["sgd", "adamw"],
    "sft.scheduler": ["cosine", "linear", "constant", "constant_with_warmup"],
    "pref.scheduler": ["cosine", "linear", "constant", "constant_with_warmup"],
}

POSITIVE = {"method.sgd_lr", "method.l2p_lr"}  # learning rates: a zero or negative one is a mistake


def _build(cls, values, prefix):
    if not isinstance(values, dict):
        raise ConfigError(f"{prefix or 'config'}: expected a mapping, got {values!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ConfigError(f"unknown key {prefix}{unknown[0]}; allowed keys: {', '.join(fields)}")
    obj = cls()
    for name, value in values.items():
        key = f"{prefix}{name}"
        default = getattr(obj, name)
        if dataclasses.is_dataclass(default):
            value = _build(type(default), value, key + ".")
        else:
            value = _check_type(key, value, default, fields[name].type)
            if key in CHOICES and value not in CHOICES[key]:
                raise ConfigError(f"{key} = {value!r} is not allowed; allowed values: {CHOICES[key]}")
            if key in POSITIVE and not value > 0:
                raise ConfigError(f"{key} = {value!r}: must be positive")
        setattr(obj, name, value)
    return obj


def _check_type(key, value, default, annotation):
    text = str(annotation)
    if value is None:
        if "None" in text:
            return None
        raise ConfigError(f"{key} may not be null")
    if isinstance(value, bool) and "bool" not in text:
        raise ConfigError(f"{key} = {value!r}: expected {text}")
    if "float" in text and isinstance(value, str):
        try:  # YAML 1.1 reads 1e-4 (no dot) as a string
            return float(value)
        except ValueError:
            pass
    if "float" in text and isinstance(value, (int, float)):
        return float(value) if not ("int" in text and isinstance(value, int)) else value
    if "int" in text and isinstance(value, int):
        return value
    if "bool" in text and isinstance(value, bool):
        return value
    if "str" in text and isinstance(value, str):
        return value
    if ("list" in text) and isinstance(value, list):
        return value
    raise ConfigError(f"{key} = {value!r}: expected {text}")


def parse_override(text):
    """'a.b=value' -> ('a.b', parsed YAML value)."""
    if "=" not in text:
        raise ConfigError(f"--set expects key=value, got {text!r}")
    key, raw = text.split("=", 1)
    return key.strip(), yaml.safe_load(raw)


def set_path(tree, key, value):
    """Set tree['a']['b'] = value for key 'a.b', creating sections as needed."""
    parts = key.split(".")
    node = tree
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"--set {key}: {part} is not a section")
    node[parts[-1]] = value


def load_config(path=None, overrides=()):
    """Read a YAML config (or none: defaults) and apply `key=value` overrides."""
    values = {}
    if path is not None:
        path = Path(path)
        if not path.exists():
            raise ConfigError(f"config file {path} does not exist")
        values = yaml.safe_load(path.read_text()) or {}
        if not isinstance(values, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of keys")
    for item in overrides:
        key, value = parse_override(item) if isinstance(item, str) else item
        set_path(values, key, value)
    try:
        return _build(Config, values, "")
    except ConfigError as err:
        raise ConfigError(f"{path or 'config'}: {err}") from None


def config_from_dict(values):
    return _build(Config, values, "")

"""Run configuration: pydantic models read from YAML, overridable with `--set key=value`. Every key has
a default; a wrong key or value is an error naming the dotted key (and the file) and what is allowed."""
from pathlib import Path
from typing import Literal, get_args, get_origin

import yaml
from pydantic import BaseModel, Field, ValidationError, create_model

from .options import Float, Options, yaml_number
from .strategies import METHODS  # importing the package registers every method and plugin
from .strategies.base import PLUGINS


class ConfigError(ValueError):
    pass


class DataConfig(Options):
    dir: str | None = None            # None: $LIFEALIGN_DATA_DIR, else ../shared/data/lifealign-release
    order: str | list[str] = "order1"  # an order name (order1, order2, order3), or a list of task names
    n_train: int | None = Field(64, ge=1)  # pairs per task (None: all)
    n_test: int | None = Field(64, ge=1)
    on_invalid: Literal["filter", "error"] = "filter"  # empty or identical responses: filtered (counted) or an error


class ModelConfig(Options):
    name: str = "smollm2-135m-instruct"   # also "tiny-random-llama", a local directory or a Hub id
    lora_r: int = Field(8, ge=1)
    lora_alpha: int = 16
    lora_dropout: Float = Field(0.0, ge=0, lt=1)
    lora_targets: list[str] = ["q_proj", "v_proj"]
    precision: Literal["auto", "bf16", "fp32"] = "auto"  # auto: bf16 where the hardware has it
    max_length: int = Field(256, ge=1)                   # prompt + response tokens
    max_prompt_length: int = Field(128, ge=1)            # prompts keep their end (the latest request)


class StageConfig(Options):
    epochs: Float = Field(1.0, gt=0)
    lr: Float = Field(2e-4, gt=0)
    batch_size: int = Field(8, ge=1)      # pairs (preference) or examples (SFT) per device step
    grad_accum: int = Field(1, ge=1)
    scheduler: Literal["cosine", "linear", "constant", "constant_with_warmup"] = "cosine"
    warmup_ratio: Float = Field(0.1, ge=0, le=1)
    max_grad_norm: Float = Field(1.0, ge=0)


class MethodOptions(Options):  # the `method` keys every method shares; each plugin adds its own options
    name: Literal[tuple(sorted(METHODS))] = "lifealign"
    loss: Literal[None, "dpo", "fpo"] = None  # None: the method's own
    replay: bool | None = None                # None: the method's own
    beta: Float = Field(0.1, gt=0)            # DPO / FPO: the scale of the implicit reward
    gamma: Float = Field(2.0, ge=0)           # FPO: the focal exponent (0 is DPO)
    sft: bool = True                          # run the SFT stage before the preference stage


class EvalConfig(Options):
    batch_size: int = Field(16, ge=1)     # pairs per forward pass
    generation: bool = False              # BLEU-4 / ROUGE-L of generated responses (and the judge's input)
    gen_prompts: int | None = Field(32, ge=1)  # test prompts per task that are generated for (None: all)
    max_new_tokens: int = Field(128, ge=1)
    gen_batch_size: int = Field(8, ge=1)
    sampling: bool = False                # False: greedy; True: the paper's temperature / top-p sampling
    temperature: Float = Field(0.95, gt=0)
    top_p: Float = Field(0.7, gt=0, le=1)
    judge: bool = False                   # score generations with an LLM judge (needs generation)
    judge_base_url: str | None = None     # None: $LIFEALIGN_JUDGE_BASE_URL
    judge_model: str | None = None        # None: $LIFEALIGN_JUDGE_MODEL
    judge_api_key_env: str = "LIFEALIGN_JUDGE_API_KEY"  # the key itself never enters the config


# The `method` section: MethodOptions and every plugin's options (Plugin.options), each key declared once.
_PLUGIN_OPTIONS = list(dict.fromkeys(p.options for p in PLUGINS if p.options is not None))
MethodConfig = create_model("MethodConfig", __base__=(*reversed(_PLUGIN_OPTIONS), MethodOptions), __module__=__name__)
if len(MethodConfig.model_fields) < sum(len(m.model_fields) for m in (MethodOptions, *_PLUGIN_OPTIONS)):
    raise TypeError("a key of the `method` section is declared by two option models")


class Config(Options):
    name: str = "lifealign"
    out: str = "runs/lifealign"
    seed: int = 0
    cache_dir: str | None = None          # None: $LIFEALIGN_CACHE or ~/.cache/lifealign
    progress: bool = True
    group_by_length: bool = True          # length-grouped training batches (less padding)
    engine: Literal["ours", "trl"] = "ours"  # preference-stage trainer: ours, or TRL's DPOTrainer (as FPOTrainer)
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    # A section given in the YAML starts from StageConfig's defaults (epochs 1), also for `pref`.
    sft: StageConfig = Field(default_factory=StageConfig)
    pref: StageConfig = Field(default_factory=lambda: StageConfig(epochs=2.0))
    method: MethodConfig = Field(default_factory=MethodConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)

    def to_dict(self):
        return self.model_dump()


def _locate(loc):
    """An error location's dotted key, its field and the model the location ends in."""
    model, names, field = Config, [], None
    for part in loc:
        if not (isinstance(model, type) and issubclass(model, BaseModel) and part in model.model_fields):
            break
        field, model = model.model_fields[part], model.model_fields[part].annotation
        names.append(part)
    return ".".join(names), field, model


def _choices(annotation):
    """The values of a Literal annotation, or of the Literal items of a list[...]."""
    return list(get_args(annotation)) if get_origin(annotation) is Literal else _choices(get_args(annotation)[0])


def _message(error):
    """(dotted key, message) of one pydantic error."""
    (key, field, model), kind, value = _locate(error["loc"]), error["type"], error["input"]
    if kind == "extra_forbidden":
        key = ".".join(map(str, error["loc"]))
        return key, f"unknown key {key}; allowed keys: {', '.join(model.model_fields)}"
    if kind == "model_type":
        return key, f"{key or 'config'}: expected a mapping, got {value!r}"
    if kind == "literal_error":
        return key, f"{key} = {value!r} is not allowed; allowed values: {_choices(field.annotation)}"
    if {"gt", "ge", "lt", "le"} & set(error.get("ctx", {})):  # a range: float keys show the value as read
        bound = "positive" if error["ctx"] == {"gt": 0} else error["msg"].removeprefix("Input should be ")
        return key, f"{key} = {yaml_number(value) if field.annotation is float else value!r}: must be {bound}"
    return key, f"{key} = {value!r}: expected {getattr(field.annotation, '__name__', field.annotation)}"


def parse_override(text):
    """'a.b=value' -> ('a.b', parsed YAML value)."""
    if "=" not in text:
        raise ConfigError(f"--set expects key=value, got {text!r}")
    key, raw = text.split("=", 1)
    return key.strip(), yaml.safe_load(raw)


def set_path(tree, key, value):
    """Set tree['a']['b'] = value for key 'a.b', creating sections as needed."""
    *sections, last = key.split(".")
    for part in sections:
        tree = tree.setdefault(part, {})
        if not isinstance(tree, dict):
            raise ConfigError(f"--set {key}: {part} is not a section")
    tree[last] = value


def load_config(path=None, overrides=()):
    """Read a YAML config (or none: defaults) and apply overrides: `key=value` strings or (key, value)."""
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
    return config_from_dict(values, source=path or "config")


def config_from_dict(values, source=None):
    """A Config from nested mappings; each error names its dotted key, after `source: ` when given."""
    try:
        return Config.model_validate(values)
    except ValidationError as err:
        messages = {}
        for error in err.errors():
            messages.setdefault(*_message(error))  # a union's alternatives: one message per key
        raise ConfigError((f"{source}: " if source else "") + "\n".join(messages.values())) from None

"""Continual-learning strategies as hooks around one training loop (Avalanche style).

The loop (`lifealign.runner`) calls, for each task of the order, through `Strategy.dispatch`
(every plugin in turn) or the Strategy method that combines the plugins' results:

    on_task_start(loop, task)
    for kind in ("sft", "pref"):
        records = training_records(loop, kind, task, records)
        stage = Stage(kind, task, task_index, records, loss, collate)
        on_stage_start(loop, stage)
        ...training, where each step's loss gets `extra_loss(loop, stage, model, batch, outputs)`
           added and `before_optimizer_step(loop, stage, model)` runs between backward and the
           optimizer step...
        report = on_stage_end(loop, stage)
    on_task_end(loop, task)

and `on_restore(loop)` after a restart has loaded the plugins' state.

The optimizer of each stage kind is built once per run (its state carries over between tasks) by
`make_optimizer(loop, kind, params, stage_cfg)`: the first plugin that returns one decides, else the
runner's AdamW at the stage's learning rate. It is built again when the trainable parameters change,
and on a restart, outside any stage.

Hooks see the loop (`lifealign.runner.ContinualLoop`) with what holds for the whole run: `loop.model`
(the PEFT model), `loop.cfg`, `loop.tasks`, `loop.pad_id`, `loop.autocast()`, ..., and the task under
way, `loop.task` and `loop.task_index`. The stage hooks also get the `Stage`: its kind, task and
training records and the loss and collate function it trains with.

A method is a `Strategy`: a preference loss and a list of plugins that implement some of these
hooks. A new method is a new file that registers a builder in `METHODS`. A plugin's settings are
its `options`: keys of the config's `method` section, declared once with their defaults.
"""
from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True)
class Stage:
    """One training stage of one task, as the stage hooks see it."""

    name: str            # the stage kind: "sft" or "pref"
    task: str            # the task's name ("joint" for a joint method)
    task_index: int      # the task's position in the order, from 0
    records: list        # the stage's training records (from `training_records`: replayed rows too)
    loss: Callable       # (model, batch) -> (loss, outputs): the stage's training loss
    collate: Callable    # (records) -> batch, as the stage's trainer batches them


def records_nbytes(records):
    """Bytes a list of stored records holds: their text, token ids (as int64) and cached scores."""
    total = 0
    for rec in records:
        total += sum(len(rec[k].encode()) for k in ("prompt", "chosen", "rejected") if k in rec)
        total += 8 * sum(len(v) for v in rec.get("ids", {}).values())
        total += 8 * len(rec.get("ref", ()))
    return total


PLUGINS = []  # every Plugin subclass in definition order: lifealign.config reads their options


class Plugin:
    """A piece of a continual-learning method. Every hook is optional."""

    name = "plugin"
    # The plugin's keys of the config's `method` section (a lifealign.options.Options model, or None):
    # their types, allowed values and defaults, which the plugin's constructor defaults also read.
    options = None
    # A plugin that rewrites the model's inputs (L2P prepends prompts) needs one plain sequence per
    # response; the others let a pair's two sequences share one row with the prompt computed once.
    rewrites_inputs = False
    # The attributes `state_dict` saves after every task and `load_state_dict` puts back on a restart.
    state_keys = ()

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        PLUGINS.append(cls)

    def on_task_start(self, loop, task):
        pass

    def training_records(self, loop, kind, task, records):
        return records

    def on_stage_start(self, loop, stage):
        pass

    def extra_loss(self, loop, stage, model, batch, outputs):
        return None

    def before_optimizer_step(self, loop, stage, model):
        pass

    def make_optimizer(self, loop, kind, params, stage_cfg):
        """The optimizer for `params` (the trainable parameters) in stage kind `kind`, or None for
        the runner's default."""
        return None

    def on_stage_end(self, loop, stage):
        return None

    def on_task_end(self, loop, task):
        pass

    def state_dict(self):
        return {key: getattr(self, key) for key in self.state_keys}

    def load_state_dict(self, state):
        if state:
            for key in self.state_keys:
                setattr(self, key, state[key])

    def on_restore(self, loop):
        """After load_state_dict on a restart, before the LoRA weights are loaded."""
        pass

    def state_nbytes(self):
        return 0


class Strategy:
    """A named method: the preference loss ("dpo" or "fpo") and the plugins whose hooks it runs."""

    def __init__(self, name, loss, plugins=()):
        self.name = name
        self.loss = loss
        self.plugins = list(plugins)

    @property
    def share_prompt(self):
        """Whether preference batches may use the shared-prompt layout (training.collate_pairs)."""
        return not any(p.rewrites_inputs for p in self.plugins)

    def plugin(self, name):
        return next((p for p in self.plugins if p.name == name), None)

    def dispatch(self, hook, *args):
        """Call `hook(*args)` on every plugin in order; {plugin name: what it returned}. The hooks
        whose results combine have their own method below."""
        return {p.name: getattr(p, hook)(*args) for p in self.plugins}

    def training_records(self, loop, kind, task, records):
        """Each plugin's records from the previous one's (replay adds its memory)."""
        for p in self.plugins:
            records = p.training_records(loop, kind, task, records)
        return records

    def extra_loss(self, loop, stage, model, batch, outputs):
        """The sum of the plugins' loss terms, or None when none adds one."""
        terms = [t for t in self.dispatch("extra_loss", loop, stage, model, batch, outputs).values() if t is not None]
        return sum(terms[1:], terms[0]) if terms else None

    def make_optimizer(self, loop, kind, params, stage_cfg):
        """The first plugin's optimizer, or None for the loop's AdamW."""
        optimizers = (p.make_optimizer(loop, kind, params, stage_cfg) for p in self.plugins)
        return next((o for o in optimizers if o is not None), None)

    def on_stage_end(self, loop, stage):
        """{plugin name: report} of the plugins that report on the stage."""
        return {name: r for name, r in self.dispatch("on_stage_end", loop, stage).items() if r is not None}

    def state_dict(self):
        return {p.name: p.state_dict() for p in self.plugins}

    def load_state_dict(self, state):
        for p in self.plugins:
            p.load_state_dict(state.get(p.name, {}))

    def state_nbytes(self):
        return self.dispatch("state_nbytes")

    def describe(self):
        return {"name": self.name, "loss": self.loss, "plugins": [p.name for p in self.plugins]}

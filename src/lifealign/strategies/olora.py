"""O-LoRA baseline: one new LoRA adapter per task, kept orthogonal to the earlier ones.

Method. Wang et al. 2023, "Orthogonal Subspace Learning for Language Model Continual Learning"
(Findings of EMNLP 2023). Task t trains a fresh LoRA adapter (A_t, B_t) while the adapters of tasks
1..t-1 stay frozen but active: the policy's weight is W0 + sum_s B_s A_s over every adapter, in
training and at inference (no task id needed). Each training step's loss gets

    L_total = L_stage + lambda_orth * sum_layers sum_{s<t} sum_{j,k} |(A_s A_t^T)[j,k]|
                      + lambda_l2 * sum_{P in {A_t, B_t} of every layer} ||P||_F^2

with A of shape (r, d_in) (PEFT's layout; the paper writes A^T, the product is the same r x r matrix
of inner products between the rows that span the adapters' input subspaces). The penalty is zero
exactly when every row of A_t is orthogonal to every row of every earlier A_s.

Our choices.
- Adapters: the first task trains the run's "default" adapter; task k >= 2 adds "olora<k-1>" with the
  run's LoRA config (cfg.model: rank, alpha, dropout, targets), initialised as PEFT initialises LoRA
  (A Kaiming-uniform, B = 0: a new adapter starts as a no-op). `base_model.set_adapter([...])` makes
  every adapter active and also trainable, so the earlier ones are frozen right after it, and again
  at every stage start (leaving `model.disable_adapter()` makes all active adapters trainable once
  more). Task t trains exactly A_t and B_t of every targeted layer; the runner rebuilds its optimizer
  for them (fresh AdamW state per task, since the parameters are new).
- lambda_orth = 0.1 (`method.olora_lambda_orth`), the LifeAlign paper's O-LoRA config. L_orth sums
  the ABSOLUTE values of the entries of A_s A_t^T, as the O-LoRA training code does, in fp32
  (autocast off, so bf16 runs do not round it).
- lambda_l2 = 0 by default (`method.olora_lambda_l2`): the O-LoRA paper's objective, as we read it,
  has only the orthogonality term. When set, the term is the squared L2 norm of the new adapter (a
  plain weight decay on it).
- Both terms are added to every training loss, in both stages of a task (SFT and preference), as
  O-LoRA regularises its whole training objective.
- Reference model: the frozen base model with EVERY adapter disabled. The runner computes reference
  log-probs under `model.disable_adapter()`, which switches off all LoRA layers (every adapter, not
  only the newest); the tests check this against the plain base model.
- No replay by default (`method.replay=true` adds it); DPO unless `method.loss` says otherwise.

State (state.pt after each task): the ordered adapter names. On a restart, `on_restore` re-creates
the adapters of the finished tasks (same names, same order, newest trainable as when saved) before
the runner loads every LoRA matrix by its exact name. `state_nbytes` reports the frozen earlier
adapters (the memory O-LoRA adds over a single LoRA), in their stored dtype.

Differences from the authors' released version (github.com/cmnlp/O-LoRA): it keeps ONE PEFT adapter
whose `lora_A`/`lora_B` grow by concatenation after each task ("lora" = all earlier tasks, rank
r*(t-1), plus "loranew" for the current task), the same function as a sum of separate adapters; we
keep separate named adapters. Its scripts set lamda_1 = 0.5; we use lambda_orth = 0.1 (LifeAlign's
setting). Its code adds lambda_2 * (sum of the un-squared Frobenius norms of the new adapter's
matrices), with lambda_2 = 0 in every published script; ours is the squared L2 norm, also off by
default. Its instruction-tuning setup (T5 / LLaMA on classification tasks with a task-instruction
prompt) is replaced by this project's SFT -> DPO/FPO pipeline.
"""
import torch
from pydantic import Field

from ..lora import adapter_parameters, keep_fp32, lora_config, lora_layers, tensor_nbytes
from ..options import Float, Options
from . import register
from .base import Plugin, Strategy

FIRST_ADAPTER = "default"


def adapter_name(index):
    """The adapter of task `index` (0-based): the run's "default" adapter first, then olora1, ..."""
    return FIRST_ADAPTER if index == 0 else f"olora{index}"


def orthogonality_penalty(pairs):
    """sum over (A_s, A_t) pairs of sum_{j,k} |A_s A_t^T|[j,k]; A's of shape (r, d_in)."""
    total = None
    for a_s, a_t in pairs:
        with torch.autocast(device_type=a_t.device.type, enabled=False):
            term = (a_s.float() @ a_t.float().T).abs().sum()
        total = term if total is None else total + term
    return total


def adapter_pairs(model, adapters):
    """(A_s, A_t) for every LoRA layer and every earlier adapter s, t = the newest adapter."""
    newest, earlier = adapters[-1], adapters[:-1]
    pairs = []
    for layer in lora_layers(model):
        if newest not in layer.lora_A:
            continue
        a_t = layer.lora_A[newest].weight
        pairs.extend((layer.lora_A[s].weight, a_t) for s in earlier if s in layer.lora_A)
    return pairs


class OLoRAOptions(Options):  # described above
    olora_lambda_orth: Float = Field(0.1, ge=0)  # weight of sum |A_s A_t^T|
    olora_lambda_l2: Float = Field(0.0, ge=0)    # weight of ||new adapter||^2


DEFAULTS = OLoRAOptions()


class OLoRA(Plugin):
    name = "olora"
    options = OLoRAOptions

    def __init__(self, lambda_orth=DEFAULTS.olora_lambda_orth, lambda_l2=DEFAULTS.olora_lambda_l2):
        self.lambda_orth = lambda_orth
        self.lambda_l2 = lambda_l2
        self.adapters = []  # adapter names in task order; the last one is trained
        self._model = None  # the model of the last finished or restored task, for state_nbytes

    def _add_adapter(self, loop, name):
        model, m = loop.model, loop.cfg.model
        if name != FIRST_ADAPTER and name not in model.peft_config:
            model.add_adapter(name, lora_config(m.lora_r, m.lora_alpha, m.lora_dropout, m.lora_targets))
            keep_fp32(adapter_parameters(model, name).values())

    def _activate(self, model):
        """All adapters active (their sum is the policy); only the newest one trainable."""
        model.base_model.set_adapter(list(self.adapters))  # flips requires_grad on for all of them
        self._freeze(model)

    def _freeze(self, model):
        """requires_grad only on the newest adapter. Needed again at every stage start: leaving
        `model.disable_adapter()` (the runner's reference pass before each preference stage) re-enables
        the LoRA layers through `set_adapter(active_adapters)`, which makes every ACTIVE adapter
        trainable again (peft's BaseTunerLayer.enable_adapters)."""
        newest = self.adapters[-1]
        for layer in lora_layers(model):
            for attr in ("lora_A", "lora_B"):
                for key, module in getattr(layer, attr).items():
                    for p in module.parameters():
                        p.requires_grad_(key == newest)

    def on_task_start(self, loop, task):
        name = adapter_name(len(self.adapters))
        self._add_adapter(loop, name)
        self.adapters.append(name)
        self._activate(loop.model)

    def on_stage_start(self, loop, stage):
        self._freeze(loop.model)  # before the runner builds the stage's optimizer from requires_grad

    def penalty(self, model):
        """(orthogonality term, L2 term) of the current task, unweighted; None where not applicable."""
        orth = orthogonality_penalty(adapter_pairs(model, self.adapters)) if len(self.adapters) > 1 else None
        l2 = None
        if self.lambda_l2:
            l2 = sum(p.float().square().sum() for p in adapter_parameters(model, self.adapters[-1]).values())
        return orth, l2

    def extra_loss(self, loop, stage, model, batch, outputs):
        if not self.adapters:
            return None
        orth, l2 = self.penalty(loop.model)
        total = None
        if orth is not None and self.lambda_orth:
            total = self.lambda_orth * orth
        if l2 is not None:
            total = self.lambda_l2 * l2 if total is None else total + self.lambda_l2 * l2
        return total

    def on_stage_end(self, loop, stage):
        with torch.no_grad():
            orth, l2 = self.penalty(loop.model)
        return {"adapters": len(self.adapters), "trained_adapter": self.adapters[-1],
                "orth_penalty": float(orth) if orth is not None else 0.0,
                "l2": float(l2) if l2 is not None else None}

    def state_dict(self):
        return {"adapters": list(self.adapters)}

    def load_state_dict(self, state):
        if state:
            self.adapters = list(state["adapters"])

    def on_restore(self, loop):
        if not self.adapters:
            return
        for name in self.adapters:
            self._add_adapter(loop, name)
        self._activate(loop.model)
        self._model = loop.model

    def on_task_end(self, loop, task):
        self._model = loop.model

    def state_nbytes(self):
        if self._model is None or len(self.adapters) < 2:
            return 0
        return tensor_nbytes(p for name in self.adapters[:-1] for p in adapter_parameters(self._model, name).values())


@register("olora", replay=False)
def olora(cfg):
    m = cfg.method
    return Strategy("olora", "dpo", [OLoRA(m.olora_lambda_orth, m.olora_lambda_l2)])

"""GEM and A-GEM baselines: episodic gradient memories, the gradient projected before the step.

- GEM: Lopez-Paz & Ranzato 2017, "Gradient Episodic Memory for Continual Learning" (NeurIPS). At
  every optimizer step, one gradient per earlier task on its memory, G = (g_1 .. g_{t-1}) (rows); if
  the current gradient g conflicts with any (G g < 0 somewhere), it is replaced by the closest g~ (in
  L2) with G g~ >= 0, through the paper's dual QP:
  min_v  1/2 v^T G G^T v + g^T G^T v   s.t. v >= margin,   g~ = G^T v + g.
- A-GEM: Chaudhry et al. 2019, "Efficient Lifelong Learning with A-GEM" (ICLR). One reference
  gradient g_ref on a random sample of all memories together; if g . g_ref < 0,
  g~ = g - (g . g_ref / g_ref . g_ref) g_ref (closed form), else g is kept.

Our choices.
- Memories: the first `method.gem_memory_size` (16) training records of each task in file order (of
  the `data.n_train` subsample when there is one; replayed rows never), one memory per task AND stage
  kind, joined when the task's stage ends, so task t is constrained by tasks 1..t-1 only. An SFT
  stage is constrained by the SFT loss (mean response-token NLL) on the earlier SFT memories, a
  preference stage by the run's DPO/FPO loss (`stage.loss`) on the earlier preference memories
  (pairs with their base-model reference log-probs).
- `before_optimizer_step` runs after backward, the gradient's sync across ranks and its clipping to
  `max_grad_norm`, before `optimizer.step()`, and writes the projected gradient into `.grad` in place.
  The step's gradient is saved, the memory losses are back-propagated (under `loop.autocast()`, in
  chunks of the stage batch size, each weighted by its share of the memory: by examples rather than
  tokens for SFT, exact when the memory fits one chunk) and read, and the saved gradient is restored.
  The memory passes use the unwrapped model, so under DDP they trigger no all-reduce; every rank
  holds the same memories and draws the same A-GEM sample (seeded by seed, task, stage and step).
- The projection acts on all trainable parameters (the LoRA matrices) concatenated, in fp32 (the QP
  in float64), and is not re-clipped, as in the papers: GEM's g~ may exceed the clip norm (A-GEM's
  projection can only shrink it).
- GEM's QP is solved with `quadprog` (Goldfarb-Idnani), as the GEM authors' code does: P = G G^T +
  ridge, q = -G g, v >= margin (`method.gem_margin`, 0.5 as in the GEM paper's experiments: a small
  bias towards positive backward transfer; 0 gives the plain projection). The ridge 1e-8 *
  mean(diag G G^T) is scale-free and only keeps P positive definite when memory gradients are
  (nearly) collinear (the GEM code's absolute 1e-3 would swamp G G^T at LoRA scale).
- Optimizer: plain SGD (no momentum, no weight decay), as in both papers, at `method.sgd_lr` in both
  stages (measured in docs/baselines.md) scaled by the stage's schedule, one per stage kind for the
  run (stateless). Its step -lr * g~, with g~ . g_k >= 0, does not raise any memory's loss to first
  order; an adaptive optimizer rescales each coordinate, so its step may conflict with the memories
  again (and moments carried across tasks mix in earlier gradients).
  `method.projection_optimizer=adamw` gives the run's AdamW at the stage learning rate instead.
- A-GEM samples `method.agem_sample_size` (16) records uniformly without replacement from all
  earlier memories of the stage kind, afresh each step (as in the paper).
- No replay by default (`method.replay=true` adds it); DPO unless `method.loss` says otherwise.

Report per stage: steps, how many were projected (constraint violated), the earlier tasks in memory.
State: the memories (records with token ids and reference log-probs), saved after each task;
`state_nbytes` counts their text and token ids like the replay buffer.

Differences from the LifeAlign authors' GEM (github.com/real-ljs/LifeAlign, CL_methods/GEM.py; there
is no A-GEM there): it projected in `on_optimizer_step`, after `optimizer.step()`, so the projection
never changed an update. It kept no episodic memory: each earlier "task" (SFT and DPO stages pooled)
was a running average (0.9 / 0.1) of its own training gradients. It projected each parameter tensor
separately, solved the QP with qpth (margin 0.1, a ridge of 1.0 when P is not positive definite) and
stepped with the trainer's AdamW.
"""
from typing import Literal

import numpy as np
import torch
from pydantic import Field

from ..options import Float, Options
from ..training import STAGES, trainable_parameters
from . import register
from .base import Plugin, Strategy, records_nbytes

RIDGE = 1e-8
OPTIMIZERS = ("sgd", "adamw")


class GEMOptions(Options):  # GEM's and A-GEM's, described above
    gem_memory_size: int = Field(16, ge=1)             # records per task and stage
    gem_margin: Float = Field(0.5, ge=0)               # GEM's QP margin
    agem_sample_size: int = Field(16, ge=1)            # A-GEM's reference sample
    projection_optimizer: Literal[OPTIMIZERS] = "sgd"  # applies the projected gradient
    sgd_lr: Float = Field(0.1, gt=0)                   # both stages (measured in docs/baselines.md)


DEFAULTS = GEMOptions()


def agem_project(g, g_ref):
    """A-GEM: g if g . g_ref >= 0, else g minus its component along g_ref. Returns (g~, projected)."""
    dot = torch.dot(g.double(), g_ref.double())
    if dot >= 0:
        return g, False
    denom = torch.dot(g_ref.double(), g_ref.double())
    if denom <= 0:
        return g, False
    return (g.double() - (dot / denom) * g_ref.double()).to(g.dtype), True


def gem_project(g, G, margin=DEFAULTS.gem_margin, ridge=RIDGE):
    """GEM: g if G g >= 0, else G^T v + g with v the solution of the dual QP
    min 1/2 v^T (G G^T) v + (G g)^T v s.t. v >= margin. G: (t, p) rows of memory gradients."""
    import quadprog

    Gd = G.double()
    dots = Gd @ g.double()
    if not bool((dots < 0).any()):
        return g, False
    P = (Gd @ Gd.T).cpu().numpy()
    P = 0.5 * (P + P.T)
    scale = float(np.mean(np.diag(P)))
    if scale <= 0:
        return g, False
    # quadprog minimises 1/2 x^T P x - a^T x subject to C^T x >= b; work in units of `scale` for conditioning.
    t = P.shape[0]
    Pn = P / scale + ridge * np.eye(t)
    a = -dots.cpu().numpy() / scale
    v = quadprog.solve_qp(Pn, a, np.eye(t), np.full(t, float(margin)))[0]
    v = torch.from_numpy(v).to(device=g.device, dtype=torch.float64)
    return (Gd.T @ v + g.double()).to(g.dtype), True


def flat_grad(params):
    return torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1).float()
                      for p in params])


def write_flat_grad(params, flat):
    """Write a flat gradient back into each parameter's .grad, in place where a .grad exists (keeps
    DDP bucket views intact)."""
    for p, value in zip(params, flat.split([p.numel() for p in params])):
        if p.grad is None:
            p.grad = value.view_as(p).to(p.dtype).clone()
        else:
            p.grad.copy_(value.view_as(p))


def memory_gradient(model, params, records, collate, stage_loss, autocast, chunk_size):
    """Flat gradient of the stage loss on `records` (mean of chunk losses weighted by chunk size),
    leaving every parameter's .grad exactly as it was."""
    saved = [p.grad for p in params]
    device = params[0].device
    try:
        for p in params:
            p.grad = None
        with torch.enable_grad():
            for start in range(0, len(records), chunk_size):
                chunk = records[start:start + chunk_size]
                batch = {k: v.to(device) for k, v in collate(chunk).items()}
                with autocast():
                    loss, _ = stage_loss(model, batch)
                (loss.float() * (len(chunk) / len(records))).backward()
        return flat_grad(params)
    finally:
        for p, s in zip(params, saved):
            p.grad = s


class EpisodicMemory(Plugin):
    """Shared part of GEM and A-GEM: the per-task, per-stage memories and the hook plumbing."""

    options = GEMOptions
    state_keys = ("memories",)

    def __init__(self, memory_size=DEFAULTS.gem_memory_size, seed=0, optimizer=DEFAULTS.projection_optimizer,
                 sgd_lr=DEFAULTS.sgd_lr):
        if optimizer not in OPTIMIZERS:
            raise ValueError(f"projection optimizer {optimizer!r}: allowed values {OPTIMIZERS}")
        self.memory_size = int(memory_size)
        self.seed = seed
        self.optimizer, self.sgd_lr = optimizer, float(sgd_lr)
        self.memories = {"sft": {}, "pref": {}}  # stage kind -> {task: [records]} in task order
        self._stats = None

    def make_optimizer(self, loop, kind, params, stage_cfg):
        if self.optimizer == "sgd":
            return torch.optim.SGD(params, lr=self.sgd_lr, momentum=0.0, weight_decay=0.0)
        return None  # the runner's AdamW

    def on_stage_start(self, loop, stage):
        self._stats = {"steps": 0, "projected": 0,
                       "memory_tasks": [t for t in self.memories.get(stage.name, {}) if t != stage.task]}

    def _earlier(self, stage):
        return {t: recs for t, recs in self.memories.get(stage.name, {}).items() if t != stage.task and recs}

    def before_optimizer_step(self, loop, stage, model):
        earlier = self._earlier(stage)
        if self._stats is None:
            self.on_stage_start(loop, stage)
        self._stats["steps"] += 1
        if not earlier:
            return
        params = list(trainable_parameters(loop.model).values())
        g = flat_grad(params)
        chunk = max(int(getattr(loop.cfg, stage.name).batch_size), 1)

        def grad_on(records):
            return memory_gradient(loop.model, params, records, stage.collate, stage.loss, loop.autocast, chunk)

        new_g, projected = self.project(stage, g, earlier, grad_on)
        if projected:
            write_flat_grad(params, new_g)
            self._stats["projected"] += 1

    def project(self, stage, g, earlier, grad_on):
        raise NotImplementedError

    def on_stage_end(self, loop, stage):
        task = stage.task
        source = loop.tasks[task].train if getattr(loop, "tasks", None) and task in loop.tasks else stage.records
        memory = [dict(rec) for rec in source[: self.memory_size]]  # token ids and reference log-probs too
        self.memories.setdefault(stage.name, {})[task] = memory
        stats, self._stats = self._stats or {"steps": 0, "projected": 0, "memory_tasks": []}, None
        return {**stats, "memory_added": len(memory)}

    def state_nbytes(self):
        return sum(records_nbytes(records) for by_task in self.memories.values() for records in by_task.values())


class GEMPlugin(EpisodicMemory):
    name = "gem"

    def __init__(self, memory_size=DEFAULTS.gem_memory_size, margin=DEFAULTS.gem_margin, seed=0,
                 optimizer=DEFAULTS.projection_optimizer, sgd_lr=DEFAULTS.sgd_lr):
        super().__init__(memory_size, seed, optimizer, sgd_lr)
        self.margin = float(margin)

    def project(self, stage, g, earlier, grad_on):
        G = torch.stack([grad_on(records) for records in earlier.values()])
        return gem_project(g, G, self.margin)


class AGEMPlugin(EpisodicMemory):
    name = "agem"

    def __init__(self, memory_size=DEFAULTS.gem_memory_size, sample_size=DEFAULTS.agem_sample_size, seed=0,
                 optimizer=DEFAULTS.projection_optimizer, sgd_lr=DEFAULTS.sgd_lr):
        super().__init__(memory_size, seed, optimizer, sgd_lr)
        self.sample_size = int(sample_size)

    def sample(self, stage, earlier):
        pool = [rec for records in earlier.values() for rec in records]
        if len(pool) <= self.sample_size:
            return pool
        rng = np.random.default_rng([self.seed, stage.task_index, STAGES.index(stage.name), self._stats["steps"]])
        return [pool[i] for i in sorted(rng.choice(len(pool), self.sample_size, replace=False))]

    def project(self, stage, g, earlier, grad_on):
        return agem_project(g, grad_on(self.sample(stage, earlier)))


@register("gem", replay=False)
def gem(cfg):
    m = cfg.method
    return Strategy("gem", "dpo", [GEMPlugin(m.gem_memory_size, m.gem_margin, cfg.seed, m.projection_optimizer,
                                             m.sgd_lr)])


@register("agem", replay=False)
def agem(cfg):
    m = cfg.method
    return Strategy("agem", "dpo", [AGEMPlugin(m.gem_memory_size, m.agem_sample_size, cfg.seed,
                                               m.projection_optimizer, m.sgd_lr)])

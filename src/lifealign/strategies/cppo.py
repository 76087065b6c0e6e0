"""CPPO baseline, adapted from PPO to DPO.

Paper: H. Zhang, Y. Lei, L. Gui, M. Yang, Y. He, H. Wang, R. Xu, "CPPO: Continual Learning for
Reinforcement Learning with Human Feedback", ICLR 2024. CPPO maximises, per rollout sample i,
    alpha_i * L_policy_i  -  beta_i * L_KR_i,
L_policy the PPO clipped objective, L_KR = (log pi(y|x) - log pi_old(y|x))^2 a knowledge-retention
penalty against the policy learned on the previous tasks. Its heuristic variant sets the two weights
by where a sample's reward r and generation probability P fall relative to the batch's mean +- k*std:

    category           reward (DPO margin)   policy log-prob         alpha   beta
    high-performance   r - mu_r >  k sd_r     p - mu_p >  k sd_p      ub      ub   learn and retain
    overfitting        r - mu_r < -k sd_r     p - mu_p >  k sd_p      ub      lb   likely but bad
    high-variance      r - mu_r >  k sd_r     p - mu_p < -k sd_p      ub      lb   good but unlikely
    noisy              r - mu_r < -k sd_r     p - mu_p < -k sd_p      lb      lb   trust it less on both terms
    normal             otherwise                                      1       1

with k = 1, lb = 0.5, ub = 2 by default (`method.cppo_k`, `method.cppo_lb`, `method.cppo_ub`). These
five rows are the paper's heuristic rule (a sample with high reward but low generation probability,
or the reverse, gets a high policy-learning and a low knowledge-retention weight) as the LifeAlign
authors' CPPO code sets them (`DPOwithCPPO.compute_sample_weights`, github.com/real-ljs/LifeAlign).

Here the sample is a preference pair, and
- r is its detached DPO implicit margin, beta_dpo * [(log pi(y_w) - log ref(y_w)) - (log pi(y_l) - log ref(y_l))];
- p is the policy's detached log-probability of the chosen response per response token,
  log pi(y_w|x) / |y_w|: y_w is what the policy learns to generate, and summed log-probs would
  mostly measure length;
- mu and sd are the mean and population std of r and p over every pair the preference stage has
  scored so far, this micro-batch included, pooled across ranks (`RunningMoments`: under DDP a
  float64 all-reduce of count, sum and sum of squares per micro-batch), restarted with each
  preference stage. CPPO takes them over its rollout batch (hundreds of samples); a micro-batch here
  has 2-8 pairs, too few for a spread (with 2, both sit exactly at mu +- sd and float rounding
  decides the strict inequalities), and the effective batch would need an extra forward pass per
  optimizer step. The running statistics need none, at the price of mixing in pairs scored earlier
  in the stage. The inequalities are strict: pairs at the mean are "normal". Below MIN_PAIRS = 3
  pairs seen, every weight is 1, with a warning once per stage. Runs resume at task boundaries, where
  no stage is under way, so the statistics need no saving;
- retention_i = c * ((log pi(y_w) - log pi_old(y_w))^2 + (log pi(y_l) - log pi_old(y_l))^2), summed
  response log-probs as everywhere in this project, c = `method.cppo_retention` (0.1), the DPO beta
  not part of c.

A preference step's loss is mean_i(alpha_i * L_i) + mean_i(beta_i * retention_i), L_i the per-pair
DPO (or FPO, `method.loss`) loss. The runner already adds mean_i(L_i), so `extra_loss` returns
    mean_i((alpha_i - 1) * L_i) + mean_i(beta_i * retention_i),
and mean(L) + mean((alpha - 1) L) = mean(alpha L) makes the total exactly the CPPO loss. The SFT
stage is plain SFT (CPPO is a method for the RL stage). No replay by default (`method.replay=true`
adds it).

pi_old is the policy at the end of the previous task (for the first task the base model, LoRA
starting as a no-op). The LoRA matrices are snapshotted when a task starts, before its SFT stage
moves the policy; when its preference stage starts, every training pair of the stage (replayed ones
too) is scored with them swapped in (the current ones put back after), and rec["old"] = (chosen,
rejected) feeds batch["old_chosen_logps"/"old_rejected_logps"]. On a resume the snapshot is taken
from the restored adapter, so no extra state is saved.

Differences from the CPPO paper: PPO with rollouts, a reward model and a critic there; here the
DPO/FPO pair loss on fixed preference pairs, the implicit DPO margin as reward, pi_old scored once
per task rather than kept as a second model, and only the heuristic weights (not the learnable
ones). Differences from the LifeAlign authors' CPPO code: it takes mu and sd over each micro-batch
(unbiased std, non-strict inequalities), uses the summed chosen log-prob, and snapshots pi_old once,
when its DPO trainer first trains (after the first task's SFT stage), keeping it for every later
task; it scores pi_old with a forward pass every step.
"""
import time
import warnings

import torch
from pydantic import Field

from ..lora import copy_into, lora_parameters
from ..options import Float, Options
from . import register
from .base import Plugin, Strategy

CATEGORIES = ("normal", "high_performance", "overfitting", "high_variance", "noisy")
NORMAL, HIGH_PERFORMANCE, OVERFITTING, HIGH_VARIANCE, NOISY = range(5)
MIN_PAIRS = 3  # fewer pairs have no usable spread: with 2, both sit exactly at mean +- std


class CPPOOptions(Options):  # described above
    cppo_k: Float = Field(1.0, ge=0)          # category threshold: mean +- k*std
    cppo_retention: Float = Field(0.1, ge=0)  # retention coefficient c
    cppo_lb: Float = Field(0.5, ge=0)         # lower / upper per-sample weight (alpha, beta in {lb, 1, ub})
    cppo_ub: Float = Field(2.0, ge=0)


DEFAULTS = CPPOOptions()


def weight_table(lb=DEFAULTS.cppo_lb, ub=DEFAULTS.cppo_ub):
    """(alpha, beta) per category, indexed like CATEGORIES (the CPPO paper's rule, see above)."""
    return {NORMAL: (1.0, 1.0), HIGH_PERFORMANCE: (ub, ub), OVERFITTING: (ub, lb),
            HIGH_VARIANCE: (ub, lb), NOISY: (lb, lb)}


def cppo_categories(reward, logp, k=DEFAULTS.cppo_k, stats=None):
    """Category index of each sample (see CATEGORIES) from detached 1-D tensors of equal length.
    `stats` = (mean_r, std_r, mean_p, std_p); None: those of the samples themselves."""
    reward, logp = reward.detach().double(), logp.detach().double()
    if stats is None:
        stats = (reward.mean(), reward.std(unbiased=False), logp.mean(), logp.std(unbiased=False))
    mr, sr, mp, sp = (float(x) for x in stats)
    dr, dp = reward - mr, logp - mp
    hi_r, lo_r = dr > k * sr, dr < -k * sr
    hi_p, lo_p = dp > k * sp, dp < -k * sp
    cat = torch.full(reward.shape, NORMAL, dtype=torch.long, device=reward.device)
    cat[hi_r & hi_p] = HIGH_PERFORMANCE
    cat[lo_r & hi_p] = OVERFITTING
    cat[hi_r & lo_p] = HIGH_VARIANCE
    cat[lo_r & lo_p] = NOISY
    return cat


def cppo_weights(reward, logp, k=DEFAULTS.cppo_k, lb=DEFAULTS.cppo_lb, ub=DEFAULTS.cppo_ub, stats=None):
    """(alpha, beta, categories) per sample, against `stats` (see cppo_categories)."""
    cat = cppo_categories(reward, logp, k, stats)
    table = weight_table(lb, ub)
    alpha, beta = torch.tensor([table[c] for c in range(len(CATEGORIES))], device=cat.device)[cat].unbind(1)
    return alpha, beta, cat


class RunningMoments:
    """Count, sum and sum of squares (float64) of the rewards and log-probs seen so far, pooled
    across ranks; `stats()` gives (mean_r, std_r, mean_p, std_p), population std."""

    def __init__(self):
        self.sums = torch.zeros(5, dtype=torch.float64)  # n, sum r, sum r^2, sum p, sum p^2

    @property
    def count(self):
        return int(self.sums[0])

    def update(self, reward, logp):
        r, p = reward.detach().double(), logp.detach().double()
        batch = torch.stack([torch.tensor(float(r.numel()), dtype=torch.float64, device=r.device),
                             r.sum(), (r * r).sum(), p.sum(), (p * p).sum()])
        if torch.distributed.is_available() and torch.distributed.is_initialized() \
                and torch.distributed.get_world_size() > 1:
            torch.distributed.all_reduce(batch)
        self.sums += batch.cpu()

    def stats(self):
        n, sr, sr2, sp, sp2 = self.sums.tolist()
        mr, mp = sr / n, sp / n
        return mr, max(sr2 / n - mr * mr, 0.0) ** 0.5, mp, max(sp2 / n - mp * mp, 0.0) ** 0.5


class CPPOPlugin(Plugin):
    name = "cppo"
    options = CPPOOptions

    def __init__(self, k=DEFAULTS.cppo_k, retention=DEFAULTS.cppo_retention, lb=DEFAULTS.cppo_lb, ub=DEFAULTS.cppo_ub):
        self.k, self.retention, self.lb, self.ub = k, retention, lb, ub
        self._snapshot = None
        self._warned = False
        self._stats = None
        self.moments = RunningMoments()

    def on_task_start(self, loop, task):
        # The policy at the end of the previous task (the initial one for the first task).
        self._snapshot = {n: p.detach().clone() for n, p in lora_parameters(loop.model).items()}

    def on_stage_start(self, loop, stage):
        self._warned = False
        self.moments = RunningMoments()
        self._stats = {"counts": [0] * len(CATEGORIES), "retention": 0.0, "steps": 0, "old_scoring_s": 0.0}
        if stage.name != "pref":
            return
        t0 = time.perf_counter()
        model = loop.model
        params = lora_parameters(model)
        current = None
        if self._snapshot is not None:
            current = {n: p.detach().clone() for n, p in params.items()}
            copy_into(params, self._snapshot)
        # Imported here: lifealign.reference loads transformers, which the config (it imports every
        # strategy for their options) does not need.
        from ..reference import score_pairs

        try:
            scores = score_pairs(model, stage.records, loop.pad_id, loop.cfg.eval.batch_size,
                                 loop.precision, use_adapter=True, share_prompt=loop.strategy.share_prompt)
        finally:
            if current is not None:
                copy_into(params, current)
        for rec, row in zip(stage.records, scores):
            rec["old"] = (float(row[0]), float(row[1]))
        self._snapshot = None  # only needed until pi_old is scored
        self._stats["old_scoring_s"] = time.perf_counter() - t0

    def extra_loss(self, loop, stage, model, batch, outputs):
        if stage.name != "pref":
            return None
        chosen, rejected = outputs["chosen_logps"], outputs["rejected_logps"]
        per_pair = outputs["per_pair_loss"]
        reward = outputs["margin"].detach()
        logp = chosen.detach() / outputs["chosen_counts"].clamp(min=1)
        self.moments.update(reward, logp)
        if self.moments.count < MIN_PAIRS:
            if not self._warned:
                warnings.warn(f"CPPO: the stage has seen {self.moments.count} pairs, fewer than {MIN_PAIRS}: "
                              "no usable spread, so their weights fall back to 1", stacklevel=2)
                self._warned = True
            alpha = beta = torch.ones_like(per_pair)
            cat = torch.full(reward.shape, NORMAL, dtype=torch.long)
        else:
            alpha, beta, cat = cppo_weights(reward, logp, self.k, self.lb, self.ub, self.moments.stats())
            alpha, beta = alpha.to(per_pair.dtype), beta.to(per_pair.dtype)
        old_c = batch["old_chosen_logps"].to(chosen.device, chosen.dtype)
        old_r = batch["old_rejected_logps"].to(rejected.device, rejected.dtype)
        retention = self.retention * ((chosen - old_c) ** 2 + (rejected - old_r) ** 2)
        if self._stats is not None:
            for c, n in enumerate(torch.bincount(cat, minlength=len(CATEGORIES)).tolist()):
                self._stats["counts"][c] += n
            self._stats["retention"] += float(retention.detach().mean())
            self._stats["steps"] += 1
        return ((alpha - 1) * per_pair).mean() + (beta * retention).mean()

    def on_stage_end(self, loop, stage):
        if stage.name != "pref" or not self._stats:
            return None
        s = self._stats
        report = {"categories": dict(zip(CATEGORIES, s["counts"])),
                  "mean_retention": s["retention"] / max(s["steps"], 1),
                  "old_scoring_s": s["old_scoring_s"], "pairs_seen": self.moments.count}
        if self.moments.count:
            report.update(zip(("reward_mean", "reward_std", "logp_mean", "logp_std"), self.moments.stats()))
        return report


@register("cppo", replay=False)
def cppo(cfg):
    m = cfg.method
    return Strategy("cppo", "dpo", [CPPOPlugin(m.cppo_k, m.cppo_retention, m.cppo_lb, m.cppo_ub)])

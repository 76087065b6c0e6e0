"""CPPO baseline, adapted from PPO to DPO.

Paper: H. Zhang, Y. Lei, L. Gui, M. Yang, Y. He, H. Wang, R. Xu, "CPPO: Continual Learning for
Reinforcement Learning with Human Feedback", ICLR 2024. CPPO maximises, per rollout sample i,
    alpha_i * L_policy_i  -  beta_i * L_KR_i,
L_policy the PPO clipped objective, L_KR = (log pi(y|x) - log pi_old(y|x))^2 a knowledge-retention
penalty against the policy learned on the previous tasks. Its heuristic variant sets the two weights
by where a sample's reward r and generation probability P fall relative to the batch's mean +- k*std.

Our DPO reading (the paper's Table 1; lb = 0.5, ub = 2 by default):

    category           reward (DPO margin)   policy log-prob         alpha   beta
    high-performance   r - mu_r >  k sd_r     p - mu_p >  k sd_p      ub      ub   learn and retain
    overfitting        r - mu_r < -k sd_r     p - mu_p >  k sd_p      1       lb   likely but bad: let it move
    high-variance      r - mu_r >  k sd_r     p - mu_p < -k sd_p      ub      1    good but unlikely: learn more
    noisy              r - mu_r < -k sd_r     p - mu_p < -k sd_p      lb      lb   trust it less on both terms
    normal             otherwise                                      1       1

- The "sample" is a preference pair. Its reward is the DPO implicit margin
  r = beta_dpo * [(log pi(y_w) - log ref(y_w)) - (log pi(y_l) - log ref(y_l))], detached.
- Its generation probability is the policy's length-normalised log-probability of the chosen
  response, log pi(y_w|x) / |y_w| (mean log-prob per response token), detached. Chosen, because
  y_w is the response the policy learns to generate (CPPO's P is the probability of the sample the
  policy is trained on); length-normalised, because summed log-probs mostly measure length.
- mu and sd are the mean and population standard deviation over the (per-device) micro-batch, as
  CPPO computes them over its rollout batch; the inequalities are strict, so a batch whose values
  are all equal is all "normal". A batch of one has no spread: every weight is 1 and a warning is
  emitted (once per stage).
- Retention term per pair: c * ((log pi(y_w) - log pi_old(y_w))^2
  + (log pi(y_l) - log pi_old(y_l))^2), c = method.cppo_retention (0.1), summed response log-probs
  as everywhere in this project; the DPO beta is not part of c.

Loss of a preference step: mean_i(alpha_i * L_i) + mean_i(beta_i * retention_i), L_i the per-pair
DPO (or FPO, method.loss) loss. The runner already adds mean_i(L_i), so `extra_loss` returns
    mean_i((alpha_i - 1) * L_i) + mean_i(beta_i * retention_i),
and  mean(L) + mean((alpha - 1) L) = mean(alpha L)  makes the total exactly the CPPO loss.

pi_old is the policy at the end of the previous task (for the first task the initial policy, i.e.
the base model, since LoRA starts as a no-op). The LoRA matrices are snapshotted when a task
starts; when its preference stage starts, every training pair of the stage (replayed ones too)
is scored with those weights swapped in (then the current weights are put back), and
rec["old"] = (chosen, rejected) feeds batch["old_chosen_logps"/"old_rejected_logps"]. Snapshotting
at task start, not scoring the current policy at the preference stage start, matters because the
SFT stage of the same task has already moved the policy by then. On a resume the snapshot is
taken from the restored adapter, so no extra state is saved.

The SFT stage is plain SFT (CPPO is a method for the RL stage). Replay is off by default
(method.replay=true adds it).

Differences from the authors' CPPO: it is PPO with rollouts, a reward model and a critic; here the
policy term is the DPO/FPO pair loss on fixed preference pairs, "reward" is the implicit DPO margin,
pi_old is scored once per task rather than kept as a second model, and only the heuristic weights
(not the learnable-weights variant) are implemented. The category table above is our reading of the
CPPO paper's Table 1.
"""
import time
import warnings

import torch

from ..consolidation import lora_parameters
from ..reference import score_pairs
from . import register
from .base import Plugin, Strategy

CATEGORIES = ("normal", "high_performance", "overfitting", "high_variance", "noisy")
NORMAL, HIGH_PERFORMANCE, OVERFITTING, HIGH_VARIANCE, NOISY = range(5)


def weight_table(lb=0.5, ub=2.0):
    """(alpha, beta) per category, indexed like CATEGORIES."""
    return {NORMAL: (1.0, 1.0), HIGH_PERFORMANCE: (ub, ub), OVERFITTING: (1.0, lb),
            HIGH_VARIANCE: (ub, 1.0), NOISY: (lb, lb)}


def cppo_categories(reward, logp, k=1.0):
    """Category index of each sample (see CATEGORIES) from detached 1-D tensors of equal length.
    Needs at least two samples (a spread); the caller handles a batch of one."""
    reward, logp = reward.detach().float(), logp.detach().float()
    dr, dp = reward - reward.mean(), logp - logp.mean()
    sr, sp = reward.std(unbiased=False), logp.std(unbiased=False)
    hi_r, lo_r = dr > k * sr, dr < -k * sr
    hi_p, lo_p = dp > k * sp, dp < -k * sp
    cat = torch.full(reward.shape, NORMAL, dtype=torch.long, device=reward.device)
    cat[hi_r & hi_p] = HIGH_PERFORMANCE
    cat[lo_r & hi_p] = OVERFITTING
    cat[hi_r & lo_p] = HIGH_VARIANCE
    cat[lo_r & lo_p] = NOISY
    return cat


def cppo_weights(reward, logp, k=1.0, lb=0.5, ub=2.0):
    """(alpha, beta, categories) per sample; with fewer than two samples all weights are 1 and the
    categories None."""
    n = reward.numel()
    if n < 2:
        ones = torch.ones(n, dtype=torch.float32, device=reward.device)
        return ones, ones.clone(), None
    cat = cppo_categories(reward, logp, k)
    table = weight_table(lb, ub)
    alpha = torch.tensor([table[c][0] for c in range(len(CATEGORIES))], device=cat.device)[cat]
    beta = torch.tensor([table[c][1] for c in range(len(CATEGORIES))], device=cat.device)[cat]
    return alpha, beta, cat


class CPPOPlugin(Plugin):
    name = "cppo"

    def __init__(self, k=1.0, retention=0.1, lb=0.5, ub=2.0):
        self.k, self.retention, self.lb, self.ub = k, retention, lb, ub
        self._snapshot = None
        self._warned = False
        self._stats = None

    # ------------------------------------------------------------ pi_old
    def on_task_start(self, loop, task):
        # The policy at the end of the previous task (the initial one for the first task).
        self._snapshot = {n: p.detach().clone() for n, p in lora_parameters(loop.model).items()}

    def on_stage_start(self, loop, stage):
        self._warned = False
        self._stats = {"counts": [0] * len(CATEGORIES), "retention": 0.0, "steps": 0, "old_scoring_s": 0.0}
        if stage != "pref":
            return
        t0 = time.perf_counter()
        model = loop.model
        params = lora_parameters(model)
        current = None
        if self._snapshot is not None:
            current = {n: p.detach().clone() for n, p in params.items()}
            with torch.no_grad():
                for n, p in params.items():
                    p.copy_(self._snapshot[n])
        try:
            scores = score_pairs(model, loop.stage_records, loop.pad_id, loop.cfg.eval.batch_size,
                                 loop.precision, use_adapter=True, share_prompt=loop.strategy.share_prompt)
        finally:
            if current is not None:
                with torch.no_grad():
                    for n, p in params.items():
                        p.copy_(current[n])
        for rec, row in zip(loop.stage_records, scores):
            rec["old"] = (float(row[0]), float(row[1]))
        self._snapshot = None  # only needed until pi_old is scored
        self._stats["old_scoring_s"] = time.perf_counter() - t0

    # ------------------------------------------------------------ loss
    def extra_loss(self, loop, stage, model, batch, outputs):
        if stage != "pref":
            return None
        chosen, rejected = outputs["chosen_logps"], outputs["rejected_logps"]
        per_pair = outputs["per_pair_loss"]
        reward = outputs["margin"].detach()
        logp = chosen.detach() / outputs["chosen_counts"].clamp(min=1)
        if reward.numel() < 2 and not self._warned:
            warnings.warn("CPPO: a preference batch of one pair has no spread; its weights fall back to 1",
                          stacklevel=2)
            self._warned = True
        alpha, beta, cat = cppo_weights(reward, logp, self.k, self.lb, self.ub)
        alpha, beta = alpha.to(per_pair.dtype), beta.to(per_pair.dtype)
        old_c = batch["old_chosen_logps"].to(chosen.device, chosen.dtype)
        old_r = batch["old_rejected_logps"].to(rejected.device, rejected.dtype)
        retention = self.retention * ((chosen - old_c) ** 2 + (rejected - old_r) ** 2)
        if self._stats is not None:
            if cat is None:
                self._stats["counts"][NORMAL] += reward.numel()
            else:
                for c in range(len(CATEGORIES)):
                    self._stats["counts"][c] += int((cat == c).sum())
            self._stats["retention"] += float(retention.detach().mean())
            self._stats["steps"] += 1
        return ((alpha - 1) * per_pair).mean() + (beta * retention).mean()

    def on_stage_end(self, loop, stage):
        if stage != "pref" or not self._stats:
            return None
        s = self._stats
        return {"categories": dict(zip(CATEGORIES, s["counts"])),
                "mean_retention": s["retention"] / max(s["steps"], 1),
                "old_scoring_s": s["old_scoring_s"]}


@register("cppo", replay=False)
def cppo(cfg):
    m = cfg.method
    return Strategy("cppo", "dpo", [CPPOPlugin(m.cppo_k, m.cppo_retention, m.cppo_lb, m.cppo_ub)])

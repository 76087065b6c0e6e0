"""Judge-free preference scores of a policy on held-out pairs, all 0-100 or raw.

- reward_accuracy: share of pairs with implicit-reward margin r > 0 (base model as reference), a
  tie counting 1/2, so the base model scores 50 by construction;
- margin: mean r; length_normalised_margin: the same with per-token log-ratios;
- loglik_accuracy: share of pairs where the policy's own length-normalised log-probability of the
  chosen response exceeds the rejected one's (ties 1/2); needs no reference.
"""
import torch

from .losses import dpo_margin
from .reference import score_pairs

METRICS = ("reward_accuracy", "margin", "length_normalised_margin", "loglik_accuracy")


def _accuracy(diff):
    return float(100 * ((diff > 0).float() + 0.5 * (diff == 0).float()).mean())


def preference_scores(policy, reference, beta=0.1):
    """policy: (n, 4) [chosen, rejected, chosen_len, rejected_len]; reference: (n, 2)."""
    pc, pr, nc, nr = policy.double().unbind(1)
    rc, rr = reference.double().unbind(1)
    nc, nr = nc.clamp(min=1), nr.clamp(min=1)
    margin = dpo_margin(pc, pr, rc, rr, beta)
    return {
        "reward_accuracy": _accuracy(margin),
        "margin": float(margin.mean()),
        "length_normalised_margin": float((beta * ((pc - rc) / nc - (pr - rr) / nr)).mean()),
        "loglik_accuracy": _accuracy(pc / nc - pr / nr),
        "pairs": int(policy.shape[0]),
    }


def reference_tensor(records):
    return torch.tensor([r["ref"] for r in records], dtype=torch.float64)


def evaluate_base(records, beta=0.1):
    """The untrained base model is the reference itself: margins are exactly 0."""
    ref = reference_tensor(records)
    lengths = torch.tensor([[len(r["ids"]["chosen"]), len(r["ids"]["rejected"])] for r in records],
                           dtype=torch.float64)
    return preference_scores(torch.cat([ref, lengths], dim=1), ref, beta)


def evaluate_policy(model, records, pad_id, beta=0.1, batch_size=16, precision="fp32", progress=False, desc=None,
                    share_prompt=True):
    policy = score_pairs(model, records, pad_id, batch_size, precision, use_adapter=True, desc=desc,
                         progress=progress, share_prompt=share_prompt)
    return preference_scores(policy, reference_tensor(records), beta)

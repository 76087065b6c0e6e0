"""Preference losses as pure tensor functions (TRL's convention: per-pair losses, caller averages).

All log-probabilities are sums over response tokens (prompt masked), shape (batch,).
"""
import torch
import torch.nn.functional as F


def dpo_margin(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, beta=0.1):
    """r = beta * [(log pi(y_w) - log ref(y_w)) - (log pi(y_l) - log ref(y_l))]  (DPO's implicit reward margin)."""
    return beta * ((policy_chosen_logps - ref_chosen_logps) - (policy_rejected_logps - ref_rejected_logps))


def dpo_loss(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, beta=0.1):
    """Per-pair DPO loss -log sigmoid(r)."""
    r = dpo_margin(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, beta)
    return -F.logsigmoid(r)


def fpo_loss(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, beta=0.1, gamma=2.0):
    """Per-pair FPO loss -(1 - p)^gamma * log p with p = sigmoid(r) (the paper's FPO).

    The focal weight is not detached: gradients flow through (1 - p)^gamma as in the focal loss.
    1 - p = sigmoid(-r) is computed directly, so it stays exact when p is close to 1. gamma = 0 is DPO.
    """
    r = dpo_margin(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, beta)
    log_p = F.logsigmoid(r)
    if gamma == 0:
        return -log_p
    focal_weight = torch.exp(gamma * F.logsigmoid(-r))  # (1 - p)^gamma
    return -focal_weight * log_p


PREFERENCE_LOSSES = {"dpo": dpo_loss, "fpo": fpo_loss}

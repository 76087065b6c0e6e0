import math

import pytest
import torch

from lifealign.losses import dpo_loss, fpo_loss


def _inputs(seed=0, n=16):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(n, generator=g, dtype=torch.float64) * 20 for _ in range(4)]


def _reference_fpo(pc, pr, rc, rr, beta, gamma):
    # Scalar, by the formula of spec section 3, one pair at a time.
    out = []
    for a, b, c, d in zip(pc.tolist(), pr.tolist(), rc.tolist(), rr.tolist()):
        r = beta * ((a - c) - (b - d))
        p = 1 / (1 + math.exp(-r))
        out.append(-((1 - p) ** gamma) * math.log(p))
    return torch.tensor(out, dtype=torch.float64)


def test_dpo_matches_formula():
    pc, pr, rc, rr = _inputs()
    expected = _reference_fpo(pc, pr, rc, rr, 0.1, 0.0)
    torch.testing.assert_close(dpo_loss(pc, pr, rc, rr, beta=0.1), expected)


@pytest.mark.parametrize("gamma", [0.0, 0.5, 2.0, 5.0])
def test_fpo_matches_formula(gamma):
    pc, pr, rc, rr = _inputs(1)
    torch.testing.assert_close(fpo_loss(pc, pr, rc, rr, beta=0.1, gamma=gamma),
                               _reference_fpo(pc, pr, rc, rr, 0.1, gamma))


def test_fpo_gamma_zero_is_dpo():
    x = _inputs(2)
    torch.testing.assert_close(fpo_loss(*x, beta=0.3, gamma=0.0), dpo_loss(*x, beta=0.3))


def test_fpo_silences_well_ranked_pairs_and_keeps_misranked():
    zero = torch.zeros(3, dtype=torch.float64)
    pc = torch.tensor([100.0, 0.0, -100.0], dtype=torch.float64)  # margins +10, 0, -10 at beta 0.1
    fpo = fpo_loss(pc, zero, zero, zero, beta=0.1, gamma=2.0)
    dpo = dpo_loss(pc, zero, zero, zero, beta=0.1)
    ratio = fpo / dpo
    assert ratio[0] < 1e-8                                # p -> 1: silenced
    assert ratio[1] == pytest.approx(0.25)                # p = 1/2: (1/2)^2
    assert ratio[2] > 0.999                               # p -> 0: full weight


def test_fpo_gradient_flows_through_focal_weight():
    # d/dr of -(1-p)^g log p = -[ -g (1-p)^(g-1) p(1-p) log p + (1-p)^g (1-p) ]   (dp/dr = p(1-p))
    beta, gamma = 0.1, 2.0
    pc = torch.tensor([3.0, -7.0, 12.0], dtype=torch.float64, requires_grad=True)
    zero = torch.zeros(3, dtype=torch.float64)
    fpo_loss(pc, zero, zero, zero, beta=beta, gamma=gamma).sum().backward()
    r = beta * pc.detach()
    p = torch.sigmoid(r)
    dl_dr = gamma * (1 - p) ** gamma * p * torch.log(p) - (1 - p) ** (gamma + 1)
    torch.testing.assert_close(pc.grad, beta * dl_dr)
    # A detached focal weight would give only the second term: check we are not that.
    detached = -(1 - p) ** (gamma + 1) * beta
    assert not torch.allclose(pc.grad, detached)


def test_fpo_stable_at_extreme_margins():
    zero = torch.zeros(2)
    pc = torch.tensor([1e5, -1e5])
    loss = fpo_loss(pc, zero, zero, zero, beta=0.1)
    assert torch.isfinite(loss).all()
    assert loss[0] == 0 and loss[1] == pytest.approx(1e4, rel=1e-6)

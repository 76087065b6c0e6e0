import pytest
import torch

from lifealign.consolidation import SLMC, consolidate, consolidate_with_stats, denoise, history_basis


def _rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _reference(update, history, theta, lam):
    """Independent computation with numpy-style steps: energy cut, Gram-Schmidt basis, projection."""
    u, s, vh = torch.linalg.svd(update, full_matrices=False)
    e = (s ** 2).tolist()
    total, acc, k = sum(e), 0.0, 0
    for k, v in enumerate(e, start=1):
        acc += v
        if acc / total >= theta - 1e-12:
            break
    s_prime = u[:, :k] @ torch.diag(s[:k]) @ vh[:k]
    if not history:
        return s_prime
    basis = []
    for h in history:  # Gram-Schmidt on the flattened history
        v = h.reshape(-1).clone()
        for b in basis:
            v -= (b @ v) * b
        if v.norm() > 1e-9:
            basis.append(v / v.norm())
    vec = s_prime.reshape(-1)
    f = sum(((b @ vec) * b for b in basis), torch.zeros_like(vec))
    return ((vec - f) + lam * f).reshape(update.shape)


@pytest.mark.parametrize("theta,lam", [(0.9, 0.5), (0.5, 0.1), (1.0, 0.0), (0.9, 1.0)])
def test_matches_independent_computation(theta, lam):
    update = _rand(8, 40, seed=1)
    history = [_rand(8, 40, seed=s) for s in (2, 3, 4)]
    torch.testing.assert_close(consolidate(update, history, theta, lam), _reference(update, history, theta, lam))


def test_theta_one_lambda_one_is_identity():
    update = _rand(8, 30)
    history = [_rand(8, 30, seed=5)]
    torch.testing.assert_close(consolidate(update, history, threshold=1.0, lam=1.0), update)


def test_lambda_zero_removes_all_overlap():
    update = _rand(6, 20)
    history = [_rand(6, 20, seed=s) for s in (7, 8)]
    refined = consolidate(update, history, threshold=1.0, lam=0.0)
    q = history_basis(history)
    assert (q @ refined.reshape(-1)).abs().max() < 1e-10
    # and the part orthogonal to history is untouched
    vec = update.reshape(-1)
    new = vec - q.T @ (q @ vec)
    torch.testing.assert_close(refined.reshape(-1), new)


def test_empty_history_returns_denoised_update():
    update = _rand(8, 16)
    refined, stats = consolidate_with_stats(update, [], threshold=0.9)
    expected, k = denoise(update, 0.9)
    torch.testing.assert_close(refined, expected)
    assert stats["kept_rank"] == k < 8 and stats["overlap_energy"] == 0.0


def test_zero_update_stays_zero():
    refined, stats = consolidate_with_stats(torch.zeros(4, 10), [_rand(4, 10)])
    assert torch.count_nonzero(refined) == 0 and stats["kept_rank"] == 0


def test_low_rank_update_keeps_its_rank():
    update = _rand(8, 1) @ _rand(1, 32, seed=9)  # rank 1
    _, k = denoise(update, 0.999)
    assert k == 1


def test_update_inside_history_is_scaled_by_lambda():
    h = _rand(4, 12)
    refined, stats = consolidate_with_stats(3 * h, [h], threshold=1.0, lam=0.5)
    torch.testing.assert_close(refined, 1.5 * h)
    assert stats["overlap_energy"] == pytest.approx(1.0)


def test_zero_entries_in_history_add_no_directions():
    h = _rand(4, 12)
    a = consolidate(_rand(4, 12, seed=3), [h], 1.0, 0.0)
    b = consolidate(_rand(4, 12, seed=3), [h, torch.zeros(4, 12), 2 * h], 1.0, 0.0)
    torch.testing.assert_close(a, b)


class _Lora(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lora_A = torch.nn.Parameter(_rand(2, 6).float())
        self.lora_B = torch.nn.Parameter(_rand(5, 2, seed=1).float())
        self.base = torch.nn.Parameter(torch.ones(3), requires_grad=False)


def test_slmc_state_writes_back_and_keeps_history():
    model = _Lora()
    slmc = SLMC(threshold=1.0, lam=0.0)
    for stage in range(3):
        start = model.lora_A.detach().clone()
        slmc.begin_stage(model)
        with torch.no_grad():
            model.lora_A += _rand(2, 6, seed=10 + stage).float()
            model.lora_B += 0.1
        report = slmc.end_stage(model)
        assert set(report) == {"lora_A", "lora_B"}
        # the written-back update is the refined one, and it is orthogonal to earlier history
        update = (model.lora_A.detach() - start).double()
        torch.testing.assert_close(update.float(), slmc.history["lora_A"][-1])
        if stage:
            q = history_basis([h.double() for h in slmc.history["lora_A"][:-1]])
            assert (q @ update.reshape(-1)).abs().max() < 1e-5
    assert len(slmc.history["lora_A"]) == 3 and "base" not in slmc.history
    restored = SLMC()
    restored.load_state_dict(slmc.state_dict())
    assert restored.lam == 0.0 and len(restored.history["lora_B"]) == 3

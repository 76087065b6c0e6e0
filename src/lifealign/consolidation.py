"""SLMC: short-to-long memory consolidation of LoRA updates, the memory part of LifeAlign.

`consolidate` is the math for one matrix; `SLMC` holds the per-matrix state of a run: it snapshots
every LoRA matrix when a stage starts, consolidates when it ends, writes the result back and keeps
the history of refined updates.
"""
import torch

from .lora import lora_parameters, tensor_nbytes

# Singular values below this share of the largest are treated as zero: a zero or repeated update in
# the history must not contribute arbitrary directions to the historical subspace.
_RANK_TOL = 1e-6


def energy_rank(singular_values, threshold):
    """The smallest number k of leading singular directions holding >= threshold of the energy
    (the sum of squared singular values)."""
    energy = singular_values.square()
    share = energy.cumsum(0) / energy.sum()
    # Tolerance so that threshold = 1 keeps every direction despite rounding in the cumulative sum.
    return min(int((share < threshold - 1e-9).sum().item()) + 1, singular_values.numel())


def denoise(update, threshold=0.9):
    """Keep the smallest number k of singular directions holding >= threshold of the energy.

    Returns (refined update, k). An update with ~zero energy is returned as it is (k = 0).
    """
    u, s, vh = torch.linalg.svd(update, full_matrices=False)
    total = s.square().sum()
    if total <= torch.finfo(update.dtype).tiny or not torch.isfinite(total):
        return update.clone(), 0
    k = energy_rank(s, threshold)
    return (u[:, :k] * s[:k]) @ vh[:k], k


def history_basis(history):
    """Orthonormal row basis Q (rank x numel) of the stacked, flattened earlier updates."""
    h = torch.stack([m.reshape(-1) for m in history])
    _, s, vh = torch.linalg.svd(h, full_matrices=False)
    if s.numel() == 0 or s[0] <= 0:
        return vh[:0]
    return vh[s > s[0] * _RANK_TOL]


def consolidate_with_stats(update, history, threshold=0.9, lam=0.5):
    """The refined update R of one matrix, with the kept rank and the overlap share of energy.

    R = n + lam * f, where f is the part of the denoised update S' inside the span of history and
    n = S' - f the new part. Computed in float64, returned in the update's dtype.
    """
    s_prime, kept_rank = denoise(update.detach().double(), threshold)
    stats = {"kept_rank": kept_rank, "full_rank": min(update.shape), "overlap_energy": 0.0}
    history = [h for h in history if h is not None]
    if not history:
        return s_prime.to(update.dtype), stats
    q = history_basis([h.detach().double().to(update.device) for h in history])
    vec = s_prime.reshape(-1)
    overlap = q.T @ (q @ vec)
    new = vec - overlap
    norm2 = vec.square().sum()
    if norm2 > 0:
        stats["overlap_energy"] = float(overlap.square().sum() / norm2)
    refined = (new + lam * overlap).reshape(update.shape)
    return refined.to(update.dtype), stats


def consolidate(update, history, threshold=0.9, lam=0.5):
    """The refined update of one matrix; history: earlier refined updates."""
    return consolidate_with_stats(update, history, threshold, lam)[0]


class SLMC:
    """Per-matrix SLMC state for one run: stage-start snapshots and the history of refined updates.

    One shared history per LoRA matrix across both stages (SFT and preference), as the released
    code does. Only trainable matrices are consolidated.
    """

    def __init__(self, threshold=0.9, lam=0.5):
        self.threshold = threshold
        self.lam = lam
        self.history = {}  # name -> list of refined updates (cpu fp32)
        self._start = {}

    def begin_stage(self, model):
        self._start = {n: p.detach().float().cpu().clone() for n, p in lora_parameters(model, trainable=True).items()}

    @torch.no_grad()
    def end_stage(self, model):
        """Consolidate every matrix snapshotted at stage start; return a per-matrix report."""
        params = lora_parameters(model)
        report = {}
        for name, start in self._start.items():
            param = params[name]
            update = param.detach().float().cpu() - start
            refined, stats = consolidate_with_stats(update, self.history.get(name, []), self.threshold, self.lam)
            param.copy_((start + refined).to(param.dtype))
            self.history.setdefault(name, []).append(refined)
            report[name] = stats
        self._start = {}
        return report

    def state_dict(self):
        return {"threshold": self.threshold, "lam": self.lam, "history": self.history}

    def load_state_dict(self, state):
        self.threshold, self.lam, self.history = state["threshold"], state["lam"], state["history"]

    def nbytes(self):
        return tensor_nbytes(t for hist in self.history.values() for t in hist)


def summarize_report(report):
    """Mean kept rank and overlap energy over the matrices of one stage's report."""
    if not report:
        return {"matrices": 0}
    n = len(report)
    return {"matrices": n, "mean_kept_rank": sum(r["kept_rank"] for r in report.values()) / n,
            "mean_overlap_energy": sum(r["overlap_energy"] for r in report.values()) / n}

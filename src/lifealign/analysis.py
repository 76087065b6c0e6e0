"""How the tasks' LoRA updates relate to each other: principal angles between their subspaces.

After task t the run folder holds the LoRA matrices (tasks/NN-<task>/lora.safetensors). Per adapted
weight matrix, the effective update of task t is dW_t = s (B_t A_t - B_{t-1} A_{t-1}) (s = alpha / r,
B_0 A_0 = 0). Its column space, cut to the singular directions that hold `energy` of it, is the
subspace task t wrote into; the cosines of the principal angles between two tasks' subspaces are
the singular values of U_s^T U_t. The overlap of two tasks is the mean squared cosine over the
smaller subspace's dimensions (1 = one contains the other, 0 = orthogonal), averaged over matrices.
This is the geometry SLMC acts on: it keeps a new update's part outside the earlier tasks' span and
scales the part inside it by lambda.
"""
import re
from pathlib import Path

import torch
from safetensors.torch import load_file

from .consolidation import energy_rank
from .io import read_json

_LORA_KEY = re.compile(r"^(?P<module>.+)\.lora_(?P<which>[AB])\.(?P<adapter>[^.]+)\.weight$")


def effective_weights(lora, scaling):
    """{module: s * sum over adapters of B A} from one lora.safetensors state dict."""
    parts = {}
    for key, tensor in lora.items():
        m = _LORA_KEY.match(key)
        if m:
            parts.setdefault((m["module"], m["adapter"]), {})[m["which"]] = tensor.double()
    out = {}
    for (module, _), ab in sorted(parts.items()):
        if "A" in ab and "B" in ab:
            out[module] = out.get(module, 0) + scaling * ab["B"] @ ab["A"]
    return out


def task_updates(run_dir):
    """(task names, [{module: dW_t}]) of a finished or partial run, in task order."""
    run_dir = Path(run_dir)
    cfg = read_json(run_dir / "config.json")
    scaling = cfg["model"]["lora_alpha"] / cfg["model"]["lora_r"]
    names, updates, previous = [], [], {}
    for task_dir in sorted((run_dir / "tasks").glob("[0-9][0-9]-*")):
        weights = effective_weights(load_file(task_dir / "lora.safetensors"), scaling)
        updates.append({m: w - previous.get(m, 0) for m, w in weights.items()})
        names.append(task_dir.name[3:])
        previous = weights
    return names, updates


def subspace(update, energy=0.9):
    """Orthonormal basis of the column directions holding `energy` of the update (None if ~0)."""
    u, s, _ = torch.linalg.svd(update, full_matrices=False)
    if s.square().sum() <= 1e-30:
        return None
    return u[:, :energy_rank(s, energy)]


def principal_cosines(a, b):
    """Cosines of the principal angles between the column spaces of orthonormal bases a and b."""
    return torch.linalg.svdvals(a.T @ b).clamp(max=1.0)


def subspace_overlaps(run_dir, energy=0.9):
    """Task-by-task overlap matrix, mean principal angle (degrees) and mean subspace rank per task."""
    names, updates = task_updates(run_dir)
    bases = [{m: subspace(u, energy) for m, u in upd.items()} for upd in updates]
    n = len(names)
    overlap = [[None] * n for _ in range(n)]
    angle = [[None] * n for _ in range(n)]
    for i in range(n):
        for j in range(n):
            cos2, degrees = [], []
            for module, a in bases[i].items():
                b = bases[j].get(module)
                if a is None or b is None:
                    continue
                c = principal_cosines(a, b)
                cos2.append(float(c.square().mean()))
                degrees.append(float(torch.rad2deg(torch.arccos(c)).mean()))
            if cos2:
                overlap[i][j] = sum(cos2) / len(cos2)
                angle[i][j] = sum(degrees) / len(degrees)
    ranks = [sum(b.shape[1] for b in basis.values() if b is not None) / max(len(basis), 1) for basis in bases]
    return {"tasks": names, "energy": energy, "overlap": overlap, "mean_angle_deg": angle, "mean_rank": ranks}

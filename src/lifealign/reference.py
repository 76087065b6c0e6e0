"""Scoring pairs with the policy or the frozen base model, and the on-disk reference cache.

The base model's log-probabilities of every pair are computed once per (model, precision,
tokenisation) and reused by every method, run and seed: the cache key of a pair is the model's
fingerprint plus the exact token ids, so any change of model, data or tokenisation misses.
"""
import contextlib
import hashlib
import json
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .io import torch_save
from .training import collate_pairs, pair_length, sequence_logps


def autocast(precision, device):
    if precision == "bf16":
        return torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


@torch.no_grad()
def score_pairs(model, records, pad_id, batch_size=16, precision="fp32", use_adapter=True, desc=None,
                progress=False, share_prompt=True):
    """Summed response log-probs and response lengths of each pair: tensor (n, 4) of
    [chosen_logp, rejected_logp, chosen_len, rejected_len]. Batches group pairs of similar length
    (less padding); results come back in the records' order."""
    device = next(model.parameters()).device
    order = sorted(range(len(records)), key=lambda i: pair_length(records[i]))
    out = torch.zeros(len(records), 4)
    was_training = model.training
    model.eval()
    adapter_off = model.disable_adapter() if (not use_adapter and hasattr(model, "disable_adapter")) \
        else contextlib.nullcontext()
    batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    with adapter_off, autocast(precision, device):
        for idx in tqdm(batches, desc=desc, disable=not progress, leave=False):
            batch = collate_pairs([records[i] for i in idx], pad_id, share_prompt)
            batch = {k: v.to(device) for k, v in batch.items()}
            logps, counts = sequence_logps(model, batch)
            chosen, rejected = logps.float().cpu().chunk(2)
            n_chosen, n_rejected = counts.float().cpu().chunk(2)
            out[idx] = torch.stack([chosen, rejected, n_chosen, n_rejected], dim=1)
    model.train(was_training)
    return out


def pair_key(rec):
    return hashlib.sha1(json.dumps(rec["ids"], sort_keys=True).encode()).hexdigest()


class ReferenceCache:
    """Base-model log-probs of pairs, keyed by pair token ids, in one file per model fingerprint."""

    def __init__(self, path):
        self.path = Path(path)
        self.values = torch.load(self.path) if self.path.exists() else {}
        self.hits = 0
        self.misses = 0

    def fill(self, model, records, pad_id, batch_size, precision, progress=False, write=True, share_prompt=True):
        """Set rec["ref"] = (chosen_logp, rejected_logp) for every record, computing the missing ones."""
        keys = [pair_key(r) for r in records]
        missing = sorted({k: i for i, k in enumerate(keys) if k not in self.values}.values())
        self.misses += len(missing)
        self.hits += len(records) - len(missing)
        if missing:
            scores = score_pairs(model, [records[i] for i in missing], pad_id, batch_size, precision,
                                 use_adapter=False, desc="reference log-probs", progress=progress,
                                 share_prompt=share_prompt)
            for i, row in zip(missing, scores):
                self.values[keys[i]] = (float(row[0]), float(row[1]))
            if write:
                torch_save(self.values, self.path)
        for rec, key in zip(records, keys):
            rec["ref"] = self.values[key]
        return len(missing)

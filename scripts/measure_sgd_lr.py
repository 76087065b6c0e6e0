"""Measure the SGD learning rate for GEM / A-GEM (method.sgd_lr) against the run's AdamW.

On the first task of order1 with SmolLM2-135M-Instruct and the CPU profile's LoRA (r 8 on q/v): the
gradient norm of one SFT batch at the initial adapter, then, once per optimizer setting and from the
same initial adapter, a few steps of the preference stage (DPO against the base model), gradient
clipped at 1, constant learning rate. Reports per setting: the gradient norm (before clipping) and
the update norm of each step, and the DPO loss / reward accuracy / mean margin on the training pairs
after the steps.

    OMP_NUM_THREADS=1 PYTHONPATH=src python scripts/measure_sgd_lr.py    # the run in docs/baselines.md
"""
import argparse
import json
import time

import torch

from lifealign.data import default_data_dir, load_task, resolve_order
from lifealign.losses import dpo_loss
from lifealign.lora import add_lora
from lifealign.models import SMOLLM2, load_model
from lifealign.reference import score_pairs
from lifealign.training import collate_pairs, collate_sft, encode_records, make_preference_loss, sft_loss


def batches(records, size):
    return [records[i:i + size] for i in range(0, len(records), size)]


def evaluate(model, records, pad_id, loss_fn):
    model.eval()
    with torch.no_grad():
        pref = [loss_fn(model, collate_pairs(b, pad_id))[1] for b in batches(records, 8)]
    model.train()
    margin = torch.cat([o["margin"] for o in pref])
    loss = torch.cat([o["per_pair_loss"] for o in pref])
    return {"dpo_loss": round(float(loss.mean()), 5), "reward_acc": float((margin > 0).float().mean()),
            "margin": round(float(margin.mean()), 5)}


def train(model, records, stage_loss, collate, optimizer, steps, batch_size):
    params = [p for p in model.parameters() if p.requires_grad]
    norms, losses = [], []
    plan = batches(records, batch_size)
    for step in range(steps):
        batch = collate(plan[step % len(plan)])
        loss, _ = stage_loss(model, batch)
        optimizer.zero_grad()
        loss.backward()
        grad_norm = float(torch.nn.utils.clip_grad_norm_(params, 1.0))
        before = [p.detach().clone() for p in params]
        optimizer.step()
        update = torch.sqrt(sum(((p.detach() - b) ** 2).sum() for p, b in zip(params, before)))
        norms.append((round(grad_norm, 4), round(float(update), 5)))
        losses.append(float(loss.detach()))
    return norms, losses


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--pairs", type=int, default=8)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--steps", type=int, default=4, help="preference steps per setting")
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--max-prompt-length", type=int, default=64)
    ap.add_argument("--settings", nargs="+", default=["adamw:2e-4", "sgd:0.1", "sgd:0.3", "sgd:1.0", "sgd:3.0"])
    args = ap.parse_args()
    data_dir = default_data_dir()
    task_name = resolve_order("order1", data_dir)[0][0]
    task = load_task(task_name, data_dir, args.pairs, args.pairs, 0, "filter")
    model, tok = load_model(SMOLLM2)
    torch.manual_seed(0)
    model = add_lora(model, 8, 16, 0.0, ["q_proj", "v_proj"])
    encode_records(tok, task.train, args.max_length, args.max_prompt_length)
    ref = score_pairs(model, task.train, tok.pad_token_id, 8, use_adapter=False)
    for rec, row in zip(task.train, ref):
        rec["ref"] = (float(row[0]), float(row[1]))
    pad = tok.pad_token_id
    pref_loss = make_preference_loss(dpo_loss, 0.1)
    params = [p for p in model.parameters() if p.requires_grad]
    start = [p.detach().clone() for p in params]
    loss, _ = sft_loss(model, collate_sft(task.train[:args.batch], pad))  # the SFT gradient at the start
    loss.backward()
    sft_grad = float(torch.sqrt(sum((p.grad ** 2).sum() for p in params)))
    model.zero_grad()
    print(json.dumps({"task": task_name, "pairs": len(task.train), "coordinates": sum(p.numel() for p in params),
                      "sft_grad_norm": round(sft_grad, 4), "sft_nll": round(float(loss.detach()), 4),
                      "before": evaluate(model, task.train, pad, pref_loss)}), flush=True)
    for setting in args.settings:
        kind, lr = setting.split(":")
        lr = float(lr)
        with torch.no_grad():
            for p, p0 in zip(params, start):
                p.copy_(p0)
        t0 = time.perf_counter()
        opt = torch.optim.SGD(params, lr=lr) if kind == "sgd" else torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
        norms, losses = train(model, task.train, pref_loss, lambda b: collate_pairs(b, pad), opt, args.steps,
                              args.batch)
        row = {"optimizer": kind, "lr": lr, "grad_norm_and_update_norm": norms,
               "step_losses": [round(x, 4) for x in losses], "after": evaluate(model, task.train, pad, pref_loss),
               "seconds": round(time.perf_counter() - t0, 1)}
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()

"""Where the preference stage's time goes: torch.profiler over our StageTrainer preference stage (as
preference_throughput.py's `ours` builds it), ops grouped into matmuls, casts and copies, attention,
elementwise, optimizer and the rest, with the top ops by self CPU time.

    python benchmarks/stage_profile.py --pairs 16          # SmolLM2, one epoch, pick_precision's precision
    python benchmarks/stage_profile.py --smoke
"""
import tempfile
from collections import defaultdict
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

import common
from lifealign.config import StageConfig
from lifealign.losses import dpo_loss
from lifealign.lora import add_lora
from lifealign.machine import pick_precision
from lifealign.reference import ReferenceCache
from lifealign.training import (ListDataset, StageTrainer, collate_pairs, encode_records, example_lengths,
                                make_preference_loss, training_arguments)

GROUPS = {  # first match wins, on the op name
    "matmul": ("aten::mm", "aten::addmm", "aten::bmm", "aten::matmul", "aten::linear", "aten::_mkl", "onednn"),
    "attention": ("scaled_dot_product", "attention", "aten::_softmax", "aten::softmax"),
    "cast and copy": ("aten::to", "aten::_to_copy", "aten::copy_", "aten::clone", "aten::contiguous",
                      "aten::cat", "aten::index", "aten::embedding"),
    "optimizer": ("Optimizer", "adamw", "aten::_foreach", "aten::lerp", "aten::addcdiv", "aten::addcmul"),
    "elementwise": ("aten::mul", "aten::add", "aten::sub", "aten::div", "aten::pow", "aten::rsqrt", "aten::mean",
                    "aten::silu", "aten::neg", "aten::exp", "aten::log", "aten::sum", "aten::where", "aten::sigmoid",
                    "aten::gather", "aten::fill_", "aten::zero_", "aten::threshold", "aten::le", "aten::lt"),
}


def group_of(name):
    low = name.lower()
    return next((g for g, keys in GROUPS.items() if any(k.lower() in low for k in keys)), "other")


def main(argv=None):
    p = common.parser(__doc__.split("\n")[0])
    args = common.parse(p, argv)
    dev = common.device()
    precision = pick_precision(dev)
    model, tok = common.load(args, dev)
    torch.manual_seed(0)
    model = add_lora(model, r=8, alpha=16, dropout=0.0, targets=["q_proj", "v_proj"])
    records, source = common.load_pairs(args)
    records = [dict(r) for r in records]
    encode_records(tok, records, args.max_length, args.max_prompt_length)
    with tempfile.TemporaryDirectory() as tmp:
        ReferenceCache(Path(tmp) / "ref.pt").fill(model, records, tok.pad_token_id, 16, precision, write=False)
        stage = StageConfig(epochs=1.0, lr=2e-4, batch_size=args.batch)
        params = [q for q in model.parameters() if q.requires_grad]
        trainer = StageTrainer(
            model=model, args=training_arguments(stage, tmp, 0, precision, False, dev),
            train_dataset=ListDataset(records), data_collator=lambda ex: collate_pairs(ex, tok.pad_token_id),
            optimizers=(torch.optim.AdamW(params, lr=2e-4, weight_decay=0.0), None),
            stage_loss=make_preference_loss(dpo_loss, 0.1), lengths=example_lengths(records, "pref"))
        model.train()
        with common.Timer() as t, profile(activities=[ProfilerActivity.CPU]) as prof:
            trainer.train()
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events) or 1
    groups = defaultdict(float)
    for e in events:
        groups[group_of(e.key)] += e.self_cpu_time_total
    shares = {g: round(100 * v / total, 1) for g, v in sorted(groups.items(), key=lambda kv: -kv[1])}
    top = [{"op": e.key, "group": group_of(e.key), "self_ms": round(e.self_cpu_time_total / 1000, 1),
            "share_pct": round(100 * e.self_cpu_time_total / total, 1), "calls": e.count}
           for e in sorted(events, key=lambda e: -e.self_cpu_time_total)[:25]]
    common.table([{"group": g, "share_pct": s} for g, s in shares.items()], ["group", "share_pct"])
    common.table(top[:15], ["op", "group", "self_ms", "share_pct", "calls"])
    markdown = (f"One preference stage of {args.model} ({args.pairs} pairs of {source}, batch {args.batch}, "
                f"{precision}) under torch.profiler: {trainer.state.global_step} steps, "
                f"{trainer.tokens_seen / t.s:,.0f} tokens/s while profiled. Self CPU time by kind of op:\n\n"
                + common.markdown_table([{"ops": g, "share %": v} for g, v in shares.items()], ["ops", "share %"])
                + "\nThe largest ops:\n\n" + common.markdown_table(top[:10], ["op", "group", "share_pct", "calls"]))
    common.write_result("stage_profile", args, {
        "precision": precision, "pairs_from": source, "steps": trainer.state.global_step, "seconds": t.s,
        "tokens_per_s": trainer.tokens_seen / t.s, "group_share_pct": shares, "top_ops": top}, markdown)


if __name__ == "__main__":
    main()

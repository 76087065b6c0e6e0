"""Preference-stage throughput: our trainer against TRL's DPOTrainer, in one run.

Same model, pairs, batch size, max_length, LoRA (q_proj, v_proj, r 8, alpha 16, dropout 0), DPO loss
(beta 0.1), learning rate and schedule, one epoch, no eval, no saving. Three configurations:

  ours         reference log-probs of the frozen base model (score_pairs with the adapter off, cold
               cache) + the StageTrainer preference stage built as runner._train_stage builds it
               (length-grouped batches of shared-prompt rows: each pair one row, its prompt computed
               once), at the precision pick_precision gives (bf16 on CPUs with AVX512-BF16/AMX)
  ours-two-rows  the same with two rows per pair (prompt+chosen, prompt+rejected): our trainer
               before prefix sharing, to show what that change gives
  trl-default  DPOTrainer, fp32 (bf16=False), reference forward at every step; other settings are
               TRL's defaults (gradient checkpointing on)
  trl-best     DPOTrainer, bf16=True, precompute_ref_log_probs=True (its best CPU configuration)
  trl-engine   `engine: trl` of the run config: our tokenisation and reference pass as in `ours`, then
               TRL's DPOTrainer (lifealign.integrations.trl.FPOTrainer, gamma 0 = DPO) trains on those
               tokens (two rows per pair, TRL's collator), at our precision, no gradient checkpointing

Each configuration's time runs from the raw pairs to the trained adapter: tokenisation, the
reference pass and training (for TRL: building DPOTrainer, which tokenises and precomputes, then
train()). Training tokens = non-pad tokens of prompt+chosen and prompt+rejected of every pair of
the epoch, in every configuration (so tokens/s compares the same work; with shared prompts fewer
tokens actually go through the model, reported as processed_tokens). Prompts are first cut to their last max_prompt_length tokens (our truncation), so that
TRL, which truncates sequences from the end, trains on the same prompts. TRL gets the pairs as
conversations, so the same chat template renders them.

    python benchmarks/preference_throughput.py                 # SmolLM2, 64 hh-rlhf pairs (minutes)
    python benchmarks/preference_throughput.py --which ours,trl-best
    python benchmarks/preference_throughput.py --smoke         # tiny random model, seconds
"""
import os
import tempfile
import warnings
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")  # TRL's precompute progress bar

import torch  # noqa: E402

import common  # noqa: E402
from lifealign.config import StageConfig  # noqa: E402
from lifealign.losses import dpo_loss  # noqa: E402
from lifealign.lora import add_lora  # noqa: E402
from lifealign.machine import pick_precision  # noqa: E402
from lifealign.reference import ReferenceCache  # noqa: E402
from lifealign.training import (ListDataset, StageTrainer, clean_response, collate_pairs, encode_records,  # noqa: E402
                                example_lengths, make_preference_loss, training_arguments)

CONFIGS = ("ours", "ours-two-rows", "trl-default", "trl-best", "trl-engine")
LORA = dict(r=8, alpha=16, dropout=0.0, targets=["q_proj", "v_proj"])
GOALS = {"vs_trl_default": 3.0, "vs_trl_best": 1.5}  # ours / TRL, tokens per second


def prepare(args, pairs, dev, share_prompt=True):
    """What both of our engines start from: the model with its LoRA, the pairs tokenised and scored
    by the reference (the timed preparation). Returns (precision, model, tokenizer, records,
    tokenising seconds, reference seconds)."""
    precision = pick_precision(dev)
    model, tok = common.load(args, dev)
    torch.manual_seed(0)
    model = add_lora(model, **LORA)
    records = [dict(r) for r in pairs]
    with common.Timer() as t_tok:
        encode_records(tok, records, args.max_length, args.max_prompt_length)
    with tempfile.TemporaryDirectory() as tmp, common.Timer() as t_ref:
        ReferenceCache(Path(tmp) / "reference.pt").fill(model, records, tok.pad_token_id, args.eval_batch,
                                                        precision, write=False, share_prompt=share_prompt)
    return precision, model, tok, records, t_tok.s, t_ref.s


def run_ours(args, pairs, dev, share_prompt=True):
    precision, model, tok, records, tok_s, ref_s = prepare(args, pairs, dev, share_prompt)
    with tempfile.TemporaryDirectory() as tmp:
        with common.Timer() as t_train:
            stage = StageConfig(epochs=1.0, lr=args.lr, batch_size=args.batch)
            params = [p for p in model.parameters() if p.requires_grad]
            trainer = StageTrainer(
                model=model, args=training_arguments(stage, tmp, 0, precision, False, dev),
                train_dataset=ListDataset(records),
                data_collator=lambda ex: collate_pairs(ex, tok.pad_token_id, share_prompt),
                optimizers=(torch.optim.AdamW(params, lr=args.lr, weight_decay=0.0), None),
                stage_loss=make_preference_loss(dpo_loss, args.beta),
                lengths=example_lengths(records, "pref"))
            model.train()
            trainer.train()
    return {"precision": precision, "reference": "once, before training", "layout": "shared-prompt" if share_prompt
            else "two-rows", "tokens": common.pair_tokens(records), "processed_tokens": trainer.tokens_seen,
            "steps": trainer.state.global_step, "prepare_s": tok_s, "reference_s": ref_s,
            "train_s": t_train.s, "seconds": tok_s + ref_s + t_train.s, "params": common.n_params(model)}


def run_trl_engine(args, pairs, dev):
    from transformers import PrinterCallback
    from trl import DPOConfig

    from lifealign.integrations.hf_datasets import records_dataset
    from lifealign.integrations.trl import FPOTrainer

    precision, model, tok, records, tok_s, ref_s = prepare(args, pairs, dev)
    with tempfile.TemporaryDirectory() as tmp:
        with common.Timer() as t_train:
            config = DPOConfig(
                output_dir=tmp, num_train_epochs=1, per_device_train_batch_size=args.batch, learning_rate=args.lr,
                lr_scheduler_type="cosine", warmup_steps=0.1, max_grad_norm=1.0, weight_decay=0.0, beta=args.beta,
                max_length=args.max_length, bf16=precision == "bf16", gradient_checkpointing=False,
                use_cpu=dev == "cpu", seed=0, data_seed=0, dataloader_num_workers=0, eval_strategy="no",
                save_strategy="no", report_to="none", logging_strategy="no", disable_tqdm=True)
            params = [p for p in model.parameters() if p.requires_grad]
            trainer = FPOTrainer(model=model, args=config, gamma=0.0, processing_class=tok,
                                 train_dataset=records_dataset(records, tokenized=True),
                                 optimizers=(torch.optim.AdamW(params, lr=args.lr, weight_decay=0.0), None))
            trainer.remove_callback(PrinterCallback)
            model.train()
            trainer.train()
    return {"precision": precision, "reference": "once, before training", "layout": "two-rows (TRL)",
            "tokens": common.pair_tokens(records), "steps": trainer.state.global_step, "prepare_s": tok_s,
            "reference_s": ref_s, "train_s": t_train.s, "seconds": tok_s + ref_s + t_train.s,
            "params": common.n_params(model)}


def run_trl(args, pairs, dev, best):
    from datasets import Dataset, disable_progress_bars
    from peft import LoraConfig
    from transformers import PrinterCallback
    from trl import DPOConfig, DPOTrainer

    disable_progress_bars()
    model, tok = common.load(args, dev)
    dataset = Dataset.from_list([{
        "prompt": [{"role": "user", "content": r["prompt"]}],
        "chosen": [{"role": "assistant", "content": clean_response(r["chosen"])}],
        "rejected": [{"role": "assistant", "content": clean_response(r["rejected"])}],
    } for r in pairs])
    peft_config = LoraConfig(task_type="CAUSAL_LM", r=LORA["r"], lora_alpha=LORA["alpha"],
                             lora_dropout=LORA["dropout"], target_modules=LORA["targets"], bias="none")
    with tempfile.TemporaryDirectory() as tmp:
        config = DPOConfig(
            output_dir=tmp, num_train_epochs=1, per_device_train_batch_size=args.batch, learning_rate=args.lr,
            lr_scheduler_type="cosine", warmup_steps=0.1, max_grad_norm=1.0, weight_decay=0.0, beta=args.beta,
            max_length=args.max_length, bf16=best, precompute_ref_log_probs=best,
            gradient_checkpointing=args.trl_gradient_checkpointing == "on",
            use_cpu=dev == "cpu", seed=0, data_seed=0, dataloader_num_workers=0,
            eval_strategy="no", save_strategy="no", report_to="none", logging_strategy="no", disable_tqdm=True)
        with common.Timer() as t_prep:  # tokenises; with precompute_ref_log_probs also runs the reference pass
            trainer = DPOTrainer(model=model, args=config, train_dataset=dataset, processing_class=tok,
                                 peft_config=peft_config)
            trainer.remove_callback(PrinterCallback)  # its end-of-training metrics line
        with common.Timer() as t_train:
            trainer.train()
    ds, cap = trainer.train_dataset, args.max_length
    tokens = sum(min(len(p) + len(c), cap) + min(len(p) + len(r), cap)
                 for p, c, r in zip(ds["prompt_ids"], ds["chosen_ids"], ds["rejected_ids"]))
    return {"precision": "bf16" if best else "fp32",
            "reference": "precomputed in DPOTrainer()" if best else "forward at every step",
            "gradient_checkpointing": config.gradient_checkpointing, "tokens": tokens,
            "steps": trainer.state.global_step, "prepare_s": t_prep.s, "reference_s": None, "train_s": t_train.s,
            "seconds": t_prep.s + t_train.s, "params": common.n_params(trainer.model)}


def markdown(doc):
    """The book's page: the workload, each configuration's time and throughput, and the goals."""
    res, smoke = doc["results"], doc["args"].get("smoke")
    best = res.get("ours", next(iter(res.values())))["tokens_per_s"]
    rows = [{"config": k, "precision": r["precision"], "reference": r["reference"], "tokens": f"{r['tokens']:,}",
             "prepare s": common.num(r.get("prepare_s"), 1), "reference s": common.num(r.get("reference_s"), 1),
             "train s": common.num(r.get("train_s"), 1), "total s": common.num(r["seconds"], 1),
             "tokens/s": common.num(r["tokens_per_s"], 0), "ours / this": common.num(best / r["tokens_per_s"])}
            for k, r in res.items()]
    goals = [f"- ours / TRL {k[7:].replace('_', ' ')}: " + (f"**{v:.2f}x**" if (v := doc["ratios"].get(k)) is not None
                                                            else "not measured")
             + f" (goal ≥ {g:g}x" + ("" if v is None or smoke else f": {'met' if v >= g else 'not met'}") + ")"
             for k, g in doc["goals"].items()]
    return common.workload(doc) + "\n\n" + common.markdown_table(rows, list(rows[0])) + "\n" + "\n".join(goals)


def main(argv=None):
    p = common.parser(__doc__.split("\n")[0])
    p.add_argument("--which", default=",".join(CONFIGS), help=f"comma-separated subset of {','.join(CONFIGS)}")
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--beta", type=float, default=0.1)
    p.add_argument("--eval-batch", type=int, default=16, help="pairs per forward of our reference pass")
    p.add_argument("--trl-gradient-checkpointing", choices=["on", "off"], default="on",
                   help="TRL's default is on; off gives TRL a faster, non-default configuration")
    args = common.parse(p, argv)
    which = [w.strip() for w in args.which.split(",") if w.strip()]
    unknown = set(which) - set(CONFIGS)
    if unknown:
        p.error(f"--which: unknown {sorted(unknown)}; choose from {','.join(CONFIGS)}")
    warnings.filterwarnings("ignore")
    import transformers
    transformers.logging.set_verbosity_error()

    dev = common.device()
    pairs, source = common.load_pairs(args, "train")
    _, tok = common.load(args, dev)
    pairs = common.cut_prompts(tok, [dict(r) for r in pairs], args.max_prompt_length)
    print(f"{args.model}, {len(pairs)} pairs of {source}, batch {args.batch}, max_length {args.max_length}, "
          f"LoRA r{LORA['r']} on {'/'.join(LORA['targets'])}, {dev}, {torch.get_num_threads()} threads")

    results = {}
    for name in which:
        print(f"running {name} ...", flush=True)
        if name.startswith("ours"):
            r = run_ours(args, pairs, dev, share_prompt=name == "ours")
        elif name == "trl-engine":
            r = run_trl_engine(args, pairs, dev)
        else:
            r = run_trl(args, pairs, dev, best=name == "trl-best")
        r["tokens_per_s"] = r["tokens"] / r["seconds"]
        results[name] = r
        print(f"  {r['seconds']:.1f} s, {r['tokens_per_s']:.0f} tokens/s", flush=True)

    ratios = {}
    for key, trl_name in (("vs_trl_default", "trl-default"), ("vs_trl_best", "trl-best")):
        both = "ours" in results and trl_name in results
        ratios[key] = results["ours"]["tokens_per_s"] / results[trl_name]["tokens_per_s"] if both else None
    rows = [{"config": n, "precision": r["precision"], "reference": r["reference"], "tokens": r["tokens"],
             "seconds": r["seconds"], "tokens/s": r["tokens_per_s"],
             "ours/this": results["ours"]["tokens_per_s"] / r["tokens_per_s"] if "ours" in results else None}
            for n, r in results.items()]
    print()
    common.table(rows, ["config", "precision", "reference", "tokens", "seconds", "tokens/s", "ours/this"])
    for key, goal in GOALS.items():
        v = ratios[key]
        verdict = "-" if v is None or args.smoke else ("met" if v >= goal else "NOT met")
        print(f"ours / {key[3:].replace('_', '-')}: {'-' if v is None else f'{v:.2f}x'}  "
              f"(goal >= {goal}x: {verdict})")
    n = next(iter(results.values()))["params"] if results else None
    common.write_result("preference_throughput", args, {
        "model": {"name": args.model, "params": n, "lora": LORA},
        "data": {"task": args.task, "source": source, "pairs": len(pairs)},
        "device": dev, "results": results, "ratios": ratios, "goals": GOALS,
    }, markdown)


if __name__ == "__main__":
    main()

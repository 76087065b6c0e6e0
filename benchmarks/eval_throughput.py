"""Evaluation throughput: the preference-scoring forward pass and generation, in tokens per second.

forward     score_pairs (the pass behind reward and log-likelihood accuracy) of the LoRA policy
            (adapter on) over --pairs test pairs, --eval-batch pairs per forward, in bf16 autocast
            and in fp32, each in both batch layouts: shared-prompt rows (one row per pair, the
            prompt computed once; what runs use) and two rows per pair (the layout before).
            Tokens = non-pad tokens of prompt+chosen and prompt+rejected, the same in both layouts.
generation  generate_token_ids (greedy, --max-new-tokens) for --gen-prompts test prompts at each
            batch size of --gen-batch-sizes, at the precision pick_precision gives. Tokens = the
            generated tokens (each response cut at its end-of-sequence token).

Each measurement follows an untimed warm-up call. Goal: forward >= 2,000 tokens/s on SmolLM2.

    python benchmarks/eval_throughput.py            # SmolLM2, 64 hh-rlhf test pairs
    python benchmarks/eval_throughput.py --smoke    # tiny random model, seconds
"""
import warnings

import torch

import common
from lifealign.generation import generate_token_ids
from lifealign.lora import add_lora
from lifealign.machine import pick_precision
from lifealign.reference import score_pairs
from lifealign.training import encode_records, pair_length

GOAL_FORWARD = 2000.0  # tokens/s on SmolLM2, this 2-core machine


def markdown(doc):
    """The book's page: the preference-scoring forward and greedy generation, against the goal."""
    fwd = [{"precision": r["precision"], "layout": r["layout"], "pairs": r["pairs"], "tokens": f"{r['tokens']:,}",
            "seconds": common.num(r["seconds"], 1), "tokens/s": common.num(r["tokens_per_s"], 0)}
           for r in doc["forward"].values()]
    gen = [{"batch size": r["batch_size"], "prompts": r["prompts"], "precision": r["precision"],
            "generated tokens": r["generated_tokens"], "seconds": common.num(r["seconds"], 1),
            "tokens/s": common.num(r["tokens_per_s"], 1)} for r in doc["generation"].values()]
    goal = doc["goals"]["forward_tokens_per_s"]
    top = max((r["tokens_per_s"] for r in doc["forward"].values()), default=None)
    verdict = "" if top is None or doc["args"].get("smoke") else f": {'met' if top >= goal else 'not met'}"
    return (common.workload(doc) + "\n\nPreference-scoring forward (what reward and log-likelihood accuracy need):\n\n"
            + common.markdown_table(fwd, list(fwd[0])) + f"\nBest: {common.num(top, 0)} tokens/s (goal ≥ {goal:,.0f}"
            + verdict + ").\n\nGreedy generation (what BLEU-4 and ROUGE-L need):\n\n"
            + common.markdown_table(gen, list(gen[0])))


def main(argv=None):
    p = common.parser(__doc__.split("\n")[0])
    p.add_argument("--eval-batch", type=int, default=16, help="pairs per forward pass")
    p.add_argument("--precisions", default="bf16,fp32")
    p.add_argument("--gen-prompts", type=int, default=16)
    p.add_argument("--gen-batch-sizes", default="1,8,16")
    p.add_argument("--max-new-tokens", type=int, default=64)
    args = common.parse(p, argv)
    if args.smoke:
        args.gen_prompts, args.max_new_tokens = min(args.gen_prompts, 4), min(args.max_new_tokens, 4)
    warnings.filterwarnings("ignore")
    dev = common.device()
    records, source = common.load_pairs(args, "test")
    model, tok = common.load(args, dev)
    torch.manual_seed(0)
    model = add_lora(model)  # the evaluated policy carries the adapter (r 8 on q/v)
    encode_records(tok, records, args.max_length, args.max_prompt_length)
    tokens = common.pair_tokens(records)
    print(f"{args.model}, {len(records)} pairs of {source}, {tokens} tokens, {dev}, {torch.get_num_threads()} threads")

    forward = {}
    for precision in [s.strip() for s in args.precisions.split(",") if s.strip()]:
        for layout, share in (("shared-prompt", True), ("two-rows", False)):
            score_pairs(model, records[:2], tok.pad_token_id, args.eval_batch, precision)  # warm-up
            with common.Timer() as t:
                score_pairs(model, records, tok.pad_token_id, args.eval_batch, precision, share_prompt=share)
            processed = sum(pair_length(r) for r in records) if share else tokens
            forward[f"{precision}/{layout}"] = {"precision": precision, "layout": layout, "pairs": len(records),
                                                "tokens": tokens, "processed_tokens": processed, "seconds": t.s,
                                                "tokens_per_s": tokens / t.s}

    gen_precision = pick_precision(dev)
    prompts = [r["prompt"] for r in records[: args.gen_prompts]]
    generation = {}
    for bs in [int(s) for s in args.gen_batch_sizes.split(",") if s.strip()]:
        generate_token_ids(model, tok, prompts[:1], 2, 1, max_prompt_length=args.max_prompt_length,
                           precision=gen_precision)  # warm-up
        with common.Timer() as t:
            ids = generate_token_ids(model, tok, prompts, args.max_new_tokens, bs,
                                     max_prompt_length=args.max_prompt_length, precision=gen_precision)
        n = sum(len(row) for row in ids)
        generation[str(bs)] = {"batch_size": bs, "prompts": len(prompts), "precision": gen_precision,
                               "generated_tokens": n, "seconds": t.s, "tokens_per_s": n / t.s}

    print("\nforward (preference scoring)")
    common.table(list(forward.values()), ["precision", "layout", "pairs", "tokens", "seconds", "tokens_per_s"])
    print(f"\ngeneration (greedy, max_new_tokens {args.max_new_tokens}, {gen_precision})")
    common.table(list(generation.values()), ["batch_size", "prompts", "generated_tokens", "seconds", "tokens_per_s"])
    best = max((v["tokens_per_s"] for v in forward.values()), default=None)
    if best is not None and not args.smoke:
        print(f"\nforward, best configuration: {best:.0f} tokens/s (goal >= {GOAL_FORWARD:.0f} on SmolLM2: "
              f"{'met' if best >= GOAL_FORWARD else 'NOT met'})")
    common.write_result("eval_throughput", args, {
        "model": {"name": args.model, "params": common.n_params(model)},
        "data": {"task": args.task, "source": source, "pairs": len(records)},
        "device": dev, "forward": forward, "generation": generation, "goals": {"forward_tokens_per_s": GOAL_FORWARD},
    }, markdown)


if __name__ == "__main__":
    main()

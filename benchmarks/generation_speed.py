"""Evaluation speed, old path against new, side by side in one process: generation, the eval forward
and the cached base-model row.

generation  greedy generate_token_ids of --gen-prompts test prompts of each task of --tasks:
            old = one call per task, batches of --old-batch, fp32 weights cast by autocast on each
            call; new = one call for every task's prompts, batches of --new-batch, frozen weights
            stored in bf16 (models.freeze_base_in_bf16; only in a bf16 run). Tokens = generated
            tokens; also whether the token ids are identical.
forward     score_pairs of the LoRA policy (shared-prompt rows, --eval-batch pairs) over the first
            task's --pairs test pairs, with the fp32 and the bf16-stored frozen weights; pair tokens
            per second and the largest difference of the scores.
base row    the base model's generations (adapter off, the new path) against reading the cached
            row (a JSON file, as ContinualLoop.base_row_path keeps it).

Wall seconds and process CPU seconds are both recorded: on a machine shared with other jobs the
CPU seconds of a one-thread run (OMP_NUM_THREADS=1) compare the two paths more fairly.

    python benchmarks/generation_speed.py            # SmolLM2, 5 tasks x 16 prompts, 64 new tokens
    python benchmarks/generation_speed.py --smoke    # tiny random model, seconds
"""
import copy
import json
import tempfile
import time
import warnings
from pathlib import Path

import torch

import common
from lifealign import data as data_mod
from lifealign.generation import generate_token_ids
from lifealign.lora import add_lora
from lifealign.machine import pick_precision
from lifealign.models import freeze_base_in_bf16
from lifealign.reference import score_pairs
from lifealign.training import encode_records


class Clock:
    """with Clock() as c: ...; then c.wall and c.cpu are the wall and process CPU seconds."""

    def __enter__(self):
        self.t0, self.c0 = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc):
        self.wall, self.cpu = time.perf_counter() - self.t0, time.process_time() - self.c0


def rates(clock, n):
    return {"seconds": clock.wall, "cpu_seconds": clock.cpu, "tokens_per_s": n / clock.wall,
            "tokens_per_cpu_s": n / clock.cpu}


def main(argv=None):
    p = common.parser(__doc__.split("\n")[0])
    p.add_argument("--tasks", default="order1", help="a task order name or comma-separated task names")
    p.add_argument("--gen-prompts", type=int, default=16, help="prompts per task")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--old-batch", type=int, default=16)
    p.add_argument("--new-batch", type=int, default=64)
    p.add_argument("--eval-batch", type=int, default=16)
    args = common.parse(p, argv)
    if args.smoke:
        args.gen_prompts, args.max_new_tokens, args.new_batch = min(args.gen_prompts, 3), 4, 8
    warnings.filterwarnings("ignore")
    dev = common.device()
    precision = pick_precision(dev)
    data_dir = data_mod.default_data_dir()
    names = args.tasks.split(",") if "," in args.tasks else data_mod.resolve_order(args.tasks, data_dir)[0]
    prompts = {}
    for name in names:
        args.task = name
        records, _ = common.load_pairs(args, "test")
        prompts[name] = [r["prompt"] for r in records[: args.gen_prompts]]
    args.task = names[0]
    model, tok = common.load(args, dev)
    torch.manual_seed(0)
    old = add_lora(model).eval()
    new = copy.deepcopy(old)
    frozen = freeze_base_in_bf16(new) if precision == "bf16" else 0
    every = [x for name in names for x in prompts[name]]
    print(f"{args.model}, {len(names)} tasks x {args.gen_prompts} prompts, {precision}, {frozen} Linear weights "
          f"stored in bf16, {torch.get_num_threads()} threads")

    gen = lambda m, ps, bs: generate_token_ids(m, tok, ps, args.max_new_tokens, bs,  # noqa: E731
                                               max_prompt_length=args.max_prompt_length, precision=precision)
    gen(old, every[:1], 1), gen(new, every[:1], 1)  # warm-up
    with Clock() as c_old:
        old_ids = [ids for name in names for ids in gen(old, prompts[name], args.old_batch)]
    with Clock() as c_same:  # the old batches with the bf16-stored weights: the same ids, cheaper steps
        same_ids = [ids for name in names for ids in gen(new, prompts[name], args.old_batch)]
    with Clock() as c_new:
        new_ids = gen(new, every, args.new_batch)
    n_old, n_same, n_new = sum(map(len, old_ids)), sum(map(len, same_ids)), sum(map(len, new_ids))
    differ = sum(a != b for a, b in zip(old_ids, new_ids))
    generation = {
        "same_batches_bf16_weights": {"batch_size": args.old_batch, "calls": len(names),
                                      "weights": "bf16" if frozen else "fp32", "generated_tokens": n_same,
                                      "identical_to_old": same_ids == old_ids, **rates(c_same, n_same)},
        "prompts": len(every), "max_new_tokens": args.max_new_tokens, "precision": precision,
        "old": {"batch_size": args.old_batch, "calls": len(names), "weights": "fp32", "generated_tokens": n_old,
                **rates(c_old, n_old)},
        "new": {"batch_size": args.new_batch, "calls": 1, "weights": "bf16" if frozen else "fp32",
                "generated_tokens": n_new, **rates(c_new, n_new)},
        "identical": differ == 0, "prompts_differing": differ,
    }
    generation["speedup_wall"] = c_old.wall / c_new.wall
    generation["speedup_cpu"] = c_old.cpu / c_new.cpu

    records, source = common.load_pairs(args, "test")
    encode_records(tok, records, args.max_length, args.max_prompt_length)
    tokens = common.pair_tokens(records)
    forward, scores = {}, {}
    for label, m in (("fp32-weights", old), ("bf16-weights", new)):
        score_pairs(m, records[:2], tok.pad_token_id, args.eval_batch, precision)  # warm-up
        with Clock() as c:
            scores[label] = score_pairs(m, records, tok.pad_token_id, args.eval_batch, precision)
        forward[label] = {"pairs": len(records), "tokens": tokens, **rates(c, tokens)}
    forward["max_abs_diff"] = float((scores["fp32-weights"] - scores["bf16-weights"]).abs().max())

    with Clock() as c_gen, torch.no_grad(), new.disable_adapter():
        row = {"generations": gen(new, every, args.new_batch)}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "row.json"
        path.write_text(json.dumps(row))
        with Clock() as c_read:
            cached = json.loads(path.read_text())
    assert cached == row
    base_row = {"computed_s": c_gen.wall, "cached_s": c_read.wall, "saved_s": c_gen.wall - c_read.wall}

    print(f"\ngeneration (greedy, {len(every)} prompts, max_new_tokens {args.max_new_tokens}, {precision})")
    common.table([{"path": k, **generation[k]} for k in ("old", "new")],
                 ["path", "batch_size", "calls", "weights", "generated_tokens", "seconds", "cpu_seconds",
                  "tokens_per_s", "tokens_per_cpu_s"])
    print(f"speedup: {generation['speedup_wall']:.2f}x wall, {generation['speedup_cpu']:.2f}x CPU; "
          f"identical token ids: {generation['identical']} ({differ} prompts differ)")
    print(f"\neval forward ({len(records)} pairs of {source}, {precision})")
    common.table([{"weights": k, **v} for k, v in forward.items() if isinstance(v, dict)],
                 ["weights", "pairs", "tokens", "seconds", "cpu_seconds", "tokens_per_s"])
    print(f"largest score difference: {forward['max_abs_diff']:.3g}")
    print(f"\nbase row: generated in {c_gen.wall:.2f} s, read from the cache in {c_read.wall * 1000:.1f} ms")
    same = generation["same_batches_bf16_weights"]
    rows = [{"path": "before: a call per task, fp32 weights cast on every call", "batch": args.old_batch,
             "tokens/s": generation["old"]["tokens_per_s"], "tokens per CPU s": generation["old"]["tokens_per_cpu_s"],
             "ids equal to before": "-"},
            {"path": "the same batches, frozen weights stored in bf16", "batch": args.old_batch,
             "tokens/s": same["tokens_per_s"], "tokens per CPU s": same["tokens_per_cpu_s"],
             "ids equal to before": "yes" if same["identical_to_old"] else "no"},
            {"path": "now: one call for every task's prompts, bf16 weights", "batch": args.new_batch,
             "tokens/s": generation["new"]["tokens_per_s"], "tokens per CPU s": generation["new"]["tokens_per_cpu_s"],
             "ids equal to before": f"{len(every) - differ} of {len(every)} (other batches)"}]
    fwd = [{"frozen weights": k, "pair tokens/s": v["tokens_per_s"], "per CPU s": v["tokens_per_cpu_s"]}
           for k, v in forward.items() if isinstance(v, dict)]
    markdown = (f"Greedy generation of {args.gen_prompts} test prompts of each of {len(names)} tasks "
                f"({args.max_new_tokens} new tokens, {precision}, {args.model}):\n\n"
                + common.markdown_table(rows, list(rows[0]))
                + f"\nSpeedup now / before: {generation['speedup_wall']:.2f}x wall, {generation['speedup_cpu']:.2f}x "
                "CPU time. Within a batch the ids equal plain `generate`'s (a test on real SmolLM2 prompts); "
                "another grouping of prompts into batches changes padding and so, in bf16, some outputs, "
                "as it does for plain `generate`.\n\nEvaluation forward (score_pairs of the LoRA policy, "
                f"{len(records)} pairs; largest score difference {forward['max_abs_diff']:.3g}):\n\n"
                + common.markdown_table(fwd, list(fwd[0]))
                + f"\nThe base model's row: computed in {c_gen.wall:.1f} s, read from its cache in "
                f"{c_read.wall * 1000:.1f} ms by every later run of a profile.\n")
    common.write_result("generation_speed", args, {
        "model": {"name": args.model, "params": common.n_params(model)}, "tasks": names, "device": dev,
        "generation": generation, "forward": forward, "base_row": base_row,
    }, markdown)


if __name__ == "__main__":
    main()

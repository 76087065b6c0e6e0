"""The paper profile's GPU path: a short preference stage of the paper's architectures, random weights.

Throughput needs no trained weights, and the GPU machine can download none, so each architecture is
built from its published config (written below) with random bf16 weights. On it: LoRA r 8 / alpha
16 on q_proj and v_proj (fp32), synthetic pairs of random token ids (prompt --prompt-len, chosen and
rejected --response-len each; the paper's max_length is 2048), the reference pass (score_pairs with
the adapter off) and one epoch of the StageTrainer preference stage (FPO) as the runner builds it,
with shared-prompt rows and bf16 autocast.

Reported per architecture: pair tokens per second of the stage (reference pass + training), model
FLOPs per second with 4 N per processed training token and 2 N per reference token (N = the base
model's parameters), and their share of the card's bf16 rate measured with a large matmul.

    python benchmarks/gpu_preference.py                      # on a GPU: qwen2.5-0.5b and qwen2.5-7b
    python benchmarks/gpu_preference.py --archs qwen2.5-0.5b --pairs 32
    python benchmarks/gpu_preference.py --smoke              # a 2-layer Qwen2 on the CPU, seconds
"""
import argparse
import random
import tempfile

import torch

import common
from hardware_limit import matmul_gflops
from lifealign.config import StageConfig
from lifealign.losses import fpo_loss
from lifealign.lora import add_lora
from lifealign.reference import ReferenceCache
from lifealign.training import (ListDataset, StageTrainer, collate_pairs, example_lengths, make_preference_loss,
                                training_arguments)

# Published configs (config.json of Qwen/Qwen2.5-0.5B-Instruct and Qwen/Qwen2.5-7B-Instruct).
ARCHS = {
    "qwen2.5-0.5b": dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                         num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True,
                         max_position_embeddings=32768, rope_theta=1000000.0, rms_norm_eps=1e-6),
    "qwen2.5-7b": dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
                       num_key_value_heads=4, vocab_size=152064, tie_word_embeddings=False,
                       max_position_embeddings=32768, rope_theta=1000000.0, rms_norm_eps=1e-6),
    "smoke": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, vocab_size=512, tie_word_embeddings=True, max_position_embeddings=512),
}


def build(arch, dev):
    from transformers import AutoModelForCausalLM, Qwen2Config

    torch.manual_seed(0)
    config = Qwen2Config(**ARCHS[arch])
    dtype = torch.bfloat16 if dev == "cuda" else torch.float32
    model = AutoModelForCausalLM.from_config(config, dtype=dtype).to(dev)
    return add_lora(model, r=8, alpha=16, dropout=0.0, targets=["q_proj", "v_proj"])


def synthetic_pairs(n, vocab, prompt_len, response_len, seed=0):
    rng = random.Random(seed)
    ids = lambda k: [rng.randrange(3, vocab) for _ in range(k)]  # noqa: E731
    return [{"ids": {"prompt": ids(prompt_len), "chosen": ids(rng.randint(response_len // 2, response_len)),
                     "rejected": ids(rng.randint(response_len // 2, response_len))}} for _ in range(n)]


def run_arch(arch, args, dev):
    model = build(arch, dev)
    n = common.n_params(model)
    precision = "bf16" if dev == "cuda" else "fp32"
    records = synthetic_pairs(args.pairs, ARCHS[arch]["vocab_size"], args.prompt_len, args.response_len)
    pad_id = 0
    if dev == "cuda":
        torch.cuda.reset_peak_memory_stats()
    with tempfile.TemporaryDirectory() as tmp:
        with common.Timer() as t_ref:
            ReferenceCache(f"{tmp}/reference.pt").fill(model, records, pad_id, args.eval_batch, precision, write=False)
            if dev == "cuda":
                torch.cuda.synchronize()
        stage = StageConfig(epochs=1.0, lr=5e-6, batch_size=args.batch, grad_accum=args.grad_accum)
        params = [p for p in model.parameters() if p.requires_grad]
        trainer = StageTrainer(
            model=model, args=training_arguments(stage, tmp, 0, precision, False, dev),
            train_dataset=ListDataset(records), data_collator=lambda ex: collate_pairs(ex, pad_id),
            optimizers=(torch.optim.AdamW(params, lr=5e-6), None),
            stage_loss=make_preference_loss(fpo_loss, 0.1, gamma=2.0),
            lengths=example_lengths(records, "pref"))
        model.train()
        with common.Timer() as t_train:
            trainer.train()
            if dev == "cuda":
                torch.cuda.synchronize()
    processed = sum(sum(len(v) for v in r["ids"].values()) for r in records)
    pair_tokens = common.pair_tokens(records)
    flops = 2 * n * processed + 4 * n * trainer.tokens_seen
    seconds = t_ref.s + t_train.s
    result = {"params": n, "pairs": len(records), "pair_tokens": pair_tokens, "processed_tokens": processed,
              "reference_s": t_ref.s, "train_s": t_train.s, "seconds": seconds,
              "tokens_per_s": pair_tokens / seconds, "train_tokens_per_s": pair_tokens / t_train.s,
              "model_tflops": flops / seconds / 1e12,
              "peak_memory_gb": torch.cuda.max_memory_allocated() / 2**30 if dev == "cuda" else None}
    del trainer, model
    if dev == "cuda":
        torch.cuda.empty_cache()
    return result


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--archs", default="qwen2.5-0.5b,qwen2.5-7b")
    p.add_argument("--pairs", type=int, default=64)
    p.add_argument("--batch", type=int, default=4, help="pairs per step")
    p.add_argument("--grad-accum", type=int, default=1)
    p.add_argument("--eval-batch", type=int, default=8, help="pairs per reference forward")
    p.add_argument("--prompt-len", type=int, default=512)
    p.add_argument("--response-len", type=int, default=512, help="longest response; each is 1/2 to 1 of it")
    p.add_argument("--smoke", action="store_true", help="a 2-layer Qwen2 config, 8 short pairs (seconds, CPU)")
    p.add_argument("--out", default=None, help=f"folder for the JSON (default {common.RESULTS})")
    args = p.parse_args(argv)
    dev = common.device()
    if args.smoke:
        args.archs, args.pairs, args.batch, args.prompt_len, args.response_len = "smoke", 8, 4, 16, 16
    elif dev != "cuda":
        p.error("no GPU here: this check is for the paper profile's GPU path (use --smoke to try it on a CPU)")
    peak = matmul_gflops(8192 if dev == "cuda" else 512, torch.bfloat16, 5, dev) / 1000  # TFLOP/s
    print(f"{dev} {torch.cuda.get_device_name(0) if dev == 'cuda' else ''}: bf16 matmul {peak:.1f} TFLOP/s")
    results = {}
    for arch in [a.strip() for a in args.archs.split(",") if a.strip()]:
        print(f"running {arch} ...", flush=True)
        r = run_arch(arch, args, dev)
        r["share_of_bf16_matmul_pct"] = 100 * r["model_tflops"] / peak
        results[arch] = r
        print(f"  {r['seconds']:.1f} s, {r['tokens_per_s']:.0f} pair tokens/s, {r['model_tflops']:.1f} TFLOP/s "
              f"({r['share_of_bf16_matmul_pct']:.0f}% of the matmul rate)", flush=True)
    common.table([{"arch": a, **r} for a, r in results.items()],
                 ["arch", "params", "pair_tokens", "seconds", "tokens_per_s", "model_tflops", "share_of_bf16_matmul_pct",
                  "peak_memory_gb"])
    common.write_result("gpu_preference", args, {"device": dev, "bf16_matmul_tflops": peak, "results": results})


if __name__ == "__main__":
    main()

"""Hardware limit of this machine (bf16 and fp32 matmul GFLOP/s) and the share training and evaluation reach.

Peak: for each size n of --sizes, the best of --repeats timed n x n @ n x n matmuls (2 n^3 FLOPs),
in bf16 and in fp32, at torch's default thread count; the peak of a precision is its best size.

Achieved, from the JSON of preference_throughput.py / eval_throughput.py given with --from: model
FLOPs per second at the measured rate of tokens that went through the model (a shared prompt
counts once), N = the base model's parameters (tied embeddings
counted once, LoRA matrices excluded):
  LoRA training   4 N per training token: forward 2 N + backward 2 N (gradients of the activations
                  through the frozen weights; frozen weights get no weight gradients; the LoRA
                  matrices' own FLOPs, under 1% of N at r 8, are left out)
  eval forward    2 N per token (prompt + response of both sequences of a pair)
  generation      2 N per generated token (the prompts' prefill is not counted: a lower bound)
Not counted, as cost rather than useful work: reference passes, gradient-checkpointing
recomputation, the attention term that grows with sequence length. Our passes skip the vocabulary
projection at prompt positions, so 2 N per token slightly overstates their work; the formula is the
same for every configuration, so ratios between them are unaffected. Share = achieved / the peak of
the precision the run used (bf16 autocast -> bf16 peak, else fp32).

    python benchmarks/hardware_limit.py --from benchmarks/results/preference_throughput.json \\
        benchmarks/results/eval_throughput.json
    python benchmarks/hardware_limit.py --smoke
"""
import argparse
import json
import time

import torch

import common

DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}


def matmul_gflops(n, dtype, repeats, dev):
    a = torch.randn(n, n, device=dev).to(dtype)
    b = torch.randn(n, n, device=dev).to(dtype)
    torch.matmul(a, b)  # warm-up
    best = float("inf")
    for _ in range(repeats):
        if dev == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        torch.matmul(a, b)
        if dev == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best / 1e9


def _processed_rate(r):
    """Tokens per second that actually went through the model: with shared-prompt rows a pair's
    prompt is computed once, so fewer than the pair tokens `tokens_per_s` counts."""
    return r["tokens_per_s"] * r.get("processed_tokens", r["tokens"]) / r["tokens"]


def achieved(doc):
    """(label, config, precision, processed tokens/s, FLOPs per token) rows of one benchmark JSON."""
    n = doc.get("model", {}).get("params")
    if doc.get("name") == "preference_throughput":
        return [("training", k, r["precision"], _processed_rate(r), 4 * n) for k, r in doc["results"].items()]
    if doc.get("name") == "eval_throughput":
        rows = [("eval forward", k, r["precision"], _processed_rate(r), 2 * n) for k, r in doc["forward"].items()]
        rows += [("generation", f"batch {r['batch_size']}", r["precision"], r["tokens_per_s"], 2 * n)
                 for r in doc["generation"].values()]
        return rows
    print(f"note: {doc.get('name')!r} is not a throughput benchmark; skipped")
    return []


def markdown(doc):
    """The book's page: the practical matmul peak, and the share of it each workload reaches."""
    mm = [{"dtype": r["dtype"], "n": r["n"], "GFLOP/s": common.num(r["gflops"], 1)} for r in doc["matmul"]]
    ach = [{"what": r["what"], "config": r["config"], "precision": r["precision"],
            "tokens/s": common.num(r["tokens_per_s"], 0), "GFLOP/s": common.num(r["gflops"], 1),
            "share of peak %": common.num(r["share_pct"], 1)} for r in doc["achieved"]]
    f = doc["formulas"]
    return ("Best large square matmuls (the practical peak):\n\n" + common.markdown_table(mm, list(mm[0]))
            + f"\nModel FLOPs per second reached (N = {f['N']}: training {f['training']}, evaluation "
            f"{f['eval_forward']}, generation {f['generation']}):\n\n"
            + (common.markdown_table(ach, list(ach[0])) if ach else "(no throughput JSON was given with `--from`)\n"))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sizes", default="2048,4096", help="matmul sizes")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--from", dest="sources", nargs="*", default=[], metavar="JSON",
                   help="benchmark JSONs whose token rates are compared with the peak")
    p.add_argument("--smoke", action="store_true", help="small matmuls (256, 512), 2 repeats")
    p.add_argument("--out", default=None, help=f"folder for the JSON (default {common.RESULTS})")
    args = p.parse_args(argv)
    if args.smoke:
        args.sizes, args.repeats = "256,512", 2
    dev = common.device()

    matmul = [{"dtype": name, "n": n, "gflops": matmul_gflops(n, dtype, args.repeats, dev)}
              for name, dtype in DTYPES.items() for n in [int(s) for s in args.sizes.split(",")]]
    peak = {name: max(m["gflops"] for m in matmul if m["dtype"] == name) for name in DTYPES}
    print(f"matmul on {dev}, {torch.get_num_threads()} threads, best of {args.repeats}")
    common.table(matmul, ["dtype", "n", "gflops"])

    rows = []
    for path in args.sources:
        doc = json.loads(open(path).read())
        for label, config, precision, tps, flops_per_token in achieved(doc):
            gflops = tps * flops_per_token / 1e9
            rows.append({"source": doc["name"], "what": label, "config": config, "precision": precision,
                         "tokens_per_s": tps, "gflops": gflops,
                         "share_pct": 100 * gflops / peak.get(precision, peak["fp32"])})
    if rows:
        print(f"\nshare of the matmul peak (bf16 {peak['bf16']:.0f}, fp32 {peak['fp32']:.0f} GFLOP/s)")
        common.table(rows, ["what", "config", "precision", "tokens_per_s", "gflops", "share_pct"])
    common.write_result("hardware_limit", args, {
        "device": dev, "matmul": matmul, "peak_gflops": peak, "achieved": rows,
        "formulas": {"training": "4 * N * training tokens", "eval_forward": "2 * N * tokens",
                     "generation": "2 * N * generated tokens", "N": "base model parameters"},
    }, markdown)


if __name__ == "__main__":
    main()

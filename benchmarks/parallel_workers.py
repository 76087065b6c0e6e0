"""Parallel workers: is a long grid faster as one run at a time on all cores, or as several runs at
once (separate clones or machines' worth of work) with fewer torch threads each?

A run is preference training, preference-scoring forwards and greedy generation. This script runs
the benchmarks that time those parts, as child processes with the same workload flags:

  preference_throughput.py --which ours            reference pass + one preference epoch
  eval_throughput.py --precisions bf16 --gen-batch-sizes 16   forward and generation as runs do them

first as one process with torch's default threads (all cores), then as --workers processes at once,
each with OMP_NUM_THREADS = cores // workers. Per part it reports tokens/s: the one process's, and
the sum over the concurrent processes. The end-to-end measure is the work done per hour:
workers x (one process's wall time) / (the slowest concurrent process's wall time); above 1, the
parallel layout finishes a grid sooner.

    python benchmarks/parallel_workers.py            # SmolLM2, 64 hh-rlhf pairs (about 5 minutes)
    python benchmarks/parallel_workers.py --smoke    # tiny random model, seconds
"""
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import common

HERE = Path(__file__).resolve().parent
# benchmark -> (its extra flags, {part: keys to that part's tokens/s in its JSON})
BENCHMARKS = {
    "preference_throughput": (["--which", "ours"], {"preference training": ("results", "ours", "tokens_per_s")}),
    "eval_throughput": (["--precisions", "bf16", "--gen-batch-sizes", "16"],
                        {"scoring forward": ("forward", "bf16/shared-prompt", "tokens_per_s"),
                         "generation": ("generation", "16", "tokens_per_s")}),
}
WORKLOAD = ("model", "task", "pairs", "batch", "max_length", "max_prompt_length")


def workload_flags(args):
    flags = ["--smoke"] if args.smoke else []
    for key in WORKLOAD:
        flags += [f"--{key.replace('_', '-')}", str(getattr(args, key))]
    return flags


def run_concurrently(name, flags, n, threads, out):
    """Start n processes of benchmark `name` at once; [(wall_s, its JSON)] once all have exited."""
    env = dict(os.environ)
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    procs = []
    for i in range(n):
        folder = Path(out) / f"{name}-{threads or 'default'}-{i}"
        cmd = [sys.executable, str(HERE / f"{name}.py"), *flags, "--out", str(folder)]
        procs.append((folder, time.perf_counter(), subprocess.Popen(
            cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)))
    done = []
    for folder, t0, proc in procs:
        _, err = proc.communicate()
        wall = time.perf_counter() - t0
        if proc.returncode != 0:
            raise SystemExit(f"{name}.py ({threads or 'default'} threads) failed:\n{err[-3000:]}")
        done.append((wall, json.loads((folder / f"{name}.json").read_text())))
    return done


def tokens_per_s(doc, keys):
    for k in keys:
        doc = doc[k]
    return doc


def markdown(doc):
    """The book's page: tokens per second of one process against several at once, and work per hour."""
    a, any_run = doc["args"], next(iter(doc["results"].values()))
    rows = [{"benchmark": f"`{name}`", "part": part,
             "one process tokens/s": common.num(v["one_process_tokens_per_s"], 0),
             f"{r['parallel']['processes']} processes tokens/s": common.num(v["parallel_tokens_per_s"], 0),
             "ratio": common.num(v["parallel_tokens_per_s"] / v["one_process_tokens_per_s"])}
            for name, r in doc["results"].items() for part, v in r["parts"].items()]
    walls = "; ".join(f"`{name}` {common.num(r['work_per_hour_ratio'])} (one process "
                      f"{common.num(r['one_process']['wall_s'], 0)} s, {r['parallel']['processes']} at once "
                      f"{common.num(max(r['parallel']['wall_s']), 0)} s)"
                      for name, r in doc["results"].items())
    return (f"{a['model']}, {a['pairs']} pairs of {a['task']}, on {doc['cores']} cores: one process with "
            f"{any_run['one_process']['threads']} torch threads against {any_run['parallel']['processes']} "
            f"processes at once with {any_run['parallel']['threads_each']} each.\n\n"
            + common.markdown_table(rows, list(rows[0]))
            + f"\nWork per hour of the parallel layout relative to one process: {walls}.")


def main(argv=None):
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--workers", type=int, default=2, help="processes at once in the parallel layout")
    args = common.parse(p, argv)
    cores = os.cpu_count()
    threads = max(cores // args.workers, 1)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, (extra, parts) in BENCHMARKS.items():
            flags = workload_flags(args) + extra
            [(one_wall, one_doc)] = run_concurrently(name, flags, 1, None, tmp)
            many = run_concurrently(name, flags, args.workers, threads, tmp)
            slowest = max(wall for wall, _ in many)
            results[name] = {
                "one_process": {"threads": one_doc["machine"]["torch_threads"], "wall_s": one_wall},
                "parallel": {"processes": args.workers, "threads_each": many[0][1]["machine"]["torch_threads"],
                             "wall_s": [wall for wall, _ in many]},
                "work_per_hour_ratio": args.workers * one_wall / slowest,
                "parts": {part: {"one_process_tokens_per_s": tokens_per_s(one_doc, keys),
                                 "parallel_tokens_per_s": sum(tokens_per_s(d, keys) for _, d in many)}
                          for part, keys in parts.items()},
            }
    rows = [{"benchmark": name, "part": part, "one process tok/s": v["one_process_tokens_per_s"],
             f"{args.workers} processes tok/s": v["parallel_tokens_per_s"],
             "ratio": v["parallel_tokens_per_s"] / v["one_process_tokens_per_s"]}
            for name, r in results.items() for part, v in r["parts"].items()]
    print(f"\n{cores} cores: one process at default threads vs {args.workers} at once, {threads} thread(s) each")
    common.table(rows, list(rows[0]))
    for name, r in results.items():
        print(f"{name}: work per hour, {args.workers} processes / one: {r['work_per_hour_ratio']:.2f}"
              f" (wall {r['one_process']['wall_s']:.0f} s vs {max(r['parallel']['wall_s']):.0f} s)")
    common.write_result("parallel_workers", args, {"cores": cores, "results": results}, markdown)


if __name__ == "__main__":
    main()

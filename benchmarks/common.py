"""Shared helpers of the benchmarks: arguments, model and pair loading, timing, tables, JSON output.

Every benchmark takes the same workload flags (--model, --task, --pairs, --batch, --max-length,
--max-prompt-length), --smoke for a seconds-long run on the tiny random model (what the tests run),
and --out for where its JSON goes (default benchmarks/results/<name>.json). The JSON always holds
"name", "args", "machine" (CPU model, cores, threads, versions, peak RSS of the process).
"""
import argparse
import json
import os
import platform
import random
import resource
import sys
import time
from pathlib import Path

import torch

from lifealign import data as data_mod
from lifealign.machine import BF16_FLAGS, machine_description, versions
from lifealign.models import SMOLLM2, TINY, load_model
# pair_tokens: the count the continual loop reports as eval_tokens, so the benchmarks' tokens/s and
# a run's compare.
from lifealign.training import encode_prompt, pair_tokens  # noqa: F401

RESULTS = Path(__file__).resolve().parent / "results"


def parser(description):
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--model", default=SMOLLM2, help="model spec of lifealign.models.load_model")
    p.add_argument("--task", default="hh-rlhf-helpful-base", help="task whose pairs are used")
    p.add_argument("--pairs", type=int, default=64, help="number of pairs")
    p.add_argument("--batch", type=int, default=8, help="pairs per training step")
    p.add_argument("--max-length", type=int, default=256, help="prompt + response tokens")
    p.add_argument("--max-prompt-length", type=int, default=128, help="prompt tokens (the end is kept)")
    p.add_argument("--smoke", action="store_true", help="tiny random model, 8 pairs, max_length 64 (seconds)")
    p.add_argument("--out", default=None, help=f"folder for the JSON (default {RESULTS})")
    return p


def parse(p, argv=None):
    args = p.parse_args(argv)
    if args.smoke:
        args.model, args.pairs, args.max_length = TINY, 8, 64
        args.max_prompt_length = min(args.max_prompt_length, 32)
        print("smoke mode: tiny random model; the numbers only show that the script runs")
    return args


def device():
    return "cuda" if torch.cuda.is_available() else "cpu"


# ---------------------------------------------------------------- model and data
def load(args, dev):
    """(model, tokenizer) of args.model in fp32 on dev, seeded."""
    torch.manual_seed(0)
    return load_model(args.model, device=dev)


def fake_pairs(n, seed=0):
    """Synthetic pairs of varied length, for machines without the data release."""
    rng = random.Random(seed)
    words = "apple river stone cloud green quick seven light paper music window garden".split()
    text = lambda k: " ".join(rng.choice(words) for _ in range(k))  # noqa: E731
    return [{"prompt": f"Human: {text(rng.randint(5, 60))}?\n\nAssistant:",
             "chosen": f"Assistant: {text(rng.randint(5, 80))}.",
             "rejected": f"Assistant: {text(rng.randint(5, 80))}.", "index": i} for i in range(n)]


def load_pairs(args, split="train"):
    """(records, source): args.pairs records of args.task's split, or synthetic pairs if there is no data."""
    data_dir = data_mod.default_data_dir()
    if data_dir is None or not (data_dir / data_mod.task_name(args.task) / "test.json").is_file():
        print(f"note: no data for {args.task} (set LIFEALIGN_DATA_DIR); using {args.pairs} synthetic pairs")
        return fake_pairs(args.pairs, seed=0 if split == "train" else 1), "synthetic"
    task = data_mod.load_task(args.task, data_dir, n_train=args.pairs, n_test=args.pairs, seed=0)
    return getattr(task, split), f"{data_dir.name}/{task.name}/{split}"


def cut_prompts(tokenizer, records, max_prompt_length):
    """Shorten each prompt text to the end that encode_prompt keeps, so a trainer that truncates
    differently (TRL cuts the whole sequence from the end) trains on the same prompts."""
    keep = max(max_prompt_length - len(encode_prompt(tokenizer, "", 10**9)), 1)
    for rec in records:
        ids = tokenizer(rec["prompt"], add_special_tokens=False)["input_ids"]
        if len(ids) > keep:
            rec["prompt"] = tokenizer.decode(ids[-keep:])
    return records


def n_params(model):
    """Parameters of the base model (tied weights once, LoRA matrices excluded)."""
    return sum(p.numel() for n, p in model.named_parameters() if "lora_" not in n)


# ---------------------------------------------------------------- timing and output
class Timer:
    """with Timer() as t: ...; then t.s is the wall time in seconds."""

    def __enter__(self):
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.s = time.perf_counter() - self.t0


def peak_rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: kilobytes


def machine_info():
    """`lifealign.machine.machine_description` (what a run records), with the cores, versions and
    peak memory of this process."""
    described = machine_description(device())
    return {
        "cpu": described["cpu"] or platform.processor() or None,
        "cores": os.cpu_count(),
        "torch_threads": described["threads"],
        "cpu_flags": described["cpu_flags"],
        "cpu_bf16": [flag for flag in described["cpu_flags"] if flag in BF16_FLAGS],
        "cuda": described.get("gpu"),
        "python": platform.python_version(),
        "versions": versions(("torch", "transformers", "peft", "trl", "accelerate")),
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }


def markdown_table(rows, columns):
    """Rows (dicts) as a GitHub-flavoured markdown table; floats with two decimals."""
    fmt = lambda v: f"{v:,.2f}" if isinstance(v, float) else ("-" if v is None else str(v))  # noqa: E731
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(fmt(r.get(c)) for c in columns) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def num(value, digits=2):
    """A number as the benchmark pages print it: thousands separated, "–" when missing."""
    return "–" if value is None else f"{value:,.{digits}f}"


def workload(doc):
    """One line saying what a throughput benchmark measured."""
    a, d = doc["args"], doc.get("data", {})
    return (f"{doc['model']['name']} ({doc['model']['params'] / 1e6:.1f} M parameters), {d.get('pairs')} pairs of "
            f"{d.get('source')}, batch {a.get('batch')}, max_length {a.get('max_length')} (prompt "
            f"{a.get('max_prompt_length')}), on {doc.get('device', 'cpu')}.")


def write_markdown(doc, markdown, path):
    """A benchmark's page (what the book's performance chapter includes), ending with where and when it
    was measured."""
    m = doc.get("machine")
    where = (f"\nMeasured {m['time'][:10]} on {m['cpu']}, {m['cores']} cores, {m['torch_threads']} torch threads, bf16 "
             f"instructions: {', '.join(m['cpu_bf16']) or 'none'}, GPU: {m.get('cuda') or 'none'}, Python "
             f"{m.get('python')}, torch {(m.get('versions') or {}).get('torch')}; peak RSS "
             f"{m['peak_rss_mb']:,.0f} MB.\n"
             if m else "")
    smoke = ("\n*Measured with `--smoke` (the tiny random model): these numbers only show that the script runs.*\n"
             if (doc.get("args") or {}).get("smoke") else "")
    Path(path).write_text(markdown.rstrip() + "\n" + where + smoke)


def write_result(name, args, payload, markdown=None):
    """Write {"name", "args", "machine", **payload} to <out>/<name>.json and return the path; with
    `markdown` (text, or a function of the written document), also <out>/<name>.md."""
    out = Path(args.out) if args.out else RESULTS
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}.json"
    doc = {"name": name, "args": vars(args), "machine": machine_info(), **payload}
    path.write_text(json.dumps(doc, indent=1, default=str) + "\n")
    if markdown is not None:
        doc = json.loads(path.read_text())  # what a later rewrite of the page reads (main() below)
        write_markdown(doc, markdown(doc) if callable(markdown) else markdown, out / f"{name}.md")
    print(f"wrote {path}  (peak RSS {doc['machine']['peak_rss_mb']:.0f} MB)")
    return path


def table(rows, columns):
    """Print rows (dicts) as a plain text table with the given columns."""
    fmt = lambda v: f"{v:,.2f}" if isinstance(v, float) else ("-" if v is None else str(v))  # noqa: E731
    cells = [[fmt(r.get(c)) for c in columns] for r in rows]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(columns)]
    print("  ".join(c.rjust(w) for c, w in zip(columns, widths)))
    for row in cells:
        print("  ".join(v.rjust(w) for v, w in zip(row, widths)))


def main(argv=None):
    """Rewrite benchmarks/results/<name>.md from <name>.json with benchmark <name>'s `markdown`, e.g.
    after a change of how a page reads: python benchmarks/common.py preference_throughput ..."""
    import importlib

    for name in argv if argv is not None else sys.argv[1:]:
        doc = json.loads((RESULTS / f"{name}.json").read_text())
        write_markdown(doc, importlib.import_module(name).markdown(doc), RESULTS / f"{name}.md")
        print(f"wrote {RESULTS / name}.md")


if __name__ == "__main__":
    main()

"""Calibration of the `cpu` profile: does plain sequential fine-tuning (SeqFT) forget at this scale?

The cpu profile's comparison means something only if SeqFT measurably forgets earlier tasks. Each
probe is a SeqFT run of configs/cpu.yaml (SmolLM2-135M-Instruct, LoRA q/v r8) with a few settings
changed and generation off (the judge-free implicit-reward accuracy is the calibrated metric). For
each probe it records the reward-accuracy matrix, BWT, forgetting, the diagonal (each task just
after its own training) with its binomial standard error, and the preference stage's training
means (is the task learned at all?).

Probes are ordinary resumable `lifealign run` folders under runs/calibration/<probe>; a finished one
is read, not rerun, so the script continues where it stopped. One probe is 10-30 minutes on 2 cores.

    python benchmarks/calibration.py                 # every probe, then results/calibration.json
    python benchmarks/calibration.py --probe NAME    # one probe
    python benchmarks/calibration.py --list
"""
import argparse
import json
import math
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BASE = ["method.name=seqft", "eval.generation=false", "data.dir=data"]

# name -> (what it tests, overrides of configs/cpu.yaml). Ordered as they were run.
PROBES = {
    "order1": (
        "the cpu profile as it is: SFT 1 epoch + DPO 2 epochs at lr 2e-4, 64 pairs per task (the "
        "committed run results/cpu/matrix/seqft-order1-s0 has these numbers)",
        []),
    "truthfulqa-first": (
        "the one task that is learned (TruthfulQA) first, two tasks after it",
        ["data.order=[TruthfulQA, safe-rlhf, hh-rlhf-helpful-base]"]),
    "order1-no-sft-lr1e-3": (
        "stronger preference updates: no SFT stage, DPO at lr 1e-3",
        ["method.sft=false", "pref.lr=1e-3"]),
    "truthfulqa-then-hc3": (
        "TruthfulQA (chosen shorter in 99% of pairs) followed by HC3, whose training pushed an "
        "untrained TruthfulQA to 17% in order1",
        ["data.order=[TruthfulQA, HC3]"]),
    "harmless-helpful-256": (
        "the classic conflict (harmless then helpful) with 4x the pairs, 128 test pairs, no SFT",
        ["method.sft=false", "data.order=[hh-rlhf-harmless-base, hh-rlhf-helpful-base]", "data.n_train=256",
         "data.n_test=128"]),
}


def run_dir(name):
    return ROOT / "runs" / "calibration" / name


def run_probe(name):
    """Runs (or resumes) one probe; returns its results.json as a dict."""
    out = run_dir(name)
    results = out / "results.json"
    if results.exists() and json.loads(results.read_text()).get("complete"):
        return json.loads(results.read_text())
    overrides = BASE + PROBES[name][1] + [f"out={out}", f"name=calibration-{name}"]
    cmd = [sys.executable, "-m", "lifealign.cli", "run", str(ROOT / "configs" / "cpu.yaml")]
    for o in overrides:
        cmd += ["--set", o]
    print("$", " ".join(cmd), flush=True)
    subprocess.run(cmd, cwd=ROOT, check=True)
    return json.loads(results.read_text())


def summarize(name, res):
    """The numbers that decide the calibration, from one probe's results.json."""
    acc = res["metrics"]["reward_accuracy"]
    matrix, order = acc["matrix"], res["order"]
    diag = [matrix[i][i] for i in range(len(order))]
    final = matrix[-1]
    drops = [final[i] - diag[i] for i in range(len(order) - 1)]
    tasks = []
    for i, t in enumerate(order):
        n = res["data"][t]["test"]["used"]
        p = diag[i] / 100
        train = res["training"][i]["stages"]["pref"]["train_means"]
        tasks.append({"task": t, "diagonal": diag[i], "final": final[i],
                      "test_pairs": n, "diagonal_se": 100 * math.sqrt(p * (1 - p) / n),
                      "pref_train_loss": train.get("loss"), "pref_train_reward_accuracy": train.get("reward_accuracy")})
    return {"probe": name, "what": PROBES[name][0], "overrides": PROBES[name][1], "order": order,
            "n_train": res["config"]["data"]["n_train"], "n_test": res["config"]["data"]["n_test"],
            "matrix": matrix, "bwt": acc["summary"]["bwt"], "forgetting": acc["summary"]["forgetting"],
            "largest_drop": min(drops) if drops else None, "tasks": tasks,
            "train_s": sum(s["train_s"] for t in res["training"] for s in t["stages"].values()),
            "eval_s": sum(t["eval_s"] for t in res["training"])}


def markdown(doc):
    """The book's page: one row per probe, each task's score after its own training (with its binomial
    standard error) and at the end of the sequence."""
    from lifealign.data import short_name

    lines = ["| probe | what changes | pairs (train / test) | BWT | largest drop "
             "| each task: after its training (se) → at the end |", "|---|---|---|---|---|---|"]
    for p in doc["probes"].values():
        cells = "; ".join(f"{short_name(t['task'])} {t['diagonal']:.0f} (se {t['diagonal_se']:.0f}) → "
                          f"{t['final']:.0f}" for t in p["tasks"])
        drop = "–" if p["largest_drop"] is None else f"{p['largest_drop']:+.2f}"
        lines.append(f"| `{p['probe']}` | {p['what']} | {p['n_train']} / {p['n_test']} | {p['bwt']:+.2f} | {drop} "
                     f"| {cells} |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--probe", action="append", choices=list(PROBES), help="run only these probes")
    p.add_argument("--list", action="store_true")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "calibration.json"))
    args = p.parse_args(argv)
    if args.list:
        for name, (what, overrides) in PROBES.items():
            print(f"{name}: {what}\n    {' '.join(overrides) or '(as configured)'}")
        return
    out = Path(args.out)
    recorded = json.loads(out.read_text())["probes"] if out.exists() else {}
    for name in args.probe or PROBES:
        recorded[name] = summarize(name, run_probe(name))
        out.write_text(json.dumps({"config": "configs/cpu.yaml", "base_overrides": BASE, "probes": recorded},
                                  indent=1) + "\n")  # after every probe: nothing finished is lost
    print(f"{'probe':24s} {'BWT':>7s} {'forget':>7s} {'worst':>7s}  diagonal (se) -> final")
    for s in recorded.values():
        cells = "  ".join(f"{t['task'][:10]} {t['diagonal']:.0f}({t['diagonal_se']:.0f})->{t['final']:.0f}"
                          for t in s["tasks"])
        print(f"{s['probe']:24s} {s['bwt']:7.2f} {s['forgetting']:7.2f} {s['largest_drop'] or 0:7.2f}  {cells}")
    out.with_suffix(".md").write_text(markdown(json.loads(out.read_text())))
    print(f"wrote {out} and its page {out.with_suffix('.md').name}")


if __name__ == "__main__":
    main()

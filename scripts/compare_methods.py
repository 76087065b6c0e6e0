"""Run every method of the registry on one config and print Last / AP / BWT of a metric.

    python scripts/compare_methods.py [--config configs/compare.yaml] [--methods seqft er ...]
                                      [--metric reward_accuracy] [--json out.json]

Each method runs in its own process (`lifealign run ... --set method.name=M --set out=...`), so a
killed comparison resumes where it stopped: finished runs are skipped, a half-finished one resumes.
"""
import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

METHODS = ["seqft", "er", "ewc", "agem", "gem", "olora", "cppo", "l2p", "stl", "mtl",
           "lifealign", "dpo+slmc", "fpo"]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/compare.yaml")
    parser.add_argument("--out", default="runs/compare")
    parser.add_argument("--methods", nargs="+", default=METHODS)
    parser.add_argument("--metric", default="reward_accuracy")
    parser.add_argument("--json", default=None, help="also write the table as JSON here")
    args = parser.parse_args()

    rows = []
    for method in args.methods:
        out = Path(args.out) / method.replace("+", "_")
        results_path = out / "results.json"
        done = results_path.exists() and json.loads(results_path.read_text()).get("complete")
        wall = None
        if not done:
            t0 = time.perf_counter()
            cmd = [sys.executable, "-m", "lifealign.cli", "run", args.config, "--set", f"method.name={method}",
                   "--set", f"out={out}", "--set", "progress=false"]
            print(f"== {method}: {' '.join(cmd[2:])}", flush=True)
            subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
            wall = time.perf_counter() - t0
        results = json.loads(results_path.read_text())
        summary = results["metrics"][args.metric]["summary"]
        train_s = sum(st["train_s"] for t in results["training"] for st in t["stages"].values())
        rows.append({"method": method, **{k: summary.get(k) for k in ("last", "ap", "bwt", "forgetting")},
                     "diagonal": [row[i] for i, row in enumerate(results["metrics"][args.metric]["matrix"])
                                  if i < len(row)],
                     "train_s": train_s, "wall_s": wall, "state_bytes": results["training"][-1]["state_bytes"]})
        print(_line(rows[-1]), flush=True)

    print(f"\n{args.metric}, {args.config}")
    print("| method | Last | AP | BWT | forgetting | train s |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        print(_line(r))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


def _fmt(v):
    return f"{v:.2f}" if isinstance(v, (int, float)) else "-"


def _line(r):
    return (f"| {r['method']} | {_fmt(r['last'])} | {_fmt(r['ap'])} | {_fmt(r['bwt'])} | "
            f"{_fmt(r['forgetting'])} | {r['train_s']:.0f} |")


if __name__ == "__main__":
    main()

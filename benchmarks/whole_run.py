"""One whole run, before and after: the same config (default configs/cpu.yaml, LifeAlign), run back to
back on this machine by the code of an earlier commit (`--before`, default the last commit before
the speed work) and by this checkout's code, each in its own process with the same threads.

Both runs share one cache folder, so the model conversion is paid once; the reference log-probs,
which every run of a profile shares, are reported apart (`reference_s`) and left out of the
compared time. The after-code caches the base model's evaluation row across runs; here it is
computed cold (the first run of a profile), and `grid_wall_s` subtracts it to give the time of
every later run of a grid. Reported per run: wall, setup, training (sum of stages), evaluation
(sum of the per-task rows), base row; ratios before/after; and whether the two runs' metric
matrices agree (they should, up to bf16 rounding, for a method whose numbers the speed work kept).

    python benchmarks/whole_run.py                       # ~50 min on 2 cores with bf16
    python benchmarks/whole_run.py --smoke               # configs/tiny.yaml, seconds (the suite)
    python benchmarks/whole_run.py --before HEAD~3 --set method.name=seqft
"""
import argparse
import json
import os
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import common

ROOT = Path(__file__).resolve().parents[1]
BEFORE = "f077a9a"  # main before the run-identity and speed work of the pre-grid issue


def code_at(rev, dest):
    """The package source of commit `rev` in dest/src (git archive)."""
    dest.mkdir(parents=True, exist_ok=True)
    archive = dest / "src.tar"
    with open(archive, "wb") as f:
        subprocess.run(["git", "archive", rev, "src"], cwd=ROOT, stdout=f, check=True)
    with tarfile.open(archive) as tar:
        tar.extractall(dest, filter="data")
    return dest / "src"


def timed_run(src, config, overrides, log):
    """Run `lifealign run` with the package at `src`; (wall seconds, results.json)."""
    env = dict(os.environ, PYTHONPATH=str(src))
    cmd = [sys.executable, "-m", "lifealign.cli", "run", config] + [a for o in overrides for a in ("--set", o)]
    t0 = time.perf_counter()
    with open(log, "w") as f:
        proc = subprocess.run(cmd, cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed (exit {proc.returncode}); see {log}")
    out = next(o.split("=", 1)[1] for o in overrides if o.startswith("out="))
    return wall, json.loads((Path(out) / "results.json").read_text())


def phases(wall, results):
    t = results["timings"]
    stages = [s for task in results["training"] for s in task["stages"].values()]
    row = {
        "wall_s": wall,
        "model_load_s": t.get("model_load_s", 0.0),
        "reference_s": t.get("reference_s", 0.0),
        "train_s": sum(s["train_s"] + s.get("plugin_s", 0.0) for s in stages),
        "eval_s": sum(task["eval_s"] for task in results["training"]),
        "base_eval_s": t.get("base_eval_s"),
        "precision": results["model"]["precision"],
    }
    row["compared_s"] = wall - row["reference_s"]
    row["grid_wall_s"] = row["compared_s"] - (row["base_eval_s"] or 0.0)
    return row


def max_difference(a, b):
    """Largest absolute difference between the two runs' matrices, per metric present in both."""
    out = {}
    for metric in set(a["metrics"]) & set(b["metrics"]):
        ma, mb = a["metrics"][metric].get("matrix"), b["metrics"][metric].get("matrix")
        if ma and mb:
            out[metric] = max(abs(x - y) for ra, rb in zip(ma, mb) for x, y in zip(ra, rb))
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", default="configs/cpu.yaml")
    p.add_argument("--before", default=BEFORE, help="commit whose code is the 'before' run")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--work", default=None, help="folder for the two runs (default: a temporary one)")
    p.add_argument("--smoke", action="store_true", help="configs/tiny.yaml: check the script works (seconds)")
    p.add_argument("--out", default=None, help=f"folder for the JSON (default {common.RESULTS})")
    args = p.parse_args(argv)
    if args.smoke:
        args.config = "configs/tiny.yaml"
    work = Path(args.work or tempfile.mkdtemp(prefix="whole_run-")).resolve()
    work.mkdir(parents=True, exist_ok=True)
    before_src = code_at(args.before, work / "before")
    after_src = ROOT / "src"
    base = ["progress=false", *args.overrides]
    if args.smoke:
        base.append(f"cache_dir={work / 'cache'}")
    runs = {}
    for name, src in (("before", before_src), ("after", after_src)):
        print(f"[whole_run] {name}: {args.config} with the code of {args.before if name == 'before' else 'this checkout'}",
              flush=True)
        wall, results = timed_run(src, args.config, base + [f"out={work / name}"], work / f"{name}.log")
        runs[name] = (phases(wall, results), results)
        print(f"[whole_run] {name}: {wall / 60:.1f} min", flush=True)
    before, after = runs["before"][0], runs["after"][0]
    ratios = {k: before[k] / after[k] for k in ("wall_s", "compared_s", "train_s", "eval_s") if after[k]}
    ratios["grid_wall_s"] = before["compared_s"] / after["grid_wall_s"]
    common.table([{"run": k, **{c: v for c, v in r[0].items() if c != "precision"}} for k, r in runs.items()],
                 ["run", "wall_s", "reference_s", "train_s", "eval_s", "base_eval_s", "compared_s", "grid_wall_s"])
    print("ratios before/after: " + ", ".join(f"{k} {v:.2f}x" for k, v in ratios.items()))
    differences = max_difference(runs["before"][1], runs["after"][1])
    minutes = lambda s: None if s is None else s / 60  # noqa: E731
    rows = [{"code": f"{k} ({args.before if k == 'before' else 'now'})", "precision": r["precision"],
             "wall min": minutes(r["wall_s"]), "reference min": minutes(r["reference_s"]),
             "base row min": minutes(r["base_eval_s"]), "training min": minutes(r["train_s"]),
             "evaluation min": minutes(r["eval_s"]), "compared min": minutes(r["compared_s"]),
             "in a grid min": minutes(r["grid_wall_s"])} for k, (r, _) in runs.items()]
    markdown = (f"`{args.config}` ({' '.join(args.overrides) or 'as committed'}), run back to back by the code of "
                f"`{args.before}` and by this checkout's. *Compared* leaves out the reference pass every run "
                "of a profile shares; *in a grid* also leaves out the base model's row, which the current code "
                "caches for every later run of a profile (the old code has no such cache).\n\n"
                + common.markdown_table(rows, list(rows[0]))
                + "\nBefore / after: " + ", ".join(f"{k.removesuffix('_s').replace('_', ' ')} **{v:.2f}x**"
                                                   for k, v in ratios.items())
                + " (goal for a run in a grid: 2x).\n\nLargest difference between the two runs' matrices: "
                + ", ".join(f"{k} {v:.3g}" for k, v in sorted(differences.items())) + ".\n")
    common.write_result("whole_run", args, {
        "config": args.config, "before_commit": args.before,
        "runs": {k: r[0] for k, r in runs.items()}, "ratios": ratios,
        "matrix_max_abs_difference": differences, "goal": {"grid_wall_s_ratio": 2.0}}, markdown)


if __name__ == "__main__":
    main()

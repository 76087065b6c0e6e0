"""Cost of the continual-learning machinery as tasks accumulate: SLMC time, each method's state, memory.

Synthetic (no training, always run): the model's real LoRA matrices (r 8 on q_proj/v_proj). For
task t = 1..--tasks and each SLMC stage (sft, pref): a random update of every trainable LoRA
matrix, then SLMC end_stage, timed. After each task, each method's persistent state, in bytes:
  slmc    history of refined updates (fp32)                     SLMCPlugin.state_nbytes
  replay  buffers: the first 20% of each task's pairs, per stage Replay.state_nbytes
  ewc     online Fisher + anchor (fp32)                          EWCPlugin.state_nbytes
  gem     episodic memories: 16 pairs per task and stage         GEMPlugin.state_nbytes
  olora   the frozen adapters of earlier tasks: (t - 1) x the LoRA bytes (what OLoRA.state_nbytes counts)
  cppo    pi_old: a LoRA snapshot held from task start until the preference stage has scored it,
          then 2 log-probs per training pair (its plugin reports 0: nothing is kept across tasks)
slmc, replay, ewc and gem are measured with the plugins themselves, on --pairs pairs per task.

A run (--run DIR, a finished or running `lifealign run` folder): per stage train_s and plugin_s
(the stage-end hooks: SLMC for lifealign) and SLMC's share of the stage; per task the state_bytes
of each plugin. --launch CONFIG [--set KEY=VALUE ...] first runs `lifealign run` as a child process
and reports its wall time and peak RSS (the peak memory of a run), then that run folder.

Goal: SLMC < 1% of a stage's time.

    python benchmarks/machinery_cost.py --run runs/lifealign-cpu
    python benchmarks/machinery_cost.py --launch configs/tiny.yaml
    python benchmarks/machinery_cost.py --smoke
"""
import json
import resource
import subprocess
import sys
import warnings
from pathlib import Path
from types import SimpleNamespace

import torch

import common
from lifealign.config import load_config
from lifealign.lora import add_lora, lora_parameters
from lifealign.strategies.base import Stage
from lifealign.strategies.ewc import EWCPlugin
from lifealign.strategies.gem import GEMPlugin
from lifealign.strategies.replay import Replay
from lifealign.strategies.slmc import SLMCPlugin
from lifealign.training import encode_records

STAGES = ("sft", "pref")
GOAL_SLMC_SHARE = 0.01


def synthetic(args):
    model, tok = common.load(args, "cpu")
    torch.manual_seed(0)
    model = add_lora(model)
    records, source = common.load_pairs(args, "train")
    encode_records(tok, records, args.max_length, args.max_prompt_length)
    for rec in records:
        rec["ref"] = (0.0, 0.0)  # stored records carry their reference log-probs
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    lora_bytes = sum(p.numel() * p.element_size() for p in trainable.values())
    print(f"{args.model}: {len(lora_parameters(model))} LoRA matrices, {lora_bytes / 2**20:.2f} MiB trainable; "
          f"{len(records)} pairs per task of {source}")

    slmc, replay, ewc, gem = SLMCPlugin(), Replay(), EWCPlugin(), GEMPlugin()
    loop = SimpleNamespace(model=model, tasks={})
    gen = torch.Generator().manual_seed(0)
    stages, tasks = [], []
    for t in range(1, args.tasks + 1):
        task = f"task{t}"
        loop.tasks[task] = SimpleNamespace(train=records)
        for kind in STAGES:
            replay.training_records(loop, kind, task, records)
            stage = Stage(kind, task, t - 1, records, loss=None, collate=None)  # no training here
            slmc.on_stage_start(loop, stage)
            with torch.no_grad():
                for p in trainable.values():
                    p.add_(0.01 * torch.randn(p.shape, generator=gen).to(p.dtype))
            with common.Timer() as tm:
                report = slmc.on_stage_end(loop, stage)
            ewc.consolidate(trainable, {n: torch.rand(p.shape, generator=gen) for n, p in trainable.items()})
            gem.on_stage_end(loop, stage)
            stages.append({"task": t, "stage": kind, "slmc_s": tm.s, "history_mb": slmc.state_nbytes() / 2**20,
                           "mean_kept_rank": report["mean_kept_rank"]})
        tasks.append({"task": t, "slmc": slmc.state_nbytes(), "replay": replay.state_nbytes(),
                      "ewc": ewc.state_nbytes(), "gem": gem.state_nbytes(), "olora": (t - 1) * lora_bytes,
                      "cppo": lora_bytes + 16 * len(records)})

    print(f"\nSLMC end_stage per stage ({args.tasks} tasks x {len(STAGES)} stages)")
    common.table(stages, ["task", "stage", "slmc_s", "history_mb", "mean_kept_rank"])
    worst = max(s["slmc_s"] for s in stages)
    print(f"slowest SLMC stage end: {worst:.3f} s -> under 1% of any stage longer than {100 * worst:.0f} s")
    print("\npersistent state after each task, MiB")
    mib = [{k: (v / 2**20 if k != "task" else v) for k, v in row.items()} for row in tasks]
    common.table(mib, ["task", "slmc", "replay", "ewc", "gem", "olora", "cppo"])
    return {"lora_bytes": lora_bytes, "lora_matrices": len(lora_parameters(model)), "pairs_per_task": len(records),
            "data_source": source, "stages": stages, "state_bytes": tasks}


def read_run(run_dir):
    """Per-task training records of a run folder: results.json, else tasks/*/train.json (a running run)."""
    run_dir = Path(run_dir)
    if (run_dir / "results.json").is_file():
        results = json.loads((run_dir / "results.json").read_text())
        return results["training"], results.get("method", {})
    rows = [json.loads(p.read_text()) for p in sorted(run_dir.glob("tasks/*/train.json"))]
    if not rows:
        raise SystemExit(f"{run_dir}: no results.json and no tasks/*/train.json")
    return rows, {}


def from_run(run_dir):
    training, method = read_run(run_dir)
    stages, state = [], []
    for i, tr in enumerate(training, 1):
        for stage, st in tr["stages"].items():
            stages.append({"task": i, "name": tr["task"], "stage": stage, "train_s": st["train_s"],
                           "plugin_s": st["plugin_s"], "share_pct": 100 * st["plugin_s"] / max(st["train_s"], 1e-9)})
        state.append({"task": i, "name": tr["task"], **tr.get("state_bytes", {})})
    print(f"\nrun {run_dir} ({method.get('name', '?')}, plugins {method.get('plugins', '?')}): "
          "stage-end hooks per stage")
    common.table(stages, ["task", "name", "stage", "train_s", "plugin_s", "share_pct"])
    worst = max((s["share_pct"] for s in stages), default=None)
    if worst is not None:  # a tiny run's stages last a second or less: its share says nothing
        print(f"largest share: {worst:.3f}% (goal SLMC < {100 * GOAL_SLMC_SHARE:.0f}%: "
              f"{'met' if worst < 100 * GOAL_SLMC_SHARE else 'NOT met'})")
    plugins = sorted({k for row in state for k in row} - {"task", "name"})
    print("\nstate_bytes after each task")
    common.table(state, ["task", "name", *plugins])
    return {"dir": str(run_dir), "method": method, "stages": stages, "state_bytes": state,
            "max_share_pct": worst}


def launch(config, overrides):
    """Run `lifealign run` as a child process; its wall time, peak RSS and output folder."""
    cfg = load_config(config, overrides)
    cmd = [sys.executable, "-m", "lifealign.cli", "run", config] + [a for o in overrides for a in ("--set", o)]
    print("launching:", " ".join(cmd), flush=True)
    with common.Timer() as t:
        proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"lifealign run failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(f"run finished in {t.s:.1f} s, peak RSS {peak:.0f} MB")
    return {"config": config, "overrides": overrides, "out": cfg.out, "wall_s": t.s, "peak_rss_mb": peak}


def markdown(doc):
    """The book's page: SLMC's stage end and each method's persistent state, and a real run's share."""
    syn = doc["synthetic"]
    stages = [{"task": s["task"], "stage": s["stage"], "SLMC s": common.num(s["slmc_s"], 4),
               "history MiB": common.num(s["history_mb"], 3), "mean kept rank": common.num(s["mean_kept_rank"])}
              for s in syn["stages"]]
    mib = [{"after task": r["task"], **{k: common.num(v / 2**20, 3) for k, v in r.items() if k != "task"}}
           for r in syn["state_bytes"]]
    text = (f"SLMC's stage end on the model's {syn['lora_matrices']} real LoRA matrices "
            f"({common.num(syn['lora_bytes'] / 2**20, 2)} MiB), {len(syn['state_bytes'])} synthetic tasks:\n\n"
            + common.markdown_table(stages, list(stages[0]))
            + "\nPersistent state of each method after each task, MiB:\n\n"
            + common.markdown_table(mib, list(mib[0])))
    run = doc.get("run")
    if run:
        rs = [{"task": s["task"], "name": s["name"], "stage": s["stage"], "train s": common.num(s["train_s"], 1),
               "stage-end hooks s": common.num(s["plugin_s"], 3), "share %": common.num(s["share_pct"], 3)}
              for s in run["stages"]]
        text += (f"\nThe real run `{Path(run['dir']).name}`: the stage-end hooks (SLMC) against the stage's training "
                 f"time. Largest share {common.num(run['max_share_pct'], 3)}% (goal < "
                 f"{100 * doc['goals']['slmc_share_of_stage']:g}%).\n\n" + common.markdown_table(rs, list(rs[0])))
    return text


def main(argv=None):
    p = common.parser(__doc__.split("\n")[0])
    p.add_argument("--tasks", type=int, default=5, help="synthetic tasks (2 SLMC stages each)")
    p.add_argument("--run", default=None, help="a run folder to report")
    p.add_argument("--launch", default=None, metavar="CONFIG", help="run `lifealign run CONFIG` first and report it")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="config override for --launch (repeatable)")
    args = common.parse(p, argv)
    warnings.filterwarnings("ignore")
    out = {"synthetic": synthetic(args), "launched": None, "run": None}
    if args.launch:
        out["launched"] = launch(args.launch, args.overrides)
        args.run = args.run or out["launched"]["out"]
    if args.run:
        out["run"] = from_run(args.run)
    print(f"\npeak RSS of this process: {common.peak_rss_mb():.0f} MB")
    common.write_result("machinery_cost", args, {**out, "goals": {"slmc_share_of_stage": GOAL_SLMC_SHARE}}, markdown)


if __name__ == "__main__":
    main()

"""Run a profile's whole grid in priority order, committing each run's results as it lands.

The order: by tier (params.yaml: a block's `tier`, default 1), then by seed, so that a grid stopped
early has the first tiers with balanced seeds; then by group and block order. A run that is done
(its committed results hold the config and run-code version it would use now) is skipped; a
stale one is rerun and its old results replaced. Each finished run's folder
results/<profile>/<group>/<run id>/ is committed alone (`--commit`), so a kill loses at most the
run in progress, which resumes at its last finished task.

    python scripts/run_grid.py --dry-run                 # the order and each run's state
    OMP_NUM_THREADS=1 python scripts/run_grid.py --commit --worker 0/2   # one of two workers
    python scripts/run_grid.py --commit --max-tier 2     # stop after tier 2

Two workers split the to-do list by position (`--worker i/n`: every n-th run from the i-th), each
in its own clone of the repository; a run's results are committed in the clone that ran it.
"""
import argparse
import subprocess
import sys
import time
from pathlib import Path

from lifealign import pipeline

ROOT = Path(__file__).resolve().parents[1]


def ordered_runs(profile):
    """Every run of the profile's groups, in the order the grid runs them."""
    runs = [(spec, g, b) for g, group in enumerate(pipeline.GROUPS)
            for b, spec in enumerate(pipeline.grid(profile, group))]
    return [spec for spec, _, _ in sorted(runs, key=lambda r: (r[0].tier, r[0].seed, r[1], r[2]))]


def commit(profile_name, spec, minutes):
    folder = pipeline.results_dir(profile_name, spec, ROOT).relative_to(ROOT)
    subprocess.run(["git", "add", "--all", "--", str(folder)], cwd=ROOT, check=True)
    message = f"{profile_name} grid: {spec.group}/{spec.id} ({minutes:.0f} min)"
    subprocess.run(["git", "commit", "-q", "-m", message, "--", str(folder)], cwd=ROOT, check=True)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--profile", default=None, help="default: params.yaml's active profile")
    p.add_argument("--max-tier", type=int, default=None, help="run only blocks of this tier or lower")
    p.add_argument("--worker", default="0/1", metavar="I/N", help="run every N-th to-do run from the I-th")
    p.add_argument("--commit", action="store_true", help="git-commit each run's results when it finishes")
    p.add_argument("--dry-run", action="store_true", help="list the order and states; run nothing")
    args = p.parse_args(argv)
    index, workers = (int(x) for x in args.worker.split("/"))
    params = pipeline.load_params(ROOT / "params.yaml")
    profile_name, profile = pipeline.active_profile(params, args.profile)
    runs = [s for s in ordered_runs(profile) if args.max_tier is None or s.tier <= args.max_tier]
    todo = [s for s in runs if not pipeline.is_done(profile_name, s, ROOT)]
    mine = todo[index::workers]
    for spec in runs:
        state = pipeline.committed_state(profile_name, spec, ROOT)
        mark = "*" if spec in mine else " "
        print(f"{mark} tier {spec.tier}  {spec.group:12s} {spec.id:45s} {state}")
    print(f"profile {profile_name}: {len(runs)} runs, {len(todo)} to run, {len(mine)} for worker {args.worker}")
    if args.dry_run:
        return
    for n, spec in enumerate(mine, 1):
        print(f"[{n}/{len(mine)}] {spec.group}/{spec.id}: running", flush=True)
        t0 = time.perf_counter()
        pipeline.run_one(profile_name, spec, ROOT)
        minutes = (time.perf_counter() - t0) / 60
        print(f"[{n}/{len(mine)}] {spec.group}/{spec.id}: finished in {minutes:.1f} min", flush=True)
        if args.commit:
            commit(profile_name, spec, minutes)


if __name__ == "__main__":
    sys.exit(main())

"""Run a profile's whole grid in priority order, committing each run's results as it lands.

The order: by tier (params.yaml: a block's `tier`, default 1), then by seed, so that a grid stopped
early has the first tiers with balanced seeds; then by group and block order. A run that is done
(its committed results hold the config and run-code version it would use now) is skipped; a
stale one is rerun and its old results replaced. Each finished run's folder
results/<profile>/<group>/<run id>/ is committed alone (`--commit`), so a kill loses at most the
run in progress, which resumes at its last finished task.

    python scripts/run_grid.py --dry-run                 # the order and each run's state
    python scripts/run_grid.py --commit --max-tier 2     # stop after tier 2
    OMP_NUM_THREADS=1 python scripts/run_grid.py --commit --claims ../grid-claims   # one of several workers

Workers in separate clones share the work through a claims folder (`--claims DIR`): each takes the
next run in the order that no worker has claimed, and claims it with a file named after the run that
holds the clone's path. A run with a run folder in this clone (started here) is claimed by it too.
A restarted worker takes its own unfinished claims first (they resume where they stopped); a run
claimed by a clone that is gone stays skipped until its claim file is deleted. Merge the clones'
commits into one (each touches only its runs' folders).
"""
import argparse
import os
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


def claim_file(claims, spec):
    return Path(claims) / f"{spec.group}+{spec.id}"


def claim_owner(claims, spec):
    """The clone that claimed the run, or None when no worker has."""
    path = claim_file(claims, spec)
    return path.read_text() if path.exists() else None


def claim(claims, spec, owner):
    """True when `owner` may run `spec`: it claims the run now, or it claimed it before."""
    path = claim_file(claims, spec)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return path.read_text() == owner  # a claim whose owner is still being written reads "": not ours
    with os.fdopen(fd, "w") as f:
        f.write(owner)
    return True


def commit(profile_name, spec, minutes):
    folder = pipeline.results_dir(profile_name, spec, ROOT).relative_to(ROOT)
    subprocess.run(["git", "add", "--all", "--", str(folder)], cwd=ROOT, check=True)
    message = f"{profile_name} grid: {spec.group}/{spec.id} ({minutes:.0f} min)"
    subprocess.run(["git", "commit", "-q", "-m", message, "--", str(folder)], cwd=ROOT, check=True)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--profile", default=None, help="default: params.yaml's active profile")
    p.add_argument("--max-tier", type=int, default=None, help="run only blocks of this tier or lower")
    p.add_argument("--claims", default=None, metavar="DIR", help="claims folder shared by workers in other clones")
    p.add_argument("--commit", action="store_true", help="git-commit each run's results when it finishes")
    p.add_argument("--dry-run", action="store_true", help="list the order and states; run nothing")
    args = p.parse_args(argv)
    params = pipeline.load_params(ROOT / "params.yaml")
    profile_name, profile = pipeline.active_profile(params, args.profile)
    runs = [s for s in ordered_runs(profile) if args.max_tier is None or s.tier <= args.max_tier]
    owner = str(ROOT)
    for spec in runs:
        state = pipeline.committed_state(profile_name, spec, ROOT)
        claimed = claim_owner(args.claims, spec) if args.claims else None
        print(f"  tier {spec.tier}  {spec.group:12s} {spec.id:45s} {state}" + (f"  (claimed: {claimed})" if claimed else ""))
    todo = [s for s in runs if not pipeline.is_done(profile_name, s, ROOT)]
    print(f"profile {profile_name}: {len(runs)} runs, {len(todo)} to run")
    if args.dry_run:
        return
    if args.claims:  # runs started in this clone are its claims; they come first and resume here
        for spec in todo:
            if pipeline.run_dir(profile_name, spec, ROOT).exists():
                claim(args.claims, spec, owner)
        todo.sort(key=lambda s: claim_owner(args.claims, s) != owner)
    for spec in todo:
        if args.claims and not claim(args.claims, spec, owner):
            continue
        print(f"{spec.group}/{spec.id}: running", flush=True)
        t0 = time.perf_counter()
        pipeline.run_one(profile_name, spec, ROOT)
        minutes = (time.perf_counter() - t0) / 60
        print(f"{spec.group}/{spec.id}: finished in {minutes:.1f} min", flush=True)
        if args.commit:
            commit(profile_name, spec, minutes)


if __name__ == "__main__":
    sys.exit(main())

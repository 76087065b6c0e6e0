"""The reproduction pipeline behind `dvc repro`: profiles, experiment groups and notebook runs.

A profile is a run config, configs/<profile>.yaml, plus the grid of its experiment groups in
params.yaml, which also names the active profile:

    profile: cpu
    profiles:
      cpu:
        matrix:                         # a group: a list of blocks; a block is a product
          - {methods: [seqft, er, lifealign], orders: [order1], seeds: [0, 1, 2]}
        sensitivity:
          - {methods: [lifealign], orders: [order1], seeds: [0], sweep: {method.slmc_lambda: [0.0, 0.8]}}

Each run of a group executes notebooks/experiment.ipynb with papermill. Its folder
runs/<profile>/<group>/<run id>/ (adapters; DVC cache) resumes after a kill; its small results go to
results/<profile>/<group>/<run id>/ (results.json, figures, the executed notebook; committed). A
run whose committed results hold the same config and the current run-code version
(lifealign.run_code.RUN_CODE_VERSION) is done and skipped, so a `dvc repro` on another machine
continues with the runs still missing; one made with another config or version is stale.

    python -m lifealign.pipeline run matrix        # the group's missing runs, active profile
    python -m lifealign.pipeline status            # every run of the active profile: done, running
                                                   # (task k/T, elapsed, ETA), missing or stale
    python -m lifealign.pipeline notebook data     # execute notebooks/data.ipynb into results/
    python -m lifealign.pipeline use quick         # make `quick` the active profile
    python -m lifealign.pipeline prepare-model     # convert or download the profile's model
    python -m lifealign.pipeline data              # materialise data/ (what `make data` runs)
"""
import argparse
import itertools
import json
import os
import re
import shutil
import sys
from collections import Counter
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import yaml

from .config import ConfigError, load_config
from .data import DataError
from .io import fresh_dir, read_json, replace_dir, write_text
from .progress import GroupLine, describe, duration, is_live, read_state
from .run_code import RUN_CODE_VERSION

GROUPS = ("matrix", "ablation", "orders", "sensitivity")
NOTEBOOKS = ("data", "method", "report")
PROFILE_ENV = "LIFEALIGN_PROFILE"
# Keys a run's config may differ in without its results going stale.
_VOLATILE_KEYS = ("out", "progress", "cache_dir")
# Keys whose default value counts as absent: results saved without the key compare equal to a
# config at its default.
_ABSENT_AT_DEFAULT = {"engine": "ours"}


def repo_root():
    """The repository the command runs in: the nearest folder up from the working directory that
    holds params.yaml and dvc.yaml (DVC and papermill run there), else this package's checkout."""
    here = Path.cwd().resolve()
    for folder in (here, *here.parents):
        if (folder / "params.yaml").is_file() and (folder / "dvc.yaml").is_file():
            return folder
    return Path(__file__).resolve().parents[2]


def load_params(path=None):
    path = Path(path or repo_root() / "params.yaml")
    if not path.exists():
        raise ConfigError(f"{path} does not exist")
    return yaml.safe_load(path.read_text())


def active_profile(params, name=None):
    """(name, profile): `name`, else $LIFEALIGN_PROFILE, else params.yaml's `profile`."""
    name = name or os.environ.get(PROFILE_ENV) or params.get("profile")
    profiles = params.get("profiles", {})
    if name not in profiles:
        raise ConfigError(f"params.yaml: profile {name!r} is not defined; defined: {', '.join(profiles)}")
    return name, profiles[name]


def _profile(profile_name, params, root):
    """(repository root, profile name, profile) for a command: `profile_name`, else the active one."""
    root = Path(root or repo_root())
    return (root, *active_profile(params or load_params(root / "params.yaml"), profile_name))


@dataclass(frozen=True)
class RunSpec:
    group: str
    method: str
    order: str
    seed: int
    sweep: tuple = field(default=())  # ((key, value), ...)
    tier: int = field(default=1, compare=False)  # the block's place in a long grid (scripts/run_grid.py)

    @property
    def id(self):
        tags = "".join(f"-{key.rsplit('.', 1)[-1]}{value}" for key, value in self.sweep)
        order = f"-{self.order}" if self.order else ""  # None: the config's own order
        return f"{self.method}{order}-s{self.seed}{tags}"

    def overrides(self):
        order = [("data.order", self.order)] if self.order else []
        return [("method.name", self.method), *order, ("seed", self.seed), *self.sweep]


def grid(profile, group):
    """Every run of a group: the union of its blocks' products, in order, without repeats."""
    if group not in GROUPS:
        raise ConfigError(f"unknown group {group!r}; groups: {', '.join(GROUPS)}")
    runs = []
    for i, block in enumerate(profile.get(group) or []):
        unknown = set(block) - {"methods", "orders", "seeds", "sweep", "tier"}
        if unknown:
            raise ConfigError(f"params.yaml: {group}[{i}] has unknown keys {sorted(unknown)}")
        sweeps = [[()]] + [[((key, v),) for v in values] for key, values in (block.get("sweep") or {}).items()]
        for method, order, seed, *sweep in itertools.product(block["methods"], block.get("orders", [None]),
                                                             block.get("seeds", [0]), *sweeps):
            spec = RunSpec(group, method, order, int(seed), tuple(kv for part in sweep for kv in part),
                           int(block.get("tier", 1)))
            if spec not in runs:
                runs.append(spec)
    return runs


def config_path(profile_name):
    """The profile's run config, relative to the repository root."""
    return f"configs/{profile_name}.yaml"


def run_overrides(profile_name, spec):
    """The overrides the experiment notebook applies to the profile's config for one run (paths
    relative to the repository root, where the notebooks run). Data come from data/ (`make data`)."""
    run = f"{profile_name}/{spec.group}/{spec.id}"
    return {"data.dir": "data", **dict(spec.overrides()), "name": run, "out": f"runs/{run}", "progress": False}


def run_config(profile_name, spec, root=None):
    root = Path(root or repo_root())
    return load_config(root / config_path(profile_name), run_overrides(profile_name, spec).items())


def run_dir(profile_name, spec, root=None):
    return Path(root or repo_root()) / "runs" / profile_name / spec.group / spec.id


def results_dir(profile_name, spec, root=None):
    return Path(root or repo_root()) / "results" / profile_name / spec.group / spec.id


def _comparable(config):
    return {k: v for k, v in config.items()
            if k not in _VOLATILE_KEYS and not (k in _ABSENT_AT_DEFAULT and v == _ABSENT_AT_DEFAULT[k])}


def committed_state(profile_name, spec, root=None):
    """'done' when the committed results were made with the config the run would use now and the
    current run-code version; 'stale' when they exist but differ in either; 'missing' otherwise."""
    folder = results_dir(profile_name, spec, root)
    if not (folder / "results.json").exists() or not (folder / "provenance.json").exists():
        return "missing"
    saved = read_json(folder / "results.json").get("config", {})
    same_code = read_json(folder / "provenance.json").get("run_code_version") == RUN_CODE_VERSION
    same_config = _comparable(saved) == _comparable(run_config(profile_name, spec, root).to_dict())
    return "done" if same_code and same_config else "stale"


def is_done(profile_name, spec, root=None):
    return committed_state(profile_name, spec, root) == "done"


def run_state(profile_name, spec, root=None):
    """"running" when its run folder's progress.json is live, else its committed_state."""
    if is_live(read_state(run_dir(profile_name, spec, root))):
        return "running"
    return committed_state(profile_name, spec, root)


def status(profile_name=None, params=None, root=None):
    """One line per run of the profile: its group, id, state and, for a run in progress (or one
    that stopped), where it is or stopped; then the counts."""
    root, profile_name, profile = _profile(profile_name, params, root)
    lines, counts = [], Counter()
    for spec in [spec for group in GROUPS for spec in grid(profile, group)]:
        state = run_state(profile_name, spec, root)
        counts[state] += 1
        progress = read_state(run_dir(profile_name, spec, root))
        detail = describe(progress) if state == "running" else ""
        if state in ("missing", "stale") and progress and progress.get("state") != "finished":
            stopped = "failed" if progress.get("state") == "failed" else "stopped"
            detail = f"({stopped} at task {progress.get('task') or 0}/{progress.get('tasks') or '?'})"
        lines.append(f"{spec.group:12s} {spec.id:45s} {state:8s} {detail}".rstrip())
    counted = ", ".join(f"{counts[k]} {k}" for k in ("done", "running", "missing", "stale") if k in counts)
    return lines + [f"profile {profile_name}: {counts.total()} runs, {counted}"]


def strip_notebook(path):
    """Drop what changes from one execution to the next (timestamps, durations, random cell ids,
    papermill's run record), so that rerunning an unchanged stage writes an identical file."""
    nb = json.loads(Path(path).read_text())
    for key in ("papermill", "widgets"):
        nb.get("metadata", {}).pop(key, None)
    for i, cell in enumerate(nb.get("cells", [])):
        cell["id"] = f"cell-{i}"
        for key in ("papermill", "execution", "ExecuteTime"):
            cell.get("metadata", {}).pop(key, None)
        for output in cell.get("outputs", []):
            output.get("metadata", {}).pop("execution", None)
    write_text(path, json.dumps(nb, indent=1, sort_keys=True, ensure_ascii=False) + "\n")


def execute_notebook(name, output, parameters, root=None):
    """Execute notebooks/<name>.ipynb with papermill (cwd = repo root) and strip the result."""
    import papermill

    root = Path(root or repo_root())
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    papermill.execute_notebook(str(root / "notebooks" / f"{name}.ipynb"), str(output), parameters=parameters,
                               cwd=str(root), kernel_name="python3", progress_bar=False, log_output=False)
    strip_notebook(output)
    return output


def run_one(profile_name, spec, root=None):
    """Execute the experiment notebook for one run, then copy its small results into results/. A run
    folder left by other run code or another config is cleared first: its tasks must not be resumed."""
    root = Path(root or repo_root())
    out_dir, res_dir = run_dir(profile_name, spec, root), results_dir(profile_name, spec, root)
    notebook, stamp, saved = out_dir / "experiment.ipynb", out_dir / "run_code.txt", out_dir / "config.json"
    config = _comparable(run_config(profile_name, spec, root).to_dict())
    if out_dir.exists() and (not stamp.exists() or stamp.read_text().strip() != str(RUN_CODE_VERSION)
                             or (saved.exists() and _comparable(read_json(saved)) != config)):
        shutil.rmtree(out_dir)
    write_text(stamp, f"{RUN_CODE_VERSION}\n")
    execute_notebook("experiment", notebook, {"config": config_path(profile_name), "progress_bar": False,
                                              "overrides": run_overrides(profile_name, spec)}, root)
    tmp = fresh_dir(res_dir.with_name(res_dir.name + ".tmp"))
    for item in ("results.json", "analysis.json", "figures"):
        src = out_dir / item
        if src.is_dir():
            shutil.copytree(src, tmp / item)
        elif src.exists():
            shutil.copy2(src, tmp / item)
    shutil.copy2(notebook, tmp / "experiment.ipynb")
    provenance = {"run_code_version": RUN_CODE_VERSION, "run_id": spec.id, "group": spec.group,
                  "profile": profile_name}
    write_text(tmp / "provenance.json", json.dumps(provenance, indent=1) + "\n")
    replace_dir(tmp, res_dir)
    return res_dir


def run_group(group, profile_name=None, params=None, root=None, log=None, only=None):
    """Run the group's runs that are not done yet, one after the other; each finished run's results
    land in results/ at once (a kill loses at most the run in progress, which resumes per task).
    `log`: where the group's lines go (default: stdout). `only`: run ids of the group to run, the
    others are left as they are (to order a long grid)."""
    root, profile_name, profile = _profile(profile_name, params, root)
    log = log or partial(print, flush=True)
    all_specs = grid(profile, group)
    unknown = sorted(set(only or ()) - {s.id for s in all_specs})
    if unknown:
        raise ConfigError(f"profile {profile_name}, group {group}: no run {', '.join(unknown)} "
                          f"(`python -m lifealign.pipeline list` shows the grid)")
    specs = [s for s in all_specs if not only or s.id in only]
    if not (root / config_path(profile_name)).exists():
        raise ConfigError(f"profile {profile_name}: {config_path(profile_name)} does not exist")
    (root / "results" / profile_name / group).mkdir(parents=True, exist_ok=True)
    (root / "runs" / profile_name / group).mkdir(parents=True, exist_ok=True)
    todo = [s for s in specs if not is_done(profile_name, s, root)]
    durations = []  # of the runs finished by this call: the group's ETA
    for i, spec in enumerate(specs, 1):
        label = f"[{group} {i}/{len(specs)}] {spec.id}"
        if is_done(profile_name, spec, root):
            log(f"{label}: done, skipped")
            continue
        log(f"{label}: running (follow it: tail -f {_shown(run_dir(profile_name, spec, root) / 'run.log')})")
        later = sum(1 for s in todo if specs.index(s) >= i)
        with GroupLine(run_dir(profile_name, spec, root), label, later, durations, log) as line:
            run_one(profile_name, spec, root)
        durations.append(line.elapsed())
        log(f"{label}: finished in {duration(durations[-1])} -> {results_dir(profile_name, spec, root)}")
    _prune(root / "results" / profile_name / group, {s.id for s in all_specs}, log)


def _shown(path):
    """`path` relative to the working directory when it lies below it."""
    relative = os.path.relpath(path)
    return path if relative.startswith("..") else relative


def _prune(folder, keep, log):
    """Results of runs no longer in the group (the grid changed) are removed, so the report shows
    exactly the active grid."""
    for path in sorted(folder.iterdir()):
        if path.is_dir() and path.name not in keep:
            log(f"removing {path}: no longer in the grid")
            shutil.rmtree(path)


def run_notebook(name, profile_name=None, params=None, root=None):
    """Execute notebooks/<name>.ipynb for the active profile into results/<profile>/notebooks/."""
    root, profile_name, _ = _profile(profile_name, params, root)
    output = root / "results" / profile_name / "notebooks" / f"{name}.ipynb"
    return execute_notebook(name, output, {"profile": profile_name}, root)


def prepare_model(profile_name=None, params=None, root=None):
    """Convert (SmolLM2 GGUF) or download (a Hub id) the profile's model into the local cache and
    record what was prepared: results/<profile>/model.json with the weights' fingerprint."""
    from .models import load_model, model_fingerprint

    root, profile_name, _ = _profile(profile_name, params, root)
    cfg = load_config(root / config_path(profile_name))
    model, _ = load_model(cfg.model.name)
    record = {"name": cfg.model.name, "fingerprint": model_fingerprint(cfg.model.name, model),
              "parameters": sum(p.numel() for p in model.parameters())}
    write_text(root / "results" / profile_name / "model.json", json.dumps(record, indent=1) + "\n")
    return record


def materialize_data(dest="data"):
    """Fill `dest` with the task release: a copy of $LIFEALIGN_DATA_DIR (or ../shared/data/
    lifealign-release) when one is reachable, else the verified pinned download. Files already
    there with the right content are kept."""
    from .data import default_data_dir, download_release

    dest = Path(dest)
    source = default_data_dir()
    if source is not None and source.resolve() != dest.resolve():
        for path in sorted(source.rglob("*")):
            target = dest / path.relative_to(source)
            if path.is_file() and (not target.exists() or target.read_bytes() != path.read_bytes()):
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, target)
        return f"copied {source} -> {dest}"
    try:
        download_release(dest)
    except DataError as err:
        raise DataError(f"no task data for {dest}/: set LIFEALIGN_DATA_DIR to a copy of the LifeAlign data "
                        f"release (on these machines ../shared/data/lifealign-release), or allow access to "
                        f"raw.githubusercontent.com for the verified download ({err})") from None
    return f"downloaded the pinned release into {dest}"


def use_profile(name, root=None):
    """Set `profile:` in params.yaml, keeping the rest of the file (comments included) as it is."""
    path = Path(root or repo_root()) / "params.yaml"
    text = path.read_text()
    active_profile(yaml.safe_load(text), name)  # must exist
    new, n = re.subn(r"(?m)^profile:.*$", f"profile: {name}", text, count=1)
    if n != 1:
        raise ConfigError(f"{path}: no top-level 'profile:' line")
    write_text(path, new)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m lifealign.pipeline", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    with_profile = argparse.ArgumentParser(add_help=False)
    with_profile.add_argument("--profile", default=None, help=f"default: ${PROFILE_ENV} or params.yaml's profile")

    def command(name, help, action, profile=True):
        parser = sub.add_parser(name, help=help, parents=[with_profile] if profile else [])
        parser.set_defaults(action=action)
        return parser

    run = command("run", "run the missing runs of an experiment group",
                  lambda args: run_group(args.group, args.profile, only=args.runs))
    run.add_argument("group", choices=GROUPS)
    run.add_argument("runs", nargs="*", metavar="RUN_ID", help="only these runs of the group (default: all)")
    command("notebook", "execute a notebook for the active profile",
            lambda args: print(run_notebook(args.name, args.profile))).add_argument("name", choices=NOTEBOOKS)
    for name, help in (("status", "every run of the active profile: done, running (where, ETA), missing or stale"),
                       ("list", "the same as status")):
        command(name, help, lambda args: print("\n".join(status(args.profile))))
    command("prepare-model", "convert or download the active profile's model",
            lambda args: print(prepare_model(args.profile)))
    command("data", "materialise data/ from $LIFEALIGN_DATA_DIR or the pinned download",
            lambda args: print(materialize_data(args.dest)), profile=False).add_argument("--dest", default="data")
    command("use", "make a profile the active one (edits params.yaml)", lambda args: use_profile(args.name),
            profile=False).add_argument("name")
    args = parser.parse_args(argv)
    try:
        args.action(args)
    except (ConfigError, DataError) as err:
        sys.exit(f"error: {err}")


if __name__ == "__main__":
    main()

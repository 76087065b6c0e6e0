"""The committed runs of a profile as data: which count, as Run objects, and as one long frame.

A run is one results/<profile>/<group>/<run id>/results.json. It counts only when it is done at the
current run code: finished (every task trained), made by the current RUN_CODE_VERSION (its
provenance.json) and, where the pipeline's states are given, with the profile's config of now; and
when it ran in the precision most of those runs have, so that no comparison mixes precisions (a
profile with `precision: auto` run on CPUs with and without native bf16). Every other run is left
out of the report's numbers and verdicts, with why.

`tidy` turns the runs into one long pandas frame with a row per run, metric and summary: COLUMNS,
where sweep is "" at the config's settings, else the swept setting and value, e.g. "lambda=0".
"""
import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from .data import ORDERS
from .metrics import mean_of as mean
from .run_code import RUN_CODE_VERSION

COLUMNS = ["group", "run", "method", "order", "seed", "sweep", "metric", "key", "value"]
SUMMARIES = ("bwt", "last", "ap", "fwt", "forgetting", "intransigence")
SWEEPS = {"slmc_lambda": "lambda", "slmc_threshold": "theta"}
ORDER_NAMES = ("order1", "order2", "order3")


@dataclass
class Run:
    group: str
    id: str
    method: str
    order: str
    seed: int
    sweep: dict = field(default_factory=dict)  # {setting: value} of a sweep run, else empty
    results: dict = field(default_factory=dict)

    def summary(self, metric, key):
        """A summary of the run's matrix. STL's rows are separate single-task models: its only
        summary is Last as the paper reports it, the mean of the diagonal (model i on task i)."""
        m = self.results.get("metrics", {}).get(metric)
        if m is None or self.method == "stl" and key != "last":
            return None
        return mean(self.diagonal(metric).values()) if self.method == "stl" else m.get("summary", {}).get(key)

    def diagonal(self, metric):
        """{task: m[i][i]}: each task's score right after its own training."""
        m = self.results["metrics"][metric]["matrix"]
        return {t: m[i][i] for i, t in enumerate(self.results["rows"]) if i < len(m) and m[i][i] is not None}


def left_out(res, folder, state=None):
    """Why a run's results do not count, the first reason that holds (None when they count); state:
    pipeline.committed_state, where known."""
    provenance = folder / "provenance.json"
    version = json.loads(provenance.read_text()).get("run_code_version") if provenance.exists() else None
    reasons = (not res.get("complete", False)
               and f"incomplete: {len(res.get('rows', []))} of {len(res.get('order', []))} tasks trained",
               version is None and "no run-code version recorded",
               version != RUN_CODE_VERSION and f"made by run code version {version}, now {RUN_CODE_VERSION}",
               state == "stale" and "config changed since",
               state not in (None, "done", "stale") and "not in the grid")
    return next((why for why in reasons if why), None)


def load_runs(results_root, excluded=None, states=None):
    """The runs that count under results_root (results/<profile>), sorted by group and id. `states`:
    {(group, run id): pipeline.committed_state} of the profile's grid, when known. A run left out is
    recorded in `excluded` (a dict) as {(group, run id): why}."""
    runs = []
    for path in sorted(Path(results_root).glob("*/*/results.json")):
        try:
            res = json.loads(path.read_text())
            cfg = res["config"]
        except (ValueError, KeyError) as err:
            raise ValueError(f"{path}: not a run's results.json ({err})") from None
        key = (path.parent.parent.name, path.parent.name)
        why = left_out(res, path.parent, None if states is None else states.get(key, "absent"))
        if why is not None and excluded is not None:
            excluded[key] = why
        if why is None:
            sweep = {k: cfg["method"][k] for k in SWEEPS if f"-{k}" in key[1]}
            runs.append(Run(*key, cfg["method"]["name"], order_name(cfg["data"]["order"]), cfg["seed"], sweep, res))
    (most, n), = Counter(precision(r.results) for r in runs).most_common(1) or [(None, 0)]
    for r in [r for r in runs if precision(r.results) != most]:
        if excluded is not None:
            excluded[(r.group, r.id)] = f"ran in {precision(r.results)}, {n} other runs in {most}"
    return [r for r in runs if precision(r.results) == most]


def precision(res):
    """The precision a run's forward passes ran in (results.json: model.precision)."""
    return res.get("model", {}).get("precision")


def order_name(order):
    """A run's order as the report groups it. A list of tasks that keeps a named order's sequence
    with some tasks left out counts as that order (order1 without Capybara is still order1; the
    quick profile's three tasks are order1's), the first such of order1..order3; else "custom"."""
    if isinstance(order, str):
        return order
    return next((n for n in ORDER_NAMES if [t for t in ORDERS[n] if t in order] == list(order)), "custom")


def pick(runs, method=None, order="order1"):
    """The runs of a method (any if None) on an order at the config's settings."""
    return [r for r in runs if (method is None or r.method == method) and r.order == order and not r.sweep]


def intransigence(run, stl_runs, metric):
    """Mean over tasks of STL's score on the task (a fresh model trained on it alone, mean over STL
    seeds) minus the run's score right after training it; positive: learned worse than fresh."""
    if run.method in ("stl", "mtl") or not stl_runs:
        return None
    reference = {}
    for r in stl_runs:
        for task, v in r.diagonal(metric).items():
            reference.setdefault(task, []).append(v)
    return mean(mean(reference[t]) - v for t, v in run.diagonal(metric).items() if t in reference)


def tidy(runs):
    """The runs as one long frame (COLUMNS): a row per run, metric and summary that has a value."""
    stl, rows = [r for r in runs if r.method == "stl" and not r.sweep], []
    for r in runs:
        sweep = ",".join(f"{SWEEPS[k]}={v:g}" for k, v in sorted(r.sweep.items()))
        for metric in r.results.get("metrics", {}):
            for key in SUMMARIES:
                value = intransigence(r, stl, metric) if key == "intransigence" else r.summary(metric, key)
                if value is not None:
                    rows.append((r.group, r.id, r.method, r.order, r.seed, sweep, metric, key, float(value)))
    return pd.DataFrame(rows, columns=COLUMNS)

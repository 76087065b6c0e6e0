"""Tables, figures and verdicts of the reproduction, from the committed run results and the paper's
reported numbers (paper/*.csv). The report notebook calls these; the book shows what they write.

A run is one results/<profile>/<group>/<run id>/results.json. Values over seeds are mean, sample
standard deviation and count. Differences are ours minus the paper's. Verdicts compare two means
with Welch's t-test at 95% (two-sided): se = sqrt(sd_a^2 / n_a + sd_b^2 / n_b) with
Welch-Satterthwaite degrees of freedom, where a single-seed value borrows the pooled seed spread
of the profile's multi-seed runs (and its degrees of freedom). |difference| > t_crit * se decides,
else "within noise". With one or two seeds t_crit is large (12.7 at one degree of freedom): few
seeds rarely decide anything, as they should not.

Notation, the same in every table and figure: "a ± b" is a mean and the sample standard deviation of
its seeds; a difference is written "d (se s, word)" with s its standard error; "95% CI half-width h"
is the half-width of a 95% confidence interval. Figures are drawn with seaborn; their error bars are
the seeds' standard deviation.
"""
import csv
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from .data import ORDERS, short_name as task_label
from .io import write_text
from .metrics import mean_of
from .run_code import RUN_CODE_VERSION

# Our matrices: judge-free (every run) and the generation metrics the paper also reports.
METRIC_NAMES = {
    "reward_accuracy": "implicit-reward accuracy",
    "loglik_accuracy": "log-likelihood preference accuracy",
    "bleu4": "BLEU-4",
    "rougel": "ROUGE-L",
    "judge": "LLM judge",
}
PAPER_METRICS = ("bleu4", "rougel", "judge")
# Short names for table columns and figure labels.
METRIC_SHORT = {"reward_accuracy": "reward acc.", "loglik_accuracy": "log-lik. acc.", "bleu4": "BLEU-4",
                "rougel": "ROUGE-L", "judge": "judge"}
SUMMARY_KEYS = ("bwt", "last", "ap")
SUMMARY_LABELS = {"bwt": "BWT", "last": "Last", "ap": "AP", "fwt": "FWT", "forgetting": "forgetting"}
MAIN_METHODS = ("seqft", "l2p", "olora", "er", "gem", "agem", "ewc", "cppo", "lifealign", "stl", "mtl")
LABELS = {"seqft": "SeqFT", "l2p": "L2P", "olora": "O-LoRA", "er": "ER", "gem": "GEM", "agem": "A-GEM",
          "ewc": "EWC", "cppo": "CPPO", "lifealign": "LifeAlign", "stl": "STL", "mtl": "MTL",
          "dpo+slmc": "DPO+SLMC", "fpo": "FPO"}
# The 2x2 ablation (all with replay): row letters as in the paper.
ABLATION = (("a", "er", 0, 0), ("b", "dpo+slmc", 0, 1), ("c", "fpo", 1, 0), ("d", "lifealign", 1, 1))


@dataclass
class Run:
    group: str
    id: str
    method: str
    order: str
    seed: int
    sweep: dict = field(default_factory=dict)
    results: dict = field(default_factory=dict)
    code_version: int | None = None  # the run code's version that made it (provenance.json)

    def summary(self, metric, key):
        """A summary of the run's matrix. STL's rows are separate single-task models: its only
        meaningful summary is Last as the paper reports it, the mean of the diagonal (model i on
        task i); its sequence summaries (BWT, AP, ...) are None."""
        m = self.results.get("metrics", {}).get(metric)
        if m is None:
            return None
        if self.method == "stl":
            return mean_of(self.diagonal(metric).values()) if key == "last" else None
        return m["summary"].get(key)

    def diagonal(self, metric):
        """{task: m[i][i]}: each task's score right after its own training."""
        m = self.results.get("metrics", {}).get(metric)
        if m is None or len(m["matrix"]) != len(self.results["rows"]):
            return {}
        return {task: m["matrix"][i][i] for i, task in enumerate(self.results["rows"])
                if i < len(m["matrix"][i]) and m["matrix"][i][i] is not None}


def load_runs(results_root, excluded=None):
    """Every finished run under results_root (results/<profile>), sorted by group and id. A
    results.json of a run that did not finish all its tasks is left out and, when `excluded` is a
    list, recorded there as (path, reason), so that a partial copy never enters a mean."""
    runs = []
    for path in sorted(Path(results_root).glob("*/*/results.json")):
        try:
            res = json.loads(path.read_text())
            cfg = res["config"]
        except (ValueError, KeyError) as err:
            raise ValueError(f"{path}: not a run's results.json ({err})") from None
        if not res.get("complete", False):
            if excluded is not None:
                excluded.append((str(path), f"incomplete: {len(res.get('rows', []))} of "
                                            f"{len(res.get('order', []))} tasks trained"))
            continue
        method = cfg["method"]
        sweep = {}
        for key in ("slmc_lambda", "slmc_threshold"):
            if f"-{key}" in path.parent.name:
                sweep[key] = method[key]
        provenance = path.parent / "provenance.json"
        version = json.loads(provenance.read_text()).get("run_code_version") if provenance.exists() else None
        runs.append(Run(path.parent.parent.name, path.parent.name, method["name"],
                        order_name(cfg["data"]["order"]), cfg["seed"], sweep, res, version))
    return runs


def order_name(order):
    """A run's order as the report groups it. A list of tasks that keeps a named order's sequence
    with some tasks left out counts as that order (order1 without Capybara is still order1; the
    quick profile's three tasks are order1's), the first such of order1..order3; else "custom"."""
    if isinstance(order, str):
        return order
    for name in ("order1", "order2", "order3"):
        kept = [t for t in ORDERS[name] if t in order]
        if kept == list(order):
            return name
    return "custom"


def select(runs, group=None, method=None, order=None, sweep=False):
    """Runs matching the filters; sweep=False keeps only runs at the config's default lambda/theta."""
    return [r for r in runs if (group is None or r.group in (group if isinstance(group, tuple) else (group,)))
            and (method is None or r.method == method) and (order is None or r.order == order)
            and (sweep or not r.sweep)]


def stats(values):
    """{'mean', 'sd', 'n', 'values'} of the non-missing values (sd None below two values)."""
    values = [v for v in values if v is not None]
    n = len(values)
    if n == 0:
        return {"mean": None, "sd": None, "n": 0, "values": []}
    mean = sum(values) / n
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else None
    return {"mean": mean, "sd": sd, "n": n, "values": values}


def methods_of(runs):
    """The methods of the runs in a fixed order (the main table's, then by name): iteration order
    must not depend on hashing, or a rerun of the report would not give identical files."""
    found = {r.method for r in runs}
    return [m for m in MAIN_METHODS if m in found] + sorted(found - set(MAIN_METHODS))


def method_stats(runs, method, metric, key, order="order1", groups=("matrix", "ablation")):
    return stats([r.summary(metric, key) for r in select(runs, groups, method, order)])


def pooled_sd(runs, metric, key):
    """(sd, degrees of freedom): the seed spread pooled over every method with two or more seeds
    (order1, default settings); (None, 0) when no method has two seeds."""
    num, dof = 0.0, 0
    for method in methods_of(runs):
        s = method_stats(runs, method, metric, key)
        if s["n"] > 1:
            num += s["sd"] ** 2 * (s["n"] - 1)
            dof += s["n"] - 1
    return (math.sqrt(num / dof), dof) if dof else (None, 0)


# Two-sided 95% critical values of Student's t for 1..30 degrees of freedom.
T95 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145,
       2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048,
       2.045, 2.042)


def t95(df):
    """Two-sided 95% critical value of Student's t. A fractional df (Welch) is rounded down, which
    is conservative; above 30, 1.96 + 2.4 / df is within 0.01 of the exact value."""
    k = max(1, math.floor(df))
    return T95[k - 1] if k <= 30 else 1.96 + 2.4 / k


def _variance(s, pooled):
    """(variance of the mean, degrees of freedom) of one stats dict; None when no spread is known."""
    sd, pooled_dof = pooled or (None, 0)
    if s["sd"] is not None:
        return s["sd"] ** 2 / s["n"], s["n"] - 1
    if sd is None:
        return None
    return sd ** 2 / s["n"], pooled_dof


def compare(a, b, pooled):
    """(difference a - b, its standard error, verdict word) for two stats dicts: Welch's t-test at
    95%; `pooled` = (sd, dof) from pooled_sd stands in for a side with a single seed."""
    if a["mean"] is None or b["mean"] is None:
        return None, None, "no data"
    parts = [_variance(s, pooled) for s in (a, b)]
    diff = a["mean"] - b["mean"]
    if None in parts:
        return diff, None, "inconclusive (one seed, no spread known)"
    var = sum(v for v, _ in parts)
    if var == 0:
        return diff, 0.0, "inconclusive (no spread between seeds)"
    df = var ** 2 / sum(v ** 2 / d for v, d in parts if v > 0)
    se = math.sqrt(var)
    limit = t95(df) * se
    return diff, se, "higher" if diff > limit else "lower" if diff < -limit else "within noise"


def zero_text(word):
    return {"below": "below zero", "above": "above zero", "within noise": "within noise of zero"}.get(word, word)


def below_zero(s, pooled):
    """One-sample t-test at 95% of a stats dict's mean against 0: 'below', 'above', 'within noise'
    or why it cannot say; with the half-width of the confidence interval (None if unknown)."""
    if s["mean"] is None:
        return "no data", None
    part = _variance(s, pooled)
    if part is None:
        return "inconclusive (one seed, no spread known)", None
    var, df = part
    half = t95(df) * math.sqrt(var)
    if var == 0:
        return "inconclusive (no spread between seeds)", 0.0
    return ("below" if s["mean"] < -half else "above" if s["mean"] > half else "within noise"), half


# ---------------------------------------------------------------- the paper's numbers
def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _num(text):
    return float(text) if text not in (None, "") else None


def paper_main(paper_dir):
    """{method key: {(metric, key): value}} from main_table_qwen_order1.csv."""
    out = {}
    keys = {v: k for k, v in LABELS.items()}
    for row in read_csv(Path(paper_dir) / "main_table_qwen_order1.csv"):
        out[keys[row["method"]]] = {(m, k): _num(row.get(f"{m}_{k}")) for m in PAPER_METRICS + ("avg",)
                                    for k in SUMMARY_KEYS}
    return out


# ---------------------------------------------------------------- tables
def fmt(value, digits=2, signed=False):
    if value is None:
        return "–"
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


def fmt_stats(s, digits=2):
    if s["mean"] is None:
        return "–"
    return fmt(s["mean"], digits) + (f" ± {s['sd']:.{digits}f}" if s["sd"] is not None else "")


def markdown(rows, columns):
    """A GitHub/MyST markdown table of dict rows."""
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    lines += ["| " + " | ".join(str(r.get(c, "")) for c in columns) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def main_table(runs, paper_dir, metrics=("bleu4", "rougel")):
    """Table 1: one row per method and metric, ours (mean ± sd over seeds) beside the paper's value
    and the difference, for BWT, Last and AP; the metrics the paper reports that we have (the judge
    only where runs used one). STL and MTL have Last only, as in the paper ("n/a" elsewhere)."""
    paper = paper_main(paper_dir)
    rows = []
    for method in MAIN_METHODS:
        seeds = len(select(runs, ("matrix",), method, "order1"))
        if not seeds and method not in paper:
            continue
        for metric in metrics:
            row = {"method": LABELS[method], "metric": METRIC_NAMES[metric], "seeds": seeds}
            for key in SUMMARY_KEYS:
                label = SUMMARY_LABELS[key]
                if method in ("stl", "mtl") and key != "last":
                    row.update({f"{label} {w}": "n/a" for w in ("ours", "paper", "diff")})
                    continue
                ours = method_stats(runs, method, metric, key, groups=("matrix",))
                theirs = paper.get(method, {}).get((metric, key))
                diff = ours["mean"] - theirs if ours["mean"] is not None and theirs is not None else None
                row.update({f"{label} ours": fmt_stats(ours), f"{label} paper": fmt(theirs),
                            f"{label} diff": fmt(diff, signed=True)})
            rows.append(row)
    columns = ["method", "metric", "seeds"] + [f"{SUMMARY_LABELS[k]} {w}" for k in SUMMARY_KEYS
                                               for w in ("ours", "paper", "diff")]
    return rows, columns


def intransigence(run, stl_runs, metric):
    """Intransigence vs STL: mean over tasks of STL's score on the task (a fresh
    model trained on it alone, mean over STL seeds) minus the run's score right after training it.
    Positive: the method learns new tasks worse than a fresh model would."""
    if run.method in ("stl", "mtl") or not stl_runs:
        return None
    reference = {}
    for r in stl_runs:
        for task, v in r.diagonal(metric).items():
            reference.setdefault(task, []).append(v)
    diffs = [mean_of(reference[t]) - v for t, v in run.diagonal(metric).items() if t in reference]
    return mean_of(diffs)


def judge_free_table(runs, metrics=("reward_accuracy", "loglik_accuracy")):
    """Our judge-free scores per method and metric (the paper has none), order1: BWT, Last, AP, FWT,
    forgetting and intransigence vs STL, each mean ± sd over seeds. STL and MTL: Last only."""
    keys = SUMMARY_KEYS + ("fwt", "forgetting")
    stl_runs = select(runs, ("matrix",), "stl", "order1")
    rows = []
    for method in MAIN_METHODS:
        chosen = select(runs, ("matrix",), method, "order1")
        if not chosen:
            continue
        for metric in metrics:
            row = {"method": LABELS[method], "metric": METRIC_NAMES[metric], "seeds": len(chosen)}
            for key in keys:
                row[SUMMARY_LABELS[key]] = ("n/a" if method in ("stl", "mtl") and key != "last" else
                                            fmt_stats(stats([r.summary(metric, key) for r in chosen])))
            row["intransigence vs STL"] = ("n/a" if method in ("stl", "mtl") else
                                           fmt_stats(stats([intransigence(r, stl_runs, metric) for r in chosen])))
            rows.append(row)
    columns = ["method", "metric", "seeds"] + [SUMMARY_LABELS[k] for k in keys] + ["intransigence vs STL"]
    return rows, columns


def _summary_cells(row, ours, theirs, key):
    """BWT / Last / AP cells of a long table: ours (mean ± sd), the paper's, and the difference."""
    label = SUMMARY_LABELS[key]
    row[f"{label} ours"] = fmt_stats(ours)
    row[f"{label} paper"] = fmt(theirs)
    row[f"{label} diff"] = fmt(ours["mean"] - theirs if ours["mean"] is not None and theirs is not None else None,
                               signed=True)


def _summary_columns(keys):
    return [f"{SUMMARY_LABELS[k]} {w}" for k in keys for w in ("ours", "paper", "diff")]


def ablation_table(runs, paper_dir, metrics=("reward_accuracy", "bleu4")):
    """The {DPO, FPO} x {no SLMC, SLMC} grid, all with replay: one row per ablation row (a-d, as the
    paper letters them) and metric, ours beside the paper's (it reports BLEU-4 and its judge)."""
    paper = {r["row"]: r for r in read_csv(Path(paper_dir) / "ablation_qwen_order1.csv")}
    rows = []
    for metric in metrics:
        for letter, method, fpo, slmc in ABLATION:
            row = {"row": letter, "loss + SLMC": ("FPO" if fpo else "DPO") + (" + SLMC" if slmc else ""),
                   "method": LABELS[method], "metric": METRIC_NAMES[metric],
                   "seeds": len(select(runs, ("matrix", "ablation"), method, "order1"))}
            for key in SUMMARY_KEYS:
                _summary_cells(row, method_stats(runs, method, metric, key), _num(paper[letter].get(f"{metric}_{key}")),
                               key)
            rows.append(row)
    return rows, ["row", "loss + SLMC", "method", "metric", "seeds"] + _summary_columns(SUMMARY_KEYS)


def orders_table(runs, paper_dir, metrics=("reward_accuracy", "bleu4")):
    """ER, CPPO and LifeAlign over the three orders: one row per order, method and metric, our BWT
    and Last beside the paper's (it reports BLEU-4, ROUGE-L and its judge per order)."""
    paper = {(r["metric"], r["order"]): r for r in read_csv(Path(paper_dir) / "task_orders_qwen.csv")}
    rows = []
    for metric in metrics:
        for order in ("order1", "order2", "order3"):
            for method in ("er", "cppo", "lifealign"):
                row = {"order": order, "method": LABELS[method], "metric": METRIC_NAMES[metric],
                       "seeds": len(select(runs, ("matrix", "orders"), method, order))}
                for key in ("bwt", "last"):
                    p = paper.get((f"{metric}_{key}", order))
                    _summary_cells(row, method_stats(runs, method, metric, key, order=order,
                                                     groups=("matrix", "orders")),
                                   _num(p[LABELS[method]]) if p else None, key)
                rows.append(row)
    return rows, ["order", "method", "metric", "seeds"] + _summary_columns(("bwt", "last"))


def sweep_points(runs, key, default, metric="reward_accuracy", keys=("bwt", "last", "ap")):
    """[(value, {summary key: stats})] of LifeAlign order1 over one SLMC setting, default included
    (the matrix group's runs at the config's value, every seed)."""
    points = {}
    for r in select(runs, ("matrix", "sensitivity"), "lifealign", "order1", sweep=True):
        if set(r.sweep) - {key}:
            continue
        value = r.sweep.get(key, r.results["config"]["method"][key] if not r.sweep else None)
        if value is None or (not r.sweep and value != default):
            continue
        points.setdefault(value, []).append(r)
    return [(v, {k: stats([r.summary(metric, k) for r in rs]) for k in keys}) for v, rs in sorted(points.items())]


def sensitivity_table(runs, paper_dir, default_lambda, default_theta, metrics=("reward_accuracy", "rougel", "judge")):
    """LifeAlign over lambda and theta: one row per setting, value and metric, our BWT and Last beside
    the paper's lambda sweep (ROUGE-L and its judge; its theta sweep was not recovered)."""
    paper = {float(r["lambda"]): r for r in read_csv(Path(paper_dir) / "lambda_sweep_qwen_order1.csv")}
    rows = []
    for metric in metrics:
        for key, default in (("slmc_lambda", default_lambda), ("slmc_threshold", default_theta)):
            ours = dict(sweep_points(runs, key, default, metric))
            for value, s in sweep_points(runs, key, default, "reward_accuracy"):
                p = paper.get(float(value)) if key == "slmc_lambda" else None
                row = {"setting": "lambda" if key == "slmc_lambda" else "theta", "value": value,
                       "metric": METRIC_NAMES[metric], "seeds": s["bwt"]["n"]}
                for k in ("bwt", "last"):
                    _summary_cells(row, ours.get(value, {}).get(k, {"mean": None}),
                                   _num(p.get(f"{metric}_{k}")) if p else None, k)
                rows.append(row)
    return rows, ["setting", "value", "metric", "seeds"] + _summary_columns(("bwt", "last"))


def split_by_metric(rows, columns):
    """A long table (one row per ... and metric) as one table per metric: [(metric, rows, columns)].
    Per metric, the paper and diff columns are left out where the paper has no value, and a metric
    with no value of ours and none of the paper's is left out; "BWT ours" reads "BWT" when there is
    no paper column beside it."""
    empty = ("", "–", "n/a")
    out = []
    for metric in dict.fromkeys(r["metric"] for r in rows):
        part = [r for r in rows if r["metric"] == metric]
        keep = [c for c in columns if c != "metric" and not (
            c.endswith((" paper", " diff")) and all(r.get(c, "") in empty for r in part))]
        values = [c for c in keep if c.endswith((" ours", " paper"))]
        if values and all(r.get(c, "") in empty for r in part for c in values):
            continue
        names = {c: c[:-len(" ours")] if c.endswith(" ours") and f"{c[:-len(' ours')]} paper" not in keep else c
                 for c in keep}
        out.append((metric, [{names[c]: r.get(c, "") for c in keep} for r in part], [names[c] for c in keep]))
    return out


def markdown_by_metric(rows, columns, note=""):
    """split_by_metric as markdown: a bold heading per metric (with `note` after it), then its table."""
    text = "\n".join(f"**{metric}**{note}\n\n" + markdown(part, cols)
                      for metric, part, cols in split_by_metric(rows, columns))
    return text.replace(" ± ", "\u00a0±\u00a0")  # "mean ± sd" stays on one line in a narrow column


def learned_table(runs, metric="reward_accuracy", methods=("seqft", "er", "lifealign")):
    """Which tasks the model learns at this scale: per task of order1, each method's score right after
    training it and at the end (means over seeds), and which methods' score after training lies above
    chance (50) by more than two binomial standard errors of the task's test pairs."""
    chosen = {m: select(runs, ("matrix",), m, "order1") for m in methods}
    chosen = {m: rs for m, rs in chosen.items() if rs}
    if not chosen:
        return [], ["task"]
    first = next(iter(chosen.values()))[0].results
    rows = []
    for i, task in enumerate(first["rows"]):
        n = (first.get("data", {}).get(task, {}).get("test", {}).get("used")
             or first["config"]["data"].get("n_test"))
        band = 2 * 100 * math.sqrt(0.25 / n) if n else None
        row = {"task": task_label(task), "test pairs": n or "–",
               "chance band (2 se)": f"{fmt(50 - band, 1)} to {fmt(50 + band, 1)}" if band else "–"}
        learned = []
        for m, rs in chosen.items():
            cells = [r.results["metrics"][metric]["matrix"] for r in rs if len(r.results["rows"]) == len(first["rows"])]
            diag, end = mean_of(c[i][i] for c in cells), mean_of(c[-1][i] for c in cells)
            row[f"{LABELS[m]}: trained → end"] = f"{fmt(diag, 1)} → {fmt(end, 1)}"
            if diag is not None and band is not None and diag - 50 > band:
                learned.append(LABELS[m])
        row["learned (above chance beyond 2 se) by"] = ", ".join(learned) or "none"
        rows.append(row)
    return rows, list(rows[0])


def coverage(runs, expected, stale=None):
    """Which runs of the profile's grid the report has: `expected` = {group: [run ids]} (from
    pipeline.grid). Rows: group, present / expected, the missing run ids; with `stale` =
    {(group, run id): why} (the committed runs the pipeline would rerun), a column saying which and why."""
    have = {(r.group, r.id) for r in runs}
    rows = []
    for group, ids in expected.items():
        missing = [i for i in ids if (group, i) not in have]
        row = {"group": group, "runs": f"{len(ids) - len(missing)} of {len(ids)}", "missing": ", ".join(missing) or "none"}
        if stale is not None:
            reasons = {}
            for i in ids:
                if (group, i) in stale:
                    reasons.setdefault(stale[(group, i)], []).append(i)
            row["stale"] = "; ".join(f"all {len(ids_)} ({why})" if len(ids_) == len(ids) > 1 else
                                     f"{len(ids_)} ({why})" if len(ids_) > 3 else f"{', '.join(ids_)} ({why})"
                                     for why, ids_ in reasons.items()) or "none"
        rows.append(row)
    return rows, ["group", "runs", "missing"] + (["stale"] if stale is not None else [])


def compute_table(runs):
    """Hours each group took: the sum of its runs' wall-clock training, SLMC and evaluation seconds
    (runs that shared the machine each count in full)."""
    by_group = {}
    for r in runs:
        seconds = sum(r.results.get("timings", {}).get(k, 0) for k in ("model_load_s", "tokenize_s", "reference_s"))
        for t in r.results.get("training", []):
            seconds += t.get("eval_s", 0) + sum(s.get("train_s", 0) + s.get("plugin_s", 0)
                                                 for s in t.get("stages", {}).values())
        g = by_group.setdefault(r.group, {"group": r.group, "runs": 0, "hours": 0.0})
        g["runs"] += 1
        g["hours"] += seconds / 3600
    rows = sorted(by_group.values(), key=lambda g: g["group"])
    total = {"group": "all", "runs": sum(g["runs"] for g in rows), "hours": sum(g["hours"] for g in rows)}
    return [dict(g, hours=f"{g['hours']:.2f}") for g in rows + [total]], ["group", "runs", "hours"]


# ---------------------------------------------------------------- verdicts
CONTINUAL = ("seqft", "l2p", "olora", "er", "gem", "agem", "ewc", "cppo")  # LifeAlign's rivals for Last
# The paper's headline claims, one verdict row each, in this order; the book lists the paper's
# numbers for the same claims in the same order.
CLAIMS = (
    "LifeAlign has the best Last of the continual methods",
    "SeqFT and ER forget (negative BWT)",
    "LifeAlign's BWT is near zero, above SeqFT's and ER's",
    "SLMC carries most of the forgetting reduction, FPO adds on top",
    "LifeAlign keeps the best BWT in each of the three task orders",
    "The ranking holds across backbones (Qwen, Mistral, Llama)",
    "lambda = 0.5 is the best trade-off and lambda >= 0.8 collapses BWT",
)
CONFIRMED, REFUTED, INCONCLUSIVE = "confirmed", "refuted", "inconclusive at this scale"


def _judge(wins, losses, missing):
    """The verdict of a claim that needs every comparison in `wins` to go its way beyond the noise:
    refuted as soon as one goes the other way beyond it; else not yet run while runs are missing;
    else confirmed only when all went its way."""
    if any(losses):
        return REFUTED
    if missing:
        return f"not yet run (missing: {', '.join(missing)})"
    return CONFIRMED if wins and all(wins) else INCONCLUSIVE


def verdicts(runs, metric="reward_accuracy"):
    """One row per headline claim of the paper (CLAIMS), with our evidence on `metric`, the seeds
    and a verdict: confirmed (every comparison the claim makes goes its way beyond the noise,
    Welch's t at 95%), refuted (one goes the other way beyond it), inconclusive at this scale, or
    not yet run (naming the missing methods / runs)."""
    pooled = {k: pooled_sd(runs, metric, k) for k in ("bwt", "last")}

    def st(method, key, order="order1", groups=("matrix", "ablation")):
        return method_stats(runs, method, metric, key, order=order, groups=groups)

    def seeds(pairs):
        return ", ".join(f"{label} {n}" for label, n in pairs)

    def versus(a, b, key):
        d, se, word = compare(a, b, pooled[key])
        if d is None:
            return "–"
        return f"{fmt(d, signed=True)} (se {fmt(se)}, {word})" if se is not None else f"{fmt(d, signed=True)} ({word})"

    rows = []

    def add(claim, evidence, verdict, seed_text):
        rows.append({"claim": claim, "evidence": evidence, "seeds": seed_text, "verdict": verdict})

    # 1. LifeAlign's Last above every continual baseline's.
    la = {k: st("lifealign", k) for k in ("bwt", "last")}
    present = [m for m in CONTINUAL if st(m, "last")["n"]]
    missing = [LABELS[m] for m in ("lifealign",) + CONTINUAL if not st(m, "last")["n"]]
    results = {m: compare(la["last"], st(m, "last"), pooled["last"]) for m in present}
    add(CLAIMS[0], "; ".join(f"Last, LifeAlign - {LABELS[m]}: {versus(la['last'], st(m, 'last'), 'last')}"
                             for m in present) or "–",
        _judge([r[2] == "higher" for r in results.values()], [r[2] == "lower" for r in results.values()], missing),
        seeds((LABELS[m], st(m, "last")["n"]) for m in ("lifealign",) + tuple(present)))

    # 2. SeqFT and ER forget: each one's BWT below zero beyond its seed spread.
    tests, parts = {}, []
    for m in ("seqft", "er"):
        s = st(m, "bwt")
        word, half = below_zero(s, pooled["bwt"])
        tests[m] = word
        if s["n"]:
            parts.append(f"{LABELS[m]} BWT {fmt_stats(s)} (n = {s['n']}, 95% CI half-width {fmt(half)}: "
                         f"{zero_text(word)})")
    add(CLAIMS[1], "; ".join(parts) or "–",
        _judge([w == "below" for w in tests.values()], [w == "above" for w in tests.values()],
               [LABELS[m] for m in ("seqft", "er") if not st(m, "bwt")["n"]]),
        seeds((LABELS[m], st(m, "bwt")["n"]) for m in ("seqft", "er")))

    # 3. LifeAlign's BWT near zero (not below it) and above SeqFT's and ER's.
    word, half = below_zero(la["bwt"], pooled["bwt"])
    rivals = [m for m in ("seqft", "er") if st(m, "bwt")["n"]]
    comps = {m: compare(la["bwt"], st(m, "bwt"), pooled["bwt"]) for m in rivals}
    evidence = ("; ".join([f"LifeAlign BWT {fmt_stats(la['bwt'])} ({zero_text(word)})"] +
                          [f"BWT, LifeAlign - {LABELS[m]}: {versus(la['bwt'], st(m, 'bwt'), 'bwt')}" for m in rivals])
                if la["bwt"]["n"] else "–")
    add(CLAIMS[2], evidence,
        _judge([r[2] == "higher" for r in comps.values()] + [word != "below"],
               [r[2] == "lower" for r in comps.values()] + [word == "below"],
               [LABELS[m] for m in ("lifealign", "seqft", "er") if not st(m, "bwt")["n"]]),
        seeds((LABELS[m], st(m, "bwt")["n"]) for m in ("lifealign", "seqft", "er")))

    # 4. The 2x2 ablation: SLMC's gain (b - a) beyond FPO's (c - a), and FPO on top of SLMC (d - b).
    a, b, c, d = (st(m, "bwt") for _, m, _, _ in ABLATION)
    slmc_gain, fpo_gain, on_top, slmc_vs_fpo = (compare(b, a, pooled["bwt"]), compare(c, a, pooled["bwt"]),
                                                compare(d, b, pooled["bwt"]), compare(b, c, pooled["bwt"]))
    add(CLAIMS[3], f"BWT, SLMC - neither (b - a): {versus(b, a, 'bwt')}; FPO - neither (c - a): {versus(c, a, 'bwt')}; "
                   f"SLMC - FPO (b - c): {versus(b, c, 'bwt')}; both - SLMC (d - b): {versus(d, b, 'bwt')}",
        _judge([slmc_gain[2] == "higher", slmc_vs_fpo[2] == "higher", on_top[2] == "higher"],
               [slmc_gain[2] == "lower", slmc_vs_fpo[2] == "lower", on_top[2] == "lower"],
               [f"{letter} ({LABELS[m]})" for letter, m, _, _ in ABLATION if not st(m, "bwt")["n"]]),
        seeds((f"{letter}", st(m, "bwt")["n"]) for letter, m, _, _ in ABLATION))

    # 5. In every order, LifeAlign's BWT above ER's and CPPO's.
    wins, losses, missing, parts, counts = [], [], [], [], []
    for order in ("order1", "order2", "order3"):
        o = {m: st(m, "bwt", order, ("matrix", "orders")) for m in ("er", "cppo", "lifealign")}
        missing += [f"{LABELS[m]} {order}" for m, v in o.items() if not v["n"]]
        counts += [(f"{LABELS[m]} {order}", v["n"]) for m, v in o.items()]
        for m in ("er", "cppo"):
            r = compare(o["lifealign"], o[m], pooled["bwt"])
            if r[0] is not None:
                wins.append(r[2] == "higher")
                losses.append(r[2] == "lower")
                parts.append(f"BWT {order}, LifeAlign - {LABELS[m]}: {versus(o['lifealign'], o[m], 'bwt')}")
    add(CLAIMS[4], "; ".join(parts) or "–", _judge(wins, losses, missing), seeds(counts))

    # 6. Backbones: the cpu profile has one.
    add(CLAIMS[5], "not run: the CPU profile has one small backbone (the paper profile has the switches)",
        "not tested", "–")

    # 7. lambda: every lambda >= 0.8 has a lower BWT than 0.5, and no lambda beats 0.5 on both BWT and Last.
    points = dict(sweep_points(runs, "slmc_lambda", 0.5, metric))
    half_point = points.get(0.5)
    wins, losses, parts = [], [], []
    for value, p in sorted(points.items()):
        parts.append(f"lambda {value:g}: BWT {fmt_stats(p['bwt'])}, Last {fmt_stats(p['last'])}")
        if half_point is None or value == 0.5:
            continue
        bwt = compare(p["bwt"], half_point["bwt"], pooled["bwt"])[2]
        last = compare(p["last"], half_point["last"], pooled["last"])[2]
        if value >= 0.8:
            wins.append(bwt == "lower")
            losses.append(bwt == "higher")
        losses.append(bwt == "higher" and last == "higher")
    missing = [] if half_point and len(points) >= 3 and any(v >= 0.8 for v in points) else \
        [f"the sweep has {len(points)} lambda value(s), needs 0.5, one >= 0.8 and three in all"]
    add(CLAIMS[6], "; ".join(parts) or "–", _judge(wins, losses, missing),
        seeds((f"lambda {v:g}", p["bwt"]["n"]) for v, p in sorted(points.items())))
    return rows, ["claim", "evidence", "seeds", "verdict"]


def evidence_items(row):
    """A verdict row's evidence as a list: one comparison (or one value) an item."""
    return [] if row["evidence"] in ("", "–") else row["evidence"].split("; ")


def verdicts_markdown(rows):
    """Verdict rows as a reader reads them: a table of claim and verdict, then each claim's
    comparisons as a list with the seeds behind them."""
    parts = [markdown([{"claim": r["claim"], "verdict": r["verdict"]} for r in rows], ["claim", "verdict"])]
    for r in rows:
        items = "".join(f"- {e}\n" for e in evidence_items(r))
        parts.append(f"**{r['claim']}**: *{r['verdict']}* (seeds: {r['seeds']})\n" + (f"\n{items}" if items else ""))
    return "\n".join(parts)


def numbers(runs, metric="reward_accuracy"):
    """Named values the book's prose quotes (glued from the report notebook)."""
    out = {}
    for method in methods_of(runs):
        for key in ("bwt", "last", "ap"):
            s = method_stats(runs, method, metric, key)
            if s["mean"] is not None:
                out[f"{method}_{key}"] = s["mean"]
                out[f"{method}_{key}_sd"] = s["sd"]
                out[f"{method}_{key}_n"] = s["n"]
    out["pooled_sd_bwt"], out["pooled_sd_bwt_dof"] = pooled_sd(runs, metric, "bwt")
    # Where LifeAlign's Last differs from SeqFT's: the final row, task by task (means over seeds).
    final = {}
    for method in ("lifealign", "seqft"):
        for r in select(runs, ("matrix",), method, "order1"):
            row = r.results["metrics"][metric]["matrix"][-1]
            for task, v in zip(r.results["order"], row):
                final.setdefault(method, {}).setdefault(task, []).append(v)
    if len(final) == 2:
        out["final_row_lifealign_minus_seqft"] = {task: mean_of(v) - mean_of(final["seqft"][task])
                                                  for task, v in final["lifealign"].items() if task in final["seqft"]}
    # Does SeqFT forget at all? Its BWT on every metric, tested against zero (the book's note).
    out["seqft_bwt_by_metric"] = {}
    for name in ("reward_accuracy", "bleu4", "rougel"):
        s = method_stats(runs, "seqft", name, "bwt")
        if s["n"]:
            # the same test as the verdict on "SeqFT and ER forget", so the book's note agrees with it
            word, half = below_zero(s, pooled_sd(runs, name, "bwt"))
            out["seqft_bwt_by_metric"][name] = dict(s, test=word, ci95_half=half)
    out["runs"] = len(runs)
    # Which run-code versions made the runs (provenance.json), against the code's current one.
    versions = {}
    for r in runs:
        versions[str(r.code_version)] = versions.get(str(r.code_version), 0) + 1
    out["run_code_versions"] = dict(sorted(versions.items()))
    out["run_code_version_now"] = RUN_CODE_VERSION
    return out


# ---------------------------------------------------------------- figures
def _style():
    """seaborn's theme for every figure of the report: readable at the book's page width."""
    import seaborn as sns

    sns.set_theme(context="notebook", style="whitegrid", font_scale=0.9)
    return sns


def _matrix(rows, order, done):
    """A score matrix as a DataFrame: the base row first, then one row per trained task."""
    import pandas as pd

    values = [[float("nan") if v is None else v for v in row] for row in rows]
    return pd.DataFrame(values, index=["base"] + [task_label(t) for t in done], columns=[task_label(t) for t in order])


def _heatmap(ax, frame, vmin, vmax, title, cbar_ax=None, digits=0):
    sns = _style()
    sns.heatmap(frame, ax=ax, vmin=vmin, vmax=vmax, cmap="viridis", annot=True, fmt=f".{digits}f",
                annot_kws={"fontsize": 10}, linewidths=0.5, square=False, cbar=cbar_ax is not None,
                cbar_ax=cbar_ax)
    ax.set_title(title, fontsize=11)
    ax.set_xlabel("evaluated task")
    ax.set_ylabel("after training on")
    ax.tick_params(axis="x", rotation=30)
    ax.tick_params(axis="y", rotation=0)
    for label in ax.get_xticklabels():
        label.set_horizontalalignment("right")


def mean_matrix(runs, metric):
    """(base row, matrix) of a metric averaged over runs with the same tasks (None where missing)."""
    base = [mean_of(c) for c in zip(*[r.results["metrics"][metric]["base"] for r in runs])]
    matrix = [[mean_of(c) for c in zip(*rows)] for rows in zip(*[r.results["metrics"][metric]["matrix"] for r in runs])]
    return base, matrix


def plot_heatmaps(runs, methods, metric, path, order="order1"):
    """One annotated matrix per method, averaged over its seeds, with one shared colorbar:
    rows = after task (base first), columns = evaluated task."""
    import matplotlib.pyplot as plt

    chosen = {m: select(runs, ("matrix",), m, order) for m in methods}
    chosen = {m: rs for m, rs in chosen.items() if rs}
    if not chosen:
        return None
    _style()
    cols = min(2, len(chosen))
    nrows = math.ceil(len(chosen) / cols)
    fig = plt.figure(figsize=(6.2 * cols + 0.6, 4.8 * nrows))
    grid = fig.add_gridspec(nrows, cols + 1, width_ratios=[1] * cols + [0.04])
    cbar_ax = fig.add_subplot(grid[:, cols])
    for k, (method, rs) in enumerate(chosen.items()):
        ax = fig.add_subplot(grid[k // cols, k % cols])
        base, matrix = mean_matrix(rs, metric)
        bwt = stats([r.summary(metric, "bwt") for r in rs])
        _heatmap(ax, _matrix([base] + matrix, rs[0].results["order"], rs[0].results["rows"]), 0, 100,
                 f"{LABELS.get(method, method)}: BWT {fmt_stats(bwt, 1)} ({len(rs)} seed{'s' if len(rs) > 1 else ''})",
                 cbar_ax=cbar_ax if k == 0 else None)
    cbar_ax.set_ylabel(f"{METRIC_NAMES.get(metric, metric)} (%)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return fig


def plot_run(run, path):
    """Every metric's matrix of one run, annotated, each with its colorbar (one panel per metric)."""
    import matplotlib.pyplot as plt

    metrics = [m for m in METRIC_NAMES if m in run.results.get("metrics", {})]
    if not metrics:
        return None
    _style()
    cols = min(2, len(metrics))
    nrows = math.ceil(len(metrics) / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(7.0 * cols, 4.8 * nrows), squeeze=False)
    for ax in axes.flat[len(metrics):]:
        ax.set_visible(False)
    for ax, metric in zip(axes.flat, metrics):
        m = run.results["metrics"][metric]
        values = [v for row in [m["base"]] + m["matrix"] for v in row if v is not None]
        accuracy = metric.endswith("accuracy")
        vmin, vmax = (0, 100) if accuracy else (min(values, default=0), max(values, default=1))
        bwt = m["summary"].get("bwt")
        _heatmap(ax, _matrix([m["base"]] + m["matrix"], run.results["order"], run.results["rows"]), vmin, vmax,
                 f"{METRIC_NAMES.get(metric, metric)}" + (f": BWT {fmt(bwt, 1, True)}" if bwt is not None else ""),
                 cbar_ax=None, digits=0 if accuracy else 1)
        fig.colorbar(ax.collections[0], ax=ax, fraction=0.05, pad=0.02)
    fig.suptitle(f"{LABELS.get(run.method, run.method)}, {run.order}, seed {run.seed}", fontsize=12)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return fig


def _long(runs, metric, key, **labels):
    """Rows {value, **labels} of one summary of each run, for seaborn (one row per seed)."""
    return [dict(labels, value=r.summary(metric, key)) for r in runs if r.summary(metric, key) is not None]


def plot_forgetting(runs, methods, metric, path, order="order1"):
    """Each task's score from the moment it is learned to the end: mean over seeds with the seeds'
    standard deviation as error bars, one panel per method."""
    import matplotlib.pyplot as plt
    import pandas as pd

    sns = _style()
    fig, axes = plt.subplots(1, len(methods), figsize=(4.6 * len(methods), 3.8), squeeze=False, sharey=True)
    for ax, method in zip(axes[0], methods):
        chosen = select(runs, ("matrix",), method, order)
        if not chosen:
            ax.set_visible(False)
            continue
        tasks = chosen[0].results["order"]
        n = len(chosen[0].results["rows"])
        points = [{"after task": i + 1, "task": task_label(task), "score": r.results["metrics"][metric]["matrix"][i][j]}
                  for r in chosen for j, task in enumerate(tasks[:n]) for i in range(j, n)]
        frame = pd.DataFrame(points).dropna()
        sns.lineplot(frame, x="after task", y="score", hue="task", ax=ax, marker="o", errorbar="sd",
                     err_style="bars", err_kws={"capsize": 3}, legend=ax is axes[0][-1])
        ax.axhline(50, color="gray", lw=0.8, ls=":")
        ax.set_xticks(range(1, n + 1))
        ax.set_title(f"{LABELS.get(method, method)} ({len(chosen)} seed{'s' if len(chosen) > 1 else ''})", fontsize=11)
    axes[0][0].set_ylabel(f"{METRIC_NAMES.get(metric, metric)} (%)")
    if axes[0][-1].get_legend():
        sns.move_legend(axes[0][-1], "upper left", bbox_to_anchor=(1.02, 1), fontsize=9, title="task")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return fig


def _bars(ax, frame, order, methods, errorbar):
    """Grouped bars (x = order, hue = method); a method with no value in an order gets "n/a"."""
    sns = _style()
    palette = dict(zip([LABELS[m] for m in methods], sns.color_palette(n_colors=len(methods))))
    if len(frame):
        sns.barplot(frame, x="order", y="value", hue="method", order=order, hue_order=list(palette),
                    palette=palette, errorbar=errorbar, capsize=0.15, err_kws={"linewidth": 1}, ax=ax, legend=False)
    width = 0.8 / len(methods)
    present = {(r["order"], r["method"]) for r in frame.to_dict("records")} if len(frame) else set()
    for i, o in enumerate(order):
        for k, label in enumerate(palette):
            if (o, label) not in present:
                ax.text(i + (k - (len(methods) - 1) / 2) * width, 0.03, "n/a", ha="center", va="bottom", fontsize=8,
                        rotation=90, color=palette[label], transform=ax.get_xaxis_transform())
    ax.set_xticks(range(len(order)), order)
    ax.set_xlim(-0.5, len(order) - 0.5)
    ax.axhline(0, color="black", lw=0.6)
    ax.set_xlabel("")
    return palette


def plot_orders(runs, paper_dir, metric, path, paper_metric="bleu4"):
    """BWT (top) and Last (bottom) of ER, CPPO and LifeAlign in each order: the paper's BLEU-4, ours on
    BLEU-4 (the same metric, mean with the seeds' sd) and ours on `metric` (its own panel)."""
    import matplotlib.pyplot as plt
    import pandas as pd
    from matplotlib.patches import Patch

    paper = {(r["metric"], r["order"]): r for r in read_csv(Path(paper_dir) / "task_orders_qwen.csv")}
    methods, orders = ("er", "cppo", "lifealign"), ("order1", "order2", "order3")
    _style()
    fig, axes = plt.subplots(2, 3, figsize=(13, 7))
    for row, key in enumerate(("bwt", "last")):
        panels = (("ours", metric), ("ours", paper_metric), ("paper", paper_metric))
        for c, (source, name) in enumerate(panels):
            ax = axes[row][c]
            if source == "ours":
                frame = pd.DataFrame([p for o in orders for m in methods for p in _long(
                    select(runs, ("matrix", "orders"), m, o), name, key, order=o, method=LABELS[m])],
                    columns=["order", "method", "value"])
                errorbar = "sd"
            else:
                frame = pd.DataFrame([{"order": o, "method": LABELS[m], "value": _num(paper[(f"{name}_{key}", o)][LABELS[m]])}
                                      for o in orders for m in methods if (f"{name}_{key}", o) in paper],
                                     columns=["order", "method", "value"]).dropna()
                errorbar = None
            palette = _bars(ax, frame, orders, methods, errorbar)
            who = "ours (SmolLM2-135M)" if source == "ours" else "paper (Qwen2.5-7B, one seed)"
            ax.set_title(f"{who}: {METRIC_SHORT.get(name, name)} {SUMMARY_LABELS[key]}", fontsize=10)
            ax.set_ylabel(SUMMARY_LABELS[key])
    fig.legend(handles=[Patch(color=c, label=m) for m, c in palette.items()], loc="upper center", ncol=3,
               frameon=False, bbox_to_anchor=(0.5, 1.0))
    fig.tight_layout(rect=(0, 0, 1, 0.95))
    fig.savefig(path, dpi=110)
    return fig


def _plot_points(ax, points, key, **style):
    """sweep_points' means of one summary key, with the seed sd as error bars (0 for one seed)."""
    ax.errorbar([p[0] for p in points], [p[1][key]["mean"] for p in points],
                yerr=[p[1][key]["sd"] or 0 for p in points], capsize=3, **style)


def plot_sensitivity(runs, paper_dir, default_lambda, default_theta, metric, path):
    """BWT (top) and Last (bottom) of LifeAlign against lambda and theta on `metric` (ours: mean with
    the seeds' sd as error bars where a point has several seeds), and ROUGE-L against lambda: the
    paper's sweep beside ours, where the runs have it (the same metric on the same axes)."""
    import matplotlib.pyplot as plt

    _style()
    paper = read_csv(Path(paper_dir) / "lambda_sweep_qwen_order1.csv")
    fig, axes = plt.subplots(2, 3, figsize=(13, 7))
    for c, (key, default, label) in enumerate((("slmc_lambda", default_lambda, "lambda"),
                                                ("slmc_threshold", default_theta, "theta"))):
        points = sweep_points(runs, key, default, metric)
        for r, k in enumerate(("bwt", "last")):
            ax = axes[r][c]
            _plot_points(ax, points, k, fmt="o-", color="C0")
            ax.axvline(default, color="gray", lw=0.8, ls=":")
            ax.set_xlim(*((-0.05, 1.05) if key == "slmc_lambda" else (min([0.65] + [p[0] for p in points]) - 0.02, 1.01)))
            if k == "bwt":
                ax.axhline(0, color="black", lw=0.6)
            ax.set_xlabel(label)
            ax.set_ylabel(SUMMARY_LABELS[k])
            ax.set_title(f"ours: {METRIC_SHORT[metric]} {SUMMARY_LABELS[k]} over {label}", fontsize=10)
    lam = [float(r["lambda"]) for r in paper]
    ours = [p for p in sweep_points(runs, "slmc_lambda", default_lambda, "rougel") if p[1]["bwt"]["mean"] is not None]
    for r, k in enumerate(("bwt", "last")):
        ax = axes[r][2]
        ax.plot(lam, [_num(x[f"rougel_{k}"]) for x in paper], "s--", color="C1",
                label=f"paper (Qwen2.5-7B): ROUGE-L {SUMMARY_LABELS[k]}")
        if ours:
            _plot_points(ax, ours, k, fmt="o-", color="C0", label=f"ours: ROUGE-L {SUMMARY_LABELS[k]}")
        if k == "bwt":
            ax.axhline(0, color="black", lw=0.6)
        ax.set_xlabel("lambda")
        ax.set_ylabel(SUMMARY_LABELS[k])
        ax.set_title(f"ROUGE-L {SUMMARY_LABELS[k]} over lambda", fontsize=10)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return fig


def write_table(rows, columns, folder, name):
    """name.csv and name.md in folder."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / f"{name}.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    write_text(folder / f"{name}.md", markdown(rows, columns))

"""Tables, figures and verdicts of the reproduction, from the committed run results and the paper's
reported numbers (paper/*.csv). The report notebook calls these; the book shows what they write.

A run is one results/<profile>/<group>/<run id>/results.json. Values over seeds are mean, sample
standard deviation and count. Differences are ours minus the paper's. Verdicts compare two means
with Welch's t-test at 95% (two-sided): se = sqrt(sd_a^2 / n_a + sd_b^2 / n_b) with
Welch-Satterthwaite degrees of freedom, where a single-seed value borrows the pooled seed spread
of the profile's multi-seed runs (and its degrees of freedom). |difference| > t_crit * se decides,
else "within noise". With one or two seeds t_crit is large (12.7 at one degree of freedom): few
seeds rarely decide anything, as they should not.
"""
import csv
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from .data import ORDERS, TASKS
from .io import write_text

# Our matrices: judge-free (every run) and the generation metrics the paper also reports.
METRIC_NAMES = {
    "reward_accuracy": "implicit-reward accuracy",
    "loglik_accuracy": "log-likelihood preference accuracy",
    "bleu4": "BLEU-4",
    "rougel": "ROUGE-L",
    "judge": "LLM judge",
}
PAPER_METRICS = ("bleu4", "rougel", "judge")
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
        runs.append(Run(path.parent.parent.name, path.parent.name, method["name"],
                        order_name(cfg["data"]["order"]), cfg["seed"], sweep, res))
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


def mean_of(values):
    """The mean of the non-missing values, None if there are none (stats' mean)."""
    return stats(list(values))["mean"]


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


def col(metric, key, *words):
    """A column name such as 'BLEU-4 BWT paper'."""
    return " ".join([METRIC_NAMES.get(metric, metric), SUMMARY_LABELS.get(key, key), *words])


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
    """Intransigence vs STL (spec section 7): mean over tasks of STL's score on the task (a fresh
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


def ablation_table(runs, paper_dir, metrics=("reward_accuracy", "bleu4")):
    """The {DPO, FPO} x {no SLMC, SLMC} grid, all with replay; paper rows a-d beside ours."""
    paper = {r["row"]: r for r in read_csv(Path(paper_dir) / "ablation_qwen_order1.csv")}
    rows = []
    for letter, method, fpo, slmc in ABLATION:
        row = {"row": letter, "FPO": "yes" if fpo else "no", "SLMC": "yes" if slmc else "no",
               "method": LABELS[method], "seeds": len(select(runs, ("matrix", "ablation"), method, "order1"))}
        for metric in metrics:
            for key in ("bwt", "last", "ap"):
                ours = method_stats(runs, method, metric, key)
                row[col(metric, key, "ours")] = fmt_stats(ours)
                if metric in ("bleu4", "judge"):
                    theirs = _num(paper[letter].get(f"{metric}_{key}"))
                    row[col(metric, key, "paper")] = fmt(theirs)
                    row[col(metric, key, "diff")] = fmt(ours["mean"] - theirs if ours["mean"] is not None
                                                        and theirs is not None else None, signed=True)
        rows.append(row)
    columns = ["row", "FPO", "SLMC", "method", "seeds"] + [
        col(m, k, w) for m in metrics for k in ("bwt", "last", "ap")
        for w in (("ours", "paper", "diff") if m in ("bleu4", "judge") else ("ours",))]
    return rows, columns


def orders_table(runs, paper_dir, metric="reward_accuracy", paper_metric="bleu4"):
    """ER, CPPO and LifeAlign over the three orders: our BWT/Last on `metric`, and on `paper_metric`
    beside the paper's (its BLEU-4) with the difference."""
    paper = {(r["metric"], r["order"]): r for r in read_csv(Path(paper_dir) / "task_orders_qwen.csv")}
    rows = []
    for order in ("order1", "order2", "order3"):
        for method in ("er", "cppo", "lifealign"):
            chosen = select(runs, ("matrix", "orders"), method, order)
            row = {"order": order, "method": LABELS[method], "seeds": len(chosen)}
            for key in ("bwt", "last"):
                ours = method_stats(runs, method, metric, key, order=order, groups=("matrix", "orders"))
                row[col(metric, key, "ours")] = fmt_stats(ours)
                p = paper.get((f"{paper_metric}_{key}", order))
                theirs = _num(p[LABELS[method]]) if p else None
                ours_gen = method_stats(runs, method, paper_metric, key, order=order, groups=("matrix", "orders"))
                row[col(paper_metric, key, "ours")] = fmt_stats(ours_gen)
                row[col(paper_metric, key, "paper")] = fmt(theirs)
                row[col(paper_metric, key, "diff")] = fmt(ours_gen["mean"] - theirs if ours_gen["mean"] is not None
                                                          and theirs is not None else None, signed=True)
            rows.append(row)
    columns = ["order", "method", "seeds"] + [col(metric, k, "ours") for k in ("bwt", "last")] + \
              [col(paper_metric, k, w) for k in ("bwt", "last") for w in ("ours", "paper", "diff")]
    return rows, columns


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


def sensitivity_table(runs, paper_dir, default_lambda, default_theta, metric="reward_accuracy",
                      paper_metric="rougel"):
    """LifeAlign over lambda and theta: our BWT/Last on `metric`; on `paper_metric` (ROUGE-L, what
    the paper's sweep reports beside its judge) ours, the paper's and the difference."""
    paper = {float(r["lambda"]): r for r in read_csv(Path(paper_dir) / "lambda_sweep_qwen_order1.csv")}
    rows = []
    for key, default in (("slmc_lambda", default_lambda), ("slmc_threshold", default_theta)):
        ours_gen = dict(sweep_points(runs, key, default, paper_metric))
        for value, s in sweep_points(runs, key, default, metric):
            p = paper.get(float(value)) if key == "slmc_lambda" else None
            row = {"setting": "lambda" if key == "slmc_lambda" else "theta", "value": value, "seeds": s["bwt"]["n"],
                   col(metric, "bwt", "ours"): fmt_stats(s["bwt"]), col(metric, "last", "ours"): fmt_stats(s["last"])}
            for k in ("bwt", "last"):
                ours = ours_gen.get(value, {}).get(k, {"mean": None})
                theirs = _num(p[f"{paper_metric}_{k}"]) if p else None
                row[col(paper_metric, k, "ours")] = fmt_stats(ours)
                row[col(paper_metric, k, "paper")] = fmt(theirs)
                row[col(paper_metric, k, "diff")] = fmt(ours["mean"] - theirs if ours["mean"] is not None
                                                        and theirs is not None else None, signed=True)
            row[col("judge", "bwt", "paper")] = fmt(_num(p["judge_bwt"])) if p else "–"
            rows.append(row)
    return rows, ["setting", "value", "seeds", col(metric, "bwt", "ours"), col(metric, "last", "ours")] + [
        col(paper_metric, k, w) for k in ("bwt", "last") for w in ("ours", "paper", "diff")] + [col("judge", "bwt", "paper")]


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
        row = {"task": task_label(task), "test pairs": n or "–", "chance ± 2 se": f"50 ± {fmt(band, 1)}"}
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


def coverage(runs, expected):
    """Which runs of the profile's grid the report has: `expected` = {group: [run ids]} (from
    pipeline.grid). Rows: group, present / expected, the missing run ids."""
    have = {(r.group, r.id) for r in runs}
    rows = []
    for group, ids in expected.items():
        missing = [i for i in ids if (group, i) not in have]
        rows.append({"group": group, "runs": f"{len(ids) - len(missing)} of {len(ids)}",
                     "missing": ", ".join(missing) or "none"})
    return rows, ["group", "runs", "missing"]


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


# ---------------------------------------------------------------- verdicts (spec section 9)
CONTINUAL = ("seqft", "l2p", "olora", "er", "gem", "agem", "ewc", "cppo")  # LifeAlign's rivals for Last
# The headline claims (spec section 9), one verdict row each, in this order; the book lists the
# paper's numbers for the same claims in the same order.
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
        return f"{fmt(d, signed=True)} ± {fmt(se)} ({word})" if d is not None else "–"

    rows = []

    def add(claim, evidence, verdict, seed_text):
        rows.append({"claim": claim, "evidence": evidence, "seeds": seed_text, "verdict": verdict})

    # 1. LifeAlign's Last above every continual baseline's.
    la = {k: st("lifealign", k) for k in ("bwt", "last")}
    present = [m for m in CONTINUAL if st(m, "last")["n"]]
    missing = [LABELS[m] for m in ("lifealign",) + CONTINUAL if not st(m, "last")["n"]]
    results = {m: compare(la["last"], st(m, "last"), pooled["last"]) for m in present}
    add(CLAIMS[0], "Last, LifeAlign minus: " + ("; ".join(f"{LABELS[m]} {versus(la['last'], st(m, 'last'), 'last')}"
                                                           for m in present) or "–"),
        _judge([r[2] == "higher" for r in results.values()], [r[2] == "lower" for r in results.values()], missing),
        seeds((LABELS[m], st(m, "last")["n"]) for m in ("lifealign",) + tuple(present)))

    # 2. SeqFT and ER forget: each one's BWT below zero beyond its seed spread.
    tests, parts = {}, []
    for m in ("seqft", "er"):
        s = st(m, "bwt")
        word, half = below_zero(s, pooled["bwt"])
        tests[m] = word
        if s["n"]:
            parts.append(f"{LABELS[m]} BWT {fmt_stats(s)} (n = {s['n']}, 95% CI ± {fmt(half)}: {zero_text(word)})")
    add(CLAIMS[1], "; ".join(parts) or "–",
        _judge([w == "below" for w in tests.values()], [w == "above" for w in tests.values()],
               [LABELS[m] for m in ("seqft", "er") if not st(m, "bwt")["n"]]),
        seeds((LABELS[m], st(m, "bwt")["n"]) for m in ("seqft", "er")))

    # 3. LifeAlign's BWT near zero (not below it) and above SeqFT's and ER's.
    word, half = below_zero(la["bwt"], pooled["bwt"])
    rivals = [m for m in ("seqft", "er") if st(m, "bwt")["n"]]
    comps = {m: compare(la["bwt"], st(m, "bwt"), pooled["bwt"]) for m in rivals}
    evidence = (f"LifeAlign BWT {fmt_stats(la['bwt'])} ({zero_text(word)}); minus " +
                "; ".join(f"{LABELS[m]} {versus(la['bwt'], st(m, 'bwt'), 'bwt')}" for m in rivals)
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
    add(CLAIMS[3], f"BWT, SLMC - neither (b - a) {versus(b, a, 'bwt')}; FPO - neither (c - a) {versus(c, a, 'bwt')}; "
                   f"SLMC - FPO (b - c) {versus(b, c, 'bwt')}; both - SLMC (d - b) {versus(d, b, 'bwt')}",
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
                parts.append(f"{order} LifeAlign - {LABELS[m]} {versus(o['lifealign'], o[m], 'bwt')}")
    add(CLAIMS[4], "BWT, " + ("; ".join(parts) or "–"), _judge(wins, losses, missing), seeds(counts))

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
    return out


# ---------------------------------------------------------------- figures
def task_label(name):
    task = TASKS.get(name)
    return task.short if task else name


def plot_heatmaps(runs, methods, metric, path, order="order1"):
    """One matrix per method (seed 0): rows = after task (base first), columns = evaluated task."""
    import matplotlib.pyplot as plt

    chosen = [next((r for r in select(runs, ("matrix", "ablation"), m, order) if r.seed == 0), None) for m in methods]
    chosen = [r for r in chosen if r is not None]
    if not chosen:
        return None
    fig, axes = plt.subplots(1, len(chosen), figsize=(3.6 * len(chosen), 3.4), squeeze=False)
    for ax, r in zip(axes[0], chosen):
        m = r.results["metrics"][metric]
        rows = [m["base"]] + m["matrix"]
        ax.imshow([[v if v is not None else float("nan") for v in row] for row in rows], vmin=0, vmax=100,
                  cmap="viridis")
        tasks = [task_label(t) for t in r.results["order"]]
        ax.set_xticks(range(len(tasks)), tasks, rotation=45, ha="right", fontsize=7)
        ax.set_yticks(range(len(rows)), ["base"] + [task_label(t) for t in r.results["rows"]], fontsize=7)
        for i, row in enumerate(rows):
            for j, v in enumerate(row):
                if v is not None:
                    ax.text(j, i, f"{v:.0f}", ha="center", va="center", fontsize=6,
                            color="white" if v < 60 else "black")
        ax.set_title(f"{LABELS.get(r.method, r.method)} (BWT {fmt(m['summary'].get('bwt'), 1, True)})", fontsize=9)
    fig.suptitle(f"{METRIC_NAMES.get(metric, metric)}: row = after task, column = evaluated task", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return fig


def plot_forgetting(runs, methods, metric, path, order="order1"):
    """Each task's score from the moment it is learned to the end (mean over seeds), per method."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(methods), figsize=(3.6 * len(methods), 3.0), squeeze=False, sharey=True)
    for ax, method in zip(axes[0], methods):
        chosen = select(runs, ("matrix",), method, order)
        if not chosen:
            ax.set_visible(False)
            continue
        order_tasks = chosen[0].results["order"]
        n = len(chosen[0].results["rows"])
        for j, task in enumerate(order_tasks[:n]):
            steps = list(range(j, n))
            means = [stats([r.results["metrics"][metric]["matrix"][i][j] for r in chosen])["mean"] for i in steps]
            ax.plot([s + 1 for s in steps], means, marker="o", ms=3, label=task_label(task))
        ax.set_title(f"{LABELS.get(method, method)} ({len(chosen)} seed{'s' if len(chosen) > 1 else ''})", fontsize=9)
        ax.set_xlabel("after task", fontsize=8)
    axes[0][0].set_ylabel(METRIC_NAMES.get(metric, metric), fontsize=8)
    axes[0][-1].legend(fontsize=6, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return fig


def plot_orders(runs, paper_dir, metric, path, paper_metric="bleu4"):
    """Bar grid: rows = BWT, Last; columns = ours (metric), the paper (paper_metric); bars = methods by order."""
    import matplotlib.pyplot as plt

    paper = {(r["metric"], r["order"]): r for r in read_csv(Path(paper_dir) / "task_orders_qwen.csv")}
    methods, orders = ("er", "cppo", "lifealign"), ("order1", "order2", "order3")
    fig, axes = plt.subplots(2, 2, figsize=(8, 5.2))
    width = 0.25
    for row, key in enumerate(("bwt", "last")):
        for col, source in enumerate(("ours", "paper")):
            ax = axes[row][col]
            for k, method in enumerate(methods):
                values = []
                for order in orders:
                    if source == "ours":
                        values.append(method_stats(runs, method, metric, key, order=order,
                                                   groups=("matrix", "orders"))["mean"])
                    else:
                        p = paper.get((f"{paper_metric}_{key}", order))
                        values.append(_num(p[LABELS[method]]) if p else None)
                xs = [i + (k - 1) * width for i in range(3)]
                ax.bar([x for x, v in zip(xs, values) if v is not None], [v for v in values if v is not None],
                       width, label=LABELS[method], color=f"C{k}")
                for x, v in zip(xs, values):
                    if v is None:  # no run: no bar (a zero-height bar would read as a value of 0)
                        ax.text(x, 0.03, "n/a", ha="center", va="bottom", fontsize=6, rotation=90, color=f"C{k}",
                                transform=ax.get_xaxis_transform())
            ax.set_xticks(range(3), orders, fontsize=8)
            ax.set_xlim(-0.5, 2.5)
            ax.axhline(0, color="black", lw=0.5)
            name = METRIC_NAMES.get(metric if source == "ours" else paper_metric)
            ax.set_title(f"{'ours' if source == 'ours' else 'paper'}: {name} {key.upper()}", fontsize=9)
    from matplotlib.patches import Patch

    axes[0][0].legend(handles=[Patch(color=f"C{k}", label=LABELS[m]) for k, m in enumerate(methods)], fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return fig


def _plot_points(ax, points, key, **style):
    """sweep_points' means of one summary key, with the seed sd as error bars (0 for one seed)."""
    ax.errorbar([p[0] for p in points], [p[1][key]["mean"] for p in points],
                yerr=[p[1][key]["sd"] or 0 for p in points], capsize=3, **style)


def plot_sensitivity(runs, paper_dir, default_lambda, default_theta, metric, path):
    """BWT (top) and Last (bottom) against lambda and theta (ours, mean with seed sd as error bars
    where a point has several seeds), and the paper's lambda sweep (judge and ROUGE-L) beside our
    ROUGE-L over lambda, where the runs have it."""
    import matplotlib.pyplot as plt

    paper = read_csv(Path(paper_dir) / "lambda_sweep_qwen_order1.csv")
    fig, axes = plt.subplots(2, 3, figsize=(11, 5.6))
    for c, (key, default, label) in enumerate((("slmc_lambda", default_lambda, "lambda"),
                                                ("slmc_threshold", default_theta, "theta"))):
        points = sweep_points(runs, key, default, metric)
        for r, k in enumerate(("bwt", "last")):
            ax = axes[r][c]
            _plot_points(ax, points, k, fmt="o-")
            ax.axvline(default, color="gray", lw=0.5, ls=":")
            ax.set_xlim(*((-0.05, 1.05) if key == "slmc_lambda" else (min([0.65] + [p[0] for p in points]) - 0.02, 1.01)))
            if k == "bwt":
                ax.axhline(0, color="black", lw=0.5)
            ax.set_xlabel(label)
            ax.set_title(f"ours: {METRIC_NAMES[metric]} {SUMMARY_LABELS[k]}", fontsize=9)
    lam = [float(r["lambda"]) for r in paper]
    ours = [p for p in sweep_points(runs, "slmc_lambda", default_lambda, "rougel") if p[1]["bwt"]["mean"] is not None]
    for r, k in enumerate(("bwt", "last")):
        ax = axes[r][2]
        ax.plot(lam, [_num(x[f"judge_{k}"]) for x in paper], "o-", label=f"paper: judge {SUMMARY_LABELS[k]}")
        ax.plot(lam, [_num(x[f"rougel_{k}"]) for x in paper], "s--", label=f"paper: ROUGE-L {SUMMARY_LABELS[k]}")
        if ours:
            _plot_points(ax, ours, k, fmt="^-", color="black", label=f"ours: ROUGE-L {SUMMARY_LABELS[k]}")
        if k == "bwt":
            ax.axhline(0, color="black", lw=0.5)
        ax.set_xlabel("lambda")
        ax.set_title("paper (Qwen2.5-7B, read off its plot)" + (" and ours" if ours else ""), fontsize=9)
        ax.legend(fontsize=7)
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

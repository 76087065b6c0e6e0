"""The statistics and tables of the reproduction, from the runs that count (lifealign.runs: finished,
made by the current run code) and the paper's reported numbers (paper/*.csv). The report notebook
calls these, lifealign.verdicts (the claims and their verdicts) and lifealign.figures; the book
shows what they write. Every table and verdict reads the runs' long frame (runs.tidy); `versus`
sets ours beside the paper's. With no run that counts, the tables say "no current results"
instead of stale numbers.

Statistics, the same everywhere:
- "a ± b": a mean over seeds and b the sample standard deviation of those seeds (n - 1 in the
  denominator); a single seed has no ±. The figures' error bars are the same sd.
- Every comparison of a verdict is one test, Welch's t-test, two-sided, at 95%: for means a and b,
  se = sqrt(s_a^2 / n_a + s_b^2 / n_b) with Welch-Satterthwaite degrees of freedom df, and the
  difference decides when |a - b| > t_0.975(df) * se (scipy.stats.t), else it is "within noise".
  "Below zero" is the same test with b the constant 0 (no variance), a one-sample t-test.
- The seed spread a test uses is floored at the profile's pooled seed spread: the sample variances
  of every method with two or more seeds (order1, the config's settings; per metric and summary)
  pooled over their degrees of freedom. A side whose own sd is below it (one seed, or seeds that
  coincide: sd 0.00) takes the pooled sd and its degrees of freedom, so that no comparison is a
  zero-variance test; its evidence then says "sd floored at the pooled s". Without a pooled spread
  (no method has two seeds) a single seed is inconclusive.
- "d (95% CI l to u, se s, word)": a difference, its 95% confidence interval d -+ t_0.975(df) * se,
  its standard error and the test's outcome; "95% CI half-width h" (of a mean) is t_0.975(df) * se.
"""
import csv
import math
from collections import Counter, namedtuple
from pathlib import Path

import pandas as pd
from scipy import stats as sps

from .data import short_name as task_label
from .io import write_text
from .metrics import mean_of as mean
from .runs import ORDER_NAMES, SUMMARIES, pick

METRIC_NAMES = {"reward_accuracy": "implicit-reward accuracy", "loglik_accuracy": "log-likelihood preference accuracy",
                "bleu4": "BLEU-4", "rougel": "ROUGE-L", "judge": "LLM judge"}
METRIC_SHORT = {"reward_accuracy": "reward acc.", "loglik_accuracy": "log-lik. acc.", "bleu4": "BLEU-4",
                "rougel": "ROUGE-L", "judge": "judge"}
VERDICT_METRICS = ("reward_accuracy", "bleu4", "rougel", "judge")
SUMMARY_KEYS = ("bwt", "last", "ap")
KEY_LABELS = {"bwt": "BWT", "last": "Last", "ap": "AP", "fwt": "FWT", "forgetting": "forgetting",
              "intransigence": "intransigence vs STL"}
MAIN_METHODS = ("seqft", "l2p", "olora", "er", "gem", "agem", "ewc", "cppo", "lifealign", "stl", "mtl")
CONTINUAL = MAIN_METHODS[:8]  # LifeAlign's rivals for Last
LABELS = {"seqft": "SeqFT", "l2p": "L2P", "olora": "O-LoRA", "er": "ER", "gem": "GEM", "agem": "A-GEM",
          "ewc": "EWC", "cppo": "CPPO", "lifealign": "LifeAlign", "stl": "STL", "mtl": "MTL",
          "dpo+slmc": "DPO+SLMC", "fpo": "FPO"}
# The 2x2 ablation (all with replay): row letters as in the paper.
ABLATION = (("a", "er", 0, 0), ("b", "dpo+slmc", 0, 1), ("c", "fpo", 1, 0), ("d", "lifealign", 1, 1))
# The paper reruns ER, CPPO and LifeAlign on orders 2 and 3; SeqFT beside them tests whether plain
# fine-tuning forgets in those orders too (the paper has no SeqFT there).
ORDER_METHODS = ("seqft", "er", "cppo", "lifealign")
LAMBDA = 0.5  # the paper's default lambda, the point of its sweep claim
EMPTY, NO_RESULTS = ("", "–", "n/a"), "*No current results.*\n"

# A side of a comparison: a method on an order at some settings (sweep: the accepted values of the
# frame's sweep column), and the row of the paper's numbers that holds its values.
Side = namedtuple("Side", "label method order sweep paper", defaults=("order1", ("",), None))
ZERO = Side("0", None)  # the constant 0 ("below zero")
Test = namedtuple("Test", "diff se word half floor")


def _main(m, order="order1"):
    if order == "order1":
        return Side(LABELS[m], m, paper=("main", LABELS[m]))
    return Side(f"{LABELS[m]} {order}", m, order, paper=("orders", f"{order} {LABELS[m]}"))


def _ablation(letter):
    method = next(m for row, m, _, _ in ABLATION if row == letter)
    return Side(f"{letter} ({LABELS[method]})", method, paper=("ablation", letter))


def _point(name, value, default):
    """LifeAlign on order1 at one value of a swept setting (the default: the runs at the config's
    settings), with the paper's lambda sweep as its paper row (its theta sweep was not recovered)."""
    sweep = (f"{name}={value:g}",) + (("",) if value == default else ())
    paper = ("sensitivity", f"{value:g}") if name == "lambda" else None
    return Side(f"{name} {value:g}", "lifealign", "order1", sweep, paper)


# ---------------------------------------------------------------- statistics (module docstring)
def stats(values):
    """{'mean', 'sd', 'n', 'values'} of the values that are not missing (sd: the sample sd, from two)."""
    values = [float(v) for v in values if v is not None and not math.isnan(v)]
    return {"mean": mean(values), "sd": float(pd.Series(values).std()) if len(values) > 1 else None,
            "n": len(values), "values": values}


def _mask(df, side):
    return (df.method == side.method) & (df.order == side.order) & df.sweep.isin(side.sweep)


def cell(df, metric, key, side):
    """stats of one summary over a side's seeds (ZERO: the constant 0)."""
    if side is ZERO:
        return {"mean": 0.0, "sd": 0.0, "n": math.inf, "values": []}
    return stats(df.value[_mask(df, side) & (df.metric == metric) & (df.key == key)])


def seeds(df, side):
    return int(df.run[_mask(df, side)].nunique())


def sweep_values(df, name, default=None):
    """The values of a swept setting the runs have, and the default where LifeAlign has runs at it."""
    found = {float(s.split("=")[1]) for s in df.sweep.unique() if s.startswith(f"{name}=")}
    return sorted(found | ({default} if default is not None and seeds(df, _main("lifealign")) else set()))


def pooled(df, metric, key):
    """(sd, degrees of freedom) of the seed spread pooled over every method with two or more seeds
    (order1, the config's settings); (None, 0) when no method has two."""
    sel = df[(df.metric == metric) & (df.key == key) & (df.order == "order1") & (df.sweep == "")]
    g = sel.groupby("method").value.agg(["var", "count"]).query("count > 1")
    dof = int((g["count"] - 1).sum())
    return (math.sqrt(float((g["var"] * (g["count"] - 1)).sum()) / dof), dof) if dof else (None, 0)


def _spread(s, pool):
    """(variance of the mean, degrees of freedom, floored) of one side; None when no spread is known."""
    if s["n"] == math.inf:
        return 0.0, math.inf, False
    if pool[0] is not None and pool[0] > (s["sd"] or 0.0):
        return pool[0] ** 2 / s["n"], pool[1], True
    return None if s["n"] < 2 else (s["sd"] ** 2 / s["n"], s["n"] - 1, False)


def compare(a, b, pool=(None, 0)):
    """Welch's two-sided t-test at 95% of mean a - mean b (stats dicts; b may be cell(.., ZERO)),
    each side's sd floored at `pool` = pooled(...). The word: higher, lower, within noise, or why
    the test cannot say; `floor`: the pooled sd where a side took it."""
    if not a["n"] or not b["n"]:
        return Test(None, None, "no data", None, None)
    diff, parts = a["mean"] - b["mean"], [_spread(s, pool) for s in (a, b)]
    if None in parts:
        return Test(diff, None, "inconclusive (one seed, no spread known)", None, None)
    var, floor = parts[0][0] + parts[1][0], pool[0] if parts[0][2] or parts[1][2] else None
    if var == 0:
        return Test(diff, 0.0, "inconclusive (no spread between seeds)", 0.0, floor)
    half = float(sps.t.ppf(0.975, var ** 2 / sum(v ** 2 / d for v, d, _ in parts if v > 0))) * math.sqrt(var)
    word = "higher" if diff > half else "lower" if diff < -half else "within noise"
    return Test(diff, math.sqrt(var), word, half, floor)


# ---------------------------------------------------------------- the paper's numbers
def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def paper_numbers(paper_dir):
    """The paper's numbers as {(table, row, metric, key): value}: table main (row: a method label),
    ablation (a letter), sensitivity (a lambda, "0.5") or orders ("order2 ER")."""
    out, folder = {}, Path(paper_dir)
    for table, name, column in (("main", "main_table_qwen_order1", "method"), ("ablation", "ablation_qwen_order1", "row"),
                                ("sensitivity", "lambda_sweep_qwen_order1", "lambda")):
        for r in read_csv(folder / f"{name}.csv"):
            row = f"{float(r[column]):g}" if column == "lambda" else r[column]
            out.update({(table, row, *c.rsplit("_", 1)): float(v) for c, v in r.items() if "_" in c and v})
    for r in read_csv(folder / "task_orders_qwen.csv"):
        out.update({("orders", f"{r['order']} {m}", *r["metric"].rsplit("_", 1)): float(r[m])
                    for m in ("CPPO", "ER", "LifeAlign") if r[m]})
    return out


# ---------------------------------------------------------------- tables
def fmt(value, digits=2, signed=False):
    return "–" if value is None else f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


def fmt_stats(s, digits=2):
    return fmt(s["mean"], digits) + (f" ± {s['sd']:.{digits}f}" if s["sd"] is not None else "") if s["n"] else "–"


def versus(df, specs, metrics, keys, paper=None):
    """The one table of ours beside the paper's: a row per metric and spec (labels, Side) with the
    seeds, and for each summary key ours (mean ± sd), the paper's value and ours minus it; without
    `paper`, ours alone (a column per key). STL and MTL have Last only ("n/a" elsewhere)."""
    rows = []
    for metric in metrics:
        for labels, side in specs:
            row = dict(labels, metric=METRIC_NAMES[metric], seeds=seeds(df, side))
            for key in keys:
                name, ours = KEY_LABELS[key], cell(df, metric, key, side)
                na = side.method in ("stl", "mtl") and key != "last"
                if paper is None:
                    row[name] = "n/a" if na else fmt_stats(ours)
                    continue
                theirs = paper.get(side.paper + (metric, key)) if side.paper else None
                diff = ours["mean"] - theirs if ours["n"] and theirs is not None else None
                cells = ("n/a",) * 3 if na else (fmt_stats(ours), fmt(theirs), fmt(diff, signed=True))
                row.update(zip((f"{name} ours", f"{name} paper", f"{name} diff"), cells))
            rows.append(row)
    return pd.DataFrame(rows)


def tables(df, paper, default_lambda, default_theta):
    """Every table of ours by the name the report saves it under: main_table (Table 1: BLEU-4, ROUGE-L),
    judge_free (implicit-reward and log-likelihood accuracy, which the paper has not), ablation ({DPO,
    FPO} x {no SLMC, SLMC}, all with replay), orders (SeqFT, ER, CPPO and LifeAlign over the three orders),
    sensitivity (LifeAlign over lambda and theta; the default point is the main grid's runs)."""
    main = [({"method": LABELS[m]}, _main(m)) for m in MAIN_METHODS]
    ablation = [({"row": row, "loss + SLMC": ("FPO" if fpo else "DPO") + (" + SLMC" if slmc else ""),
                  "method": LABELS[m]}, _ablation(row)) for row, m, fpo, slmc in ABLATION]
    orders = [({"order": o, "method": LABELS[m]}, _main(m, o)) for o in ORDER_NAMES for m in ORDER_METHODS]
    sweeps = [({"setting": name, "value": v}, _point(name, v, default)) for name, default in
              (("lambda", default_lambda), ("theta", default_theta)) for v in sweep_values(df, name, default)]
    return {"main_table": versus(df, main, ("bleu4", "rougel"), SUMMARY_KEYS, paper),
            "judge_free": versus(df, [s for s in main if seeds(df, s[1])], ("reward_accuracy", "loglik_accuracy"),
                                 SUMMARIES),
            "ablation": versus(df, ablation, ("reward_accuracy", "bleu4"), SUMMARY_KEYS, paper),
            "orders": versus(df, orders, ("reward_accuracy", "bleu4"), ("bwt", "last"), paper),
            "sensitivity": versus(df, sweeps, ("reward_accuracy", "rougel", "judge"), ("bwt", "last"), paper)}


def learned_table(runs, metric="reward_accuracy", methods=("seqft", "er", "lifealign")):
    """Which tasks the model learns: per task of order1, each method's score right after training it
    and at the end (means over seeds), and which methods' score after training lies above chance (50)
    by more than two binomial standard errors of the task's test pairs."""
    chosen = {m: rs for m in methods if (rs := pick(runs, m))}
    if not chosen:
        return pd.DataFrame(columns=["task"])
    first, rows = next(iter(chosen.values()))[0].results, []
    for i, task in enumerate(first["rows"]):
        n = first.get("data", {}).get(task, {}).get("test", {}).get("used") or first["config"]["data"].get("n_test")
        band = 200 * math.sqrt(0.25 / n) if n else None
        row, learned = {"task": task_label(task), "test pairs": n or "–",
                        "chance band (2 se)": f"{fmt(50 - band, 1)} to {fmt(50 + band, 1)}" if band else "–"}, []
        for m, rs in chosen.items():
            cells = [r.results["metrics"][metric]["matrix"] for r in rs if r.results["rows"] == first["rows"]]
            diag, end = mean(c[i][i] for c in cells), mean(c[-1][i] for c in cells)
            row[f"{LABELS[m]}: trained → end"] = f"{fmt(diag, 1)} → {fmt(end, 1)}"
            learned += [LABELS[m]] if diag is not None and band is not None and diag - 50 > band else []
        rows.append(dict(row, **{"learned (above chance beyond 2 se) by": ", ".join(learned) or "none"}))
    return pd.DataFrame(rows)


def coverage(runs, expected, left_out=None):
    """Which runs of the profile's grid count (`expected` = {group: [run ids]}, pipeline.grid), which have
    no results at all (missing) and which are left out, with why (`left_out`: runs.load_runs' excluded)."""
    have, left_out, rows = {(r.group, r.id) for r in runs}, left_out or {}, []
    for group, ids in expected.items():
        reasons = {}
        for i in ids:
            reasons.setdefault(left_out.get((group, i)), []).append(i)
        reasons.pop(None, None)
        out = "; ".join(f"all {len(v)} ({why})" if len(v) == len(ids) > 1 else f"{len(v)} ({why})" if len(v) > 3
                        else f"{', '.join(v)} ({why})" for why, v in reasons.items())
        missing = [i for i in ids if (group, i) not in have and (group, i) not in left_out]
        rows.append({"group": group, "runs": f"{sum((group, i) in have for i in ids)} of {len(ids)}",
                     "missing": ", ".join(missing) or "none", "left out": out or "none"})
    return pd.DataFrame(rows, columns=["group", "runs", "missing", "left out"])


def machine_label(results):
    """Where a run ran, as far as its speed goes: the CPU, its fastest bf16 instructions, the precision."""
    machine = results.get("machine", {})
    flags = set(machine.get("cpu_flags", []))
    kind = next((name for flag, name in (("amx_bf16", "AMX"), ("avx512_bf16", "AVX512-BF16"), ("avx2", "AVX2"))
                 if flag in flags), "no AVX2")
    return f"{machine.get('cpu') or 'unknown CPU'} ({kind}), {results.get('model', {}).get('precision', '?')}"


def compute_table(runs):
    """Hours each group took: its runs' wall-clock setup, training, SLMC and evaluation seconds
    summed (runs that shared the machine each count in full), and the machines they ran on."""
    hours, count = Counter(), Counter(r.group for r in runs)
    machines = {g: Counter(machine_label(r.results) for r in runs if r.group == g) for g in count}
    machines["all"] = sum(machines.values(), Counter())
    for r in runs:
        setup = sum(r.results.get("timings", {}).get(k, 0) for k in ("model_load_s", "tokenize_s", "reference_s"))
        hours[r.group] += (setup + sum(t.get("eval_s", 0) + sum(s.get("train_s", 0) + s.get("plugin_s", 0)
                                                                for s in t.get("stages", {}).values())
                                       for t in r.results.get("training", []))) / 3600
    rows = [(g, count[g], hours[g]) for g in sorted(count)] + [("all", len(runs), sum(hours.values()))]
    return pd.DataFrame([{"group": g, "runs": n, "hours": f"{h:.2f}",
                          "machines": "; ".join(f"{m}: {k}" for m, k in sorted(machines[g].items()))}
                         for g, n, h in rows])


def by_metric(table):
    """A long table (a row per ... and metric) as [(metric, its table)]. Per metric the paper and
    diff columns are left out where the paper has no value, a metric with no value at all is left
    out, and "BWT ours" reads "BWT" when no paper column is beside it."""
    out = []
    for metric, part in table.groupby("metric", sort=False):
        part = part.drop(columns="metric")
        part = part.loc[:, ~(part.isin(EMPTY).all() & part.columns.str.endswith((" paper", " diff")))]
        values = [c for c in part if c.endswith((" ours", " paper")) or c in KEY_LABELS.values()]
        if not values or not part[values].isin(EMPTY).all().all():
            out.append((metric, part.rename(columns={c: c[:-5] for c in part
                                                     if c.endswith(" ours") and f"{c[:-5]} paper" not in part})))
    return out


def markdown(rows, columns=None):
    """A markdown table (pandas' to_markdown) of a frame or of dict rows; "mean ± sd" stays on one line."""
    frame = rows if isinstance(rows, pd.DataFrame) else pd.DataFrame(rows, columns=columns)
    if frame.empty:
        return NO_RESULTS
    text = frame.astype(object).fillna("").astype(str).to_markdown(index=False, disable_numparse=True)
    return text.replace(" ± ", "\u00a0±\u00a0") + "\n"


def markdown_by_metric(table, note=""):
    """by_metric as markdown: a bold heading per metric (with `note` after it), then its table."""
    parts = by_metric(table) if "metric" in table else []
    return "\n".join(f"**{metric}**{note}\n\n" + markdown(part) for metric, part in parts) or NO_RESULTS


def save(table, folder, name):
    """name.csv and name.md in folder (one table per metric where the table has a metric column)."""
    Path(folder).mkdir(parents=True, exist_ok=True)
    table.to_csv(Path(folder) / f"{name}.csv", index=False)
    write_text(Path(folder) / f"{name}.md", markdown_by_metric(table) if "metric" in table else markdown(table))
    return table


def write_table(rows, columns, folder, name):
    """save() of dict rows."""
    return save(pd.DataFrame(rows, columns=columns), folder, name)


def no_results(left_out):
    """What the report says when no run of the profile counts: why each was left out."""
    why = "; ".join(f"{n} {w}" for w, n in Counter(left_out.values()).items()) or "the profile has no results yet"
    return f"**No current results** ({why}): `dvc repro` reruns the profile's grid.\n"

"""Tables and verdicts of the reproduction, from the runs that count (lifealign.runs: finished, made
by the current run code) and the paper's reported numbers (paper/*.csv). The report notebook calls
these and lifealign.figures; the book shows what they write. Every table and verdict reads the
runs' long frame (runs.tidy); `versus` sets ours beside the paper's, `judge` decides every claim of
CLAIMS. With no run that counts, the tables say "no current results" instead of stale numbers.

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
- Power: the seeds per side at which this test, with the pooled seed spread on both sides, decides a
  true difference d with 80% probability (noncentral t, 2n - 2 degrees of freedom; n - 1 against 0).
  An inconclusive verdict names the seeds that would decide it at the differences observed now: the
  fewest that refute it where a comparison points against the claim, else the most that confirming
  every comparison needs. The power table (`power_table`) adds the seeds the paper's differences need.
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
from .run_code import RUN_CODE_VERSION
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
ORDER_METHODS = ("er", "cppo", "lifealign")
LAMBDA = 0.5  # the paper's default lambda, the point of its sweep claim
EMPTY, NO_RESULTS = ("", "–", "n/a"), "*No current results.*\n"

# A side of a comparison: a method on an order at some settings (sweep: the accepted values of the
# frame's sweep column), and the row of the paper's numbers that holds its values.
Side = namedtuple("Side", "label method order sweep paper", defaults=("order1", ("",), None))
ZERO = Side("0", None)  # the constant 0 ("below zero")
Test = namedtuple("Test", "diff se word half floor")
POWER, MOST_SEEDS = 0.8, 20  # the power a seed count is sized for; the most seeds a grid can pay for


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


def seeds_needed(diff, sd, one_sample=False, power=POWER):
    """The fewest seeds per side (2 to MOST_SEEDS) with which `compare` decides a true difference
    `diff` between sides of sample sd `sd` with probability `power`; None above MOST_SEEDS, or
    when the difference or the spread is unknown. The power counts the test passing on the side of
    the difference only: where the power is near 80% the other side adds under 0.001% (and scipy's
    noncentral t returns NaN there for large differences)."""
    if diff is None or not sd:
        return None
    for n in range(2, MOST_SEEDS + 1):
        df, se = (n - 1, sd / math.sqrt(n)) if one_sample else (2 * n - 2, sd * math.sqrt(2 / n))
        if sps.nct.sf(sps.t.ppf(0.975, df), df, abs(diff) / se) >= power:
            return n
    return None


def fmt_seeds(n):
    return f"more than {MOST_SEEDS}" if n is None else str(n)


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
    FPO} x {no SLMC, SLMC}, all with replay), orders (ER, CPPO and LifeAlign over the three orders),
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


# ---------------------------------------------------------------- verdicts
# A claim's comparisons: (summary key, or "bwt+last" for both at once; side a; side b or ZERO; what
# the claim expects of a against b: "higher", "lower", "not lower", "not higher", or None: shown,
# not judged). The sweep claim's comparisons come from the lambda values the runs have.
Claim = namedtuple("Claim", "text page comparisons note", defaults=(None,))
LA = _main("lifealign")
CLAIMS = (
    Claim("LifeAlign has the best Last of the continual methods", "results",
          tuple(("last", LA, _main(m), "higher") for m in CONTINUAL)),
    Claim("SeqFT and ER forget (negative BWT)", "tasks",
          (("bwt", _main("seqft"), ZERO, "lower"), ("bwt", _main("er"), ZERO, "lower"))),
    Claim("LifeAlign's BWT is near zero, above SeqFT's and ER's", "results",
          (("bwt", LA, ZERO, "not lower"), ("bwt", LA, _main("seqft"), "higher"), ("bwt", LA, _main("er"), "higher"))),
    Claim("SLMC carries most of the forgetting reduction, FPO adds on top", "ablation",
          tuple(("bwt", _ablation(x), _ablation(y), e) for x, y, e in (("b", "a", "higher"), ("c", "a", None),
                                                                        ("b", "c", "higher"), ("d", "b", "higher")))),
    Claim("LifeAlign keeps the best BWT in each of the three task orders", "orders",
          tuple(("bwt", _main("lifealign", o), _main(m, o), "higher") for o in ORDER_NAMES for m in ("er", "cppo"))),
    Claim("The ranking holds across backbones (Qwen, Mistral, Llama)", None, (),
          "not run: the CPU profile has one small backbone (the paper profile has the switches)"),
    Claim("lambda = 0.5 is the best trade-off and lambda >= 0.8 collapses BWT", "sensitivity", None),
)
CONFIRMED, REFUTED, INCONCLUSIVE = "confirmed", "refuted", "inconclusive at this scale"
# What a claim expects -> (the test's words that confirm it, the word that refutes it).
EXPECT = {"higher": ({"higher"}, "lower"), "lower": ({"lower"}, "higher"),
          "not lower": ({"higher", "within noise", "mixed"}, "lower"),
          "not higher": ({"lower", "within noise", "mixed"}, "higher")}
ZERO_WORDS = {"lower": "below zero", "higher": "above zero", "within noise": "within noise of zero"}


def lambda_comparisons(df):
    """The sweep claim over the lambda values the runs have: each value >= 0.8 has a lower BWT than
    0.5, and none beats 0.5 on both BWT and Last. A sweep with no value >= 0.8, or none below it,
    names the run it lacks (lambda 0.8, lambda 0)."""
    values, base = [v for v in sweep_values(df, "lambda") if v != LAMBDA], _point("lambda", LAMBDA, LAMBDA)
    high, low = [v for v in values if v >= 0.8] or [0.8], [v for v in values if v < 0.8] or [0.0]
    return (tuple(("bwt", _point("lambda", v, LAMBDA), base, "lower") for v in high)
            + tuple(("bwt+last", _point("lambda", v, LAMBDA), base, "not higher") for v in sorted(set(low + values))))


def comparisons(claim, df):
    """A claim's comparisons; the sweep claim's from the lambda values the runs have."""
    return lambda_comparisons(df) if claim.comparisons is None else claim.comparisons


def _evidence(keys, a, b, first, tests, need=False):
    """One comparison as the verdicts print it: "KEY, a - b: d (95% CI l to u, se s, word)", or a's
    value against 0; with `need` (undecided: the seeds it needs, None for more than MOST_SEEDS), the
    seeds that would decide it."""
    def said(t):
        floor = "" if t.floor is None else f", sd floored at the pooled {t.floor:.2f}"
        return f"{t.word}{floor}" + ("" if need is False else f", 80% power at {fmt_seeds(need)} seeds each")

    def interval(t):
        if t.half is None:
            return "" if t.se is None else f"se {fmt(t.se)}, "
        return f"95% CI {fmt(t.diff - t.half, signed=True)} to {fmt(t.diff + t.half, signed=True)}, se {fmt(t.se)}, "

    if b is ZERO:
        t = tests[0]
        return (f"{a.label} {KEY_LABELS[keys[0]]} {fmt_stats(first)} (n = {first['n']}, 95% CI half-width "
                f"{fmt(t.half)}: {said(t._replace(word=ZERO_WORDS.get(t.word, t.word)))})")
    results = ", ".join(f"{fmt(t.diff, signed=True)} ({interval(t)}{said(t)})" for t in tests)
    return f"{' and '.join(KEY_LABELS[k] for k in keys)}, {a.label} - {b.label}: {results}"


def judge(claim, df, metric):
    """The verdict row of one claim on one metric, the one rule of every claim: refuted when a judged
    comparison goes against the claim beyond the noise; else not yet run while a side has no runs;
    else confirmed when every judged comparison goes its way beyond the noise; else inconclusive."""
    if claim.note:
        return {"claim": claim.text, "evidence": claim.note, "seeds": "–", "verdict": "not tested",
                "seeds to decide": "–"}
    wins, losses, missing, evidence, counts, needs = [], [], [], [], {}, []
    for key, a, b, expect in comparisons(claim, df):
        keys = key.split("+")
        cells = [(cell(df, metric, k, a), cell(df, metric, k, b)) for k in keys]
        for side, s in zip((a, b), cells[0]):
            if side is not ZERO:
                counts[side.label] = s["n"]
                missing += [side.label] if not s["n"] and side.label not in missing else []
        pools = [pooled(df, metric, k) for k in keys]
        tests = [compare(x, y, pool) for (x, y), pool in zip(cells, pools)]
        if tests[0].diff is None:
            continue
        word = tests[0].word if len({t.word for t in tests}) == 1 else "mixed"
        wins += [word in EXPECT[expect][0]] if expect else []
        losses += [word == EXPECT[expect][1]] if expect else []
        need = False  # the power of a single summary's test, where the claim still waits on it
        if expect and len(keys) == 1 and pools[0][0] and not wins[-1] and not losses[-1]:
            need = seeds_needed(tests[0].diff, pools[0][0], b is ZERO)
            needs.append((need, (tests[0].diff > 0) == (expect in ("lower", "not higher"))))  # against the claim
        evidence.append(_evidence(keys, a, b, cells[0][0], tests, need))
    verdict = (REFUTED if any(losses) else f"not yet run (missing: {', '.join(missing)})" if missing
               else CONFIRMED if wins and all(wins) else INCONCLUSIVE)
    return {"claim": claim.text, "evidence": "; ".join(evidence) or "–",
            "seeds": ", ".join(f"{k} {n}" for k, n in counts.items()) or "–", "verdict": verdict,
            "seeds to decide": fmt_seeds(seeds_to_decide(needs)) if verdict == INCONCLUSIVE and needs else "–"}


def seeds_to_decide(needs):
    """The seeds that decide an inconclusive claim at the differences seen now, from its undecided
    comparisons' [(seeds needed or None, whether the difference points against the claim)]: the
    fewest that refute it where one points against it, else the most that confirming all needs."""
    against = [n for n, points_against in needs if points_against]
    if against:
        return min((n for n in against if n is not None), default=None)
    return None if any(n is None for n, _ in needs) else max(n for n, _ in needs)


def verdicts(df, metric="reward_accuracy"):
    """One verdict row per headline claim of the paper (CLAIMS), on `metric`."""
    return [judge(claim, df, metric) for claim in CLAIMS]


def evidence_items(row):
    """A verdict row's evidence as a list: one comparison an item."""
    return [] if row["evidence"] in ("", "–") else row["evidence"].split("; ")


def verdicts_markdown(rows):
    """Verdict rows as a reader reads them: a table of claim and verdict, then each claim's
    comparisons as a list with the seeds behind them."""
    parts = [markdown([{"claim": r["claim"], "verdict": r["verdict"], "seeds each to decide": r["seeds to decide"]}
                       for r in rows])]
    for r in rows:
        items = "".join(f"- {e}\n" for e in evidence_items(r))
        parts.append(f"**{r['claim']}**: *{r['verdict']}* (seeds: {r['seeds']})\n" + (f"\n{items}" if items else ""))
    return "\n".join(parts)


def power_table(df, paper, metric):
    """How many seeds decide each judged comparison of CLAIMS on one summary: ours and the paper's
    difference, the pooled seed spread, and the seeds per side that give the test 80% power at each
    difference (seeds_needed). The paper's differences are on Qwen2.5-7B with the full data: a size
    to aim at, not a prediction of ours."""
    def theirs(side, key):
        return 0.0 if side is ZERO else paper.get(side.paper + (metric, key)) if side.paper else None

    rows = []
    for claim in CLAIMS:
        for key, a, b, expect in comparisons(claim, df):
            if expect is None or "+" in key:
                continue
            sd, x, y = pooled(df, metric, key)[0], cell(df, metric, key, a), cell(df, metric, key, b)
            ours = x["mean"] - y["mean"] if x["n"] and y["n"] else None
            paper_diff = None if None in (theirs(a, key), theirs(b, key)) else theirs(a, key) - theirs(b, key)
            need = [fmt_seeds(seeds_needed(d, sd, b is ZERO)) if d is not None and sd else "–"
                    for d in (ours, paper_diff)]
            rows.append({"claim": claim.text, "metric": METRIC_NAMES[metric],
                         "comparison": f"{a.label} {KEY_LABELS[key]} below zero" if b is ZERO
                         else f"{a.label} - {b.label}, {KEY_LABELS[key]}",
                         "ours": fmt(ours, signed=True), "paper's": fmt(paper_diff, signed=True),
                         "pooled sd": fmt(sd), "seeds (ours)": need[0], "seeds (paper's)": need[1]})
    return pd.DataFrame(rows)


def numbers(runs, df, left_out=None, metric="reward_accuracy"):
    """What the book's sentences quote (numbers.json): every method's means, sds and seeds, the pooled
    spread, the verdicts on every metric the runs have, SeqFT's BWT against zero per metric (the test
    of the verdict on "SeqFT and ER forget"), the final row LifeAlign minus SeqFT, the base model's
    log-likelihood accuracy, the tasks learned, the runs that count (their compute hours, the seeds
    of the main grid) and those left out."""
    out = {"runs": len(runs), "counted": [f"{r.group}/{r.id}" for r in runs],
           "left_out": {f"{g}/{i}": why for (g, i), why in (left_out or {}).items()},
           "run_code_version_now": RUN_CODE_VERSION, "hours": float(compute_table(runs).hours.iloc[-1]),
           "seeds": {LABELS[m]: k for m in LABELS if (k := sum(r.method == m and r.group == "matrix" for r in pick(runs)))}}
    for m in [m for m in LABELS if m in set(df.method)]:
        for key in SUMMARY_KEYS:
            if (s := cell(df, metric, key, _main(m)))["n"]:
                out.update({f"{m}_{key}": s["mean"], f"{m}_{key}_sd": s["sd"], f"{m}_{key}_n": s["n"]})
    out["pooled_sd_bwt"], out["pooled_sd_bwt_dof"] = pooled(df, metric, "bwt")
    metrics = [m for m in VERDICT_METRICS if m == metric or (df.metric == m).any()]
    out["verdicts"], out["seqft_bwt_by_metric"] = {m: verdicts(df, m) for m in metrics}, {}
    for m in metrics:
        if (s := cell(df, m, "bwt", _main("seqft")))["n"]:
            t = compare(s, cell(df, m, "bwt", ZERO), pooled(df, m, "bwt"))
            out["seqft_bwt_by_metric"][m] = dict(s, test=ZERO_WORDS.get(t.word, t.word), ci95_half=t.half)
    final = {m: pd.DataFrame([dict(zip(r.results["order"], r.results["metrics"][metric]["matrix"][-1]))
                              for r in rs]).mean() for m in ("lifealign", "seqft") if (rs := pick(runs, m))}
    if len(final) == 2:
        out["final_row_lifealign_minus_seqft"] = (final["lifealign"] - final["seqft"]).dropna().to_dict()
    base = [dict(zip(r.results["order"], r.results["metrics"]["loglik_accuracy"]["base"]))
            for r in pick(runs) if "loglik_accuracy" in r.results.get("metrics", {})]
    out["loglik_base"] = {t: v for t, v in (base[0] if base else {}).items() if v is not None}
    learned = learned_table(runs, metric).to_dict("records")
    out["learned"] = {"tasks": [r["task"] for r in learned],
                      "learned": [r["task"] for r in learned if r["learned (above chance beyond 2 se) by"] != "none"]}
    return out

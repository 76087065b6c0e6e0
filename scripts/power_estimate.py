"""How many seeds decide each claim: a power estimate from the committed runs of a profile.

For every comparison the paper's claims make (spec: the headline claims; the report's verdicts test
the same ones), on each metric: our observed difference, the paper's, the seed spread (the sample
standard deviation of one run's summary across seeds, pooled over the methods with two or more
seeds at the default settings), and the seeds per method that a two-sided Welch test at 95% needs
to detect the difference with 80% power (noncentral t, equal seeds on both sides; a one-sample test
for "below zero"). A difference smaller than the spread needs many seeds; "> 20" means more than the
grid can pay for.

    python scripts/power_estimate.py                 # results/cpu -> docs/power.md, docs/power.json

The spread is measured on the committed generation metrics from 16 prompts per task: with more
prompts its evaluation part shrinks, so the seed counts here are an upper bound for a grid with more
prompts.
"""
import argparse
import json
import math
import sys
from pathlib import Path

from scipy import stats as st

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from lifealign import report  # noqa: E402

METRICS = ("bleu4", "rougel", "reward_accuracy")
PAPER = {"bleu4": "bleu4", "rougel": "rougel"}
MAX_SEEDS = 20


def seeds_needed(delta, sd, one_sample=False, power=0.8, alpha=0.05):
    """Smallest n (per side) with the given power, or None above MAX_SEEDS or without a spread."""
    if sd is None or sd <= 0 or delta is None:
        return None
    for n in range(2, MAX_SEEDS + 1):
        df = n - 1 if one_sample else 2 * n - 2
        se = sd / math.sqrt(n) if one_sample else sd * math.sqrt(2 / n)
        ncp = abs(delta) / se
        crit = st.t.ppf(1 - alpha / 2, df)
        if st.nct.sf(crit, df, ncp) + st.nct.cdf(-crit, df, ncp) >= power:
            return n
    return None


def paper_values(paper_dir):
    main = {r["method"]: r for r in report.read_csv(paper_dir / "main_table_qwen_order1.csv")}
    ablation = {r["row"]: r for r in report.read_csv(paper_dir / "ablation_qwen_order1.csv")}
    orders = report.read_csv(paper_dir / "task_orders_qwen.csv")
    lam = {float(r["lambda"]): r for r in report.read_csv(paper_dir / "lambda_sweep_qwen_order1.csv")}

    def get(table, key, column):
        value = table.get(key, {}).get(column)
        return float(value) if value not in (None, "") else None

    def order_value(metric, order, method):
        row = next((r for r in orders if r["metric"] == f"{metric}_bwt" and r["order"] == order), None)
        return float(row[method]) if row and row.get(method) not in (None, "") else None

    return get, main, ablation, order_value, lam


def comparisons(runs, metric, paper_dir):
    """[(claim, comparison, ours, paper, key, one_sample)] for one metric."""
    get, main, ablation, order_value, lam = paper_values(paper_dir)
    pm = PAPER.get(metric)

    def mean(method, key, order="order1", groups=("matrix", "ablation")):
        return report.method_stats(runs, method, metric, key, order, groups)["mean"]

    def diff(a, b):
        return None if a is None or b is None else a - b

    def paper(table, row, key):
        return get(table, row, f"{pm}_{key}") if pm else None

    out = []
    baselines = [m for m in report.CONTINUAL if mean(m, "last") is not None]
    if baselines and mean("lifealign", "last") is not None:
        best = max(baselines, key=lambda m: mean(m, "last"))
        out.append(("best Last", f"LifeAlign - {report.LABELS[best]} (strongest baseline), Last",
                    diff(mean("lifealign", "last"), mean(best, "last")),
                    diff(paper(main, "LifeAlign", "last"), paper(main, report.LABELS[best], "last")), "last", False))
    for m in ("seqft", "er"):
        out.append(("SeqFT and ER forget", f"{report.LABELS[m]} BWT below zero", mean(m, "bwt"),
                    paper(main, report.LABELS[m], "bwt"), "bwt", True))
    for m in ("seqft", "er"):
        out.append(("LifeAlign forgets least", f"LifeAlign - {report.LABELS[m]}, BWT",
                    diff(mean("lifealign", "bwt"), mean(m, "bwt")),
                    diff(paper(main, "LifeAlign", "bwt"), paper(main, report.LABELS[m], "bwt")), "bwt", False))
    letters = {letter: method for letter, method, _, _ in report.ABLATION}
    for x, y, what in (("b", "a", "SLMC - neither"), ("b", "c", "SLMC - FPO"), ("d", "b", "both - SLMC")):
        out.append(("ablation", f"{what} ({x} - {y}), BWT", diff(mean(letters[x], "bwt"), mean(letters[y], "bwt")),
                    diff(paper(ablation, x, "bwt"), paper(ablation, y, "bwt")), "bwt", False))
    for order in ("order1", "order2", "order3"):
        for m in ("er", "cppo"):
            ours = diff(mean("lifealign", "bwt", order, ("matrix", "orders")), mean(m, "bwt", order, ("matrix", "orders")))
            theirs = diff(order_value(pm, order, "LifeAlign"), order_value(pm, order, report.LABELS[m])) if pm else None
            out.append(("every order", f"{order}: LifeAlign - {report.LABELS[m]}, BWT", ours, theirs, "bwt", False))
    points = dict(report.sweep_points(runs, "slmc_lambda", 0.5, metric))
    for value in (0.8, 1.0):
        ours = diff(points[value]["bwt"]["mean"], points[0.5]["bwt"]["mean"]) if value in points and 0.5 in points \
            else None
        theirs = diff(get(lam, value, f"{pm}_bwt"), get(lam, 0.5, f"{pm}_bwt")) if pm == "rougel" else None
        out.append(("lambda", f"lambda {value:g} - 0.5, BWT", ours, theirs, "bwt", False))
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--results", default=str(ROOT / "results" / "cpu"))
    p.add_argument("--paper", default=str(ROOT / "paper"))
    p.add_argument("--out", default=str(ROOT / "docs"))
    args = p.parse_args(argv)
    runs = report.load_runs(args.results)
    doc, lines = {"metrics": {}}, []
    for metric in METRICS:
        spread = {k: report.pooled_sd(runs, metric, k) for k in ("bwt", "last")}
        rows = []
        for claim, what, ours, theirs, key, one in comparisons(runs, metric, Path(args.paper)):
            sd = spread[key][0]
            rows.append({"claim": claim, "comparison": what, "ours": ours, "paper": theirs, "key": key,
                         "seed_sd": sd, "seeds_for_ours": seeds_needed(ours, sd, one),
                         "seeds_for_paper": seeds_needed(theirs, sd, one)})
        doc["metrics"][metric] = {"seed_sd": {k: {"sd": v[0], "dof": v[1]} for k, v in spread.items()}, "rows": rows}
        n = lambda v: "-" if v is None else f"{v}" if isinstance(v, int) else f"{v:+.2f}"  # noqa: E731
        need = lambda v, d: "-" if d is None else f"> {MAX_SEEDS}" if v is None else str(v)  # noqa: E731
        lines += [f"## {report.METRIC_NAMES[metric]}", "",
                  f"Seed spread (pooled sample sd): BWT {n(spread['bwt'][0])} ({spread['bwt'][1]} dof), "
                  f"Last {n(spread['last'][0])} ({spread['last'][1]} dof).", "",
                  "| claim | comparison | ours | paper | seeds for ours | seeds for the paper's |",
                  "| --- | --- | --- | --- | --- | --- |"]
        lines += [f"| {r['claim']} | {r['comparison']} | {n(r['ours'])} | {n(r['paper'])} | "
                  f"{need(r['seeds_for_ours'], r['ours'])} | {need(r['seeds_for_paper'], r['paper'])} |" for r in rows]
        lines.append("")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "power.json").write_text(json.dumps(doc, indent=1) + "\n")
    header = ["# Seeds needed per claim", "", __doc__.split("\n\n")[1].replace("\n", " "), "",
              "Seeds are per method (each side of a comparison). The paper's differences are on Qwen2.5-7B "
              "with the full data: a guide to the effect size, not a prediction of ours.", ""]
    (out / "power.md").write_text("\n".join(header + lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()

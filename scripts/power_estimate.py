"""How many seeds decide each claim: a power estimate from the committed runs of a profile.

For every comparison the paper's claims make (spec: the headline claims; the report's verdicts test
the same ones), on each metric: our observed difference, the paper's, the seed spread (the sample
standard deviation of one run's summary across seeds, pooled over the methods with two or more
seeds at the default settings), and the seeds per method that a two-sided Welch test at 95% needs
to detect the difference with 80% power (noncentral t, equal seeds on both sides; a one-sample test
for "below zero"). A difference smaller than the spread needs many seeds; "> 20" means more than the
grid can pay for.

    python scripts/power_estimate.py                 # results/cpu -> docs/power.md, docs/power.json

Only runs of the current run-code version count (the report's rule). The pooled spread has as many
degrees of freedom as there are extra seeds, so while a grid is running its seed counts are rough:
rerun this as seeds land.
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
from lifealign.runs import load_runs, tidy  # noqa: E402

METRICS = ("bleu4", "rougel", "reward_accuracy")
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


def comparisons(df, metric, paper):
    """[(claim, comparison, ours, paper, key, one_sample)] for one metric: every comparison the report's
    claims judge (lifealign.report.CLAIMS), with the paper's numbers for the same sides where it has them."""
    def mean(side, key):
        return report.cell(df, metric, key, side)["mean"]

    def theirs(side, key):
        return 0.0 if side is report.ZERO else paper.get(side.paper + (metric, key)) if side.paper else None

    out = []
    for claim in report.CLAIMS:
        for key, a, b, expect in claim.comparisons if claim.comparisons is not None else report.lambda_comparisons(df):
            if expect is None or "+" in key:
                continue
            zero, label = b is report.ZERO, report.KEY_LABELS[key]
            ours = None if mean(a, key) is None or mean(b, key) is None else mean(a, key) - mean(b, key)
            paper_diff = None if theirs(a, key) is None or theirs(b, key) is None else theirs(a, key) - theirs(b, key)
            out.append((claim.text, f"{a.label} {label} below zero" if zero else f"{a.label} - {b.label}, {label}",
                        ours, paper_diff, key, zero))
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--results", default=str(ROOT / "results" / "cpu"))
    p.add_argument("--paper", default=str(ROOT / "paper"))
    p.add_argument("--out", default=str(ROOT / "docs"))
    args = p.parse_args(argv)
    df = tidy(load_runs(args.results))  # the runs made by the current run code
    paper = report.paper_numbers(args.paper)
    doc, lines = {"metrics": {}}, []
    for metric in METRICS:
        spread = {k: report.pooled(df, metric, k) for k in ("bwt", "last")}
        rows = []
        for claim, what, ours, theirs, key, one in comparisons(df, metric, paper):
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

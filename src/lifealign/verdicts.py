"""The verdicts on the paper's headline claims, the seeds that would decide them, and the numbers
the book's sentences quote (numbers.json), from the runs' long frame and the statistics of
lifealign.report (its docstring: the test and the notation).

Every claim of CLAIMS is a list of comparisons, each one `report.compare` test, and one rule decides
them all (`judge`): refuted when a comparison goes against the claim beyond the noise, not yet run
while a side has no runs, confirmed when every comparison goes its way, else inconclusive.

Power: the seeds per side at which the test decides a true difference d with 80% probability
(noncentral t, 2n - 2 degrees of freedom; n - 1 against 0), each side keeping the seed spread the
test gives it now: its own sd, floored at the pooled one (`side_sd`).
An inconclusive verdict names the seeds that would decide it at the differences observed now: the
fewest that refute it where a comparison points against the claim, else the most that confirming
every comparison needs. The power table (`power_table`) adds the seeds the paper's differences need.
"""
import math
from collections import namedtuple

import pandas as pd
from scipy import stats as sps

from .report import (CONTINUAL, KEY_LABELS, LABELS, LAMBDA, METRIC_NAMES, SUMMARY_KEYS, VERDICT_METRICS, ZERO,
                     _ablation, _main, _point, cell, compare, compute_table, fmt, fmt_stats, learned_table, markdown,
                     pooled, sweep_values)
from .metrics import mean_of as mean
from .run_code import RUN_CODE_VERSION
from .runs import ORDER_NAMES, pick

POWER, MOST_SEEDS = 0.8, 20  # the power a seed count is sized for; the most seeds a grid can pay for


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


def side_sd(a, b, pool_sd):
    """The sd per side that seeds_needed counts with for the test of a - b (stats dicts; b may be
    cell(.., ZERO)): the root mean square of the sides' sds, each floored at `pool_sd` as
    report.compare floors it; against ZERO, a's alone. A side without two seeds takes the pooled sd."""
    sds = [max(s["sd"] or 0.0, pool_sd or 0.0) for s in (a, b) if s["n"] != math.inf]
    return math.sqrt(sum(v * v for v in sds) / len(sds))


def fmt_seeds(n):
    return f"more than {MOST_SEEDS}" if n is None else str(n)


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
    else confirmed when every judged comparison goes its way beyond the noise; else inconclusive.
    `against`: the evidence of the comparisons that refute it."""
    if claim.note:
        return {"claim": claim.text, "evidence": claim.note, "seeds": "–", "verdict": "not tested",
                "seeds to decide": "–", "against": "–"}
    wins, losses, missing, evidence, counts, needs, against = [], [], [], [], {}, [], []
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
            need = seeds_needed(tests[0].diff, side_sd(*cells[0], pools[0][0]), b is ZERO)
            needs.append((need, (tests[0].diff > 0) == (expect in ("lower", "not higher"))))  # against the claim
        evidence.append(_evidence(keys, a, b, cells[0][0], tests, need))
        against += evidence[-1:] if expect and losses[-1] else []
    verdict = (REFUTED if any(losses) else f"not yet run (missing: {', '.join(missing)})" if missing
               else CONFIRMED if wins and all(wins) else INCONCLUSIVE)
    return {"claim": claim.text, "evidence": "; ".join(evidence) or "–",
            "seeds": ", ".join(f"{k} {n}" for k, n in counts.items()) or "–", "verdict": verdict,
            "seeds to decide": fmt_seeds(seeds_to_decide(needs)) if verdict == INCONCLUSIVE and needs else "–",
            "against": "; ".join(against) or "–"}


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


def evidence_items(row, column="evidence"):
    """A verdict row's evidence (or `against`) as a list: one comparison an item."""
    text = row.get(column, "–")
    return [] if text in ("", "–") else text.split("; ")


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
    difference, the sd per side the test sees now (side_sd), and the seeds per side that give the
    test 80% power at each difference (seeds_needed). The paper's differences are on Qwen2.5-7B
    with the full data: a size to aim at, not a prediction of ours."""
    def theirs(side, key):
        return 0.0 if side is ZERO else paper.get(side.paper + (metric, key)) if side.paper else None

    rows = []
    for claim in CLAIMS:
        for key, a, b, expect in comparisons(claim, df):
            if expect is None or "+" in key:
                continue
            x, y = cell(df, metric, key, a), cell(df, metric, key, b)
            sd = side_sd(x, y, pooled(df, metric, key)[0])
            ours = x["mean"] - y["mean"] if x["n"] and y["n"] else None
            paper_diff = None if None in (theirs(a, key), theirs(b, key)) else theirs(a, key) - theirs(b, key)
            need = [fmt_seeds(seeds_needed(d, sd, b is ZERO)) if d is not None and sd else "–"
                    for d in (ours, paper_diff)]
            rows.append({"claim": claim.text, "metric": METRIC_NAMES[metric],
                         "comparison": f"{a.label} {KEY_LABELS[key]} below zero" if b is ZERO
                         else f"{a.label} - {b.label}, {KEY_LABELS[key]}",
                         "ours": fmt(ours, signed=True), "paper's": fmt(paper_diff, signed=True),
                         "sd per side": fmt(sd), "seeds (ours)": need[0], "seeds (paper's)": need[1]})
    return pd.DataFrame(rows)


def numbers(runs, df, left_out=None, metric="reward_accuracy"):
    """What the book's sentences quote (numbers.json): every method's means, sds and seeds, the pooled
    spread, the verdicts on every metric the runs have, SeqFT's BWT against zero per metric (the test
    of the verdict on "SeqFT and ER forget"; `orders`: the same on the other task orders), the final
    row LifeAlign minus SeqFT, the methods whose generations collapse (`generation_collapse`), the base
    model's log-likelihood accuracy, the tasks learned, the runs that count (their compute hours, the
    seeds of the main grid) and those left out."""
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

    def seqft_bwt(m, order="order1"):
        s = cell(df, m, "bwt", _main("seqft", order))
        t = compare(s, cell(df, m, "bwt", ZERO), pooled(df, m, "bwt"))
        return dict(s, test=ZERO_WORDS.get(t.word, t.word), ci95_half=t.half)

    for m in metrics:
        if (s := seqft_bwt(m))["n"]:
            others = {o: x for o in ORDER_NAMES[1:] if (x := seqft_bwt(m, o))["n"]}
            out["seqft_bwt_by_metric"][m] = dict(s, orders=others)
    final = {m: pd.DataFrame([dict(zip(r.results["order"], r.results["metrics"][metric]["matrix"][-1]))
                              for r in rs]).mean() for m in ("lifealign", "seqft") if (rs := pick(runs, m))}
    if len(final) == 2:
        out["final_row_lifealign_minus_seqft"] = (final["lifealign"] - final["seqft"]).dropna().to_dict()
    base = [dict(zip(r.results["order"], r.results["metrics"]["loglik_accuracy"]["base"]))
            for r in pick(runs) if "loglik_accuracy" in r.results.get("metrics", {})]
    out["loglik_base"] = {t: v for t, v in (base[0] if base else {}).items() if v is not None}
    out["generation_collapse"] = generation_collapse(runs)
    learned = learned_table(runs, metric).to_dict("records")
    out["learned"] = {"tasks": [r["task"] for r in learned],
                      "learned": [r["task"] for r in learned if r["learned (above chance beyond 2 se) by"] != "none"]}
    return out


COLLAPSE = 0.5  # a row below this fraction of the base model's generation score has collapsed


def generation_collapse(runs, metrics=("bleu4", "rougel")):
    """Per generation metric, the order1 methods whose final row (the score on every task after the
    last one) falls below COLLAPSE x the base model's while the row before it does not, averaged over
    tasks and seeds: their BWT and Last measure generations that broke at the last stage, not gradual
    forgetting. Each entry: the base model's mean, the mean of the row before the last and of the
    last, and the last task's name."""
    out = {}
    for metric in metrics:
        rows = {}
        for method in LABELS:
            rs = [r for r in pick(runs, method) if metric in r.results.get("metrics", {})]
            matrices = [r.results["metrics"][metric] for r in rs]
            if not rs or any(len(m["matrix"]) < 2 or not m.get("base") for m in matrices):
                continue
            base, before, last = (mean([mean(x) for x in xs])
                                  for xs in zip(*[(m["base"], m["matrix"][-2], m["matrix"][-1]) for m in matrices]))
            if last < COLLAPSE * base <= before:
                rows[LABELS[method]] = {"base": base, "before_last": before, "last": last, "seeds": len(rs),
                                        "last_task": rs[0].results["order"][-1]}
        if rows:
            out[metric] = rows
    return out

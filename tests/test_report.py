"""The report's statistics, tables and verdicts on synthetic runs (no model, no training)."""
import json
import math

import pytest

from lifealign import report
from lifealign.metrics import summarize

TASKS = ["HC3", "hh-rlhf-harmless-base", "TruthfulQA"]


def make_run(method, seed, bwt, last, order="order1", group="matrix", sweep=None, matrix=None):
    """A finished run whose reward-accuracy summary has the given BWT and Last."""
    matrix = matrix or [[60.0, 50.0, 50.0], [60.0, 60.0, 50.0], [60.0, 60.0, 60.0]]
    summary = dict(summarize(matrix, [50.0] * 3), bwt=bwt, last=last)
    lam = (sweep or {}).get("slmc_lambda", 0.5)
    results = {"config": {"seed": seed, "data": {"order": order},
                          "method": {"name": method, "slmc_lambda": lam, "slmc_threshold": 0.9}},
               "order": TASKS, "rows": TASKS, "complete": True,
               "metrics": {"reward_accuracy": {"base": [50.0] * 3, "matrix": matrix, "summary": summary}}}
    run_id = f"{method}-{order}-s{seed}" + "".join(f"-{k}{v}" for k, v in (sweep or {}).items())
    return report.Run(group, run_id, method, order, seed, dict(sweep or {}), results)


def st(*values):
    return report.stats(list(values))


def test_t_critical_values_and_welch_compare():
    assert report.t95(1) == pytest.approx(12.706)
    assert report.t95(4.9) == pytest.approx(2.776)  # fractional df rounds down
    assert report.t95(1000) == pytest.approx(1.96, abs=0.01)
    # two groups of 3 with sd 1: se = sqrt(2/3), Welch df = 4, t = 2.776 -> limit 2.27
    a, b = st(9, 10, 11), st(4, 5, 6)
    diff, se, word = report.compare(a, b, (None, 0))
    assert (diff, word) == (5, "higher") and se == pytest.approx(math.sqrt(2 / 3))
    assert report.compare(st(6, 7, 8), b, (None, 0))[2] == "within noise"  # diff 2 < 2.27
    assert report.compare(b, a, (None, 0))[2] == "lower"
    # one seed: no spread known unless a pooled one is given, whose degrees of freedom then count
    assert report.compare(st(20), b, (None, 0))[2].startswith("inconclusive")
    assert report.compare(st(20), b, (1.0, 1))[2] == "higher"  # se 1.15, df ~1.3 -> t 12.7: limit 14.7 < 15
    assert report.compare(st(12), b, (1.0, 1))[2] == "within noise"  # 7 < 14.7
    assert report.compare(st(1), st(2), (None, 0))[2] == "inconclusive (one seed, no spread known)"
    assert report.compare(st(), b, (None, 0))[2] == "no data"


def test_below_zero_is_a_one_sample_t_test():
    word, half = report.below_zero(st(-3, -2, -4), (None, 0))
    assert word == "below" and half == pytest.approx(4.303 * 1 / math.sqrt(3))
    assert report.below_zero(st(-0.78, -1.56, 0.0), (None, 0))[0] == "within noise"
    assert report.below_zero(st(2, 3, 4), (None, 0))[0] == "above"
    assert report.below_zero(st(-1), (None, 0))[0].startswith("inconclusive")


def test_stl_last_is_its_diagonal_and_intransigence_compares_diagonals():
    stl = make_run("stl", 0, None, None, matrix=[[70.0, 50.0, 50.0], [50.0, 80.0, 50.0], [50.0, 50.0, 90.0]])
    assert stl.summary("reward_accuracy", "last") == pytest.approx(80.0)  # not the last row's 63.3
    assert stl.summary("reward_accuracy", "bwt") is None
    seq = make_run("seqft", 0, -1.0, 60.0)  # diagonal 60, 60, 60
    assert report.intransigence(seq, [stl], "reward_accuracy") == pytest.approx(20.0)
    assert report.intransigence(seq, [], "reward_accuracy") is None
    rows, columns = report.judge_free_table([stl, seq], metrics=("reward_accuracy",))
    by_method = {r["method"]: r for r in rows}
    assert by_method["STL"]["Last"] == "80.00" and by_method["STL"]["BWT"] == "n/a"
    assert by_method["SeqFT"]["intransigence vs STL"] == "20.00"
    assert "FWT" in columns


def test_load_runs_leaves_out_unfinished_runs_and_names_bad_files(tmp_path):
    for name, complete in (("seqft-order1-s0", True), ("er-order1-s0", False)):
        run = make_run(name.split("-")[0], 0, 0.0, 60.0)
        run.results["complete"] = complete
        folder = tmp_path / "matrix" / name
        folder.mkdir(parents=True)
        (folder / "results.json").write_text(json.dumps(run.results))
    excluded = []
    runs = report.load_runs(tmp_path, excluded)
    assert [r.id for r in runs] == ["seqft-order1-s0"]
    assert len(excluded) == 1 and "er-order1-s0" in excluded[0][0] and "incomplete" in excluded[0][1]
    (tmp_path / "matrix" / "er-order1-s0" / "results.json").write_text("{not json")
    with pytest.raises(ValueError, match="er-order1-s0/results.json"):
        report.load_runs(tmp_path)


def _grid(spread=0.5):
    """Three seeds of every main-table method; LifeAlign clearly best on Last and BWT."""
    runs = []
    base = {"seqft": (-8, 50), "l2p": (-2, 48), "olora": (-3, 52), "er": (-5, 55), "gem": (-4, 53),
            "agem": (-6, 51), "ewc": (-5, 52), "cppo": (-6, 50), "lifealign": (0, 62)}
    for method, (bwt, last) in base.items():
        for seed, noise in enumerate((-spread, 0, spread)):
            runs.append(make_run(method, seed, bwt + noise, last + noise))
    return runs


def test_verdicts_always_give_one_row_per_claim():
    rows, _ = report.verdicts([])
    assert [r["claim"] for r in rows] == list(report.CLAIMS)
    assert all(r["verdict"].startswith("not yet run") or r["verdict"] == "not tested" for r in rows)


def test_verdicts_confirm_only_with_every_comparison_and_refute_on_one():
    runs = _grid()
    rows = {r["claim"]: r for r in report.verdicts(runs)[0]}
    assert rows[report.CLAIMS[0]]["verdict"] == report.CONFIRMED
    assert rows[report.CLAIMS[1]]["verdict"] == report.CONFIRMED  # SeqFT and ER below zero
    assert rows[report.CLAIMS[2]]["verdict"] == report.CONFIRMED
    assert "LifeAlign 3" in rows[report.CLAIMS[0]]["seeds"]
    # a baseline missing: not yet run, naming it
    partial = [r for r in runs if r.method != "gem"]
    assert report.verdicts(partial)[0][0]["verdict"] == "not yet run (missing: GEM)"
    # one baseline beating LifeAlign beyond the noise refutes, even with others missing
    better = [make_run("olora", s, -3, 70 + s) for s in range(3)]
    rows = report.verdicts([r for r in partial if r.method != "olora"] + better)[0]
    assert rows[0]["verdict"] == report.REFUTED
    # with a large seed spread nothing is decided
    rows = report.verdicts(_grid(spread=15))[0]
    assert rows[0]["verdict"] == report.INCONCLUSIVE


def test_ablation_orders_and_lambda_verdicts():
    runs = _grid()
    runs += [make_run("dpo+slmc", s, -2 + 0.1 * s, 58, group="ablation") for s in range(3)]
    runs += [make_run("fpo", s, -4 + 0.1 * s, 56, group="ablation") for s in range(3)]
    rows = {r["claim"]: r for r in report.verdicts(runs)[0]}
    assert rows[report.CLAIMS[3]]["verdict"] == report.CONFIRMED  # a -5, b -2, c -4, d 0
    assert rows[report.CLAIMS[4]]["verdict"].startswith("not yet run (missing: ER order2")
    for order in ("order2", "order3"):
        runs += [make_run(m, s, bwt + 0.1 * s, 50, order=order, group="orders")
                 for m, bwt in (("er", -5), ("cppo", -6), ("lifealign", -7 if order == "order3" else 0))
                 for s in range(3)]
    assert {r["claim"]: r for r in report.verdicts(runs)[0]}[report.CLAIMS[4]]["verdict"] == report.REFUTED
    sweep = [make_run("lifealign", 0, bwt, last, group="sensitivity", sweep={"slmc_lambda": lam})
             for lam, bwt, last in ((0.0, -4, 60), (0.8, -6, 61), (1.0, -7, 60))]
    rows = {r["claim"]: r for r in report.verdicts(runs + sweep)[0]}
    assert rows[report.CLAIMS[6]]["verdict"] == report.CONFIRMED  # 0.5: BWT 0 beats 0.8 and 1.0
    assert "lambda 0.5: BWT" in rows[report.CLAIMS[6]]["evidence"]


def test_coverage_lists_missing_runs():
    rows, _ = report.coverage([make_run("seqft", 0, 0, 50)], {"matrix": ["seqft-order1-s0", "er-order1-s0"],
                                                               "ablation": []})
    assert rows[0] == {"group": "matrix", "runs": "1 of 2", "missing": "er-order1-s0"}
    assert rows[1]["runs"] == "0 of 0"


def test_orders_figure_draws_no_bar_for_a_missing_run(tmp_path):
    import matplotlib
    matplotlib.use("Agg")
    from pathlib import Path
    paper = Path(__file__).resolve().parents[1] / "paper"
    runs = [make_run(m, 0, -1.0, 50) for m in ("er", "cppo", "lifealign")]
    fig = report.plot_orders(runs, paper, "reward_accuracy", tmp_path / "orders.png")
    ours_bwt = fig.axes[0]
    assert len(ours_bwt.patches) == 3  # order1's three methods; order2 / order3 have none
    assert sum(t.get_text() == "n/a" for t in ours_bwt.texts) == 6
    assert (tmp_path / "orders.png").stat().st_size > 0


def test_learned_table_marks_tasks_above_chance_beyond_two_se():
    matrix = [[90.0, 50.0, 50.0], [85.0, 55.0, 50.0], [80.0, 52.0, 70.0]]
    runs = [make_run("seqft", s, -1.0, 60.0, matrix=matrix) for s in range(2)]
    for r in runs:
        r.results["config"]["data"]["n_test"] = 64  # two se of chance: 12.5 points
    rows, columns = report.learned_table(runs)
    assert [r["learned (above chance beyond 2 se) by"] for r in rows] == ["SeqFT", "none", "SeqFT"]
    assert rows[0]["SeqFT: trained → end"] == "90.0 → 80.0" and rows[0]["chance band (2 se)"] == "37.5 to 62.5"
    assert report.learned_table([]) == ([], ["task"])


def test_numbers_test_seqft_bwt_against_zero_per_metric():
    runs = [make_run("seqft", s, bwt, 60.0) for s, bwt in enumerate((-3.0, -2.0, -4.0))]
    runs += [make_run("lifealign", 0, 0.5, 65.0)]
    n = report.numbers(runs)
    seq = n["seqft_bwt_by_metric"]["reward_accuracy"]
    assert (seq["mean"], seq["n"], seq["test"]) == (-3.0, 3, "below")
    assert seq["ci95_half"] == pytest.approx(4.303 / math.sqrt(3))
    assert set(n["seqft_bwt_by_metric"]) == {"reward_accuracy"}  # the runs have no generation metrics
    assert n["runs"] == 4 and n["seqft_bwt"] == -3.0 and n["lifealign_last"] == 65.0
    json.dumps(n)  # numbers.json
    # One SeqFT seed borrows the spread pooled over other methods' seeds, as the verdicts do.
    one = [make_run("seqft", 0, -5.0, 60.0)] + [make_run("er", s, bwt, 62.0) for s, bwt in enumerate((0.0, 1.0))]
    seq = report.numbers(one)["seqft_bwt_by_metric"]["reward_accuracy"]
    assert seq["test"] == "within noise" and seq["ci95_half"] == pytest.approx(12.706 * math.sqrt(0.5))


def test_sensitivity_figure_puts_our_rougel_beside_the_papers_lambda_sweep(tmp_path):
    import matplotlib
    matplotlib.use("Agg")
    from pathlib import Path
    paper = Path(__file__).resolve().parents[1] / "paper"
    runs = [make_run("lifealign", 0, 1.0, 60.0)] + [
        make_run("lifealign", 0, b, 60.0, group="sensitivity", sweep={"slmc_lambda": lam}) for lam, b in ((0.0, 2.0), (1.0, 0.5))]
    fig = report.plot_sensitivity(runs, paper, 0.5, 0.9, "reward_accuracy", tmp_path / "a.png")
    assert not fig.axes[2].containers  # the runs have no ROUGE-L: the paper's lines alone
    for r in runs:
        r.results["metrics"]["rougel"] = r.results["metrics"]["reward_accuracy"]
    fig = report.plot_sensitivity(runs, paper, 0.5, 0.9, "reward_accuracy", tmp_path / "b.png")
    ours = [c for c in fig.axes[2].containers if c.get_label() == "ours: ROUGE-L BWT"]
    line = ours[0].lines[0]
    assert len(ours) == 1 and list(line.get_xdata()) == [0.0, 0.5, 1.0] and list(line.get_ydata()) == [2.0, 1.0, 0.5]


def test_long_tables_split_per_metric_without_empty_paper_columns():
    rows = [{"method": "ER", "metric": "implicit-reward accuracy", "seeds": 3, "BWT ours": "1.00 ± 0.50",
             "BWT paper": "–", "BWT diff": "–"},
            {"method": "ER", "metric": "BLEU-4", "seeds": 3, "BWT ours": "-3.00 ± 1.00", "BWT paper": "-6.29",
             "BWT diff": "+3.29"},
            {"method": "ER", "metric": "LLM judge", "seeds": 3, "BWT ours": "–", "BWT paper": "–", "BWT diff": "–"}]
    columns = ["method", "metric", "seeds", "BWT ours", "BWT paper", "BWT diff"]
    parts = report.split_by_metric(rows, columns)
    assert [p[0] for p in parts] == ["implicit-reward accuracy", "BLEU-4"]  # the judge has no value at all
    assert parts[0][2] == ["method", "seeds", "BWT"] and parts[0][1][0]["BWT"] == "1.00 ± 0.50"
    assert parts[1][2] == ["method", "seeds", "BWT ours", "BWT paper", "BWT diff"]
    assert "**BLEU-4**" in report.markdown_by_metric(rows, columns)


def test_coverage_says_which_runs_are_stale_and_why():
    runs = [make_run("seqft", s, 0, 50) for s in range(2)]
    expected = {"matrix": ["seqft-order1-s0", "seqft-order1-s1"]}
    why = "made by run code version 1, now 2"
    rows, columns = report.coverage(runs, expected, {("matrix", r.id): why for r in runs})
    assert columns[-1] == "stale" and rows[0]["stale"] == f"all 2 ({why})"
    rows, _ = report.coverage(runs, expected, {})
    assert rows[0]["stale"] == "none"


def test_verdict_evidence_reads_as_a_list_with_standard_errors():
    runs = [make_run(m, s, b, 60.0 + s) for m, bs in (("seqft", (-3.0, -2.0, -4.0)), ("er", (1.0, 0.0, 2.0)),
                                                       ("lifealign", (0.5, 0.7))) for s, b in enumerate(bs)]
    rows = report.verdicts(runs)[0]
    third = rows[2]
    items = report.evidence_items(third)
    assert items[0].startswith("LifeAlign BWT 0.60 ± 0.14") and all("(se " in i for i in items[1:])
    text = report.verdicts_markdown(rows)
    assert text.startswith("| claim | verdict |") and "\n- BWT, LifeAlign - SeqFT: " in text

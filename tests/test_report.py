"""The report's statistics, tables and verdicts on synthetic runs (no model, no training)."""
import json
import math
from pathlib import Path

import pytest
from scipy import stats as sps

from lifealign import figures, report, verdicts
from lifealign.metrics import summarize
from lifealign.run_code import RUN_CODE_VERSION
from lifealign.runs import Run, intransigence, load_runs, tidy

TASKS = ["HC3", "hh-rlhf-harmless-base", "TruthfulQA"]
PAPER = Path(__file__).resolve().parents[1] / "paper"


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
    return Run(group, run_id, method, order, seed, dict(sweep or {}), results)


def st(*values):
    return report.stats(list(values))


def verdict_rows(runs, metric="reward_accuracy"):
    return verdicts.verdicts(tidy(runs), metric)


NO_POOL = (None, 0)


def test_compare_is_welchs_test_from_scipy():
    a, b = st(9, 10, 11), st(4, 5, 6)
    t = report.compare(a, b, NO_POOL)
    # two groups of 3 with sd 1: se = sqrt(2/3), Welch df = 4
    assert (t.diff, t.word) == (5, "higher") and t.se == pytest.approx(math.sqrt(2 / 3))
    assert t.half == pytest.approx(sps.t.ppf(0.975, 4) * math.sqrt(2 / 3))
    # the same decision as scipy's Welch test, on unequal spreads and counts
    for x, y in (((9, 10, 11), (4, 5, 6)), ((6, 7, 8), (4, 5, 6)), ((1, 5, 9, 2), (3, 3.5)), ((0, 1), (2, 2.2, 2.4))):
        sx, sy = st(*x), st(*y)
        p = sps.ttest_ind_from_stats(sx["mean"], sx["sd"], sx["n"], sy["mean"], sy["sd"], sy["n"], equal_var=False).pvalue
        assert (report.compare(sx, sy, NO_POOL).word != "within noise") == (p < 0.05), (x, y, p)
    assert report.compare(b, a, NO_POOL).word == "lower"
    assert report.compare(st(1), st(2), NO_POOL).word == "inconclusive (one seed, no spread known)"
    assert report.compare(st(), b, NO_POOL).word == "no data"


def test_a_spread_below_the_pooled_one_is_floored():
    b = st(4, 5, 6)  # sd 1
    # one seed takes the pooled sd and its degrees of freedom: se = sqrt(1 + 1/3), df from Welch-Satterthwaite
    t = report.compare(st(20), b, (1.0, 1))
    df = (4 / 3) ** 2 / (1 / 1 + (1 / 3) ** 2 / 2)
    assert t.se == pytest.approx(math.sqrt(4 / 3)) and t.half == pytest.approx(sps.t.ppf(0.975, df) * t.se)
    assert t.word == "higher" and t.floor == 1.0
    assert report.compare(st(8), b, (1.0, 1)).word == "within noise"  # 3 < t * se
    # seeds that coincide (sd 0) are no zero-variance test: the pooled sd stands in for theirs
    same = st(69.06, 69.06)
    assert report.compare(same, st(66.0, 66.5, 67.0), NO_POOL).se == pytest.approx(0.5 / math.sqrt(3))
    floored = report.compare(same, st(66.0, 66.5, 67.0), (2.0, 5))
    assert floored.floor == 2.0 and floored.se == pytest.approx(math.sqrt(4 / 2 + 4 / 3))  # both below the pooled 2.0
    assert report.compare(same, st(69.06, 69.06), NO_POOL).word == "inconclusive (no spread between seeds)"


def test_below_zero_is_the_same_test_against_the_constant_zero():
    zero = report.cell(None, "reward_accuracy", "bwt", report.ZERO)
    t = report.compare(st(-3, -2, -4), zero, NO_POOL)
    assert t.word == "lower" and t.half == pytest.approx(sps.t.ppf(0.975, 2) / math.sqrt(3))
    assert report.compare(st(-0.78, -1.56, 0.0), zero, NO_POOL).word == "within noise"
    assert report.compare(st(2, 3, 4), zero, NO_POOL).word == "higher"
    assert report.compare(st(-1), zero, NO_POOL).word.startswith("inconclusive")
    assert report.compare(st(-1), zero, (1.0, 3)).floor == 1.0


def test_stl_last_is_its_diagonal_and_intransigence_compares_diagonals():
    stl = make_run("stl", 0, None, None, matrix=[[70.0, 50.0, 50.0], [50.0, 80.0, 50.0], [50.0, 50.0, 90.0]])
    assert stl.summary("reward_accuracy", "last") == pytest.approx(80.0)  # not the last row's 63.3
    assert stl.summary("reward_accuracy", "bwt") is None
    seq = make_run("seqft", 0, -1.0, 60.0)  # diagonal 60, 60, 60
    assert intransigence(seq, [stl], "reward_accuracy") == pytest.approx(20.0)
    assert intransigence(seq, [], "reward_accuracy") is None
    table = report.tables(tidy([stl, seq]), report.paper_numbers(PAPER), 0.5, 0.9)["judge_free"]
    by_method = {r["method"]: r for r in table.to_dict("records") if r["metric"] == "implicit-reward accuracy"}
    assert set(by_method) == {"SeqFT", "STL"}  # only methods with runs
    assert by_method["STL"]["Last"] == "80.00" and by_method["STL"]["BWT"] == "n/a"
    assert by_method["SeqFT"]["intransigence vs STL"] == "20.00"
    assert "FWT" in table.columns


def write_run(root, run, version=RUN_CODE_VERSION):
    folder = root / run.group / run.id
    folder.mkdir(parents=True)
    (folder / "results.json").write_text(json.dumps(run.results))
    if version is not None:
        (folder / "provenance.json").write_text(json.dumps({"run_code_version": version}))


def test_only_finished_runs_of_the_current_run_code_count(tmp_path):
    partial = make_run("er", 0, 0.0, 60.0)
    partial.results["complete"] = False
    write_run(tmp_path, make_run("seqft", 0, 0.0, 60.0))
    write_run(tmp_path, partial)
    write_run(tmp_path, make_run("lifealign", 0, 0.0, 60.0), version=RUN_CODE_VERSION - 1)
    write_run(tmp_path, make_run("gem", 0, 0.0, 60.0), version=None)
    excluded = {}
    assert [r.id for r in load_runs(tmp_path, excluded)] == ["seqft-order1-s0"]
    assert excluded[("matrix", "er-order1-s0")].startswith("incomplete")
    assert excluded[("matrix", "lifealign-order1-s0")] == f"made by run code version {RUN_CODE_VERSION - 1}, now {RUN_CODE_VERSION}"
    assert excluded[("matrix", "gem-order1-s0")] == "no run-code version recorded"
    # the pipeline's state: a run made with another config is stale too
    states = {("matrix", "seqft-order1-s0"): "stale"}
    assert load_runs(tmp_path, excluded, states) == [] and excluded[("matrix", "seqft-order1-s0")] == "config changed since"
    (tmp_path / "matrix" / "er-order1-s0" / "results.json").write_text("{not json")
    with pytest.raises(ValueError, match="er-order1-s0/results.json"):
        load_runs(tmp_path)


def test_no_current_results_is_said_not_crashed_on(tmp_path):
    df = tidy([])
    paper = report.paper_numbers(PAPER)
    tables = report.tables(df, paper, 0.5, 0.9)
    assert report.markdown_by_metric(tables["judge_free"]) == report.NO_RESULTS
    assert report.markdown_by_metric(tables["sensitivity"]) == report.NO_RESULTS
    main = report.markdown_by_metric(tables["main_table"])  # the paper's numbers, ours "–"
    assert "**BLEU-4**" in main and "SeqFT" in main
    assert report.markdown(report.learned_table([])) == report.NO_RESULTS
    why = {("matrix", "seqft-order1-s0"): "made by run code version 1, now 2"}
    assert "No current results" in report.no_results(why) and "1 made by run code version 1" in report.no_results(why)
    n = verdicts.numbers([], df, why)
    assert n["runs"] == 0 and n["left_out"] == {"matrix/seqft-order1-s0": why[("matrix", "seqft-order1-s0")]}
    assert all(r["verdict"].startswith("not yet run") or r["verdict"] == "not tested" for r in n["verdicts"]["reward_accuracy"])
    json.dumps(n)
    for plot in (figures.plot_heatmaps, figures.plot_forgetting):
        plot([], ["seqft", "lifealign"], "reward_accuracy", tmp_path / "f.png")
        assert (tmp_path / "f.png").stat().st_size > 0


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
    rows = verdict_rows([])
    assert [r["claim"] for r in rows] == [c.text for c in verdicts.CLAIMS]
    assert all(r["verdict"].startswith("not yet run") or r["verdict"] == "not tested" for r in rows)


def test_verdicts_confirm_only_with_every_comparison_and_refute_on_one():
    runs = _grid()
    rows = verdict_rows(runs)
    assert [r["verdict"] for r in rows[:3]] == [verdicts.CONFIRMED] * 3  # best Last; SeqFT and ER below zero; BWT
    assert "LifeAlign 3" in rows[0]["seeds"]
    # a baseline missing: not yet run, naming it
    partial = [r for r in runs if r.method != "gem"]
    assert verdict_rows(partial)[0]["verdict"] == "not yet run (missing: GEM)"
    # one baseline beating LifeAlign beyond the noise refutes, even with others missing
    better = [make_run("olora", s, -3, 70 + s) for s in range(3)]
    refuted = verdict_rows([r for r in partial if r.method != "olora"] + better)[0]
    assert refuted["verdict"] == verdicts.REFUTED
    assert verdicts.evidence_items(refuted, "against") == [e for e in verdicts.evidence_items(refuted)
                                                           if e.startswith("Last, LifeAlign - O-LoRA")]
    assert rows[0]["against"] == "–"
    # with a large seed spread nothing is decided
    assert verdict_rows(_grid(spread=15))[0]["verdict"] == verdicts.INCONCLUSIVE


def test_ablation_orders_and_lambda_verdicts():
    runs = _grid()
    runs += [make_run("dpo+slmc", s, -2 + 0.1 * s, 58, group="ablation") for s in range(3)]
    runs += [make_run("fpo", s, -4 + 0.1 * s, 56, group="ablation") for s in range(3)]
    rows = verdict_rows(runs)
    assert rows[3]["verdict"] == verdicts.CONFIRMED  # a -5, b -2, c -4, d 0
    assert rows[4]["verdict"].startswith("not yet run (missing: ") and "ER order2" in rows[4]["verdict"]
    assert rows[6]["verdict"].startswith("not yet run (missing: lambda 0.8, lambda 0")
    for order in ("order2", "order3"):
        runs += [make_run(m, s, bwt + 0.1 * s, 50, order=order, group="orders")
                 for m, bwt in (("er", -5), ("cppo", -6), ("lifealign", -7 if order == "order3" else 0))
                 for s in range(3)]
    assert verdict_rows(runs)[4]["verdict"] == verdicts.REFUTED
    sweep = [make_run("lifealign", 0, bwt, last, group="sensitivity", sweep={"slmc_lambda": lam})
             for lam, bwt, last in ((0.0, -4, 60), (0.8, -6, 61), (1.0, -7, 60))]
    rows = verdict_rows(runs + sweep)
    assert rows[6]["verdict"] == verdicts.CONFIRMED  # 0.5: BWT 0 beats 0.8 and 1.0, and nothing beats it on both
    assert "BWT, lambda 0.8 - lambda 0.5: " in rows[6]["evidence"]
    dominant = [make_run("lifealign", 0, 5, 70, group="sensitivity", sweep={"slmc_lambda": 0.2})]
    row = verdict_rows(runs + sweep + dominant)[6]
    assert row["verdict"] == verdicts.REFUTED and row["against"].startswith("BWT and Last, lambda 0.2 - lambda 0.5")


def test_coverage_lists_missing_and_left_out_runs():
    table = report.coverage([make_run("seqft", 0, 0, 50)], {"matrix": ["seqft-order1-s0", "er-order1-s0"], "ablation": []})
    rows = table.to_dict("records")
    assert rows[0] == {"group": "matrix", "runs": "1 of 2", "missing": "er-order1-s0", "left out": "none"}
    assert rows[1]["runs"] == "0 of 0"
    why = "made by run code version 1, now 2"
    expected = {"matrix": ["seqft-order1-s0", "seqft-order1-s1"]}
    rows = report.coverage([], expected, {("matrix", i): why for i in expected["matrix"]}).to_dict("records")
    assert rows[0] == {"group": "matrix", "runs": "0 of 2", "missing": "none", "left out": f"all 2 ({why})"}


def test_orders_figure_draws_no_bar_for_a_missing_run(tmp_path):
    import matplotlib
    matplotlib.use("Agg")
    runs = [make_run(m, 0, -1.0, 50) for m in ("seqft", "er", "cppo", "lifealign")]
    fig = figures.plot_orders(tidy(runs), report.paper_numbers(PAPER), "reward_accuracy", tmp_path / "orders.png")
    ours_bwt = fig.axes[0]
    assert len(ours_bwt.patches) == 4  # order1's four methods; order2 / order3 have none
    assert sum(t.get_text() == "n/a" for t in ours_bwt.texts) == 8
    paper_bwt = fig.axes[2]  # the paper's BLEU-4 BWT: ER, CPPO and LifeAlign in three orders; no SeqFT
    assert len(paper_bwt.patches) == 9 and sum(t.get_text() == "n/a" for t in paper_bwt.texts) == 3
    assert (tmp_path / "orders.png").stat().st_size > 0


def test_learned_table_marks_tasks_above_chance_beyond_two_se():
    matrix = [[90.0, 50.0, 50.0], [85.0, 55.0, 50.0], [80.0, 52.0, 70.0]]
    runs = [make_run("seqft", s, -1.0, 60.0, matrix=matrix) for s in range(2)]
    for r in runs:
        r.results["config"]["data"]["n_test"] = 64  # two se of chance: 12.5 points
    rows = report.learned_table(runs).to_dict("records")
    assert [r["learned (above chance beyond 2 se) by"] for r in rows] == ["SeqFT", "none", "SeqFT"]
    assert rows[0]["SeqFT: trained → end"] == "90.0 → 80.0" and rows[0]["chance band (2 se)"] == "37.5 to 62.5"


def test_numbers_test_seqft_bwt_against_zero_per_metric():
    runs = [make_run("seqft", s, bwt, 60.0) for s, bwt in enumerate((-3.0, -2.0, -4.0))]
    runs += [make_run("lifealign", 0, 0.5, 65.0)]
    n = verdicts.numbers(runs, tidy(runs))
    seq = n["seqft_bwt_by_metric"]["reward_accuracy"]
    assert (seq["mean"], seq["n"], seq["test"]) == (-3.0, 3, "below zero")
    assert seq["ci95_half"] == pytest.approx(sps.t.ppf(0.975, 2) / math.sqrt(3))
    assert set(n["seqft_bwt_by_metric"]) == {"reward_accuracy"} == set(n["verdicts"])  # no generation metrics
    assert n["runs"] == 4 and n["seqft_bwt"] == -3.0 and n["lifealign_last"] == 65.0 and n["seeds"] == {"SeqFT": 3, "LifeAlign": 1}
    assert n["verdicts"]["reward_accuracy"][1]["verdict"].startswith("not yet run (missing: ER")
    json.dumps(n)  # numbers.json
    # One SeqFT seed takes the spread pooled over other methods' seeds, as the verdicts do.
    one = [make_run("seqft", 0, -5.0, 60.0)] + [make_run("er", s, bwt, 62.0) for s, bwt in enumerate((0.0, 1.0))]
    seq = verdicts.numbers(one, tidy(one))["seqft_bwt_by_metric"]["reward_accuracy"]
    assert seq["test"] == "within noise of zero" and seq["ci95_half"] == pytest.approx(12.706 * math.sqrt(0.5), rel=1e-4)
    # SeqFT on the other orders: BWT against zero with the same pooled spread (ER's: sd 0.71, 1 dof)
    other = one + [make_run("seqft", 0, bwt, 60.0, order=o, group="orders")
                   for o, bwt in (("order2", -8.0), ("order3", -10.0))]
    seq = verdicts.numbers(other, tidy(other))["seqft_bwt_by_metric"]["reward_accuracy"]
    assert list(seq["orders"]) == ["order2", "order3"] and seq["orders"]["order2"]["mean"] == -8.0
    assert [x["test"] for x in seq["orders"].values()] == ["within noise of zero", "below zero"]  # 12.706 * 0.71 = 8.98
    assert "orders" in seq and verdicts.numbers(one, tidy(one))["seqft_bwt_by_metric"]["reward_accuracy"]["orders"] == {}


def test_a_final_row_below_half_the_base_model_is_a_generation_collapse():
    def with_bleu(run, matrix):
        run.results["metrics"]["bleu4"] = {"base": [10.0, 14.0, 12.0], "matrix": matrix}
        return run
    healthy = [[9.0, 13.0, 12.0], [8.0, 13.0, 12.0], [8.0, 12.0, 11.0]]
    broken = [[9.0, 13.0, 12.0], [9.0, 12.0, 12.0], [1.0, 0.5, 0.0]]
    runs = [with_bleu(make_run("seqft", s, -1.0, 60.0), healthy) for s in (0, 1)]
    runs += [with_bleu(make_run("l2p", s, -1.0, 60.0), broken) for s in (0, 1)]
    runs += [make_run("er", 0, 0.0, 60.0)]  # no generation metrics: not judged
    collapse = verdicts.numbers(runs, tidy(runs))["generation_collapse"]
    assert list(collapse) == ["bleu4"] and list(collapse["bleu4"]) == ["L2P"]
    c = collapse["bleu4"]["L2P"]
    assert [c["base"], c["before_last"], c["last"]] == pytest.approx([12.0, 11.0, 0.5])
    assert (c["seeds"], c["last_task"]) == (2, "TruthfulQA")
    assert verdicts.generation_collapse(runs[:2]) == {}
    gradual = [[6.0, 7.0, 6.0], [4.0, 5.0, 4.0], [1.0, 0.5, 0.0]]  # already below half before the last task
    assert verdicts.generation_collapse([with_bleu(make_run("l2p", 0, -1.0, 60.0), gradual)]) == {}


def test_sensitivity_figure_puts_our_rougel_beside_the_papers_lambda_sweep(tmp_path):
    import matplotlib
    matplotlib.use("Agg")
    runs = [make_run("lifealign", 0, 1.0, 60.0)] + [
        make_run("lifealign", 0, b, 60.0, group="sensitivity", sweep={"slmc_lambda": lam}) for lam, b in ((0.0, 2.0), (1.0, 0.5))]
    paper = report.paper_numbers(PAPER)
    fig = figures.plot_sensitivity(tidy(runs), paper, 0.5, 0.9, "reward_accuracy", tmp_path / "a.png")
    assert not fig.axes[2].containers  # the runs have no ROUGE-L: the paper's lines alone
    for r in runs:
        r.results["metrics"]["rougel"] = r.results["metrics"]["reward_accuracy"]
    fig = figures.plot_sensitivity(tidy(runs), paper, 0.5, 0.9, "reward_accuracy", tmp_path / "b.png")
    ours = [c for c in fig.axes[2].containers if c.get_label() == "ours: ROUGE-L BWT"]
    line = ours[0].lines[0]
    assert len(ours) == 1 and list(line.get_xdata()) == [0.0, 0.5, 1.0] and list(line.get_ydata()) == [2.0, 1.0, 0.5]


def test_tables_set_ours_beside_the_paper_and_split_per_metric():
    runs = [make_run("er", s, 1.0 + s, 60.0) for s in range(2)]
    tables = report.tables(tidy(runs), report.paper_numbers(PAPER), 0.5, 0.9)
    er = next(r for r in tables["ablation"].to_dict("records") if r["row"] == "a" and r["metric"] == "BLEU-4")
    assert er["BWT ours"] == "–" and er["BWT paper"] == "-7.67" and er["seeds"] == 2  # the runs have no BLEU-4
    ours = next(r for r in tables["ablation"].to_dict("records") if r["row"] == "a" and r["metric"] != "BLEU-4")
    assert ours["BWT ours"] == "1.50 ± 0.71" and ours["BWT diff"] == "–"
    parts = dict(report.by_metric(tables["ablation"]))
    assert list(parts) == ["implicit-reward accuracy", "BLEU-4"]
    assert "BWT" in parts["implicit-reward accuracy"].columns  # no paper column beside ours: "BWT", not "BWT ours"
    assert {"BWT ours", "BWT paper"} <= set(parts["BLEU-4"].columns) and "BWT diff" not in parts["BLEU-4"]  # all "–"
    text = report.markdown_by_metric(tables["ablation"])
    assert "**BLEU-4**" in text and "1.50\u00a0±\u00a00.71" in text


def test_verdict_evidence_reads_as_a_list_with_standard_errors():
    runs = [make_run(m, s, b, 60.0 + s) for m, bs in (("seqft", (-3.0, -2.0, -4.0)), ("er", (1.0, 0.0, 2.0)),
                                                       ("lifealign", (0.5, 0.5))) for s, b in enumerate(bs)]
    rows = verdict_rows(runs)
    items = verdicts.evidence_items(rows[2])
    # LifeAlign's two seeds coincide: its sd is floored at the pooled spread, and the evidence says so
    assert items[0].startswith("LifeAlign BWT 0.50 ± 0.00") and "sd floored at the pooled 0.89" in items[0]  # sqrt((2 + 2 + 0) / 5)
    assert all("(95% CI " in i and ", se " in i for i in items[1:])
    t = report.compare(st(0.5, 0.5), st(-3.0, -2.0, -4.0), report.pooled(tidy(runs), "reward_accuracy", "bwt"))
    assert items[1].startswith(f"BWT, LifeAlign - SeqFT: +3.50 (95% CI {3.5 - t.half:+.2f} to {3.5 + t.half:+.2f}, se {t.se:.2f}, higher")
    text = verdicts.verdicts_markdown(rows)
    assert text.startswith("| claim") and "\n- BWT, LifeAlign - SeqFT: " in text


def test_seeds_needed_gives_the_textbook_sample_sizes():
    # 80% power at 95%, two-sided: d = 1 sd needs 17 per group (two-sample) and 10 (one-sample);
    # d = 2 sd needs 6 per group; d = 0.8 sd needs 26 per group, beyond what a grid can pay for.
    assert verdicts.seeds_needed(1.0, 1.0) == 17 and verdicts.seeds_needed(-2.0, 1.0) == 6
    assert verdicts.seeds_needed(3.0, 3.0, one_sample=True) == 10
    assert verdicts.seeds_needed(0.8, 1.0) is None and verdicts.fmt_seeds(None) == "more than 20"
    assert verdicts.seeds_needed(None, 1.0) is None and verdicts.seeds_needed(1.0, None) is None
    # a difference many spreads wide is decided by the fewest seeds (scipy's far tail is NaN there)
    assert verdicts.seeds_needed(-10.74, 1.37) == 2 and verdicts.seeds_needed(-10.7421875, 1.3718299157360336) == 2
    # the power it promises is what compare() delivers: simulated runs of the same test
    rng = __import__("numpy").random.default_rng(0)
    n = verdicts.seeds_needed(2.0, 1.0)
    decided = sum(report.compare(st(*rng.normal(2.0, 1.0, n)), st(*rng.normal(0.0, 1.0, n)), NO_POOL).word == "higher"
                  for _ in range(2000))
    assert 0.75 < decided / 2000 < 0.9


def test_an_inconclusive_verdict_says_how_many_seeds_would_decide_it():
    rows = verdict_rows(_grid(spread=5))
    assert rows[0]["verdict"] == verdicts.INCONCLUSIVE
    # each undecided comparison names its seeds; the claim takes the most of them
    items = [e for e in verdicts.evidence_items(rows[0]) if "within noise" in e]
    needs = [e.split("80% power at ")[1].split(" seeds each")[0] for e in items]
    assert items and len(needs) == len(items)
    assert rows[0]["seeds to decide"] == ("more than 20" if "more than 20" in needs else str(max(map(int, needs))))
    assert verdict_rows(_grid())[0]["seeds to decide"] == "–"  # confirmed: nothing left to decide
    # confirming takes every comparison; refuting takes one that points against the claim
    assert verdicts.seeds_to_decide([(5, False), (8, False)]) == 8
    assert verdicts.seeds_to_decide([(5, False), (None, False)]) is None
    assert verdicts.seeds_to_decide([(None, True), (7, True), (3, False)]) == 7
    assert verdicts.seeds_to_decide([(None, True), (3, False)]) is None
    # SeqFT's BWT above zero and ER's below: the claim "both forget" is refuted soonest by SeqFT's
    runs = [make_run(m, s, b, 60.0) for m, bs in (("seqft", (1.0, 2.0, 3.0)), ("er", (-0.5, -1.0, 0.0)))
            for s, b in enumerate(bs)]
    forget = verdict_rows(runs)[1]
    assert report.pooled(tidy(runs), "reward_accuracy", "bwt")[0] == pytest.approx(math.sqrt(0.625))
    assert forget["verdict"] == verdicts.INCONCLUSIVE  # sized by SeqFT's own sd 1.0, above the pooled 0.79
    assert forget["seeds to decide"] == verdicts.fmt_seeds(verdicts.seeds_needed(2.0, 1.0, one_sample=True)) == "5"
    assert "seeds each to decide" in verdicts.verdicts_markdown(rows).splitlines()[0]


def test_power_table_sets_our_differences_beside_the_papers():
    df, paper = tidy(_grid(spread=3)), report.paper_numbers(PAPER)
    table = verdicts.power_table(df, paper, "bleu4")
    judged = [k for c in verdicts.CLAIMS for k, *_, e in verdicts.comparisons(c, df) if e]
    assert len(table) == sum("+" not in k for k in judged)
    row = table[table.comparison == "LifeAlign - SeqFT, Last"].iloc[0]
    ours, theirs = (paper[("main", m, "bleu4", "last")] for m in ("LifeAlign", "SeqFT"))
    assert row["paper's"] == f"{ours - theirs:+.2f}" and row["ours"] == "–"  # the synthetic runs have no BLEU-4
    reward = verdicts.power_table(df, paper, "reward_accuracy").set_index("comparison")
    assert reward.loc["LifeAlign - SeqFT, Last", "sd per side"] == "3.00"  # every method's seeds spread 3 apart
    assert reward.loc["LifeAlign - SeqFT, Last", "seeds (ours)"] == verdicts.fmt_seeds(verdicts.seeds_needed(12.0, 3.0))


def test_the_power_counts_with_the_spread_the_test_sees():
    # each side's sd floored at the pooled one, the root mean square of the two; against 0, a's alone
    wide, narrow, one = st(0.0, 4.0), st(1.0, 1.5), st(2.0)
    assert verdicts.side_sd(wide, narrow, 1.0) == pytest.approx(math.sqrt((8.0 + 1.0) / 2))
    assert verdicts.side_sd(one, narrow, 1.0) == pytest.approx(1.0)
    assert verdicts.side_sd(wide, report.cell(None, None, None, report.ZERO), 1.0) == pytest.approx(math.sqrt(8.0))
    # at the seeds it names, the test with those spreads decides the difference about 80% of the time
    rng = __import__("numpy").random.default_rng(1)
    n = verdicts.seeds_needed(3.0, verdicts.side_sd(st(0.0, 3.0), st(0.0, 1.0), 1.0))
    decided = sum(report.compare(st(*rng.normal(3.0, 3.0 / math.sqrt(2), n)), st(*rng.normal(0.0, 1.0, n)),
                                 (1.0, 4)).word == "higher" for _ in range(2000))
    assert 0.72 < decided / 2000 < 0.9


def test_runs_in_another_precision_are_left_out_and_machines_are_listed(tmp_path):
    made = [make_run("seqft", 0, -1, 50), make_run("er", 0, -1, 50), make_run("lifealign", 0, 0, 60)]
    for run, precision, flags in zip(made, ("bf16", "bf16", "fp32"), (["amx_bf16", "avx2"], ["avx2", "avx512_bf16"], ["avx2"])):
        folder = tmp_path / run.group / run.id
        folder.mkdir(parents=True)
        results = dict(run.results, model={"precision": precision}, machine={"cpu": "Some CPU", "cpu_flags": flags},
                       training=[{"eval_s": 1800, "stages": {}}])
        (folder / "results.json").write_text(json.dumps(results))
        (folder / "provenance.json").write_text(json.dumps({"run_code_version": RUN_CODE_VERSION}))
    why = {}
    runs = load_runs(tmp_path, why)
    assert [r.method for r in runs] == ["er", "seqft"]
    assert why == {("matrix", "lifealign-order1-s0"): "ran in fp32, 2 other runs in bf16"}
    table = report.compute_table(runs)
    assert table.iloc[-1].to_dict() == {"group": "all", "runs": 2, "hours": "1.00",
                                        "machines": "Some CPU (AMX), bf16: 1; Some CPU (AVX512-BF16), bf16: 1"}
    assert load_runs(tmp_path / "none") == []

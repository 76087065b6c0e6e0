"""Build the book for one profile's committed results.

    python book/build.py                   # params.yaml's profile (or $LIFEALIGN_PROFILE)
    python book/build.py --profile smoke   # another profile that has results
    make book [PROFILE=smoke]              # the same, from the project's environment

The book renders what the pipeline wrote and runs no experiment. This script
1. copies results/<profile>/ (report, data and method tables and figures, the executed notebooks)
   into book/_generated/ and book/notebooks/ (both ignored by git), failing with the name of the
   first missing file when the profile has no report yet;
2. writes the markdown the pages include that no notebook writes: the paper's tables from paper/*.csv,
   the profiles and budgets, the setup differences, the main table split per metric, the
   performance tables from benchmarks/results/*.json and a few sentences from numbers.json;
3. runs `jupyter-book build book -W -n --keep-going --all`: any warning fails the build.
"""
import argparse
import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlparse

import yaml

BOOK = Path(__file__).resolve().parent
ROOT = BOOK.parent
GEN = BOOK / "_generated"
NOTEBOOKS = BOOK / "notebooks"
sys.path.insert(0, str(ROOT / "src"))  # the book builds from a checkout, installed or not

from lifealign import report  # noqa: E402
from lifealign.config import ConfigError, load_config  # noqa: E402
from lifealign.data import DERIVED_TEST_FRACTION, ORDERS, TASKS, short_name as short  # noqa: E402
from lifealign.metrics import summarize  # noqa: E402
from lifealign.pipeline import GROUPS, active_profile, grid, load_params  # noqa: E402

# Every file of results/<profile>/ a page shows. The pipeline's stages write them: model (model.json),
# data-stats (data/, notebooks/data.ipynb), method (method/, notebooks/method.ipynb) and report.
REQUIRED = [
    "report/main_table.csv", "report/main_table.md", "report/judge_free.md", "report/ablation.md",
    "report/orders.md", "report/sensitivity.md", "report/verdicts.csv", "report/verdicts.md",
    "report/compute.md", "report/numbers.json", "report/coverage.csv", "report/learned.md",
    "report/figures/heatmaps.png", "report/figures/forgetting.png", "report/figures/orders.png",
    "report/figures/sensitivity.png", "report/learned.csv", "report/compute.csv",
    "data/sizes.md", "data/lengths.md", "data/prompt_overlap.md", "data/lengths.png", "data/stats.json",
    "method/focal.png", "method/slmc_stages.md", "method/principal_angles.md", "method/principal_angles.png",
    "notebooks/data.ipynb", "notebooks/method.ipynb", "notebooks/report.ipynb", "model.json",
]
BENCHMARKS = ("preference_throughput", "eval_throughput", "hardware_limit", "machinery_cost", "parallel_workers")
BENCH_COMMANDS = {
    "preference_throughput": ".venv/bin/python benchmarks/preference_throughput.py",
    "eval_throughput": ".venv/bin/python benchmarks/eval_throughput.py",
    "hardware_limit": ".venv/bin/python benchmarks/hardware_limit.py --from "
                      "benchmarks/results/preference_throughput.json benchmarks/results/eval_throughput.json",
    "machinery_cost": ".venv/bin/python benchmarks/machinery_cost.py --run runs/lifealign-cpu",
    "parallel_workers": ".venv/bin/python benchmarks/parallel_workers.py",
}
# Benchmarks that write their own markdown beside their JSON (benchmarks/results/<name>.md).
BENCH_PAGES = {
    "whole_run": ".venv/bin/python benchmarks/whole_run.py",
    "generation_speed": ".venv/bin/python benchmarks/generation_speed.py",
    "stage_profile": ".venv/bin/python benchmarks/stage_profile.py",
    "gpu_check": "bash benchmarks/gpu_check.sh (on a GPU machine)",
}
# The paper's setting (its experimental setup and evaluation), for the "what differs" table.
PAPER_SETUP = {
    "backbone": "Qwen2.5-7B-Instruct (also Mistral-7B, Llama-3-8B)",
    "tasks": "6, order1: " + ", ".join(TASKS),
    "pairs per task": "every pair of the release",
    "max length (prompt)": "2048 (1024) tokens",
    "SFT stage": "3 epochs, lr 1e-4, batch 16",
    "preference stage": "3 epochs, lr 5e-6, batch 32",
    "decoding": "sampled: temperature 0.95, top-p 0.7, up to 1024 new tokens",
    "judge": "a DeepSeek model through an OpenAI-compatible API",
    "seeds": "1",
}


class BookError(SystemExit):
    pass


# ---------------------------------------------------------------- small helpers
def md_table(rows, columns):
    return report.markdown(rows, columns)


def write(name, text):
    path = GEN / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text if text.endswith("\n") else text + "\n")


def num(value, digits=2):
    return "–" if value is None else f"{value:,.{digits}f}"


def order_text(order):
    if isinstance(order, str):
        return f"{order} ({len(ORDERS[order])} tasks)" if order in ORDERS else order
    return f"{len(order)} tasks: " + ", ".join(short(t) for t in order)


def tasks_text(order, dropped):
    """The tasks a profile trains: its order less the tasks with no data here (the data notebook's
    `dropped`), e.g. "order1: 5 of 6 tasks (Capybara has no data)"."""
    tasks = ORDERS[order] if isinstance(order, str) and order in ORDERS else list(order)
    name = order if isinstance(order, str) else "custom"
    gone = [t for t in tasks if t in dropped]
    if not gone:
        return f"{name}: {len(tasks)} tasks" if name in ORDERS else order_text(order)
    return (f"{name}: {len(tasks) - len(gone)} of {len(tasks)} tasks "
            f"({', '.join(short(t) for t in gone)} has no data)")


def stage_text(stage):
    batch = stage.batch_size * stage.grad_accum
    return f"{stage.epochs:g} epoch{'s' if stage.epochs != 1 else ''}, lr {stage.lr:g}, batch {batch}"


def params_text(model):
    n = model["parameters"]
    return f"{n / 1e9:.1f} B" if n >= 1e9 else f"{n / 1e6:.1f} M" if n >= 1e6 else f"{n:,}"


def decoding_text(cfg, short=False):
    if not cfg.eval.generation:
        return "none (judge-free scores only)"
    how = (f"sampled (temperature {cfg.eval.temperature:g}, top-p {cfg.eval.top_p:g})" if cfg.eval.sampling
           else "greedy")
    if short:
        return f"{how}, {cfg.eval.gen_prompts or 'all'} prompts a task"
    prompts = "every" if cfg.eval.gen_prompts is None else f"the first {cfg.eval.gen_prompts}"
    return f"{how}, up to {cfg.eval.max_new_tokens} new tokens, on {prompts} test prompts of each task"


def judge_text(cfg):
    if cfg.eval.judge:
        return f"LLM judge {cfg.eval.judge_model or '(model from $LIFEALIGN_JUDGE_MODEL)'}"
    return "none: judge-free preference scores instead (implicit-reward and log-likelihood accuracy)"


# ---------------------------------------------------------------- step 1: copy the results
def check(results):
    missing = [rel for rel in REQUIRED if not (results / rel).is_file()]
    if missing:
        more = f" (and {len(missing) - 1} more of the files the book shows)" if len(missing) > 1 else ""
        raise BookError(f"error: {results.relative_to(ROOT) / missing[0]} is missing{more}, so the book cannot show "
                        f"profile {results.name}: produce its results first (`make reproduce PROFILE={results.name}`, "
                        f"or `dvc repro` with that profile active), or build another profile that has them "
                        f"(`make book PROFILE=...`)")
    finished = [p for p in results.glob("*/*/results.json") if json.loads(p.read_text()).get("complete")]
    reported = json.loads((results / "report" / "numbers.json").read_text()).get("runs")
    if reported != len(finished):
        raise BookError(f"error: {results.relative_to(ROOT)}/report was made from {reported} runs, but "
                        f"{len(finished)} finished runs are there now: rerun the report "
                        f"(`dvc repro report`, or `python -m lifealign.pipeline notebook report`) first")
    experiment = sorted(results.glob("matrix/lifealign-*s0/experiment.ipynb"))
    if not experiment:
        raise BookError(f"error: {results.relative_to(ROOT)}/matrix/lifealign-*-s0/experiment.ipynb is missing: "
                        f"the profile's matrix group has no finished LifeAlign run with seed 0")
    return experiment[0]


def copy_results(results, experiment):
    for folder in (GEN, NOTEBOOKS):
        shutil.rmtree(folder, ignore_errors=True)
    for part in ("report", "data", "method"):
        shutil.copytree(results / part, GEN / part)
        for table in (GEN / part).glob("*.md"):  # keep "mean ± sd" on one line in narrow columns
            table.write_text(table.read_text().replace(" ± ", "\u00a0±\u00a0"))
    shutil.copy2(results / "model.json", GEN / "model.json")
    NOTEBOOKS.mkdir()
    # The executed notebooks, their Colab badge (vendored image: the book works offline) and clone cell
    # pointing at book/_config.yml's repository.
    sources = {name: results / "notebooks" / f"{name}.ipynb" for name in ("data", "method", "report")}
    for name, source in dict(sources, experiment=experiment).items():
        (NOTEBOOKS / f"{name}.ipynb").write_text(with_links(source.read_text(), name, "/_static/colab-badge.svg"))


# ---------------------------------------------------------------- the repository URL (book/_config.yml)
COLAB_BADGE = "https://colab.research.google.com/assets/colab-badge.svg"
BADGE_RE = re.compile(r"\[!\[Open In Colab\]\([^)]*\)\]\([^)]*\)")
CLONE_RE = re.compile(r"!git clone -q \S+ /content/lifealign")


def repository():
    """(url, branch) of `repository:` in book/_config.yml: the one place the repository is named."""
    config = yaml.safe_load((BOOK / "_config.yml").read_text())["repository"]
    return config["url"].rstrip("/"), config.get("branch", "main")


def colab_url(name):
    url, branch = repository()
    path = urlparse(url).path.strip("/")
    return f"https://colab.research.google.com/github/{path}/blob/{branch}/notebooks/{name}.ipynb"


def with_links(notebook, name, badge_image=COLAB_BADGE):
    """The notebook (JSON text) with its Colab badge and its clone cell pointing at the repository."""
    url, _ = repository()
    nb = json.loads(notebook)
    for c in nb["cells"]:
        text = "".join(c["source"])
        new = BADGE_RE.sub(f"[![Open In Colab]({badge_image})]({colab_url(name)})", text)
        new = CLONE_RE.sub(f"!git clone -q {url} /content/lifealign", new)
        if new != text:
            lines = new.split("\n")
            c["source"] = [line + "\n" for line in lines[:-1]] + [lines[-1]]
    return json.dumps(nb, indent=1, ensure_ascii=False) + "\n"


def sync_notebooks():
    """Point the source notebooks' badges and clone cells at book/_config.yml's repository (a fork runs
    this once after setting its URL). Returns the notebooks it changed."""
    changed = []
    for path in sorted((ROOT / "notebooks").glob("*.ipynb")):
        text = path.read_text()
        new = with_links(text, path.stem)
        if json.loads(new) != json.loads(text):
            path.write_text(new)
            changed.append(path.relative_to(ROOT))
    return changed


# ---------------------------------------------------------------- step 2: generated pages parts
def write_profile(profile, params, cfg, results, experiment):
    model = json.loads((results / "model.json").read_text())
    stats = json.loads((results / "data" / "stats.json").read_text())
    counts = {g: len(list((results / g).glob("*/results.json"))) for g in GROUPS}
    runs = ", ".join(f"{n} in {g}" for g, n in counts.items() if n)
    write("profile.md", (
        f"This book shows the **`{profile}`** profile: {model['name']} ({params_text(model)} "
        f"parameters) on {len(stats['tasks'])} tasks ({', '.join(short(t) for t in stats['tasks'])}), "
        f"{cfg.data.n_train} training and {cfg.data.n_test} test pairs per task, "
        f"{sum(counts.values())} runs ({runs}), from the results committed under `results/{profile}/`. "
        f"`make book PROFILE=<name>` renders another profile that has results."))
    write("scale_note.md", (
        f"The absolute values are not comparable with the paper's: {model['name']} ({params_text(model)} parameters) "
        f"against 7-8 B, {cfg.data.n_train or 'all'} training pairs per task against every pair of the release, "
        f"and {'an LLM judge of our own' if cfg.eval.judge else 'no LLM judge'} ({{doc}}`setup` lists every "
        f"difference and why). What carries over is the shape of the claims: orderings and signs."))
    write("experiment_run.md", f"The notebook page *One continual run* is the executed copy of the run "
                               f"`{experiment.parent.parent.name}/{experiment.parent.name}`.")

    # Profiles and budgets: every profile of params.yaml (a column each), from its run config.
    dropped = {d["task"] for d in stats.get("dropped") or []}
    columns = {}
    for name, prof in params["profiles"].items():
        path = ROOT / "configs" / f"{name}.yaml"
        if not path.exists():
            continue
        c = load_config(path)
        n = {g: len(grid(prof, g)) for g in GROUPS}
        columns[f"**{name}** (shown)" if name == profile else name] = {
            "model": c.model.name, "tasks": tasks_text(c.data.order, dropped),
            "LoRA": f"rank {c.model.lora_r}, alpha {c.model.lora_alpha:g} on {', '.join(c.model.lora_targets)}",
            "beta / gamma / theta / lambda": f"{c.method.beta:g} / {c.method.gamma:g} / "
                                             f"{c.method.slmc_threshold:g} / {c.method.slmc_lambda:g}",
            "pairs per task (train / test)": f"{c.data.n_train or 'all'} / {c.data.n_test or 'all'}",
            "max length (prompt)": f"{c.model.max_length} ({c.model.max_prompt_length})",
            "SFT stage": stage_text(c.sft), "preference stage": stage_text(c.pref),
            "generation": decoding_text(c, short=True),
            "runs": f"{sum(n.values())}: " + ", ".join(f"{g} {k}" for g, k in n.items() if k),
            "results here": "yes" if (ROOT / "results" / name / "report").is_dir() else "no"}
    keys = list(next(iter(columns.values())))
    write("profiles.md", md_table([{"": k, **{p: v[k] for p, v in columns.items()}} for k in keys],
                                  [""] + list(columns)))

    # What differs from the paper, for the rendered profile.
    ours = {
        "backbone": f"{model['name']} ({params_text(model)} parameters)",
        "tasks": f"{len(stats['tasks'])}, {order_text(cfg.data.order).split(' (')[0]}: "
                 + ", ".join(stats["tasks"]),
        "pairs per task": f"{cfg.data.n_train or 'all'} train / {cfg.data.n_test or 'all'} test",
        "max length (prompt)": f"{cfg.model.max_length} ({cfg.model.max_prompt_length}) tokens",
        "SFT stage": stage_text(cfg.sft), "preference stage": stage_text(cfg.pref),
        "decoding": decoding_text(cfg), "judge": judge_text(cfg),
        "seeds": ", ".join(sorted({f"{report.LABELS.get(m, m)} {n}" for m, n in seed_counts(results).items()})),
    }
    write("differences.md", md_table([{"": k, "paper": PAPER_SETUP[k], f"this book ({profile})": ours[k]}
                                      for k in PAPER_SETUP], ["", "paper", f"this book ({profile})"]))

    dropped = stats.get("dropped") or []
    write("dropped.md", "\n".join(f"- **{d['task']}**: {d['reason']}" for d in dropped)
          if dropped else "No task of the order was dropped in this profile.")

    # The tasks, with the release's sizes as the data notebook counted them.
    sizes = {r["task"]: r for r in stats["sizes"]}
    rows = []
    for i, (name, task) in enumerate(TASKS.items(), 1):
        s = sizes.get(task.short)
        rows.append({"": f"T{i}", "task": name, "preference": task.description,
                     "train / test available": f"{s['train']} / {s['test']}" if s else "no data here",
                     "split from test": s["split from test"] if s else "–"})
    write("tasks.md", md_table(rows, list(rows[0])))
    split = [r for r in stats["sizes"] if r["split from test"] == "yes"]
    write("hc3_split.md", " ".join(
        f"Here {r['task']} has {r['train'] + r['test']} usable pairs in its test file; the split gives "
        f"{r['train']} training and {r['test']} test pairs ({100 * DERIVED_TEST_FRACTION:.0f}% test by prompt "
        f"hash, no prompt on both sides), of which the profile uses {r['train used']} and {r['test used']}."
        for r in split) or "No task of this profile is split from its test file.")


def seed_counts(results):
    counts = {}
    for path in (results / "matrix").glob("*/results.json"):
        method = json.loads(path.read_text())["config"]["method"]["name"]
        counts[method] = counts.get(method, 0) + 1
    return counts


def paper_claim_items():
    """The paper's headline claims with its own numbers (Table 1, the ablation, the orders, the lambda
    sweep), one item per verdict row (report.CLAIMS), in the same order."""
    paper = ROOT / "paper"
    t1 = {r["method"]: r for r in report.read_csv(paper / "main_table_qwen_order1.csv")}
    avg = lambda method, key: t1[method][f"avg_{key}"]  # noqa: E731
    abl = {r["row"]: r for r in report.read_csv(paper / "ablation_qwen_order1.csv")}
    lam = {float(r["lambda"]): r for r in report.read_csv(paper / "lambda_sweep_qwen_order1.csv")}
    high = ", ".join(f"{float(lam[v]['judge_bwt']):+.2f} at {v:g}" for v in sorted(lam) if v >= 0.8)
    orders = {(r["metric"], r["order"]): r for r in report.read_csv(paper / "task_orders_qwen.csv")}
    order_bwt = "; ".join(f"{o}: LifeAlign {float(orders[('bleu4_bwt', o)]['LifeAlign']):+.2f}, ER "
                          f"{float(orders[('bleu4_bwt', o)]['ER']):+.2f}, CPPO {float(orders[('bleu4_bwt', o)]['CPPO']):+.2f}"
                          for o in ("order1", "order2", "order3") if ("bleu4_bwt", o) in orders)
    # One item per verdict row (report.CLAIMS), in the same order.
    items = [
        f"LifeAlign has the best Last of the continual methods: average Last {avg('LifeAlign', 'last')}, against "
        f"ER {avg('ER', 'last')} (the best other continual method) and the multi-task upper bound MTL "
        f"{avg('MTL', 'last')};",
        f"SeqFT and ER forget: average BWT {float(avg('SeqFT', 'bwt')):+.2f} and {float(avg('ER', 'bwt')):+.2f};",
        f"LifeAlign's BWT is near zero, above theirs: average {float(avg('LifeAlign', 'bwt')):+.2f};",
        f"SLMC carries most of the forgetting reduction and FPO adds on top: BLEU-4 BWT "
        f"{float(abl['a']['bleu4_bwt']):+.2f} with neither, {float(abl['b']['bleu4_bwt']):+.2f} with SLMC, "
        f"{float(abl['c']['bleu4_bwt']):+.2f} with FPO, {float(abl['d']['bleu4_bwt']):+.2f} with both;",
        f"the ranking holds across the three task orders (BLEU-4 BWT {order_bwt});",
        "and across three backbones (Qwen, Mistral, Llama);",
        f"$\\lambda = 0.5$ is the best trade-off (judge BWT {float(lam[0.5]['judge_bwt']):+.2f}) and "
        f"$\\lambda \\ge 0.8$ collapses the judge's BWT ({high}).",
    ]
    assert len(items) == len(report.CLAIMS), "one paper claim per verdict row"
    return items


def write_paper_tables():
    paper = ROOT / "paper"
    rows = report.read_csv(paper / "main_table_qwen_order1.csv")
    names = {"bleu4": "BLEU-4", "rougel": "ROUGE-L", "judge": "Judge", "avg": "AVG"}
    columns = ["method"] + [f"{names[m]} {k.upper() if k != 'last' else 'Last'}" for m in names
                            for k in report.SUMMARY_KEYS]
    out = [{"method": r["method"], **{f"{names[m]} {k.upper() if k != 'last' else 'Last'}": r[f"{m}_{k}"] or "–"
                                      for m in names for k in report.SUMMARY_KEYS}} for r in rows]
    # Two tables of seven columns read better than one of thirteen.
    write("paper_table1.md", "\n".join(md_table(out, [columns[0]] + columns[1 + 6 * half:7 + 6 * half])
                                        for half in (0, 1)))

    items = paper_claim_items()
    write("paper_claims.md", "\n".join(
        ["On Qwen2.5-7B-Instruct over six tasks, every number from a single seed with no confidence interval:", ""]
        + [f"{i}. {text}" for i, text in enumerate(items, 1)]))

    t1 = {r["method"]: r for r in rows}
    abl = {r["row"]: r for r in report.read_csv(paper / "ablation_qwen_order1.csv")}
    rows = report.read_csv(paper / "ablation_qwen_order1.csv")
    write("paper_ablation.md", md_table(rows, list(rows[0])))
    # Row a (DPO + replay) is ER by definition, but the paper prints other numbers for it than Table 1's ER.
    er = t1["ER"]
    keys = [k for k in ("bleu4_bwt", "bleu4_last", "bleu4_ap", "judge_bwt", "judge_last", "judge_ap")
            if abl["a"].get(k) and er.get(k)]
    differ = [k for k in keys if abs(float(abl["a"][k]) - float(er[k])) > 0.005]
    write("ablation_row_a.md", (
        "Row a (DPO with replay, neither FPO nor SLMC) is ER by definition, yet the paper prints other numbers "
        "for it than for ER in Table 1: " + ", ".join(f"{k.replace('_', ' ')} {abl['a'][k]} against {er[k]}"
                                                        for k in differ)
        + ". Our ablation table compares our ER runs with the ablation's row a; the main table compares the "
          "same runs with Table 1's ER." if differ else
        "Row a (DPO with replay) is ER; the paper's numbers for it equal Table 1's ER."))
    rows = report.read_csv(paper / "lambda_sweep_qwen_order1.csv")
    write("paper_lambda.md", md_table(rows, list(rows[0])))
    rows = report.read_csv(paper / "task_orders_qwen.csv")
    write("paper_orders.md", md_table(rows, list(rows[0])))

    # The paper's LifeAlign judge matrix (order1) and what its own definitions give (paper/README.md).
    rows = report.read_csv(paper / "judge_matrix_lifealign_order1.csv")
    tasks = [c for c in rows[0] if c != "after_task"]
    write("paper_judge_matrix.md", md_table([{"after task": short(r["after_task"]),
                                              **{short(t): r[t] or "" for t in tasks}} for r in rows],
                                            ["after task"] + [short(t) for t in tasks]))
    matrix = [[float(r[t]) if r[t] else None for t in tasks] for r in rows]
    recomputed = summarize(matrix)
    table1 = next(r for r in report.read_csv(paper / "main_table_qwen_order1.csv") if r["method"] == "LifeAlign")
    lines = ["| LifeAlign, LLM judge, order1 | BWT | Last | AP |", "|---|---|---|---|",
             f"| from the paper's matrix | {recomputed['bwt']:.2f} | {recomputed['last']:.2f} | {recomputed['ap']:.2f} |",
             f"| the paper's Table 1 | {table1['judge_bwt']} | {table1['judge_last']} | {table1['judge_ap']} |"]
    write("judge_check.md", "\n".join(lines))
    mismatch = abs(recomputed["bwt"] - float(table1["judge_bwt"])) > 0.005
    write("judge_check_sentence.md", (
        f"The paper is not consistent with itself here: its order1 judge matrix of LifeAlign gives Last "
        f"{recomputed['last']:.2f} and AP {recomputed['ap']:.2f}, as Table 1 prints, but BWT "
        f"{recomputed['bwt']:.2f}, where Table 1 prints {table1['judge_bwt']}." if mismatch else
        "The paper's order1 judge matrix of LifeAlign gives the BWT, Last and AP that its Table 1 prints."))


def write_numbers(results):
    """Sentences of the introduction and the main results from numbers.json (implicit-reward accuracy)."""
    n = json.loads((results / "report" / "numbers.json").read_text())

    def value(method, key):
        mean = n.get(f"{method}_{key}")
        if mean is None:
            return None
        sd, count = n.get(f"{method}_{key}_sd"), n.get(f"{method}_{key}_n")
        spread = f" ± {sd:.2f}" if sd is not None else ""
        return f"{mean:+.2f}{spread}" if key == "bwt" else f"{mean:.2f}{spread}", count

    parts = []
    for method in ("seqft", "er", "lifealign", "mtl"):
        bwt, last = value(method, "bwt"), value(method, "last")
        if bwt and last:
            parts.append(f"{report.LABELS[method]} BWT {bwt[0]}, Last {last[0]} ({bwt[1]} seed{'s' if bwt[1] != 1 else ''})")
    write("headline.md", (
        "On implicit-reward accuracy over the profile's order1 runs (mean ± standard deviation over seeds): "
        + "; ".join(parts) + "." if parts else "The profile has no SeqFT, ER or LifeAlign run yet."))

    verdicts = verdict_tables(results)

    # Does SeqFT forget here? The verdict on "SeqFT and ER forget" per metric, with SeqFT's BWT.
    lines = []
    for m, s in (n.get("seqft_bwt_by_metric") or {}).items():
        forget = next((r for r in verdicts.get(m, []) if r["claim"] == report.CLAIMS[1]), None)
        if forget:
            half = s["ci95_half"]
            lines.append(f"- {report.METRIC_NAMES[m]}: SeqFT BWT {report.fmt_stats(s)} over {s['n']} seed"
                         f"{'s' if s['n'] != 1 else ''} (values {', '.join(f'{v:+.2f}' for v in s['values'])}; "
                         f"{report.zero_text(s['test'])}{f', 95% CI ± {half:.2f}' if half is not None else ''}); "
                         f"the claim's verdict: *{forget['verdict']}*.")
    if lines:
        write("forgetting_note.md", "\n".join([
            "Does SeqFT forget at this scale? A claim that a method *reduces* forgetting has something to act "
            "on only where SeqFT's BWT is below zero beyond its seed spread (the calibration probes of the "
            "Setup chapter asked the same of implicit-reward accuracy):", ""] + lines))
    else:
        write("forgetting_note.md", "The profile has no SeqFT run yet: whether SeqFT forgets here is not known.")

    # Where LifeAlign's Last differs from SeqFT's, task by task (the final row).
    diffs = n.get("final_row_lifealign_minus_seqft") or {}
    if diffs:
        top = max(diffs, key=lambda t: abs(diffs[t]))
        total = sum(diffs.values())
        write("final_row_note.md", (
            "Where the Last difference between LifeAlign and SeqFT comes from, task by task (the final row of "
            "the matrices, means over seeds, LifeAlign minus SeqFT): "
            + ", ".join(f"{short(t)} {d:+.2f}" for t, d in diffs.items())
            + f". The largest, {short(top)}, is {abs(diffs[top]) / abs(total) * 100 if total else 0:.0f}% of the "
              f"summed difference ({total:+.2f} over {len(diffs)} tasks)."))
    else:
        write("final_row_note.md", "The profile has no LifeAlign and SeqFT runs on order1 to compare task by task.")


def write_length_note(results, cfg):
    """What the length table implies: tasks whose responses the length limit mostly cuts, and tasks
    where the chosen response is much shorter or longer than the rejected one (a shortcut a small
    model can learn without learning the preference)."""
    lengths = json.loads((results / "data" / "stats.json").read_text())["lengths"]
    cut = [r for r in lengths if float(r["response cut %"]) >= 50]
    skew = [r for r in lengths if r["rejected median"] and not 0.5 < r["chosen median"] / r["rejected median"] < 2]
    parts = []
    if cut:
        parts.append("At max_length " + str(cfg.model.max_length) + " the limit cuts most responses of "
                     + ", ".join(f"{r['task']} ({r['response cut %']}% of pairs)" for r in cut)
                     + ": there the preference is judged on truncated responses (what fits after the prompt).")
    if skew:
        parts.append("Length alone nearly separates "
                     + ", ".join(f"{r['task']} (median chosen {r['chosen median']} against rejected "
                                 f"{r['rejected median']} tokens)" for r in skew)
                     + ": a model can score well there by preferring the shorter (or longer) response, "
                       "which is not the task's preference.")
    write("length_note.md", " ".join(parts) or "No task's responses are mostly cut, and no task's chosen and "
                                                "rejected responses differ in length by 2x or more.")


def write_coverage(results):
    """One sentence per experiment group: how many of the grid's runs the report had, which are missing."""
    for r in report.read_csv(results / "report" / "coverage.csv"):
        present, expected = (int(x) for x in r["runs"].split(" of "))
        if expected == 0:
            text = f"The profile's `{r['group']}` group has no runs (params.yaml lists none)."
        elif present == expected:
            text = f"All {expected} runs of the profile's `{r['group']}` group are in these results."
        else:
            text = (f"**{present} of the {expected} runs** of the profile's `{r['group']}` group are in these "
                    f"results; missing: {', '.join(f'`{m}`' for m in r['missing'].split(', '))}. "
                    f"`python -m lifealign.pipeline run {r['group']}` (or `dvc repro`) computes them.")
        if r.get("stale", "none") != "none":
            text += f" Runs `dvc repro` would rerun: {r['stale']}."
        write(f"coverage_{r['group']}.md", text)


def write_observations(results):
    """Facts of the runs worth a sentence: tasks on which the base model's log-likelihood preference
    accuracy is extreme (it needs no reference, so the base row says what the model prefers untrained)."""
    base = {}
    for path in sorted((results / "matrix").glob("*/results.json")):
        res = json.loads(path.read_text())
        m = res["metrics"].get("loglik_accuracy")
        if m and m.get("base"):
            for task, v in zip(res["order"], m["base"]):
                if v is not None:
                    base.setdefault(task, v)
    extreme = {t: v for t, v in base.items() if v <= 10 or v >= 90}
    write("loglik_note.md", (
        "Untrained, the model's own length-normalised log-likelihood already decides some tasks: "
        + ", ".join(f"{short(t)} {v:.0f}%" for t, v in extreme.items())
        + " of pairs favour the chosen response before any training. On such a task log-likelihood accuracy "
          "measures the responses' style"
        + (" (HC3's rejected responses are ChatGPT's fluent answers, its chosen ones human answers)"
           if "HC3" in extreme else "")
        + ", and training barely moves it; implicit-reward accuracy, measured against the base model, has no "
          "such floor." if extreme else
        "No task's base log-likelihood accuracy is extreme (below 10% or above 90%)."))


def write_run_gallery():
    """Every metric's matrix of each seed-0 run of the main grid (the report's figures/runs/), in a
    dropdown that starts closed: eleven large figures would bury the chapter."""
    order = {m: i for i, m in enumerate(report.MAIN_METHODS)}
    runs = [(p.stem.split("-order")[0], p.stem) for p in (GEN / "report" / "figures" / "runs").glob("*.png")]
    lines = []
    for method, run in sorted(runs, key=lambda mr: (order.get(mr[0], len(order)), mr[1])):
        lines += [f"```{{figure}} /_generated/report/figures/runs/{run}.png", f":name: run-{run}", ":width: 100%", "",
                  f"{report.LABELS.get(method, method)} (`{run}`): every metric's matrix, row = after training on "
                  f"(base first), column = evaluated task.", "```", ""]
    if not lines:
        write("run_gallery.md", "The profile has no seed-0 run in its matrix group.")
        return
    write("run_gallery.md", "\n".join([f":::{{dropdown}} Every seed-0 run of the main grid ({len(runs)} figures)", ""]
                                      + lines + [":::"]))


# ---------------------------------------------------------------- the verdicts: page one and the claims
VERDICT_METRICS = ("reward_accuracy", "bleu4", "rougel", "judge")
# sphinx-design badge colours by verdict word
BADGES = {report.CONFIRMED: "success", report.REFUTED: "danger", report.INCONCLUSIVE: "warning"}
# Which page's experiment each claim rests on (the claim's verdict closes that page).
CLAIM_PAGES = {0: "results", 1: "tasks", 2: "results", 3: "ablation", 4: "orders", 5: None, 6: "sensitivity"}


def verdict_word(verdict):
    """The short word of a verdict cell: confirmed, refuted, inconclusive, not yet run or not tested."""
    if verdict == report.INCONCLUSIVE:
        return "inconclusive"
    if verdict.startswith("not yet run"):
        return "not yet run"
    return verdict


def badge(verdict, target):
    colour = BADGES.get(verdict, "muted")
    return f"{{bdg-ref-{colour}}}`{verdict_word(verdict)} <{target}>`"


def verdict_tables(results):
    """{metric: verdict rows} for every metric the report judged (verdicts.csv is implicit-reward accuracy)."""
    tables = {"reward_accuracy": results / "report" / "verdicts.csv"}
    tables.update({m: results / "report" / f"verdicts_{m}.csv" for m in ("bleu4", "rougel", "judge")})
    return {m: report.read_csv(path) for m, path in tables.items() if path.exists()}


def target(claim, metric):
    return f"verdict-{claim + 1}-{metric.replace('_', '-')}"


def cell(verdicts, claim, metric):
    rows = verdicts.get(metric)
    return rows[claim]["verdict"] if rows else "not tested"


def write_verdicts(results, cfg):
    """The verdict grid of page one, each claim's evidence on the verdicts page, a claim's verdict at the
    end of its experiment's page, and the three sentences that answer the reader's question."""
    verdicts = verdict_tables(results)
    names = {m: report.METRIC_SHORT[m] for m in VERDICT_METRICS}
    claims = report.CLAIMS

    # The grid: claims x metrics, each cell a coloured link to its evidence.
    grid = [{"claim": f"{i + 1}. {claim}", **{names[m]: badge(cell(verdicts, i, m), target(i, m))
                                              for m in VERDICT_METRICS}} for i, claim in enumerate(claims)]
    write("verdict_grid.md", md_table(grid, ["claim"] + list(names.values())))

    # Each claim with the paper's numbers and, per metric, our verdict and its comparisons.
    paper = paper_claim_items()
    parts = []
    for i, claim in enumerate(claims):
        parts += [f"({f'claim-{i + 1}'})=", f"### {i + 1}. {claim}", "", f"The paper: {paper_text(paper[i])}", ""]
        for m in VERDICT_METRICS:
            parts += [f"({target(i, m)})=", ""]
            rows = verdicts.get(m)
            if not rows:
                parts += [f"**{report.METRIC_NAMES[m]}**: {badge('not tested', target(i, m))} "
                          + ("the runs have no LLM judge scores (see {doc}`setup`)." if m == "judge"
                             else "the runs have no scores on this metric."), ""]
                continue
            row = rows[i]
            items = report.evidence_items(row)
            parts += [f"**{report.METRIC_NAMES[m]}**: {badge(row['verdict'], target(i, m))}"
                      + (f" (seeds: {row['seeds']})" if row["seeds"] not in ("", "–") else ""), ""]
            if row["verdict"].startswith("not yet run"):
                parts += [f"Missing: {row['verdict'].split('missing: ', 1)[-1].rstrip(')')}.", ""]
            parts += [f"- {e}" for e in items] + [""]
    write("verdict_claims.md", "\n".join(parts))

    # The end of each experiment page: its claims' verdicts on every metric.
    for page in {p for p in CLAIM_PAGES.values() if p}:
        rows = [{"claim": f"{{ref}}`{i + 1}. {claims[i]} <claim-{i + 1}>`",
                 **{names[m]: badge(cell(verdicts, i, m), target(i, m)) for m in VERDICT_METRICS}}
                for i, p in CLAIM_PAGES.items() if p == page]
        write(f"claim_{page}.md", md_table(rows, ["claim"] + list(names.values())))

    # The answer in three sentences: what reproduced, what did not, why the rest is undecided.
    def by_claim(word):
        found = {}
        for m, rows in verdicts.items():
            for i, r in enumerate(rows):
                if r["verdict"] == word:
                    found.setdefault(i, []).append(m)
        return found

    def listed(found):
        return "; ".join(f"{claims[i]} (claim {i + 1}, on "
                         f"{' and '.join(report.METRIC_NAMES[m] for m in ms)})" for i, ms in sorted(found.items()))

    confirmed, refuted = by_claim(report.CONFIRMED), by_claim(report.REFUTED)
    sentences = [("**Reproduced:** " + listed(confirmed) + ".") if confirmed else
                 "**Reproduced:** no claim is confirmed beyond the noise at this scale."]
    if refuted:
        against = []
        for i, ms in sorted(refuted.items()):
            for m in ms:
                against += [f"{e} on {report.METRIC_NAMES[m]}" for e in report.evidence_items(verdicts[m][i])
                            if e.endswith(", lower)") or e.endswith(": above zero)")][:2]
        sentences.append("**Not reproduced:** " + listed(refuted)
                         + (f": against it, {'; '.join(against[:2])}." if against else "."))
    else:
        sentences.append("**Not reproduced:** no claim is refuted beyond the noise.")
    sentences.append("**Undecided, and why:** " + undecided_reason(results))
    write("answer.md", "\n\n".join(sentences))


def undecided_reason(results):
    """Why most verdicts are inconclusive here: how many tasks the model learns, and whether SeqFT
    forgets on implicit-reward accuracy."""
    learned = report.read_csv(results / "report" / "learned.csv")
    column = next((c for c in (learned[0] if learned else {}) if c.startswith("learned")), None)
    got = [r["task"] for r in learned if column and r[column] != "none"]
    numbers = json.loads((results / "report" / "numbers.json").read_text())
    seqft = (numbers.get("seqft_bwt_by_metric") or {}).get("reward_accuracy")
    parts = []
    if learned:
        parts.append(f"the small model learns only {len(got)} of the {len(learned)} tasks "
                     f"({', '.join(got) or 'none'}: above chance beyond two standard errors right after their "
                     f"training), so most tasks have nothing to forget" if len(got) < len(learned) else
                     f"the model learns all {len(learned)} tasks")
    if seqft:
        forgets = seqft["test"] == "below"
        parts.append(f"plain sequential training (SeqFT) {'does' if forgets else 'does not'} forget on "
                     f"implicit-reward accuracy (BWT {report.fmt_stats(seqft)} over {seqft['n']} seeds, "
                     f"{report.zero_text(seqft['test'])})"
                     + ("" if forgets else ", so a method has little forgetting to prevent"))
    counts = sorted({int(r) for r in seed_counts(results).values()})
    if counts:
        spread = f"{counts[0]} to {counts[-1]}" if len(counts) > 1 else f"{counts[0]}"
        parts.append(f"and with {spread} seeds per method, only large differences pass the test")
    return "; ".join(parts)[:1].upper() + "; ".join(parts)[1:] + "." if parts else "no runs yet."


def paper_text(item):
    """A paper claim item as a sentence: "the ranking holds ...;" -> "The ranking holds ..."."""
    text = item.rstrip(";.")
    text = text[4:] if text.startswith("and ") else text
    return text[0].upper() + text[1:] + "."


def write_setting(results, cfg):
    """Page one's "what was run": the compute, what differs from the paper, and which code made the runs."""
    model = json.loads((results / "model.json").read_text())
    stats_ = json.loads((results / "data" / "stats.json").read_text())
    numbers = json.loads((results / "report" / "numbers.json").read_text())
    total = next((r for r in report.read_csv(results / "report" / "compute.csv") if r["group"] == "all"), None)
    dropped = [d["task"] for d in stats_.get("dropped") or []]
    lines = [
        f"- **Compute:** {total['runs']} runs, {float(total['hours']):.1f} hours of run time on CPU (each run's "
        f"training, consolidation and evaluation, summed; runs that shared the machine count in full)."
        if total else "- **Compute:** no run yet.",
        f"- **Model:** {model['name']} ({params_text(model)} parameters) instead of the paper's Qwen2.5-7B-Instruct "
        f"(and Mistral-7B, Llama-3-8B).",
        f"- **Data:** {cfg.data.n_train or 'all'} training and {cfg.data.n_test or 'all'} test pairs per task instead "
        f"of every pair of the release.",
        (f"- **Tasks:** {len(stats_['tasks'])} of the paper's 6: "
         + ", ".join(f"{d} is missing (its files are not in this copy of the data release)" for d in dropped) + "."
         if dropped else f"- **Tasks:** all {len(stats_['tasks'])} of the paper's tasks."),
        "- **Judge:** " + ("an LLM judge of our own." if cfg.eval.judge else
                           "no LLM judge by default (the paper's third metric); implicit-reward accuracy and the "
                           "paper's BLEU-4 and ROUGE-L instead."),
        "- **Seeds:** " + ", ".join(f"{report.LABELS.get(m, m)} {n}" for m, n in sorted(
            seed_counts(results).items(), key=lambda mn: (-mn[1], report.MAIN_METHODS.index(mn[0])
                                                         if mn[0] in report.MAIN_METHODS else 99)))
        + " (the paper: one seed each).",
    ]
    versions, now = numbers.get("run_code_versions") or {}, numbers.get("run_code_version_now")
    older = {v: n for v, n in versions.items() if v != str(now)}
    if older:
        what = run_code_change(now)
        runs = sum(versions.values())
        made = (f"all {runs} runs were made by version {next(iter(older))} of the run code" if older == versions else
                f"of the {runs} runs, " + ", ".join(f"{n} were made by version {v}" for v, n in older.items())
                + " of the run code")
        lines.append(f"- **Code version:** {made}; the code is now at version {now}"
                     f"{f' (changed: {what})' if what else ''}. The numbers are those of the runs as they were "
                     f"made; `dvc repro` reruns them with the current code.")
    write("setting.md", "\n".join(lines))


def run_code_change(version):
    """What a run-code version changed, from the version list in lifealign.run_code's docstring."""
    from lifealign import run_code

    for line in (run_code.__doc__ or "").splitlines():
        if line.strip().startswith(f"{version} "):
            text = line.strip()[len(str(version)):].strip()
            return text.rstrip(".")
    return ""


def write_statistics_key(results):
    """The verdicts page's key: what ± and se are, which test, how many seeds."""
    numbers = json.loads((results / "report" / "numbers.json").read_text())
    seeds = ", ".join(f"{report.LABELS.get(m, m)} {n}" for m, n in sorted(
        seed_counts(results).items(), key=lambda mn: report.MAIN_METHODS.index(mn[0]) if mn[0] in report.MAIN_METHODS else 99))
    sd, dof = numbers.get("pooled_sd_bwt"), numbers.get("pooled_sd_bwt_dof")
    write("statistics_key.md", "\n".join([
        "| notation | meaning |", "|---|---|",
        "| 69.06 ± 0.28 | mean ± sample standard deviation over the seeds (no ± with one seed) |",
        "| +2.28 (se 0.56, within noise) | a difference of two means and its standard error; the word is the test's "
        "outcome |",
        "| 95% CI half-width 2.24 | half the width of a 95% confidence interval of a mean |",
        "| test | Welch's t-test at 95%, two-sided; one-sample t-test against zero for \"does it forget\" |",
        f"| seeds | each table's seeds column; order1's main grid has {seeds} |",
        "| one seed | borrows the seed spread pooled over the multi-seed methods"
        + (f" (BWT: sd {sd:.2f}, {dof} degrees of freedom)" if sd is not None else "") + " |",
        "| error bars | in figures, the seeds' standard deviation |",
        "| paper | one seed, no interval; values read off its plots are good to about 0.05 |",
    ]))


def write_split_tables(results):
    """Each long report table (one row per ... and metric) as one narrower table per metric."""
    for name in ("main_table", "judge_free", "ablation", "orders", "sensitivity"):
        rows = report.read_csv(results / "report" / f"{name}.csv")
        text = report.markdown_by_metric(rows, list(rows[0])) if rows else "(no runs yet)\n"
        write(f"{name}_split.md", text)


# ---------------------------------------------------------------- performance (benchmarks/results)
def write_performance():
    docs = {}
    for name in BENCHMARKS:
        path = ROOT / "benchmarks" / "results" / f"{name}.json"
        docs[name] = json.loads(path.read_text()) if path.exists() else None

    def missing(name):
        return (f"`benchmarks/results/{name}.json` is not there yet: run `{BENCH_COMMANDS[name]}` on an idle "
                f"machine, then `make book`.\n")

    def smoke_note(doc):
        return ("\n*Measured with `--smoke` (the tiny random model): these numbers only show that the script "
                "runs.*\n" if doc["args"].get("smoke") else "")

    def workload(doc):
        a, d = doc["args"], doc.get("data", {})
        return (f"{doc['model']['name']} ({doc['model']['params'] / 1e6:.1f} M parameters), {d.get('pairs')} pairs "
                f"of {d.get('source')}, batch {a.get('batch')}, max_length {a.get('max_length')} "
                f"(prompt {a.get('max_prompt_length')}), on {doc.get('device', 'cpu')}.")

    def machine(m):
        return (f"{m.get('cpu')}, {m.get('cores')} cores ({m.get('torch_threads')} torch threads), bf16 "
                f"instructions: {', '.join(m.get('cpu_bf16') or []) or 'none'}, GPU: {m.get('cuda') or 'none'}, "
                f"Python {m.get('python')}, torch {(m.get('versions') or {}).get('torch')}")

    ran = {name: doc for name, doc in docs.items() if doc}
    if ran:
        machines = {machine(doc["machine"]) for doc in ran.values()}
        rows = [{"benchmark": f"`{name}`", "measured": doc["machine"].get("time"),
                 "peak RSS MB": num(doc["machine"].get("peak_rss_mb"), 0),
                 **({} if len(machines) == 1 else {"machine": machine(doc["machine"])})} for name, doc in ran.items()]
        text = (f"Every benchmark ran on: {machines.pop()}.\n\n" if len(machines) == 1 else "") + md_table(rows, list(rows[0]))
    else:
        text = "No benchmark has been run yet (`benchmarks/results/` is empty)."
    write("perf_machine.md", text)

    doc = docs["preference_throughput"]
    if doc:
        res = doc["results"]
        best = res.get("ours", next(iter(res.values())))["tokens_per_s"]
        rows = [{"config": k, "precision": r["precision"], "reference": r["reference"],
                 "tokens": f"{r['tokens']:,}", "prepare s": num(r.get("prepare_s"), 1),
                 "reference s": num(r.get("reference_s"), 1), "train s": num(r.get("train_s"), 1),
                 "total s": num(r["seconds"], 1), "tokens/s": num(r["tokens_per_s"], 0),
                 "ours / this": num(best / r["tokens_per_s"])} for k, r in res.items()]
        goals = [f"- ours / TRL {k[7:].replace('_', ' ')}: "
                 + (f"**{v:.2f}x**" if (v := doc["ratios"].get(k)) is not None else "not measured")
                 + f" (goal ≥ {g:g}x" + ("" if v is None or doc["args"].get("smoke") else
                                          f": {'met' if v >= g else 'not met'}") + ")"
                 for k, g in doc["goals"].items()]
        text = workload(doc) + "\n\n" + md_table(rows, list(rows[0])) + "\n" + "\n".join(goals) + "\n" + smoke_note(doc)
    else:
        text = missing("preference_throughput")
    write("perf_preference.md", text)

    doc = docs["eval_throughput"]
    if doc:
        fwd = [{"precision": r["precision"], "layout": r["layout"], "pairs": r["pairs"], "tokens": f"{r['tokens']:,}",
                "seconds": num(r["seconds"], 1), "tokens/s": num(r["tokens_per_s"], 0)} for r in doc["forward"].values()]
        gen = [{"batch size": r["batch_size"], "prompts": r["prompts"], "precision": r["precision"],
                "generated tokens": r["generated_tokens"], "seconds": num(r["seconds"], 1),
                "tokens/s": num(r["tokens_per_s"], 1)} for r in doc["generation"].values()]
        goal = doc["goals"]["forward_tokens_per_s"]
        top = max((r["tokens_per_s"] for r in doc["forward"].values()), default=None)
        text = (workload(doc) + "\n\nPreference-scoring forward (what reward and log-likelihood accuracy need):\n\n"
                + md_table(fwd, list(fwd[0])) + f"\nBest: {num(top, 0)} tokens/s (goal ≥ {goal:,.0f}"
                + ("" if top is None or doc["args"].get("smoke") else f": {'met' if top >= goal else 'not met'}")
                + ").\n\nGreedy generation (what BLEU-4 and ROUGE-L need):\n\n" + md_table(gen, list(gen[0]))
                + smoke_note(doc))
    else:
        text = missing("eval_throughput")
    write("perf_eval.md", text)

    doc = docs["hardware_limit"]
    if doc:
        mm = [{"dtype": r["dtype"], "n": r["n"], "GFLOP/s": num(r["gflops"], 1)} for r in doc["matmul"]]
        ach = [{"what": r["what"], "config": r["config"], "precision": r["precision"],
                "tokens/s": num(r["tokens_per_s"], 0), "GFLOP/s": num(r["gflops"], 1),
                "share of peak %": num(r["share_pct"], 1)} for r in doc["achieved"]]
        f = doc["formulas"]
        text = ("Best large square matmuls (the practical peak):\n\n" + md_table(mm, list(mm[0]))
                + f"\nModel FLOPs per second reached (N = {f['N']}: training {f['training']}, evaluation "
                f"{f['eval_forward']}, generation {f['generation']}):\n\n"
                + (md_table(ach, list(ach[0])) if ach else "(no throughput JSON was given with `--from`)\n")
                + smoke_note(doc))
    else:
        text = missing("hardware_limit")
    write("perf_hardware.md", text)

    doc = docs["machinery_cost"]
    if doc:
        syn = doc["synthetic"]
        stages = [{"task": s["task"], "stage": s["stage"], "SLMC s": num(s["slmc_s"], 4),
                   "history MiB": num(s["history_mb"], 3), "mean kept rank": num(s["mean_kept_rank"])}
                  for s in syn["stages"]]
        mib = [{"after task": r["task"], **{k: num(v / 2**20, 3) for k, v in r.items() if k != "task"}}
               for r in syn["state_bytes"]]
        text = (f"SLMC's stage end on the model's {syn['lora_matrices']} real LoRA matrices "
                f"({num(syn['lora_bytes'] / 2**20, 2)} MiB), {len(syn['state_bytes'])} synthetic tasks:\n\n"
                + md_table(stages, list(stages[0])) + "\nPersistent state of each method after each task, MiB:\n\n"
                + md_table(mib, list(mib[0])))
        run = doc.get("run")
        if run:
            rs = [{"task": s["task"], "name": s["name"], "stage": s["stage"], "train s": num(s["train_s"], 1),
                   "stage-end hooks s": num(s["plugin_s"], 3), "share %": num(s["share_pct"], 3)} for s in run["stages"]]
            goal = 100 * doc["goals"]["slmc_share_of_stage"]
            text += (f"\nThe real run `{Path(run['dir']).name}`: the stage-end hooks (SLMC) against the stage's training "
                     f"time. Largest share {num(run['max_share_pct'], 3)}% (goal < {goal:g}%).\n\n"
                     + md_table(rs, list(rs[0])))
        text += smoke_note(doc)
    else:
        text = missing("machinery_cost")
    write("perf_machinery.md", text)

    doc = docs["parallel_workers"]
    if doc:
        a = doc["args"]
        rows = [{"benchmark": f"`{name}`", "part": part, "one process tokens/s": num(v["one_process_tokens_per_s"], 0),
                 f"{r['parallel']['processes']} processes tokens/s": num(v["parallel_tokens_per_s"], 0),
                 "ratio": num(v["parallel_tokens_per_s"] / v["one_process_tokens_per_s"], 2)}
                for name, r in doc["results"].items() for part, v in r["parts"].items()]
        walls = "; ".join(f"`{name}` {num(r['work_per_hour_ratio'], 2)} (one process {num(r['one_process']['wall_s'], 0)} s, "
                          f"{r['parallel']['processes']} at once {num(max(r['parallel']['wall_s']), 0)} s)"
                          for name, r in doc["results"].items())
        any_run = next(iter(doc["results"].values()))
        text = (f"{a['model']}, {a['pairs']} pairs of {a['task']}, on {doc['cores']} cores: one process with "
                f"{any_run['one_process']['threads']} torch threads against {any_run['parallel']['processes']} "
                f"processes at once with {any_run['parallel']['threads_each']} each.\n\n" + md_table(rows, list(rows[0]))
                + f"\nWork per hour of the parallel layout relative to one process: {walls}.\n" + smoke_note(doc))
    else:
        text = missing("parallel_workers")
    write("perf_parallel.md", text)

    for name, command in BENCH_PAGES.items():
        page = ROOT / "benchmarks" / "results" / f"{name}.md"
        write(f"perf_{name}.md", page.read_text() if page.exists() else
              f"`benchmarks/results/{name}.md` is not there yet: run `{command}`, then `make book`.\n")


# ---------------------------------------------------------------- calibration (benchmarks/calibration.py)
def write_calibration():
    """Does SeqFT forget at the cpu scale? The probes' matrices, condensed to one row per probe."""
    path = ROOT / "benchmarks" / "results" / "calibration.json"
    if not path.exists():
        write("calibration.md", "`benchmarks/results/calibration.json` is not there yet: run "
                                "`.venv/bin/python benchmarks/calibration.py` (hours on two cores), then `make book`.\n")
        return
    probes = json.loads(path.read_text())["probes"].values()
    rows = []
    for pr in probes:
        cells = "; ".join(f"{short(t['task'])} {t['diagonal']:.0f} (se {t['diagonal_se']:.0f}) → {t['final']:.0f}"
                          for t in pr["tasks"])
        rows.append({"probe": f"`{pr['probe']}`", "what changes": pr["what"],
                     "pairs (train / test)": f"{pr['n_train']} / {pr['n_test']}",
                     "BWT": report.fmt(pr["bwt"], signed=True), "largest drop": report.fmt(pr["largest_drop"], signed=True),
                     "each task: after its training (se) → at the end": cells})
    write("calibration.md", md_table(rows, list(rows[0])))


# ---------------------------------------------------------------- step 3: build
def jupyter_book():
    exe = Path(sys.executable).parent / "jupyter-book"
    if exe.exists():
        return [str(exe)]
    found = shutil.which("jupyter-book")
    if not found:
        raise BookError("error: jupyter-book is not installed: `make install` (the book extra) installs it")
    return [found]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--profile", default=None, help="default: $LIFEALIGN_PROFILE or params.yaml's profile")
    p.add_argument("--no-build", action="store_true", help="only write _generated/ and notebooks/")
    p.add_argument("--sync-notebooks", action="store_true",
                   help="point notebooks/*.ipynb's Colab badges and clone cells at book/_config.yml's repository.url")
    args = p.parse_args(argv)
    if args.sync_notebooks:
        changed = sync_notebooks()
        print("updated: " + ", ".join(map(str, changed)) if changed else "the notebooks already point at "
              + repository()[0])
        return
    t0 = time.time()
    params = load_params(ROOT / "params.yaml")
    try:
        profile, _ = active_profile(params, args.profile)
    except ConfigError as err:
        raise BookError(f"error: {err}") from None
    results = ROOT / "results" / profile
    experiment = check(results)
    cfg = load_config(ROOT / "configs" / f"{profile}.yaml")
    copy_results(results, experiment)
    write_profile(profile, params, cfg, results, experiment)
    write_paper_tables()
    write_split_tables(results)
    write_numbers(results)
    write_verdicts(results, cfg)
    write_setting(results, cfg)
    write_statistics_key(results)
    write_coverage(results)
    write_observations(results)
    write_length_note(results, cfg)
    write_run_gallery()
    write_performance()
    write_calibration()
    print(f"book: profile {profile}, sources ready in {time.time() - t0:.1f} s", flush=True)
    if args.no_build:
        return
    # --all: a clean read of every page, so a warning of an unchanged page is never hidden by the cache.
    cmd = jupyter_book() + ["build", str(BOOK), "-W", "-n", "--keep-going", "--all"]
    proc = subprocess.run(cmd, cwd=ROOT)
    if proc.returncode != 0:
        raise BookError(f"error: the book build failed (exit {proc.returncode}); see the warnings above")
    print(f"book built in {time.time() - t0:.0f} s: open {(BOOK / '_build' / 'html' / 'index.html').relative_to(ROOT)}")


if __name__ == "__main__":
    main()

"""Build the book for one profile's committed results.

    python book/build.py                   # params.yaml's profile (or $LIFEALIGN_PROFILE)
    python book/build.py --profile smoke   # another profile that has results
    make book [PROFILE=smoke]              # the same, from the project's environment

The book renders what the pipeline wrote and runs no experiment. This script
1. copies results/<profile>/ (report, data and method tables and figures, the executed notebooks)
   into book/_generated/ and book/notebooks/ (both ignored by git), failing with the name of the
   first missing file when the profile has no report yet;
2. renders the blocks of book/parts.md.j2 (the sentences the pages include, from the report's
   numbers.json, the paper's numbers and the profile's config) into _generated/<block>.md, writes
   the tables of the profiles and of the paper, and copies each benchmark's own markdown
   (benchmarks/results/<name>.md);
3. runs `jupyter-book build book -W -n --keep-going --all`: any warning fails the build.
"""
import argparse
import json
import re
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from urllib.parse import urlparse

import jinja2
import yaml

BOOK = Path(__file__).resolve().parent
ROOT = BOOK.parent
GEN = BOOK / "_generated"
NOTEBOOKS = BOOK / "notebooks"
sys.path.insert(0, str(ROOT / "src"))  # the book builds from a checkout, installed or not

from lifealign import report, runs, verdicts  # noqa: E402
from lifealign.config import ConfigError, load_config  # noqa: E402
from lifealign.data import DERIVED_TEST_FRACTION, ORDERS, TASKS, short_name as short  # noqa: E402
from lifealign.metrics import summarize  # noqa: E402
from lifealign.pipeline import GROUPS, active_profile, grid, load_params  # noqa: E402

# Every file of results/<profile>/ a page shows. The pipeline's stages write them: model (model.json),
# data-stats (data/, notebooks/data.ipynb), method (method/, notebooks/method.ipynb) and report.
REQUIRED = [f"report/{name}.md" for name in ("main_table", "judge_free", "ablation", "orders", "sensitivity",
                                             "compute", "learned", "power")] + [
    "report/numbers.json", "report/figures/heatmaps.png", "report/figures/forgetting.png",
    "report/figures/orders.png", "report/figures/sensitivity.png",
    "data/sizes.md", "data/lengths.md", "data/prompt_overlap.md", "data/lengths.png", "data/stats.json",
    "method/focal.png", "method/slmc_stages.md", "method/principal_angles.md", "method/principal_angles.png",
    "notebooks/data.ipynb", "notebooks/method.ipynb", "notebooks/report.ipynb", "model.json",
]
# Each benchmark writes its own page beside its JSON (benchmarks/results/<name>.md); the command that does.
BENCHMARKS = {
    "whole_run": ".venv/bin/python benchmarks/whole_run.py",
    "generation_speed": ".venv/bin/python benchmarks/generation_speed.py",
    "stage_profile": ".venv/bin/python benchmarks/stage_profile.py",
    "gpu_check": "bash benchmarks/gpu_check.sh (on a GPU machine)",
    "preference_throughput": ".venv/bin/python benchmarks/preference_throughput.py",
    "eval_throughput": ".venv/bin/python benchmarks/eval_throughput.py",
    "hardware_limit": ".venv/bin/python benchmarks/hardware_limit.py --from "
                      "benchmarks/results/preference_throughput.json benchmarks/results/eval_throughput.json",
    "machinery_cost": ".venv/bin/python benchmarks/machinery_cost.py --run runs/lifealign-cpu",
    "parallel_workers": ".venv/bin/python benchmarks/parallel_workers.py",
    "calibration": ".venv/bin/python benchmarks/calibration.py (hours on two cores)",
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


def write(name, text):
    path = GEN / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text.strip("\n") + "\n")


def fmt(value, spec=".2f"):
    return "–" if value is None else format(float(value), spec)


def read_json(path):
    return json.loads(Path(path).read_text())


# ---------------------------------------------------------------- step 1: copy the results
def check(results):
    missing = [rel for rel in REQUIRED if not (results / rel).is_file()]
    if missing:
        more = f" (and {len(missing) - 1} more of the files the book shows)" if len(missing) > 1 else ""
        raise BookError(f"error: {results.relative_to(ROOT) / missing[0]} is missing{more}, so the book cannot show "
                        f"profile {results.name}: produce its results first (`make reproduce PROFILE={results.name}`, "
                        f"or `dvc repro` with that profile active), or build another profile that has them "
                        f"(`make book PROFILE=...`)")
    n = read_json(results / "report" / "numbers.json")
    counted, current = set(n.get("counted", [])), {f"{r.group}/{r.id}" for r in runs.load_runs(results)}
    if not counted <= current or current - counted - set(n.get("left_out", {})):
        raise BookError(f"error: {results.relative_to(ROOT)}/report counts {len(counted)} runs, but {len(current)} runs "
                        f"made by the current run code are there now: rerun the report (`dvc repro report`, or "
                        f"`python -m lifealign.pipeline notebook report`) first")
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
    NOTEBOOKS.mkdir()
    # The executed notebooks, their Colab badge (vendored image: the book works offline) and clone cell
    # pointing at book/_config.yml's repository.
    sources = {name: results / "notebooks" / f"{name}.ipynb" for name in ("data", "method", "report")}
    for name, source in dict(sources, experiment=experiment).items():
        (NOTEBOOKS / f"{name}.ipynb").write_text(with_links(source.read_text(), name, "/_static/colab-badge.svg"))
    for name, command in BENCHMARKS.items():  # each benchmark's own page, or how to make it
        page = ROOT / "benchmarks" / "results" / f"{name}.md"
        write(f"perf_{name}.md", page.read_text() if page.exists() else
              f"`benchmarks/results/{name}.md` is not there yet: run `{command}` on an idle machine, then `make book`.")


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


# ---------------------------------------------------------------- step 2: the tables no notebook writes
def params_text(model):
    n = model["parameters"]
    return f"{n / 1e9:.1f} B" if n >= 1e9 else f"{n / 1e6:.1f} M" if n >= 1e6 else f"{n:,}"


def stage_text(stage):
    batch = stage.batch_size * stage.grad_accum
    return f"{stage.epochs:g} epoch{'s' * (stage.epochs != 1)}, lr {stage.lr:g}, batch {batch}"


def setup(c, dropped=()):
    """The rows of the profiles table and of "what differs" for one run config."""
    tasks = ORDERS[c.data.order] if isinstance(c.data.order, str) else list(c.data.order)
    name = c.data.order if isinstance(c.data.order, str) else "custom"
    gone = [short(t) for t in tasks if t in dropped]
    how = f"sampled (temperature {c.eval.temperature:g}, top-p {c.eval.top_p:g})" if c.eval.sampling else "greedy"
    prompts = "every" if c.eval.gen_prompts is None else f"the first {c.eval.gen_prompts}"
    return {"model": c.model.name,
            "tasks": f"{name}: {len(tasks) - len(gone)} of {len(tasks)} tasks"
                     + (f" ({', '.join(gone)} has no data)" if gone else ""),
            "LoRA": f"rank {c.model.lora_r}, alpha {c.model.lora_alpha:g} on {', '.join(c.model.lora_targets)}",
            "beta / gamma / theta / lambda": f"{c.method.beta:g} / {c.method.gamma:g} / {c.method.slmc_threshold:g} / "
                                             f"{c.method.slmc_lambda:g}",
            "pairs per task (train / test)": f"{c.data.n_train or 'all'} / {c.data.n_test or 'all'}",
            "max length (prompt)": f"{c.model.max_length} ({c.model.max_prompt_length})",
            "SFT stage": stage_text(c.sft), "preference stage": stage_text(c.pref),
            "generation": f"{how}, {c.eval.gen_prompts or 'all'} prompts a task" if c.eval.generation else "none",
            "decoding": (f"{how}, up to {c.eval.max_new_tokens} new tokens, on {prompts} test prompts of each task"
                         if c.eval.generation else "none (judge-free scores only)"),
            "judge": (f"LLM judge {c.eval.judge_model or '(model from $LIFEALIGN_JUDGE_MODEL)'}" if c.eval.judge else
                      "none: judge-free preference scores instead (implicit-reward and log-likelihood accuracy)")}


def write_tables(profile, params, cfg, model, stats, n):
    """Every profile of params.yaml (a column each), what differs from the paper, the tasks, the
    paper's tables (paper/*.csv) and its judge matrix recomputed with our summaries."""
    dropped, columns = {d["task"] for d in stats.get("dropped") or []}, {}
    for name, prof in params["profiles"].items():
        if (ROOT / "configs" / f"{name}.yaml").exists():
            counts = {g: len(grid(prof, g)) for g in GROUPS}
            columns[f"**{name}** (shown)" if name == profile else name] = dict(
                setup(load_config(ROOT / "configs" / f"{name}.yaml"), dropped),
                runs=f"{sum(counts.values())}: " + ", ".join(f"{g} {k}" for g, k in counts.items() if k),
                **{"results here": "yes" if (ROOT / "results" / name / "report").is_dir() else "no"})
    keys = [k for k in next(iter(columns.values())) if k not in ("decoding", "judge")]
    write("profiles.md", report.markdown([{"": k, **{p: v[k] for p, v in columns.items()}} for k in keys]))
    ours = dict(setup(cfg, dropped), backbone=f"{model['name']} ({params_text(model)} parameters)",
                seeds=", ".join(f"{m} {k}" for m, k in n["seeds"].items()) or "no current run",
                **{"pairs per task": f"{cfg.data.n_train or 'all'} train / {cfg.data.n_test or 'all'} test",
                   "max length (prompt)": f"{cfg.model.max_length} ({cfg.model.max_prompt_length}) tokens",
                   "tasks": f"{len(stats['tasks'])}: " + ", ".join(stats["tasks"])})
    write("differences.md", report.markdown([{"": k, "paper": v, f"this book ({profile})": ours[k]}
                                             for k, v in PAPER_SETUP.items()]))
    sizes = {r["task"]: r for r in stats["sizes"]}
    write("tasks.md", report.markdown([{"": f"T{i}", "task": name, "preference": task.description,
                                        "train / test available": f"{s['train']} / {s['test']}" if s else "no data here",
                                        "split from test": s["split from test"] if s else "–"}
                                       for i, (name, task) in enumerate(TASKS.items(), 1)
                                       for s in [sizes.get(task.short)]]))
    paper = {p.stem: report.read_csv(p) for p in (ROOT / "paper").glob("*.csv")}
    names = {"bleu4": "BLEU-4", "rougel": "ROUGE-L", "judge": "Judge", "avg": "AVG"}
    table1 = [{"method": r["method"], **{f"{names[m]} {report.KEY_LABELS[k]}": r[f"{m}_{k}"] or "–" for m in names
                                          for k in report.SUMMARY_KEYS}} for r in paper["main_table_qwen_order1"]]
    write("paper_table1.md", "\n".join(report.markdown([{c: r[c] for c in list(r)[:1] + list(r)[1 + 6 * h:7 + 6 * h]}
                                                        for r in table1]) for h in (0, 1)))  # two narrow tables
    for name, csv_name in (("ablation", "ablation_qwen_order1"), ("lambda", "lambda_sweep_qwen_order1"),
                           ("orders", "task_orders_qwen")):
        write(f"paper_{name}.md", report.markdown(paper[csv_name]))
    matrix = paper["judge_matrix_lifealign_order1"]
    write("paper_judge_matrix.md", report.markdown([{"after task": short(r["after_task"]), **{
        short(t): v for t, v in r.items() if t != "after_task"}} for r in matrix]))
    recomputed = summarize([[float(v) if v else None for t, v in r.items() if t != "after_task"] for r in matrix])
    table1 = next(r for r in paper["main_table_qwen_order1"] if r["method"] == "LifeAlign")
    write("judge_check.md", report.markdown([
        {"LifeAlign, LLM judge, order1": "from the paper's matrix", **{report.KEY_LABELS[k]: report.fmt(recomputed[k])
                                                                      for k in report.SUMMARY_KEYS}},
        {"LifeAlign, LLM judge, order1": "the paper's Table 1", **{report.KEY_LABELS[k]: table1[f"judge_{k}"]
                                                                  for k in report.SUMMARY_KEYS}}]))
    return recomputed


# ---------------------------------------------------------------- step 2: the sentences (parts.md.j2)
def run_code_change(version):
    """What a run-code version changed, from the version list in lifealign.run_code's docstring."""
    from lifealign import run_code

    line = next((x.strip() for x in (run_code.__doc__ or "").splitlines() if x.strip().startswith(f"{version} ")), "")
    return line[len(str(version)):].strip().rstrip(".")


def badge(verdict, target):
    """A verdict as a sphinx-design badge linking to its evidence."""
    colour = {verdicts.CONFIRMED: "success", verdicts.REFUTED: "danger", verdicts.INCONCLUSIVE: "warning"}.get(verdict, "muted")
    word = "inconclusive" if verdict == verdicts.INCONCLUSIVE else verdict.split(" (")[0]
    return f"{{bdg-ref-{colour}}}`{word} <{target}>`"


def verdict_context(n):
    """What the answer on page one needs: the claims each verdict word holds for, the evidence
    against the refuted ones (each refuted cell's first refuting comparison) and the seeds each
    inconclusive cell needs to be decided."""
    def found(word):
        out = {}
        for m, rows in n["verdicts"].items():
            for i, r in enumerate(rows):
                if r["verdict"] == word:
                    out.setdefault(i, []).append(m)
        return out

    def listed(claims):
        return "; ".join(f"{verdicts.CLAIMS[i].text} (claim {i + 1}, on "
                         f"{' and '.join(report.METRIC_NAMES[m] for m in ms)})" for i, ms in sorted(claims.items()))

    against = [f"{report.METRIC_NAMES[m]}, claim {i + 1}: {items[0]}" for i, ms in sorted(found(verdicts.REFUTED).items())
               for m in ms if (items := verdicts.evidence_items(n["verdicts"][m][i], "against"))]
    undecided = [r.get("seeds to decide", "–") for rows in n["verdicts"].values() for r in rows
                 if r["verdict"] == verdicts.INCONCLUSIVE]
    return {"found": found, "listed": listed, "against": against, "confirmed": verdicts.CONFIRMED,
            "refuted": verdicts.REFUTED, "undecided": undecided, "most_seeds": verdicts.MOST_SEEDS}


def render(profile, cfg, model, stats, n, experiment, recomputed):
    """Every block of book/parts.md.j2 into _generated/<block>.md."""
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(BOOK), trim_blocks=True, lstrip_blocks=True)
    env.filters.update(f=fmt, short=short, capitalize_first=lambda s: s[:1].upper() + s[1:])
    env.tests["extreme"] = lambda v: v <= 10 or v >= 90
    paper = report.paper_numbers(ROOT / "paper")
    order = {m: i for i, m in enumerate(report.MAIN_METHODS)}
    gallery = sorted(((p.stem.split("-order")[0], p.stem) for p in (GEN / "report" / "figures" / "runs").glob("*.png")),
                     key=lambda mr: (order.get(mr[0], len(order)), mr[1]))
    context = dict(
        verdict_context(n), profile=profile, cfg=cfg, model=model, stats=stats, n=n, params=params_text(model),
        p=lambda *key: paper.get(key), badge=badge, fmt_stats=report.fmt_stats, evidence=verdicts.evidence_items,
        claims=[{"index": i, "text": c.text, "page": c.page} for i, c in enumerate(verdicts.CLAIMS)],
        metrics=report.VERDICT_METRICS, short_metric=report.METRIC_SHORT, metric_names=report.METRIC_NAMES,
        labels=report.LABELS, experiment=f"{experiment.parent.parent.name}/{experiment.parent.name}",
        committed={g: len(list((ROOT / "results" / profile / g).glob("*/results.json"))) for g in GROUPS},
        left_out_text="; ".join(f"{k} {why}" for why, k in Counter(n["left_out"].values()).items()),
        change=run_code_change(n["run_code_version_now"]), recomputed=recomputed, test_fraction=DERIVED_TEST_FRACTION,
        gallery=[(report.LABELS.get(m, m), run) for m, run in gallery],
        cut=[r for r in stats["lengths"] if float(r["response cut %"]) >= 50],
        skew=[r for r in stats["lengths"]
              if r["rejected median"] and not 0.5 < r["chosen median"] / r["rejected median"] < 2],
        row_a_differs=[(m, k) for m in ("bleu4", "judge") for k in report.SUMMARY_KEYS
                       if abs(paper[("ablation", "a", m, k)] - paper[("main", "ER", m, k)]) > 0.005],
        largest=lambda d: max(d, key=lambda k: abs(d[k])))
    template = env.get_template("parts.md.j2")
    macros = {k: v for k, v in vars(template.make_module(context)).items() if not k.startswith("_")}
    for name, block in template.blocks.items():
        write(f"{name}.md", "".join(block(template.new_context(dict(context, **macros)))))


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
    model, stats, n = (read_json(results / f) for f in ("model.json", "data/stats.json", "report/numbers.json"))
    recomputed = write_tables(profile, params, cfg, model, stats, n)
    render(profile, cfg, model, stats, n, experiment, recomputed)
    print(f"book: profile {profile}, sources ready in {time.time() - t0:.1f} s", flush=True)
    if args.no_build:
        return
    # --all: a clean read of every page, so a warning of an unchanged page is never hidden by the cache.
    proc = subprocess.run(jupyter_book() + ["build", str(BOOK), "-W", "-n", "--keep-going", "--all"], cwd=ROOT)
    if proc.returncode != 0:
        raise BookError(f"error: the book build failed (exit {proc.returncode}); see the warnings above")
    print(f"book built in {time.time() - t0:.0f} s: open {(BOOK / '_build' / 'html' / 'index.html').relative_to(ROOT)}")


if __name__ == "__main__":
    main()

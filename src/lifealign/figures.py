"""The report's figures, drawn with seaborn from the runs and their long frame (lifealign.report):
score matrices, forgetting curves, the task orders and the sensitivity sweeps. Error bars are the
seeds' sample standard deviation, as "±" is everywhere in the report.
"""
import math

import pandas as pd

from .data import short_name as task_label
from .metrics import mean_of as mean
from .report import (KEY_LABELS, LABELS, METRIC_NAMES, METRIC_SHORT, ORDER_METHODS, _point, cell, fmt, fmt_stats,
                     stats, sweep_values)
from .runs import COLUMNS, ORDER_NAMES, pick


def _style():
    import seaborn as sns

    sns.set_theme(context="notebook", style="whitegrid", font_scale=0.9)
    return sns


def _save(fig, path, dpi=120, **layout):
    fig.tight_layout(**layout)
    fig.savefig(path, dpi=dpi)
    return fig


def _nothing(path, what):
    """A figure that says there is nothing to draw, so that a page showing it still builds."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 1.2))
    ax.axis("off")
    ax.text(0.5, 0.5, f"No current results: {what}.", ha="center", va="center")
    return _save(fig, path, 100)


def _heatmap(ax, rows, order, done, vmin, vmax, title, cbar_ax=None, digits=0):
    """An annotated score matrix: the base row first, then a row per trained task."""
    frame = pd.DataFrame([[math.nan if v is None else v for v in row] for row in rows],
                         index=["base"] + [task_label(t) for t in done], columns=[task_label(t) for t in order])
    _style().heatmap(frame, ax=ax, vmin=vmin, vmax=vmax, cmap="viridis", annot=True, fmt=f".{digits}f",
                     annot_kws={"fontsize": 10}, linewidths=0.5, cbar=cbar_ax is not None, cbar_ax=cbar_ax)
    ax.set(title=title, xlabel="evaluated task", ylabel="after training on")
    ax.tick_params(axis="y", rotation=0)
    ax.set_xticks(ax.get_xticks(), ax.get_xticklabels(), rotation=30, ha="right")


def plot_heatmaps(runs, methods, metric, path, order="order1"):
    """One annotated matrix per method, averaged over its seeds, with one shared colorbar."""
    import matplotlib.pyplot as plt

    chosen = {m: rs for m in methods if (rs := pick(runs, m, order))}
    if not chosen:
        return _nothing(path, "no run of " + ", ".join(LABELS[m] for m in methods))
    cols, rows = min(2, len(chosen)), math.ceil(len(chosen) / 2)
    fig = plt.figure(figsize=(6.2 * cols + 0.6, 4.8 * rows))
    grid = fig.add_gridspec(rows, cols + 1, width_ratios=[1] * cols + [0.04])
    cbar_ax = fig.add_subplot(grid[:, cols])
    for k, (method, rs) in enumerate(chosen.items()):
        m = [r.results["metrics"][metric] for r in rs]
        avg = [[mean(c) for c in zip(*cells)] for cells in zip(*[[x["base"]] + x["matrix"] for x in m])]
        bwt = stats([r.summary(metric, "bwt") for r in rs])
        title = f"{LABELS[method]}: BWT {fmt_stats(bwt, 1)} ({len(rs)} seed{'s' * (len(rs) > 1)})"
        _heatmap(fig.add_subplot(grid[k // cols, k % cols]), avg, rs[0].results["order"], rs[0].results["rows"],
                 0, 100, title, cbar_ax if k == 0 else None)
    cbar_ax.set_ylabel(f"{METRIC_NAMES[metric]} (%)")
    return _save(fig, path)


def plot_run(run, path):
    """Every metric's matrix of one run, annotated, each with its colorbar."""
    import matplotlib.pyplot as plt

    metrics = [m for m in METRIC_NAMES if m in run.results.get("metrics", {})]
    cols, rows = min(2, len(metrics)), math.ceil(len(metrics) / 2)
    fig, axes = plt.subplots(rows, cols, figsize=(7.0 * cols, 4.8 * rows), squeeze=False)
    for ax in axes.flat[len(metrics):]:
        ax.set_visible(False)
    for ax, metric in zip(axes.flat, metrics):
        m, accuracy = run.results["metrics"][metric], metric.endswith("accuracy")
        values = [v for row in [m["base"]] + m["matrix"] for v in row if v is not None]
        bwt = m["summary"].get("bwt")
        _heatmap(ax, [m["base"]] + m["matrix"], run.results["order"], run.results["rows"],
                 *((0, 100) if accuracy else (min(values, default=0), max(values, default=1))),
                 METRIC_NAMES[metric] + (f": BWT {fmt(bwt, 1, True)}" if bwt is not None else ""), digits=1 - accuracy)
        fig.colorbar(ax.collections[0], ax=ax, fraction=0.05, pad=0.02)
    fig.suptitle(f"{LABELS.get(run.method, run.method)}, {run.order}, seed {run.seed}", fontsize=12)
    _save(fig, path, 100)
    plt.close(fig)


def plot_forgetting(runs, methods, metric, path, order="order1"):
    """Each task's score from the moment it is learned to the end, one panel per method."""
    import matplotlib.pyplot as plt

    chosen = {m: rs for m in methods if (rs := pick(runs, m, order))}
    if not chosen:
        return _nothing(path, "no run of " + ", ".join(LABELS[m] for m in methods))
    sns = _style()
    fig, axes = plt.subplots(1, len(chosen), figsize=(4.6 * len(chosen), 3.8), squeeze=False, sharey=True)
    for ax, (method, rs) in zip(axes[0], chosen.items()):
        n = len(rs[0].results["rows"])
        points = pd.DataFrame([{"after task": i + 1, "task": task_label(t),
                                "score": r.results["metrics"][metric]["matrix"][i][j]}
                               for r in rs for j, t in enumerate(rs[0].results["order"][:n]) for i in range(j, n)]).dropna()
        sns.lineplot(points, x="after task", y="score", hue="task", ax=ax, marker="o", errorbar="sd", err_style="bars",
                     err_kws={"capsize": 3}, legend=ax is axes[0][-1])
        ax.axhline(50, color="gray", lw=0.8, ls=":")
        ax.set(xticks=range(1, n + 1), title=f"{LABELS[method]} ({len(rs)} seed{'s' * (len(rs) > 1)})")
    axes[0][0].set_ylabel(f"{METRIC_NAMES[metric]} (%)")
    if axes[0][-1].get_legend():
        sns.move_legend(axes[0][-1], "upper left", bbox_to_anchor=(1.02, 1), fontsize=9, title="task")
    return _save(fig, path)


def plot_orders(df, paper, metric, path, paper_metric="bleu4"):
    """BWT (top) and Last (bottom) of the ORDER_METHODS in each order: ours on `metric`, ours on
    the paper's BLEU-4 and the paper's BLEU-4; a method with no value in an order reads "n/a"."""
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    sns, methods = _style(), [LABELS[m] for m in ORDER_METHODS]
    palette, width = dict(zip(methods, sns.color_palette(n_colors=len(methods)))), 0.8 / len(methods)
    ours = df[df.method.isin(ORDER_METHODS) & (df.sweep == "")].assign(method=lambda d: d.method.map(LABELS))
    theirs = pd.DataFrame([{"order": o, "method": m, "metric": paper_metric, "key": k, "value": v}
                           for (t, r, x, k), v in paper.items() if t == "orders" and x == paper_metric
                           for o, m in [r.split(" ", 1)]], columns=COLUMNS)
    fig, axes = plt.subplots(2, 3, figsize=(13, 7))
    panels = (("ours (SmolLM2-135M)", ours, metric), ("ours (SmolLM2-135M)", ours, paper_metric),
              ("paper (Qwen2.5-7B, one seed)", theirs, paper_metric))
    for ax, (key, (who, frame, name)) in zip(axes.flat, [(k, p) for k in ("bwt", "last") for p in panels]):
        data = frame[(frame.metric == name) & (frame.key == key)]
        if len(data):
            sns.barplot(data, x="order", y="value", hue="method", order=ORDER_NAMES, hue_order=methods, palette=palette,
                        errorbar="sd", capsize=0.15, err_kws={"linewidth": 1}, ax=ax, legend=False)
        have = set(zip(data.order, data.method))
        for i, o in enumerate(ORDER_NAMES):
            for k, m in enumerate(methods):
                if (o, m) not in have:
                    ax.text(i + (k - (len(methods) - 1) / 2) * width, 0.03, "n/a", ha="center", va="bottom",
                            fontsize=8, rotation=90, color=palette[m], transform=ax.get_xaxis_transform())
        ax.set_xticks(range(3), ORDER_NAMES)
        ax.set(xlim=(-0.5, 2.5), xlabel="", ylabel=KEY_LABELS[key])
        ax.axhline(0, color="black", lw=0.6)
        ax.set_title(f"{who}: {METRIC_SHORT[name]} {KEY_LABELS[key]}", fontsize=10)
    fig.legend(handles=[Patch(color=c, label=m) for m, c in palette.items()], loc="upper center",
               ncol=len(methods), frameon=False)
    return _save(fig, path, 110, rect=(0, 0, 1, 0.95))


def _errorbars(ax, df, name, default, metric, key, **style):
    """LifeAlign's means over one setting's values, the seeds' sd as error bars (0 for one seed)."""
    points = [(v, s) for v in sweep_values(df, name, default)
              if (s := cell(df, metric, key, _point(name, v, default)))["n"]]
    if points:
        ax.errorbar(*zip(*[(v, s["mean"], s["sd"] or 0) for v, s in points]), capsize=3, **style)


def plot_sensitivity(df, paper, default_lambda, default_theta, metric, path):
    """BWT (top) and Last (bottom) of LifeAlign over lambda and theta on `metric`, and ROUGE-L over
    lambda: the paper's sweep beside ours where the runs have it."""
    import matplotlib.pyplot as plt

    _style()
    lam = sorted({float(r) for t, r, m, _ in paper if t == "sensitivity" and m == "rougel"})
    fig, axes = plt.subplots(2, 3, figsize=(13, 7))
    for row, key in enumerate(("bwt", "last")):
        label = KEY_LABELS[key]
        for ax, (name, default) in zip(axes[row], (("lambda", default_lambda), ("theta", default_theta))):
            _errorbars(ax, df, name, default, metric, key, fmt="o-", color="C0")
            ax.axvline(default, color="gray", lw=0.8, ls=":")
            ax.set_xlim(*((-0.05, 1.05) if name == "lambda" else (min([0.65] + sweep_values(df, name)) - 0.02, 1.01)))
            ax.set(xlabel=name, ylabel=label)
            ax.set_title(f"ours: {METRIC_SHORT[metric]} {label} over {name}", fontsize=10)
        ax = axes[row][2]
        ax.plot(lam, [paper.get(("sensitivity", f"{v:g}", "rougel", key)) for v in lam], "s--", color="C1",
                label=f"paper (Qwen2.5-7B): ROUGE-L {label}")
        _errorbars(ax, df, "lambda", default_lambda, "rougel", key, fmt="o-", color="C0",
                   label=f"ours: ROUGE-L {label}")
        ax.set(xlabel="lambda", ylabel=label)
        ax.set_title(f"ROUGE-L {label} over lambda", fontsize=10)
        ax.legend(fontsize=8)
        for ax in axes[row] if key == "bwt" else ():
            ax.axhline(0, color="black", lw=0.6)
    return _save(fig, path, 110)

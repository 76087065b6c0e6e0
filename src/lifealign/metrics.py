"""Continual-learning summaries of a result matrix (Last, AP, BWT and the rest), a run's metrics
section of results.json built from its evaluation rows, and the run's text summary.

m[i][j] is the score on task j after training through task i (0-based here). Cells that were not
evaluated are None or NaN and are ignored where a metric does not use them.
"""
import math

from .data import short_name
from .evaluation import METRICS

#: Every metric a row may hold: the judge-free scores, then the generation metrics and the judge.
ALL_METRICS = METRICS + ("bleu4", "rougel", "judge")


def _cell(matrix, i, j):
    value = matrix[i][j] if j < len(matrix[i]) else None
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return float(value)


def _minus(a, b):
    return None if a is None or b is None else a - b


def mean_of(values):
    """The mean of the values that are not None; None if there are none."""
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def summarize(matrix, base=None):
    """Last, AP and BWT of an N x N matrix; FWT and forgetting as well when the base row is given.

    - last = mean_j m[N][j]
    - ap = mean_k mean_{j<=k} m[k][j]
    - bwt = mean_{i<N} (m[N][i] - m[i][i])
    - fwt = mean_{i>1} (m[i-1][i] - base[i])           (needs the evaluated upper triangle)
    - forgetting = mean_{i<N} max_{i<=k<N} (m[k][i] - m[N][i])
    The upper triangle is ignored by last/ap/bwt/forgetting.
    """
    n = len(matrix)
    if n == 0 or any(len(row) < n for row in matrix):
        raise ValueError(f"summarize needs a square matrix with one row per task, got {[len(r) for r in matrix]}")
    final = [_cell(matrix, n - 1, j) for j in range(n)]
    out = {"last": mean_of(final),
           "ap": mean_of(mean_of(_cell(matrix, k, j) for j in range(k + 1)) for k in range(n)),
           "bwt": mean_of(_minus(final[i], _cell(matrix, i, i)) for i in range(n - 1))}
    if base is not None:
        out["fwt"] = mean_of(_minus(_cell(matrix, i - 1, i), None if base[i] is None else float(base[i]))
                             for i in range(1, n))
        drops = []
        for i in range(n - 1):
            seen = [v for k in range(i, n - 1) if (v := _cell(matrix, k, i)) is not None]
            if final[i] is not None and seen:
                drops.append(max(v - final[i] for v in seen))
        out["forgetting"] = mean_of(drops)
    return out


def run_metrics(rows, base, order, joint=False):
    """results.json's "metrics": for each metric every row holds, the base row, the matrix (one row
    per trained unit, one column per task of `order`) and its summary. `rows` are the evaluation
    rows (task name -> scores) in training order; `base` is the base model's row. A joint run (one
    unit, several tasks) has no sequence: its summary is Last only. The judge's failures are kept per
    cell, never averaged away; with BLEU-4, ROUGE-L and the judge present, "avg" is the paper's AVG
    (their mean, per summary statistic)."""
    metrics = {}
    for metric in [m for m in ALL_METRICS if rows and all(m in rows[0][t] for t in order)]:
        matrix = [[row[t][metric] for t in order] for row in rows]
        base_row = [base[t].get(metric) for t in order]
        k = len(matrix)
        summary = {"last": mean_of(matrix[0])} if joint else summarize([r[:k] for r in matrix], base_row[:k])
        metrics[metric] = {"base": base_row, "matrix": matrix, "summary": summary}
        if metric == "judge":
            metrics[metric]["failures"] = [[row[t].get("judge_failures", 0) for t in order] for row in rows]
            metrics[metric]["base_failures"] = [base[t].get("judge_failures", 0) for t in order]
    if all(m in metrics for m in ("bleu4", "rougel", "judge")):
        parts = [metrics[m]["summary"] for m in ("bleu4", "rougel", "judge")]
        metrics["avg"] = {"summary": {k: mean_of([p.get(k) for p in parts]) for k in parts[0]}}
    return metrics


def format_summary(results, timings=True):
    """The run's matrices and summaries as text; `timings=False` leaves out the (machine-dependent)
    time and throughput lines, e.g. for notebooks that must rerun to identical outputs."""
    method, model = results["method"], results["model"]
    lines = [f"run {results['name']}: method {method['name']} ({method['loss']}, plugins: "
             f"{', '.join(method['plugins']) or 'none'}), model {model['name']} [{model['precision']}]",
             f"order: {' -> '.join(results['order'])}"]
    lines += [f"dropped: {d['task']} ({d['reason']})" for d in results["dropped_tasks"]]
    for metric in ("reward_accuracy", "loglik_accuracy", "margin", "bleu4", "rougel", "judge"):
        if metric in results["metrics"]:
            lines += _matrix_lines(results, metric)
    if "avg" in results["metrics"]:
        s = results["metrics"]["avg"]["summary"]
        lines.append("\nAVG (mean of BLEU-4, ROUGE-L, judge): "
                     + "  ".join(f"{k} {v:.2f}" for k, v in s.items() if v is not None))
    if results.get("decoding"):
        lines.append(f"decoding: {results['decoding']}")
    for tr in results["training"] if timings else []:
        if tr["stages"]:
            parts = [f"{st} {v['train_s']:.0f}s {v['tokens_per_s']:.0f} tok/s" for st, v in tr["stages"].items()]
            lines.append(f"{tr['task']}: " + ", ".join(parts) + f", eval {tr['eval_s']:.0f}s")
    return "\n".join(lines)


def _matrix_lines(results, metric):
    m = results["metrics"][metric]
    fmt = lambda v: f"{v:11.2f}" if v is not None else f"{'-':>11}"  # noqa: E731
    lines = [f"\n{metric} (row = after task, column = evaluated task)",
             f"{'':>12}" + "".join(f"{short_name(t):>11}" for t in results["order"]),
             f"{'base':>12}" + "".join(fmt(v) for v in m["base"])]
    for name, row in zip(results["rows"], m["matrix"]):
        lines.append(f"{short_name(name):>12}" + "".join(fmt(v) for v in row))
    if "failures" in m and (any(any(r) for r in m["failures"]) or any(m["base_failures"])):
        lines.append(f"  judge failures per cell: base {m['base_failures']}, rows {m['failures']}")
    lines.append("  " + "  ".join(f"{k} {v:.2f}" for k, v in m["summary"].items() if v is not None))
    return lines

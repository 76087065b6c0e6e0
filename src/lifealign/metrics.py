"""Continual-learning summaries of a result matrix (Last, AP, BWT and the rest).

m[i][j] is the score on task j after training through task i (0-based here). Cells that were not
evaluated are None or NaN and are ignored where a metric does not use them.
"""
import math


def _cell(matrix, i, j):
    value = matrix[i][j] if j < len(matrix[i]) else None
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return float(value)


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
    last_row = n - 1
    out = {
        "last": mean_of(_cell(matrix, last_row, j) for j in range(n)),
        "ap": mean_of(mean_of(_cell(matrix, k, j) for j in range(k + 1)) for k in range(n)),
        "bwt": mean_of(
            _cell(matrix, last_row, i) - _cell(matrix, i, i)
            for i in range(n - 1)
            if _cell(matrix, last_row, i) is not None and _cell(matrix, i, i) is not None
        ) if n > 1 else None,
    }
    if base is not None:
        fwt = [
            _cell(matrix, i - 1, i) - float(base[i])
            for i in range(1, n)
            if _cell(matrix, i - 1, i) is not None and base[i] is not None
        ]
        out["fwt"] = mean_of(fwt) if n > 1 else None
        drops = []
        for i in range(n - 1):
            final = _cell(matrix, last_row, i)
            seen = [_cell(matrix, k, i) for k in range(i, n - 1)]
            seen = [v for v in seen if v is not None]
            if final is not None and seen:
                drops.append(max(v - final for v in seen))
        out["forgetting"] = mean_of(drops) if n > 1 else None
    return out

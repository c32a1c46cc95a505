"""Accuracy and group-fairness metrics computed from confusion counts (numpy only).

The framework never averages ratios across clients. Each client reports an integer
count tensor ``counts[a, y, yhat]`` (sensitive group ``a``, true label ``y``, predicted
label ``yhat``; shape ``(G, C, C)``), the server sums the tensors, and every metric is
computed from (summed) counts. Global metrics therefore equal the metrics of the
pooled predictions exactly, and local metrics are the same functions applied to one
client's counts.

Definitions (``P`` are empirical frequencies from the counts; see
``reference/fedfact.md`` §4):

- selection rate ``sel[a, y] = P(Yhat=y | A=a)``
- true-positive rate (per-class recall) ``tpr[a, y] = P(Yhat=y | Y=y, A=a)``
- false-positive rate ``fpr[a, y] = P(Yhat=y | Y!=y, A=a)``
- **pairwise** gap of a rate ``r`` for class ``y``: ``max_a r[a, y] - min_a r[a, y]``
  (= ``max_{a,a'} |r[a, y] - r[a', y]|``, Fairlearn's ``between_groups`` difference)
- **subgroup** gap of ``r`` for class ``y``: ``max_a |r[a, y] - r[y]|`` where ``r[y]`` is
  the same rate on all rows (all groups pooled)

Keys of :func:`metrics_from_counts`:

- ``n``: number of rows; ``accuracy``: ``trace / n`` (``nan`` when ``n == 0``)
- ``dp_pairwise_max`` = ``max_y`` pairwise selection-rate gap; ``dp_gap`` is an alias;
  ``dp_subgroup_max`` = ``max_y`` subgroup selection-rate gap. All classes ``y`` are
  used (for binary tasks both classes give the same gap).
- ``eop_gap`` = pairwise TPR gap, ``eop_subgroup_max`` = subgroup TPR gap. Binary tasks
  (``C == 2``) use the positive class ``y = 1`` only (standard equal opportunity,
  Fairlearn's ``true_positive_rate``); multi-class tasks take the max over all classes
  of the per-class recall gaps.
- ``eo_gap`` = ``max_y max(pairwise TPR gap, pairwise FPR gap)`` and
  ``eo_subgroup_max`` = the same with subgroup gaps. Binary tasks use ``y = 1`` only,
  which equals Fairlearn's ``equalized_odds_difference`` (for binary tasks class 0 gives
  the same two gaps swapped, so this is also the max over both classes).
- ``positive_rate`` = ``P(Yhat=1)``: binary tasks only; multi-class tasks get no
  per-class keys here (use :func:`group_metrics`).

Edge cases:

- Groups with zero rows are ignored for every gap.
- Conditional rates with a zero denominator (e.g. a group without rows of class ``y``
  for the TPR of ``y``) are skipped: that group does not take part in that class' gap.
- A gap over fewer than 2 groups with a defined rate is ``0.0``; so is a gap when no
  class has a defined rate.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from fedrec.errors import ConfigError

__all__ = [
    "GAP_KEYS",
    "FederatedMetrics",
    "confusion_counts",
    "federated_metrics",
    "group_metrics",
    "metrics_from_counts",
]

#: Keys of :func:`metrics_from_counts` that are disparities (smaller is fairer).
GAP_KEYS: tuple[str, ...] = (
    "dp_gap",
    "dp_pairwise_max",
    "dp_subgroup_max",
    "eop_gap",
    "eop_subgroup_max",
    "eo_gap",
    "eo_subgroup_max",
)


def _as_labels(name: str, values: object, upper: int, upper_name: str) -> np.ndarray:
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise ConfigError(f"{name} must be a 1-D array, got shape {arr.shape}")
    if arr.size == 0:
        return arr.astype(np.int64)
    if not np.issubdtype(arr.dtype, np.integer):
        if arr.dtype == bool:
            arr = arr.astype(np.int64)
        elif not np.issubdtype(arr.dtype, np.floating) or not np.all(np.mod(arr, 1) == 0):
            raise ConfigError(f"{name} must hold integer labels, got dtype {arr.dtype}")
    arr = arr.astype(np.int64)
    lo, hi = int(arr.min()), int(arr.max())
    if lo < 0 or hi >= upper:
        bad = lo if lo < 0 else hi
        raise ConfigError(
            f"{name} value {bad} out of range; allowed 0..{upper - 1} ({upper_name}={upper})"
        )
    return arr


def confusion_counts(
    y_true: np.ndarray, y_pred: np.ndarray, groups: np.ndarray, num_classes: int, num_groups: int
) -> np.ndarray:
    """Count tensor ``int64 (G, C, C)`` with ``counts[a, y, yhat]`` = #rows of group ``a``,
    true label ``y`` and predicted label ``yhat``.

    Labels and groups must be integers in ``[0, C)`` and ``[0, G)``; otherwise a
    :class:`~fedrec.errors.ConfigError` names the array and the allowed range.
    """
    for name, value, minimum in (("num_classes", num_classes, 1), ("num_groups", num_groups, 1)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
            raise ConfigError(f"{name} must be an integer >= {minimum}, got {value!r}")
    C, G = int(num_classes), int(num_groups)
    yt = _as_labels("y_true", y_true, C, "num_classes")
    yp = _as_labels("y_pred", y_pred, C, "num_classes")
    ga = _as_labels("groups", groups, G, "num_groups")
    if not (yt.shape == yp.shape == ga.shape):
        raise ConfigError(
            "y_true, y_pred and groups must have the same length, "
            f"got {yt.shape[0]}, {yp.shape[0]}, {ga.shape[0]}"
        )
    flat = (ga * C + yt) * C + yp
    return np.bincount(flat, minlength=G * C * C).astype(np.int64).reshape(G, C, C)


def _check_counts(counts: np.ndarray, expected: bool = False) -> np.ndarray:
    arr = np.asarray(counts)
    if arr.ndim != 3 or arr.shape[1] != arr.shape[2] or arr.shape[0] < 1 or arr.shape[1] < 1:
        raise ValueError(f"counts must have shape (G, C, C) with G, C >= 1, got {arr.shape}")
    if expected:
        arr = np.asarray(arr, dtype=np.float64)
        if not np.all(np.isfinite(arr)) or (arr.size and arr.min() < 0):
            raise ValueError("expected counts must be finite and non-negative")
        return arr
    if not np.issubdtype(arr.dtype, np.integer):
        if (
            not np.issubdtype(arr.dtype, np.floating)
            or not np.all(np.isfinite(arr))
            or not np.all(np.mod(arr, 1) == 0)
        ):
            raise ValueError(f"counts must hold non-negative integers, got dtype {arr.dtype}")
    if arr.size and arr.min() < 0:
        raise ValueError("counts must hold non-negative integers, got a negative entry")
    return arr.astype(np.int64)


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """Elementwise num / den as float64, ``nan`` where ``den == 0``."""
    num = np.asarray(num, dtype=np.float64)
    den = np.asarray(den, dtype=np.float64)
    out = np.full(np.broadcast_shapes(num.shape, den.shape), np.nan)
    np.divide(num, den, out=out, where=den > 0)
    return out


def _rates(counts: np.ndarray) -> dict[str, np.ndarray]:
    """Per-group (G, C) and pooled (C,) selection rate, TPR and FPR; nan where undefined."""
    n_a = counts.sum(axis=(1, 2))  # (G,)
    pred_a = counts.sum(axis=1)  # (G, C): rows predicted as c
    true_a = counts.sum(axis=2)  # (G, C): rows with label c
    diag_a = np.diagonal(counts, axis1=1, axis2=2)  # (G, C)
    n, pred, true, diag = n_a.sum(), pred_a.sum(axis=0), true_a.sum(axis=0), diag_a.sum(axis=0)
    return {
        "sel_a": _ratio(pred_a, n_a[:, None]),
        "tpr_a": _ratio(diag_a, true_a),
        "fpr_a": _ratio(pred_a - diag_a, n_a[:, None] - true_a),
        "sel": _ratio(pred, n),
        "tpr": _ratio(diag, true),
        "fpr": _ratio(pred - diag, n - true),
    }


def _pairwise(rate_a: np.ndarray, classes: list[int]) -> float:
    """max over ``classes`` of (max_a - min_a) of the defined per-group rates."""
    best = 0.0
    for c in classes:
        col = rate_a[:, c]
        col = col[~np.isnan(col)]
        if col.size >= 2:
            best = max(best, float(col.max() - col.min()))
    return best


def _subgroup(rate_a: np.ndarray, rate: np.ndarray, classes: list[int]) -> float:
    """max over ``classes`` and groups of |group rate - pooled rate| (defined rates only)."""
    best = 0.0
    for c in classes:
        col = rate_a[:, c]
        col = col[~np.isnan(col)]
        if col.size >= 2 and not np.isnan(rate[c]):
            best = max(best, float(np.max(np.abs(col - rate[c]))))
    return best


def metrics_from_counts(counts: np.ndarray, expected: bool = False) -> dict[str, float]:
    """Accuracy and fairness gaps of a count tensor ``(G, C, C)``; see the module docstring.

    ``expected=True`` accepts non-negative real counts: the expected counts of a randomized
    classifier (``sum_i P(Yhat_i = c)``), whose gaps are then the classifier's own.
    """
    counts = _check_counts(counts, expected)
    C = counts.shape[1]
    r = _rates(counts)
    n = float(counts.sum()) if expected else int(counts.sum())
    all_classes = list(range(C))
    cond_classes = [1] if C == 2 else all_classes
    dp_pair = _pairwise(r["sel_a"], all_classes)
    out: dict[str, float] = {
        "n": float(n),
        "accuracy": float(np.trace(counts.sum(axis=0)) / n) if n > 0 else float("nan"),
        "dp_gap": dp_pair,
        "dp_pairwise_max": dp_pair,
        "dp_subgroup_max": _subgroup(r["sel_a"], r["sel"], all_classes),
        "eop_gap": _pairwise(r["tpr_a"], cond_classes),
        "eop_subgroup_max": _subgroup(r["tpr_a"], r["tpr"], cond_classes),
        "eo_gap": max(_pairwise(r["tpr_a"], cond_classes), _pairwise(r["fpr_a"], cond_classes)),
        "eo_subgroup_max": max(
            _subgroup(r["tpr_a"], r["tpr"], cond_classes),
            _subgroup(r["fpr_a"], r["fpr"], cond_classes),
        ),
    }
    if C == 2:
        out["positive_rate"] = float(r["sel"][1])
    return out


def group_metrics(counts: np.ndarray, expected: bool = False) -> list[dict]:
    """Per sensitive group ``a`` (in order): ``group``, ``n``, ``accuracy`` and per-class lists
    ``selection_rate`` (``P(Yhat=y|A=a)``), ``tpr`` (``P(Yhat=y|Y=y,A=a)``) and ``fpr``
    (``P(Yhat=y|Y!=y,A=a)``). Undefined values (zero denominators) are ``nan``."""
    counts = _check_counts(counts, expected)
    r = _rates(counts)
    out = []
    for a in range(counts.shape[0]):
        n_a = float(counts[a].sum()) if expected else int(counts[a].sum())
        out.append(
            {
                "group": a,
                "n": n_a,
                "accuracy": float(np.trace(counts[a]) / n_a) if n_a > 0 else float("nan"),
                "selection_rate": [float(v) for v in r["sel_a"][a]],
                "tpr": [float(v) for v in r["tpr_a"][a]],
                "fpr": [float(v) for v in r["fpr_a"][a]],
            }
        )
    return out


@dataclass
class FederatedMetrics:
    """A Fairlearn-``MetricFrame``-like view of metrics over clients.

    - ``overall``: :func:`metrics_from_counts` of the pooled (summed) counts (global metrics).
    - ``by_client``: :func:`metrics_from_counts` of each client's counts (local metrics).
    - ``by_group``: :func:`group_metrics` of the pooled counts.
    - ``local``: for each key ``k`` in :data:`GAP_KEYS`, ``f"{k}_local_max"`` (max over
      clients, the paper's D_local) and ``f"{k}_local_mean"``; plus ``accuracy_local_min``
      and ``accuracy_local_mean``. Clients with zero rows are left out of these
      aggregates; with no non-empty client every value is ``nan``.
    """

    overall: dict[str, float]
    by_client: dict[int, dict[str, float]]
    by_group: list[dict]
    local: dict[str, float] = field(default_factory=dict)

    def flat(self) -> dict[str, float]:
        """``overall`` and ``local`` merged into one flat dict (for logging)."""
        return {**self.overall, **self.local}


def federated_metrics(
    counts_by_client: dict[int, np.ndarray], expected: bool = False
) -> FederatedMetrics:
    """Global, per-client and per-group metrics from per-client count tensors.

    Counts are summed in sorted client-id order. All tensors must have the same shape.
    ``expected=True``: real-valued expected counts of a randomized classifier (see
    :func:`metrics_from_counts`).
    """
    if not counts_by_client:
        raise ValueError("counts_by_client is empty; need at least one client")
    ids = sorted(counts_by_client)
    checked = {cid: _check_counts(counts_by_client[cid], expected) for cid in ids}
    shape = checked[ids[0]].shape
    for cid in ids:
        if checked[cid].shape != shape:
            raise ValueError(
                f"client {cid} counts have shape {checked[cid].shape}, "
                f"expected {shape} (as client {ids[0]})"
            )
    pooled = np.zeros(shape, dtype=np.float64 if expected else np.int64)
    for cid in ids:
        pooled += checked[cid]
    by_client = {cid: metrics_from_counts(checked[cid], expected) for cid in ids}
    nonempty = [by_client[cid] for cid in ids if by_client[cid]["n"] > 0]
    local: dict[str, float] = {}
    for key in GAP_KEYS:
        values = [m[key] for m in nonempty]
        local[f"{key}_local_max"] = float(max(values)) if values else float("nan")
        local[f"{key}_local_mean"] = float(np.mean(values)) if values else float("nan")
    accs = [m["accuracy"] for m in nonempty]
    local["accuracy_local_min"] = float(min(accs)) if accs else float("nan")
    local["accuracy_local_mean"] = float(np.mean(accs)) if accs else float("nan")
    return FederatedMetrics(
        overall=metrics_from_counts(pooled, expected),
        by_client=by_client,
        by_group=group_metrics(pooled, expected),
        local=local,
    )

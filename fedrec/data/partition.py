"""Partitioning rows among federated clients, and a JSON-ready partition report.

Every partitioner returns ``list[np.ndarray]``: one sorted int64 index array per
partition; together they cover every row exactly once. All randomness comes from
``np.random.default_rng(seed)``; the same arguments give the same partitions.

Choices:

* ``iid_partition`` shuffles ``0..n-1`` and cuts it into ``num_partitions`` nearly equal
  consecutive chunks (sizes differ by at most one, as ``np.array_split``).
* ``dirichlet_partition`` follows flwr-datasets' ``DirichletPartitioner`` (Hsu et al.
  2019, "Measuring the effects of non-identical data distribution"): for each distinct
  value ``c`` (in sorted order) draw ``p ~ Dir(alpha * 1_K)``, shuffle the rows with
  value ``c`` and cut them at ``floor(cumsum(p) * n_c)``; partition ``k`` gets the k-th
  piece. If some partition has fewer than ``min_partition_size`` rows the whole draw is
  repeated with the same generator, up to ``max_attempts`` times, then a
  :class:`~fedrec.errors.DataError` is raised. Differences from flwr-datasets: the rows
  of each value are shuffled before cutting (flwr-datasets cuts them in dataset order),
  the "self-balancing" option is not implemented (flwr-datasets' default is off too),
  alpha is a scalar (symmetric Dirichlet), and the output is sorted rather than
  shuffled.
* ``natural_partition`` gives one partition per distinct id (e.g. one client per user),
  in increasing id order.
* ``make_partitions("dirichlet-label" | "dirichlet-sensitive")`` applies the Dirichlet
  partitioner to the labels or to the sensitive groups; ``"natural"`` requires
  ``num_partitions`` to equal the number of distinct ids (or to be ``<= 0``, meaning
  "as many as there are ids").
* ``train_test_split_indices`` shuffles one partition's indices with its own seed and
  puts ``round(test_fraction * m)`` of them in the test set, clamped to ``[1, m - 1]``
  when ``0 < test_fraction`` and ``m >= 2`` so that both sides are non-empty. Callers
  derive a distinct seed per partition (e.g. ``seed + partition_id``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import DataError

__all__ = [
    "iid_partition",
    "dirichlet_partition",
    "natural_partition",
    "make_partitions",
    "train_test_split_indices",
    "partition_report",
    "PARTITION_SCHEMES",
    "heterogeneous_partition",
]

PARTITION_SCHEMES = ("iid", "dirichlet-label", "dirichlet-sensitive", "heterogeneous", "natural")


def _check_k(n: int, num_partitions: int) -> None:
    if int(num_partitions) < 1:
        raise DataError(f"num_partitions must be >= 1, got {num_partitions}")
    if int(num_partitions) > int(n):
        raise DataError(
            f"cannot split {n} rows into num_partitions={num_partitions} partitions; "
            f"allowed: 1..{n}"
        )


def _rng(seed: int) -> np.random.Generator:
    """``default_rng(seed)``; a seed that is not a non-negative integer is a DataError."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise DataError(f"partition seed must be a non-negative integer, got {seed!r}")
    return np.random.default_rng(seed)


def iid_partition(n: int, num_partitions: int, seed: int) -> list[np.ndarray]:
    """Uniformly random, nearly equal-sized partitions of ``range(n)``."""
    _check_k(n, num_partitions)
    perm = _rng(seed).permutation(int(n)).astype(np.int64)
    return [np.sort(p) for p in np.array_split(perm, int(num_partitions))]


def dirichlet_partition(
    values: np.ndarray,
    num_partitions: int,
    alpha: float,
    seed: int,
    min_partition_size: int = 10,
    max_attempts: int = 100,
    min_per_value: int = 0,
) -> list[np.ndarray]:
    """Label- (or group-) skewed partitions with per-value proportions ~ Dir(alpha).

    Draws are repeated (same generator) until every partition has at least
    ``min_partition_size`` rows and at least ``min_per_value`` rows of every value
    (LoGoFair's ``least_samples``: local group fairness needs members of every group
    on every client)."""
    values = np.asarray(values)
    if values.ndim != 1:
        raise DataError(
            f"dirichlet partition needs a 1-d array of values, got shape {values.shape}"
        )
    n = values.shape[0]
    _check_k(n, num_partitions)
    if not 0 < alpha < float("inf"):
        raise DataError(f"dirichlet partition: alpha must be a finite number > 0, got {alpha}")
    if max_attempts < 1:
        raise DataError(f"dirichlet partition: max_attempts must be >= 1, got {max_attempts}")
    k = int(num_partitions)
    rng = _rng(seed)
    classes = np.unique(values)
    by_class = [np.flatnonzero(values == c) for c in classes]
    for _ in range(max_attempts):
        pieces: list[list[np.ndarray]] = [[] for _ in range(k)]
        for idx in by_class:
            props = rng.dirichlet(np.full(k, float(alpha)))
            shuffled = rng.permutation(idx)
            cuts = (np.cumsum(props) * len(idx)).astype(int)[:-1]
            for pid, chunk in enumerate(np.split(shuffled, cuts)):
                pieces[pid].append(chunk)
        parts = [np.sort(np.concatenate(p)).astype(np.int64) for p in pieces]
        per_value_ok = min_per_value <= 0 or all(
            min(len(np.intersect1d(p, idx, assume_unique=True)) for idx in by_class)
            >= min_per_value
            for p in parts
        )
        if min(len(p) for p in parts) >= min_partition_size and per_value_ok:
            return parts
    raise DataError(
        f"dirichlet partition failed: no draw with alpha={alpha} gave all {k} partitions at least "
        f"min_partition_size={min_partition_size} rows and min_per_value={min_per_value} rows of "
        f"every value (n={n}) in {max_attempts} attempts; use a larger alpha or smaller minimums"
    )


def heterogeneous_partition(
    labels: np.ndarray,
    groups: np.ndarray,
    num_partitions: int,
    seed: int,
    gamma_min: float = 0.2,
    gamma_max: float = 0.8,
) -> list[np.ndarray]:
    """FedFACT's heterogeneous split (Appendix C.3; a generalisation of Hamman & Dutta's
    synergy-level split to N clients), for binary A and binary Y.

    Client k draws a correlation parameter gamma_k ~ U[gamma_min, gamma_max]. Its weight
    for the cell (A=i, Y=j) is gamma_k when i == j and 1 - gamma_k otherwise (the paper's
    formula is not legible in the available text; this is the natural reading, see
    fedfact.md §9.3). Client k receives floor(w_k / sum_k' w_k' * n_ij) rows of each cell;
    leftovers go one by one to the largest fractional remainders. Each cell's rows are
    shuffled before slicing. Every row is assigned exactly once.
    """
    labels, groups = np.asarray(labels), np.asarray(groups)
    if set(np.unique(labels)) - {0, 1} or set(np.unique(groups)) - {0, 1}:
        raise DataError(
            "the heterogeneous split needs a binary label and a binary sensitive attribute"
        )
    if not 0.0 <= gamma_min <= gamma_max <= 1.0:
        raise DataError(
            f"heterogeneous split: need 0 <= gamma_min <= gamma_max <= 1, got "
            f"{gamma_min}, {gamma_max}"
        )
    _check_k(len(labels), num_partitions)
    rng = _rng(seed)
    gamma = rng.uniform(gamma_min, gamma_max, size=num_partitions)
    parts: list[list[np.ndarray]] = [[] for _ in range(num_partitions)]
    for i in (0, 1):
        for j in (0, 1):
            cell = np.flatnonzero((groups == i) & (labels == j))
            rng.shuffle(cell)
            w = gamma if i == j else 1.0 - gamma
            w = w / w.sum() if w.sum() > 0 else np.full(num_partitions, 1.0 / num_partitions)
            exact = w * len(cell)
            counts = np.floor(exact).astype(np.int64)
            left = len(cell) - int(counts.sum())
            order = np.argsort(-(exact - counts), kind="stable")
            counts[order[:left]] += 1
            for k, chunk in enumerate(np.split(cell, np.cumsum(counts)[:-1])):
                parts[k].append(chunk)
    return [np.sort(np.concatenate(p)).astype(np.int64) for p in parts]


def natural_partition(ids: np.ndarray) -> list[np.ndarray]:
    """One partition per distinct id, ordered by id."""
    ids = np.asarray(ids)
    if ids.ndim != 1 or ids.size == 0:
        raise DataError(f"natural partition needs a non-empty 1-d id array, got shape {ids.shape}")
    _, inverse = np.unique(ids, return_inverse=True)
    order = np.argsort(inverse, kind="stable")
    counts = np.bincount(inverse)
    return [np.sort(p).astype(np.int64) for p in np.split(order, np.cumsum(counts)[:-1])]


def make_partitions(
    scheme: str,
    *,
    n: int,
    num_partitions: int,
    seed: int,
    labels: np.ndarray | None = None,
    groups: np.ndarray | None = None,
    ids: np.ndarray | None = None,
    alpha: float = 0.5,
    min_partition_size: int = 10,
    min_per_value: int = 0,
    gamma_min: float = 0.2,
    gamma_max: float = 0.8,
) -> list[np.ndarray]:
    """Dispatch on ``scheme`` (one of :data:`PARTITION_SCHEMES`)."""

    def need(arr: Any, what: str) -> np.ndarray:
        if arr is None:
            raise DataError(f"partition scheme '{scheme}' needs {what}")
        arr = np.asarray(arr)
        if arr.shape != (n,):
            raise DataError(
                f"partition scheme '{scheme}': {what} has shape {arr.shape}, expected ({n},)"
            )
        return arr

    if scheme == "iid":
        return iid_partition(n, num_partitions, seed)
    if scheme == "dirichlet-label":
        return dirichlet_partition(
            need(labels, "labels"),
            num_partitions,
            alpha,
            seed,
            min_partition_size,
            min_per_value=min_per_value,
        )
    if scheme == "dirichlet-sensitive":
        return dirichlet_partition(
            need(groups, "groups"),
            num_partitions,
            alpha,
            seed,
            min_partition_size,
            min_per_value=min_per_value,
        )
    if scheme == "heterogeneous":
        return heterogeneous_partition(
            need(labels, "labels"),
            need(groups, "groups"),
            num_partitions,
            seed,
            gamma_min,
            gamma_max,
        )
    if scheme == "natural":
        parts = natural_partition(need(ids, "ids"))
        if num_partitions > 0 and num_partitions != len(parts):
            raise DataError(
                f"natural partition has {len(parts)} partitions (distinct ids) but "
                f"num_partitions={num_partitions}; set num_partitions to {len(parts)}"
            )
        return parts
    raise DataError(f"unknown partition scheme '{scheme}'; allowed: {', '.join(PARTITION_SCHEMES)}")


def train_test_split_indices(
    idx: np.ndarray, test_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Seeded split of one partition's indices into sorted (train, test)."""
    if not 0.0 <= test_fraction < 1.0:
        raise DataError(f"test_fraction must be in [0, 1), got {test_fraction}")
    idx = np.asarray(idx, dtype=np.int64)
    m = idx.shape[0]
    n_test = int(round(test_fraction * m))
    if test_fraction > 0 and m >= 2:
        n_test = min(max(n_test, 1), m - 1)
    perm = _rng(seed).permutation(idx)
    return np.sort(perm[n_test:]), np.sort(perm[:n_test])


def partition_report(
    parts: list[np.ndarray], y: np.ndarray, a: np.ndarray, num_classes: int, num_groups: int
) -> dict:
    """Sizes and (partition x label x group) counts; plain ints/floats, JSON-serializable."""
    y = np.asarray(y)
    a = np.asarray(a)
    counts = np.zeros((len(parts), num_classes, num_groups), dtype=np.int64)
    for k, p in enumerate(parts):
        np.add.at(counts[k], (y[p], a[p]), 1)
    sizes = counts.sum(axis=(1, 2))
    group_tot = counts.sum(axis=1)  # (K, G)
    label_tot = counts.sum(axis=2)  # (K, C)
    denom = np.maximum(sizes, 1)[:, None]
    n = int(sizes.sum())
    return {
        "num_partitions": len(parts),
        "num_rows": n,
        "sizes": [int(s) for s in sizes],
        "size_min": int(sizes.min()) if len(parts) else 0,
        "size_max": int(sizes.max()) if len(parts) else 0,
        "size_mean": float(sizes.mean()) if len(parts) else 0.0,
        "counts": counts.tolist(),
        "group_share_per_partition": (group_tot / denom).tolist(),
        "label_share_per_partition": (label_tot / denom).tolist(),
        "group_share_overall": (group_tot.sum(0) / max(n, 1)).tolist(),
        "label_share_overall": (label_tot.sum(0) / max(n, 1)).tolist(),
    }

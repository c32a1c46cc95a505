"""Shard assignment for exact (SISA-style) federated unlearning (pure numpy / POT).

SISA (Bourtoule et al.) and its recommender versions (RecEraser, UltraRE;
``reference/unlearning_attack.md`` §5.2) train one model per shard of the data and
aggregate the shard models at serving time; deleting data retrains only the shards that
held it. In a federation the unit is the client: clients are grouped into ``S`` shards,
one federated model per shard.

- :func:`random_shards`: a seeded random permutation dealt round-robin, so shard sizes
  differ by at most one (SISA).
- :func:`balanced_shards`: UltraRE's optimal-transport balanced clustering (the same
  algorithm as ``ot_cluster`` in CURE4Rec): k-means++ centroids (seeded), then repeat
  {cost = squared distances to the centroids; exact OT (``ot.emd``) between uniform mass
  over the ``n`` points and uniform mass over the ``S`` shards; each point to the argmax
  of its transport-plan row (ties -> lower shard id); centroids = shard means} until the
  assignment stops changing or ``max_iter``. Uniform shard mass makes the clusters
  balanced: with ``n`` divisible by ``S`` the plan is a permutation-like 0/1n matrix and
  every shard gets exactly ``n / S`` points; otherwise sizes can differ by a few points
  (argmax of fractional rows). The features are whatever describes a client without
  revealing its data to others (e.g. its mean pre-trained item-embedding profile, or the
  label histogram for a classifier); which features to use is the caller's choice.
- :func:`affected_shards`: the shards a request touches.

Pure: no flwr import.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np

from fedrec.errors import ConfigError

__all__ = ["affected_shards", "balanced_shards", "random_shards", "shard_sizes"]


def _num_shards(n: int, num_shards: Any) -> int:
    if isinstance(num_shards, bool) or not isinstance(num_shards, (int, np.integer)):
        raise ConfigError(f"num_shards must be an integer, got {num_shards!r}")
    if not 1 <= int(num_shards) <= n:
        raise ConfigError(f"num_shards must be in 1..{n} (the number of clients), got {num_shards}")
    return int(num_shards)


def random_shards(num_clients: int, num_shards: int, seed: int) -> np.ndarray:
    """Shard id per client: a seeded permutation dealt round-robin (sizes differ by <= 1)."""
    if isinstance(num_clients, bool) or not isinstance(num_clients, (int, np.integer)):
        raise ConfigError(f"num_clients must be an integer, got {num_clients!r}")
    if num_clients < 1:
        raise ConfigError(f"num_clients must be >= 1, got {num_clients}")
    S = _num_shards(int(num_clients), num_shards)
    perm = np.random.default_rng(seed).permutation(int(num_clients))
    out = np.empty(int(num_clients), dtype=np.int64)
    out[perm] = np.arange(int(num_clients)) % S
    return out


def _kmeans_pp(X: np.ndarray, S: int, rng: np.random.Generator) -> np.ndarray:
    centers = [X[rng.integers(X.shape[0])]]
    for _ in range(1, S):
        d2 = np.min(((X[:, None, :] - np.asarray(centers)[None]) ** 2).sum(-1), axis=1)
        total = d2.sum()
        idx = rng.integers(X.shape[0]) if total <= 0 else rng.choice(X.shape[0], p=d2 / total)
        centers.append(X[idx])
    return np.asarray(centers, dtype=np.float64)


def balanced_shards(features: Any, num_shards: int, seed: int, max_iter: int = 50) -> np.ndarray:
    """Shard id per client by OT-balanced k-means on ``features`` ``(n, d)`` (UltraRE)."""
    import ot

    X = np.asarray(features, dtype=np.float64)
    if X.ndim != 2 or X.shape[0] < 1:
        raise ConfigError(f"features must be an (n_clients, d) array, got shape {X.shape}")
    if not np.all(np.isfinite(X)):
        raise ConfigError("features must hold finite numbers")
    n = X.shape[0]
    S = _num_shards(n, num_shards)
    rng = np.random.default_rng(seed)
    C = _kmeans_pp(X, S, rng)
    a, b = np.full(n, 1.0 / n), np.full(S, 1.0 / S)
    assign = np.full(n, -1, dtype=np.int64)
    for _ in range(max(1, int(max_iter))):
        M = ((X[:, None, :] - C[None]) ** 2).sum(-1)
        plan = ot.emd(a, b, M)
        new = np.argmax(plan, axis=1).astype(np.int64)
        if np.array_equal(new, assign):
            break
        assign = new
        for s in range(S):
            rows = assign == s
            if rows.any():
                C[s] = X[rows].mean(axis=0)
    return assign


def shard_sizes(assignment: Any, num_shards: int) -> np.ndarray:
    """Number of clients per shard."""
    return np.bincount(np.asarray(assignment, dtype=np.int64), minlength=int(num_shards))


def affected_shards(assignment: Any, clients: Iterable[int]) -> np.ndarray:
    """Sorted shard ids holding any of ``clients`` (one ConfigError for an unknown client)."""
    assign = np.asarray(assignment, dtype=np.int64)
    ids = np.asarray(list(clients), dtype=np.int64)
    bad = ids[(ids < 0) | (ids >= assign.size)]
    if bad.size:
        raise ConfigError(
            f"unknown client id(s) {sorted(set(bad.tolist()))}; clients are 0..{assign.size - 1}"
        )
    return np.unique(assign[ids])

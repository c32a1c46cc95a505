"""Top-K ranking metrics and item-/user-side fairness of recommendations (numpy, vectorised).

Inputs are a score matrix ``(n_users, n_items)`` or top-K item-id lists ``(n_users, K)`` plus the
relevant (held-out) items per user, given as a list of id arrays, an object with CSR
``indptr``/``indices`` (e.g. :class:`fedrec.recsys.splits.Ragged`), a ``scipy.sparse`` matrix or a
dense 0/1 matrix. Relevant sets are de-duplicated. Item ids are 0-based.

Ranking and ties
    :func:`topk_items` ranks each user's items by score descending, **ties broken by lower item id**
    (deterministic; identical to a stable ``argsort(-score)``). Excluded items (typically the
    user's training items) are set to ``-inf`` and never ranked; a ``-inf`` score is treated as "not
    rankable" in general. If fewer than ``K`` items are rankable the list is padded with ``-1``.
    Scores must not be NaN. :func:`first_relevant_rank` uses the same order over the full catalog.

Per-user metrics (binary relevance ``R(u)``; the definitions all oracles agree on, see
``tests/test_recsys_reference.py``)
    * ``hr@K`` = 1 if any of the top K is relevant, else 0;
    * ``precision@K`` = hits in the top K / K;
    * ``recall@K`` = hits in the top K / |R(u)| (denominator |R(u)|, not min(|R(u)|, K));
    * ``ndcg@K`` = DCG/IDCG with ``DCG = sum_{r=1..K} rel_r / log2(r + 1)`` and IDCG the DCG of
      ``min(|R(u)|, K)`` hits at the top;
    * ``mrr@K`` = 1/rank of the first relevant item if it is in the top K, else 0; ``mrr`` = the
      same over the full ranking (needs scores; 0 if no relevant item is rankable).
    A relevant item that the caller excludes stays relevant (it counts in |R(u)|) but cannot be hit.

Aggregation
    Every accuracy metric is the **mean of per-user values over the users with at least one
    relevant item** (users without are excluded, not counted as 0): a sum of per-user values and a
    user count, both summable across clients. :func:`per_user_metrics` returns the per-user values
    (NaN where undefined) and :func:`mean_metrics` the means.

Item-side fairness (popularity groups)
    * :func:`popular_items`: the **top ``fraction`` (default 20%) of items by training interaction
      count**; the group has exactly ``max(1, floor(fraction * n_items + 0.5))`` items, taken in the
      order count descending, **ties broken by lower item id** (so the group size is fixed and the
      choice deterministic, even when many items share the boundary count). The rest is the
      long tail.
    * ``exposure_pop@K`` / ``exposure_tail@K``: share of all filled top-K slots (over all users)
      occupied by popular / long-tail items (uniform over positions). Computed from the summed
      per-item exposure counts (:func:`exposure_counts`), which are summable across clients.
    * ``recall_pop@K``, ``ndcg_pop@K`` (and ``_tail``): recall / NDCG of each user against the
      relevant items **of that group only** (``R(u) ∩ G``; the top-K list itself is unchanged, so
      items of the other group still occupy positions), averaged over the users with at least one
      relevant item in the group. ``recall_gap@K`` / ``ndcg_gap@K`` = popular minus tail (signed).
    * ``gini@K``: Gini coefficient of the exposure counts over the **whole catalog** (items never
      recommended count as 0), ``sum_i (2i - n - 1) c_(i) / (n sum c)`` with counts sorted
      ascending, as RecBole's ``GiniIndex``; 0 = equal exposure, -> 1 = concentrated.
    * ``coverage@K``: share of catalog items appearing in at least one user's top K.

User-side fairness
    :func:`user_group_metrics`: per-group means of each per-user metric (users with the metric
    undefined are left out of their group's mean) and ``gap`` = max minus min over the groups that
    have at least one defined value.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from fedrec.errors import ConfigError

__all__ = [
    "catalog_coverage",
    "exposure_counts",
    "exposure_metrics",
    "first_relevant_rank",
    "gini_index",
    "hits_at",
    "mean_metrics",
    "per_user_metrics",
    "popular_items",
    "ranking_metrics",
    "topk_items",
    "user_group_metrics",
]

_CHUNK = 1 << 22  # elements per temporary block in full-ranking computations


# --------------------------------------------------------------------------- inputs


class _Csr:
    def __init__(self, indptr: np.ndarray, indices: np.ndarray):
        self.indptr, self.indices = indptr, indices


def _csr(relevant: Any, n_users: int, n_items: int | None) -> tuple[np.ndarray, np.ndarray]:
    """(indptr, indices) with sorted unique ids per row."""
    if hasattr(relevant, "indptr") and hasattr(relevant, "indices"):
        if hasattr(relevant, "tocsr"):
            m = relevant.tocsr()
            m.eliminate_zeros()
            indptr, indices = np.asarray(m.indptr, np.int64), np.asarray(m.indices, np.int64)
        else:
            indptr, indices = (
                np.asarray(relevant.indptr, np.int64),
                np.asarray(relevant.indices, np.int64),
            )
    elif isinstance(relevant, np.ndarray) and relevant.ndim == 2:
        rows, cols = np.nonzero(relevant)
        indptr = np.zeros(relevant.shape[0] + 1, np.int64)
        np.cumsum(np.bincount(rows, minlength=relevant.shape[0]), out=indptr[1:])
        indices = cols.astype(np.int64)
    else:
        arrays = [np.atleast_1d(np.asarray(x, dtype=np.int64)).reshape(-1) for x in relevant]
        indptr = np.zeros(len(arrays) + 1, np.int64)
        np.cumsum([a.size for a in arrays], out=indptr[1:])
        indices = np.concatenate(arrays) if arrays else np.zeros(0, np.int64)
    if indptr.size - 1 != n_users:
        raise ConfigError(f"relevant must have one row per user ({n_users}), got {indptr.size - 1}")
    if indices.size and (indices.min() < 0 or (n_items is not None and indices.max() >= n_items)):
        raise ConfigError(
            f"relevant item ids must be in [0, {n_items}) (got {indices.min()}..{indices.max()})"
        )
    rows = np.repeat(np.arange(n_users, dtype=np.int64), np.diff(indptr))
    span = int(indices.max()) + 1 if indices.size else 1
    span = max(span, n_items or 0)
    keys = np.sort(rows * span + indices)
    keys = keys[np.concatenate([[True], keys[1:] != keys[:-1]])] if keys.size else keys
    indptr = np.zeros(n_users + 1, np.int64)
    np.cumsum(np.bincount(keys // span, minlength=n_users), out=indptr[1:])
    return indptr, keys % span


def _scores(scores: Any) -> np.ndarray:
    s = np.array(
        scores.detach().cpu().numpy() if hasattr(scores, "detach") else scores, dtype=np.float64
    )
    if s.ndim != 2:
        raise ConfigError(f"scores must be a 2-D (users x items) matrix (got shape {s.shape})")
    if np.isnan(s).any():
        raise ConfigError("scores must not contain NaN")
    return s


def _apply_exclude(s: np.ndarray, exclude: Any) -> np.ndarray:
    if exclude is None:
        return s
    indptr, indices = _csr(exclude, s.shape[0], s.shape[1])
    rows = np.repeat(np.arange(s.shape[0]), np.diff(indptr))
    s[rows, indices] = -np.inf
    return s


def _check_k(k_list: Sequence[int], name: str = "k_list") -> list[int]:
    raw = list(np.atleast_1d(k_list))
    if not raw or any(not float(k).is_integer() or k < 1 for k in raw):
        what = "must be an integer >= 1" if name == "k" else "must hold integers >= 1"
        raise ConfigError(f"{name} {what} (got {k_list!r})")
    return [int(k) for k in raw]


# --------------------------------------------------------------------------- ranking


def topk_items(scores: Any, k: int, exclude: Any = None) -> np.ndarray:
    """Top-``k`` item ids per user ``(n_users, k)``.

    Score descending, ties by lower id; ``-1`` pads.
    """
    k = _check_k([k], "k")[0]
    s = _apply_exclude(_scores(scores), exclude)
    n_users, n_items = s.shape
    kk = min(k, n_items)
    out = np.full((n_users, k), -1, dtype=np.int64)
    if n_users == 0 or n_items == 0:
        return out
    neg = -s
    if kk < n_items:
        cand = np.argpartition(neg, kk - 1, axis=1)[:, :kk]
        boundary = np.take_along_axis(neg, cand, axis=1).max(axis=1)
        # rows where items outside the candidates tie with the boundary need the exact order
        tied = (neg <= boundary[:, None]).sum(axis=1) > kk
    else:
        cand = np.broadcast_to(np.arange(n_items), (n_users, n_items)).copy()
        tied = np.zeros(n_users, dtype=bool)
    cv = np.take_along_axis(neg, cand, axis=1)
    o = np.lexsort((cand, cv), axis=1)
    top = np.take_along_axis(cand, o, axis=1)
    if tied.any():
        top[tied] = np.argsort(neg[tied], axis=1, kind="stable")[:, :kk]
    top_s = np.take_along_axis(s, top, axis=1)
    out[:, :kk] = np.where(np.isneginf(top_s), -1, top)
    return out


def hits_at(topk: np.ndarray, relevant: Any) -> np.ndarray:
    """Boolean ``(n_users, K)``: is ``topk[u, r]`` relevant for ``u``?

    ``-1`` entries are never hits.
    """
    topk = np.asarray(topk, dtype=np.int64)
    if topk.ndim != 2:
        raise ConfigError(f"topk must be a 2-D (users x K) id matrix (got shape {topk.shape})")
    indptr, indices = _csr(relevant, topk.shape[0], None)
    span = int(max(indices.max(initial=-1), topk.max(initial=-1))) + 1
    rows = np.repeat(np.arange(topk.shape[0], dtype=np.int64), np.diff(indptr))
    keys = rows * span + indices  # sorted (rows ascending, ids sorted per row)
    q = np.arange(topk.shape[0], dtype=np.int64)[:, None] * span + topk
    pos = np.searchsorted(keys, q)
    if keys.size == 0:
        return np.zeros(topk.shape, dtype=bool)
    found = (pos < keys.size) & (keys[np.minimum(pos, keys.size - 1)] == q)
    return found & (topk >= 0)


def first_relevant_rank(scores: Any, relevant: Any, exclude: Any = None) -> np.ndarray:
    """1-based rank of each user's best relevant item.

    The rank is over the full catalog, in the same order as :func:`topk_items`.
    ``inf`` if none of the user's relevant items is rankable; ``nan`` if the user has none.
    """
    s = _apply_exclude(_scores(scores), exclude)
    n_users, n_items = s.shape
    indptr, indices = _csr(relevant, n_users, n_items)
    rows = np.repeat(np.arange(n_users, dtype=np.int64), np.diff(indptr))
    ranks = np.full(indices.size, np.inf)
    step = max(1, _CHUNK // max(n_items, 1))
    ids = np.arange(n_items)
    for a in range(0, indices.size, step):
        r, i = rows[a : a + step], indices[a : a + step]
        si = s[r, i][:, None]
        block = s[r]
        better = (block > si) | ((block == si) & (ids[None, :] < i[:, None]))
        rk = better.sum(axis=1) + 1.0
        ranks[a : a + step] = np.where(np.isneginf(si[:, 0]), np.inf, rk)
    best = np.full(n_users, np.nan)
    has = np.diff(indptr) > 0
    best[has] = np.minimum.reduceat(ranks, indptr[:-1][has]) if indices.size else best[has]
    return best


# --------------------------------------------------------------------------- per-user metrics


def _discounts(k: int) -> np.ndarray:
    return 1.0 / np.log2(np.arange(2, k + 2, dtype=np.float64))


def _accuracy(hits: np.ndarray, n_rel: np.ndarray, k: int) -> dict[str, np.ndarray]:
    h = hits[:, :k]
    disc = _discounts(k)
    idcg_cum = np.concatenate([[0.0], np.cumsum(disc)])
    valid = n_rel > 0
    nh = h.sum(axis=1).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        ndcg = (h * disc[: h.shape[1]]).sum(axis=1) / idcg_cum[np.minimum(n_rel, k)]
        recall = nh / n_rel
    first = np.where(h.any(axis=1), h.argmax(axis=1) + 1.0, np.inf)
    out = {
        f"hr@{k}": (nh > 0).astype(np.float64),
        f"precision@{k}": nh / k,
        f"recall@{k}": recall,
        f"ndcg@{k}": ndcg,
        f"mrr@{k}": 1.0 / first,
    }
    for v in out.values():
        v[~valid] = np.nan
    return out


def per_user_metrics(
    topk: np.ndarray,
    relevant: Any,
    k_list: Sequence[int] = (10, 20),
    *,
    ranks: np.ndarray | None = None,
    popular: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """Per-user metric values (NaN where a user has no relevant item); see the module docstring.

    ``topk``: ``(n_users, K)`` ids with ``K >= max(k_list)``. ``ranks``: output of
    :func:`first_relevant_rank` to add the full-list ``mrr``. ``popular``: boolean item mask from
    :func:`popular_items` to add ``recall_pop@K``, ``ndcg_pop@K``, ``recall_tail@K``,
    ``ndcg_tail@K``.
    """
    ks = _check_k(k_list)
    topk = np.asarray(topk, dtype=np.int64)
    if topk.ndim != 2 or topk.shape[1] < max(ks):
        raise ConfigError(
            f"topk must be (n_users, K) with K >= max(k_list)={max(ks)} (got {topk.shape})"
        )
    n_users = topk.shape[0]
    indptr, indices = _csr(relevant, n_users, None)
    n_rel = np.diff(indptr)
    hits = hits_at(topk, _Csr(indptr, indices))
    out: dict[str, np.ndarray] = {}
    for k in ks:
        out.update(_accuracy(hits, n_rel, k))
    if ranks is not None:
        ranks = np.asarray(ranks, dtype=np.float64)
        if ranks.shape != (n_users,):
            raise ConfigError(f"ranks must have shape ({n_users},) (got {ranks.shape})")
        with np.errstate(divide="ignore"):
            out["mrr"] = np.where(n_rel > 0, 1.0 / ranks, np.nan)
    if popular is not None:
        popular = np.asarray(popular, dtype=bool)
        if indices.size and indices.max() >= popular.size:
            raise ConfigError(
                f"popular must be a boolean mask over all items (size {popular.size} too small)"
            )
        rows = np.repeat(np.arange(n_users), n_rel)
        safe = np.where(topk >= 0, topk, 0)
        top_pop = popular[safe] & (topk >= 0)
        groups = (
            ("pop", popular[indices], top_pop),
            ("tail", ~popular[indices], ~top_pop & (topk >= 0)),
        )
        for name, in_group, top_in in groups:
            g_rel = np.bincount(rows[in_group], minlength=n_users)
            g_hits = hits & top_in  # a hit on a group item is a hit against R(u) ∩ G
            for k in ks:
                acc = _accuracy(g_hits, g_rel, k)
                out[f"recall_{name}@{k}"] = acc[f"recall@{k}"]
                out[f"ndcg_{name}@{k}"] = acc[f"ndcg@{k}"]
    return out


def mean_metrics(per_user: dict[str, np.ndarray]) -> dict[str, float]:
    """Mean of each per-user metric over the users where it is defined (NaN if none)."""
    out = {}
    for name, v in per_user.items():
        v = np.asarray(v, dtype=np.float64)
        ok = ~np.isnan(v)
        out[name] = float(v[ok].mean()) if ok.any() else float("nan")
    return out


# --------------------------------------------------------------------------- item-side fairness


def popular_items(item_counts: np.ndarray, fraction: float = 0.2) -> np.ndarray:
    """Boolean mask of the top ``fraction`` items by count (fixed size, ties by lower item id)."""
    counts = np.asarray(item_counts).reshape(-1)
    if counts.size == 0:
        raise ConfigError("item_counts must not be empty")
    if not 0.0 < fraction < 1.0:
        raise ConfigError(f"fraction must be in (0, 1) (got {fraction})")
    n_pop = max(1, int(np.floor(fraction * counts.size + 0.5)))
    order = np.lexsort((np.arange(counts.size), -counts.astype(np.float64)))
    mask = np.zeros(counts.size, dtype=bool)
    mask[order[:n_pop]] = True
    return mask


def exposure_counts(topk: np.ndarray, num_items: int, k: int | None = None) -> np.ndarray:
    """Times each item appears in the (first ``k`` columns of the) top-K lists; ``-1`` ignored."""
    t = np.asarray(topk, dtype=np.int64)
    t = t if k is None else t[:, :k]
    t = t[t >= 0]
    if t.size and t.max() >= num_items:
        raise ConfigError(f"topk ids must be < num_items={num_items} (got {t.max()})")
    return np.bincount(t, minlength=num_items).astype(np.int64)


def gini_index(counts: np.ndarray) -> float:
    """Gini coefficient of non-negative counts over all items (0 when all equal or all zero)."""
    c = np.sort(np.asarray(counts, dtype=np.float64).reshape(-1))
    n, total = c.size, c.sum()
    if n == 0 or total == 0:
        return 0.0
    idx = np.arange(1, n + 1)
    return float(((2 * idx - n - 1) * c).sum() / (n * total))


def catalog_coverage(counts: np.ndarray) -> float:
    """Share of items with a positive exposure count."""
    c = np.asarray(counts).reshape(-1)
    return float((c > 0).mean()) if c.size else 0.0


def exposure_metrics(
    topk: np.ndarray,
    num_items: int,
    k_list: Sequence[int] = (10, 20),
    popular: np.ndarray | None = None,
) -> dict[str, float]:
    """``gini@K``, ``coverage@K``.

    With ``popular``, also ``exposure_pop@K`` / ``exposure_tail@K``.
    """
    out = {}
    for k in _check_k(k_list):
        c = exposure_counts(topk, num_items, k)
        out[f"gini@{k}"] = gini_index(c)
        out[f"coverage@{k}"] = catalog_coverage(c)
        if popular is not None:
            total = c.sum()
            pop = c[np.asarray(popular, dtype=bool)].sum()
            out[f"exposure_pop@{k}"] = float(pop / total) if total else float("nan")
            out[f"exposure_tail@{k}"] = float((total - pop) / total) if total else float("nan")
    return out


# --------------------------------------------------------------------------- user-side fairness


def user_group_metrics(per_user: dict[str, np.ndarray], groups: np.ndarray) -> dict[str, float]:
    """Per-group means and gaps of per-user metrics.

    ``"{metric}[{g}]"``: mean of ``metric`` over group ``g``; ``"{metric}_gap"``: max - min over
    groups.
    """
    groups = np.asarray(groups).reshape(-1)
    out: dict[str, float] = {}
    labels = np.unique(groups)
    for name, v in per_user.items():
        v = np.asarray(v, dtype=np.float64)
        if v.shape != groups.shape:
            raise ConfigError(f"groups must have one entry per user ({v.size}), got {groups.size}")
        means = []
        for g in labels:
            sel = (groups == g) & ~np.isnan(v)
            m = float(v[sel].mean()) if sel.any() else float("nan")
            out[f"{name}[{g}]"] = m
            if sel.any():
                means.append(m)
        out[f"{name}_gap"] = float(max(means) - min(means)) if means else float("nan")
    return out


# --------------------------------------------------------------------------- one call


def ranking_metrics(
    relevant: Any,
    *,
    scores: Any = None,
    topk: np.ndarray | None = None,
    k_list: Sequence[int] = (10, 20),
    exclude: Any = None,
    popular: np.ndarray | None = None,
    num_items: int | None = None,
    user_groups: np.ndarray | None = None,
) -> dict[str, float]:
    """All metrics as one flat dict.

    Accuracy means, item-side fairness and, with ``user_groups``, gaps.

    Give ``scores`` (then ``exclude`` masks items, ``mrr`` over the full list is added) or ``topk``
    (``num_items`` then needed for exposure metrics). With ``popular`` the popularity-group metrics
    and gaps are added. ``num_users`` is the number of users with at least one relevant item.
    """
    ks = _check_k(k_list)
    if (scores is None) == (topk is None):
        raise ConfigError("give exactly one of scores or topk")
    ranks = None
    if scores is not None:
        s = _apply_exclude(_scores(scores), exclude)
        num_items = s.shape[1]
        topk = topk_items(s, max(ks))
        ranks = first_relevant_rank(s, relevant)
    topk = np.asarray(topk, dtype=np.int64)
    pu = per_user_metrics(topk, relevant, ks, ranks=ranks, popular=popular)
    out = mean_metrics(pu)
    out["num_users"] = float((~np.isnan(pu[f"hr@{ks[0]}"])).sum())
    if popular is not None:
        for k in ks:
            out[f"recall_gap@{k}"] = out[f"recall_pop@{k}"] - out[f"recall_tail@{k}"]
            out[f"ndcg_gap@{k}"] = out[f"ndcg_pop@{k}"] - out[f"ndcg_tail@{k}"]
    if num_items is not None:
        out.update(exposure_metrics(topk, num_items, ks, popular))
    if user_groups is not None:
        out.update(user_group_metrics(pu, user_groups))
    return out

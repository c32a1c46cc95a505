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

Item-group fairness (BiFair / UFO / IFairLRS)
    Item groups are a boolean **membership** matrix ``M`` of shape ``(n_items, G)``: ``M[i, g]``
    says item ``i`` belongs to group ``g``. An item may be in several groups (multi-genre) or in
    none; popularity groups are one-hot (:func:`popularity_groups` + :func:`group_membership`).
    An item in several groups counts **fully in each** of them (no splitting of its weight).

    * :func:`popularity_groups`: items ordered by training interaction count **descending, ties by
      lower item id**, that order split into ``n_groups`` contiguous chunks with ``np.array_split``
      sizes (the first ``n_items % n_groups`` chunks one item larger); group 0 = most popular.
    * Pair utilities (BiFair): every held-out ``(u, i)`` pair, ``i ∈ R(u)``, with ``pos`` the
      1-based position of ``i`` in ``u``'s list: ``ndcg@K(u, i) = 1 / log2(pos + 1)`` if
      ``pos <= K`` else 0 (IDCG = 1 per pair), ``hr@K(u, i) = 1[pos <= K]``.
      :func:`group_utility_sums` returns, per group ``g``, ``ndcg_sum[g] = sum_{(u,i): M[i,g]}
      ndcg@K(u, i)``, ``hr_sum[g]`` likewise and ``count[g] = #{(u, i) : M[i, g]}`` (summable
      across clients); :func:`group_utility` the means ``ndcg_sum / count``, ``hr_sum / count``
      (NaN where ``count = 0``). With one held-out item per user this is the mean per-user NDCG /
      HR of the users whose test item is in ``g``. A relevant item missing from the list (e.g.
      excluded) is a pair with utility 0.
    * :func:`utility_disparity` over the valid groups ``V`` (finite utility and, if counts are
      given, ``count >= min_count``), ``n = |V|``, ``m = mean_{g∈V} U_g``:
      ``worst25_ratio = mean(q smallest U_g) / m`` with ``q = max(1, ceil(quantile * n))`` (the
      bottom quartile is ``ceil(n / 4)`` groups, at least 1; 1 = perfectly even, -> 0 = the worst
      groups get nothing); ``range_gap = max - min``; ``cv = std / m`` (population std, ddof=0);
      ``min``, ``max``, ``mean``, ``n_groups = n``. ``worst25_ratio`` and ``cv`` are NaN when
      ``m = 0``; every value except ``n_groups`` is NaN when ``n = 0``.
    * Exposure (IFairLRS / UFO "GR"): :func:`group_exposure_counts` ``c[g] = #{(u, r) : r <= K,
      topk[u, r] >= 0, M[topk[u, r], g]}`` (summable across clients); :func:`group_shares`
      ``GR[g] = c[g] / sum_h c[h]``. For multi-label groups this normalises over **group labels**
      (an item in two groups adds one label to each), so shares sum to 1 over groups.
    * :func:`group_distribution` ("GP", the reference distribution, e.g. over all training
      interactions): ``GP[g] = w[g] / sum_h w[h]`` with ``w[g] = sum_j weight_j M[item_j, g]``
      (``weight_j = 1`` by default).
    * :func:`distribution_unfairness` of ``GP`` vs ``GR`` (both first renormalised to sum 1),
      ``d = GP - GR``: ``mgu = mean_g |d_g|`` (mean group unfairness), ``dgu = max_g d_g -
      min_g d_g`` (disparity), ``tv = 0.5 * sum_g |d_g|`` (total variation) and ``kl =
      KL(GP || GR) = sum_g p_g ln(p_g / q_g)`` in nats on the **eps-smoothed, renormalised**
      ``p = (GP + eps) / sum(GP + eps)``, ``q = (GR + eps) / sum(GR + eps)`` (without smoothing
      KL is infinite as soon as a group with ``GP > 0`` gets no exposure).
    * :func:`group_mass` (UFO, next-item distributions): ``mass[n, g] = sum_{i : M[i, g]}
      P[n, i]`` with ``P = softmax(logits)`` row-wise (computed stably; ``-inf`` = zero mass) or
      the given probabilities. Rows sum to 1 over groups only for a one-hot membership covering
      every item; for multi-label (or partial) membership normalise rows to shares like
      :func:`group_shares` (``group_shares`` accepts a 2-D matrix and normalises each row;
      ``group_mass(..., normalize=True)`` does the same).
    * :func:`bias_covariance` (UFO's diagnostic: does fine-tuning move the groups along their
      pretraining bias?): per-user group-share rows ``pre``, ``post`` ``(n_users, G)`` and an
      ideal distribution ``ideal`` ``(G,)``; pretraining bias ``b = mean_u pre[u] - ideal``,
      fine-tuning shift ``s = mean_u post[u] - mean_u pre[u]`` (vectors over groups);
      ``cov = sum_g (b_g - mean b)(s_g - mean s) / (G - 1)`` (``np.cov`` ddof=1), ``corr`` =
      Pearson's r of ``(b, s)`` (NaN if either is constant). The interval ``[lo, hi]`` is the
      percentile bootstrap at ``level`` over ``n_boot`` resamplings of **users** with replacement
      (the same rows of ``pre`` and ``post``; ``np.random.default_rng(seed)``), ``p_positive`` the
      share of bootstrap covariances > 0. 1-D ``pre`` / ``post`` (already averaged) give the point
      estimates only (``lo = hi = p_positive = NaN``, ``n_users = 1``).

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
    "bias_covariance",
    "catalog_coverage",
    "distribution_unfairness",
    "exposure_counts",
    "exposure_metrics",
    "first_relevant_rank",
    "gini_index",
    "group_distribution",
    "group_exposure_counts",
    "group_mass",
    "group_membership",
    "group_shares",
    "group_utility",
    "group_utility_sums",
    "hits_at",
    "mean_metrics",
    "per_user_metrics",
    "popular_items",
    "popularity_groups",
    "ranking_metrics",
    "topk_items",
    "user_group_metrics",
    "utility_disparity",
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


# --------------------------------------------------------------------------- item-group fairness


def _int_arg(value: Any, name: str, lo: int, hi: int | None = None) -> int:
    """``value`` as an int in ``[lo, hi]`` or a ConfigError naming ``name``."""
    ok = isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))
    if not ok and isinstance(value, (float, np.floating)) and float(value).is_integer():
        ok, value = True, int(value)
    if not ok or value < lo or (hi is not None and value > hi):
        allowed = f"an integer in [{lo}, {hi}]" if hi is not None else f"an integer >= {lo}"
        raise ConfigError(f"{name} must be {allowed} (got {value!r})")
    return int(value)


def _membership(membership: Any) -> np.ndarray:
    """Validated boolean ``(n_items, G)`` membership matrix."""
    m = np.asarray(membership.toarray() if hasattr(membership, "toarray") else membership)
    if m.ndim != 2 or m.shape[0] < 1 or m.shape[1] < 1:
        raise ConfigError(
            f"membership must be a 2-D (n_items, G) boolean matrix with n_items, G >= 1 "
            f"(got shape {m.shape})"
        )
    if m.dtype != bool:
        if not np.isin(m, (0, 1)).all():
            raise ConfigError("membership must hold only booleans or 0/1")
        m = m.astype(bool)
    return m


def _topk_ids(topk: Any, k: int, n_items: int) -> np.ndarray:
    """First ``k`` columns of a validated top-K id matrix (ids in [-1, n_items))."""
    k = _check_k([k], "k")[0]
    t = np.asarray(topk)
    if t.ndim != 2 or t.shape[1] < k:
        raise ConfigError(
            f"topk must be a 2-D (n_users, K) id matrix with K >= k={k} (got {t.shape})"
        )
    t = t[:, :k].astype(np.int64)
    if t.size and (t.min() < -1 or t.max() >= n_items):
        raise ConfigError(
            f"topk ids must be -1 (padding) or in [0, {n_items}) = membership rows "
            f"(got {t.min()}..{t.max()})"
        )
    return t


def _vector(x: Any, name: str, nonneg: bool = True) -> np.ndarray:
    v = np.asarray(x, dtype=np.float64)
    if v.ndim != 1 or v.size == 0:
        raise ConfigError(f"{name} must be a non-empty 1-D array (got shape {v.shape})")
    if not np.isfinite(v).all() or (nonneg and (v < 0).any()):
        what = "finite and non-negative" if nonneg else "finite"
        raise ConfigError(f"{name} must be {what}")
    return v


def popularity_groups(item_counts: Any, n_groups: int = 5) -> np.ndarray:
    """Popularity quantile group of each item, ``int64 (n_items,)``; group 0 = most popular.

    Items are ordered by ``item_counts`` descending, ties by lower item id, and that order is cut
    into ``n_groups`` contiguous chunks of sizes ``np.array_split(order, n_groups)`` (the first
    ``n_items % n_groups`` chunks have ``n_items // n_groups + 1`` items, the rest one fewer).
    """
    counts = np.asarray(item_counts, dtype=np.float64)
    if counts.ndim != 1 or counts.size == 0 or not np.isfinite(counts).all():
        raise ConfigError(
            f"item_counts must be a non-empty finite 1-D array (got shape {counts.shape})"
        )
    n = counts.size
    n_groups = _int_arg(n_groups, "n_groups", 1, n)
    order = np.lexsort((np.arange(n), -counts))
    sizes = np.full(n_groups, n // n_groups, dtype=np.int64)
    sizes[: n % n_groups] += 1
    out = np.empty(n, dtype=np.int64)
    out[order] = np.repeat(np.arange(n_groups, dtype=np.int64), sizes)
    return out


def group_membership(groups: Any, n_groups: int | None = None) -> np.ndarray:
    """One-hot boolean membership ``(n_items, n_groups)`` from integer labels ``groups``.

    ``membership[i, g] = (groups[i] == g)``; a label ``< 0`` means "no group" (an all-False row).
    ``n_groups`` defaults to ``max(groups) + 1`` and must exceed every label.
    """
    g = np.asarray(groups)
    if g.ndim != 1 or g.size == 0:
        raise ConfigError(f"groups must be a non-empty 1-D array of labels (got shape {g.shape})")
    if not np.issubdtype(g.dtype, np.integer):
        if not (np.issubdtype(g.dtype, np.floating) and np.all(np.mod(g, 1) == 0)):
            raise ConfigError("groups must hold integer labels (< 0 = no group)")
        g = g.astype(np.int64)
    top = int(g.max())
    if n_groups is None:
        if top < 0:
            raise ConfigError("groups has no label >= 0; give n_groups explicitly")
        n_groups = top + 1
    n_groups = _int_arg(n_groups, "n_groups", max(1, top + 1))
    return g[:, None] == np.arange(n_groups)[None, :]


def group_utility_sums(
    topk: Any, relevant: Any, membership: Any, k: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-group sums of pair NDCG@k and HR@k and pair counts (summable across clients).

    For every held-out pair ``(u, i)``, ``i ∈ R(u)``, at 1-based position ``pos`` in ``topk[u]``:
    ``ndcg = 1 / log2(pos + 1)`` if ``pos <= k`` else 0, ``hr = 1[pos <= k]``. Returns
    ``(ndcg_sum, hr_sum, count)``, each ``(G,)``: ``ndcg_sum[g] = sum_{(u,i): M[i,g]} ndcg``,
    ``hr_sum`` likewise (float64), ``count[g] = #{(u, i) : M[i, g]}`` (int64); a pair counts in
    every group of its item. ``topk``: ``(n_users, K)``, ``K >= k``, ``-1`` padded, each item at
    most once per row; ``relevant``: as elsewhere in this module.
    """
    m = _membership(membership)
    n_items = m.shape[0]
    t = _topk_ids(topk, k, n_items)
    srt = np.sort(t, axis=1)
    if ((srt[:, 1:] == srt[:, :-1]) & (srt[:, 1:] >= 0)).any():
        raise ConfigError("topk must not repeat an item within a user's list")
    indptr, indices = _csr(relevant, t.shape[0], n_items)
    hits = hits_at(t, _Csr(indptr, indices))
    rows, cols = np.nonzero(hits)
    items = t[rows, cols]
    mf = m.astype(np.float64)
    item_ndcg = np.bincount(items, weights=_discounts(t.shape[1])[cols], minlength=n_items)
    item_hr = np.bincount(items, minlength=n_items).astype(np.float64)
    item_count = np.bincount(indices, minlength=n_items).astype(np.int64)
    return item_ndcg @ mf, item_hr @ mf, item_count @ m.astype(np.int64)


def group_utility(topk: Any, relevant: Any, membership: Any, k: int) -> dict[str, np.ndarray]:
    """Per-group mean pair utilities: ``"ndcg"``, ``"hr"`` (``(G,)``, NaN where ``count = 0``)
    and ``"count"``; ``ndcg[g] = ndcg_sum[g] / count[g]`` from :func:`group_utility_sums`."""
    ndcg_sum, hr_sum, count = group_utility_sums(topk, relevant, membership, k)
    with np.errstate(invalid="ignore", divide="ignore"):
        ndcg = np.where(count > 0, ndcg_sum / count, np.nan)
        hr = np.where(count > 0, hr_sum / count, np.nan)
    return {"ndcg": ndcg, "hr": hr, "count": count}


def utility_disparity(
    utility: Any, count: Any = None, min_count: float = 1, quantile: float = 0.25
) -> dict[str, float]:
    """Spread of per-group utilities over the valid groups (see the module docstring).

    Valid groups ``V``: finite ``utility`` and, with ``count``, ``count >= min_count``; ``n =
    |V|``, ``m`` the mean over ``V``. ``worst25_ratio = mean of the q = max(1, ceil(quantile * n))
    smallest utilities / m`` (``quantile=0.25``: the bottom quartile, ``ceil(n / 4)`` groups);
    ``range_gap = max - min``; ``cv = std / m`` (ddof=0); ``min``, ``max``, ``mean``;
    ``n_groups = n``. ``worst25_ratio`` and ``cv`` are NaN if ``m = 0``; all but ``n_groups`` are
    NaN if ``n = 0``.
    """
    u = np.asarray(utility, dtype=np.float64)
    if u.ndim != 1:
        raise ConfigError(f"utility must be a 1-D per-group array (got shape {u.shape})")
    if not 0.0 < quantile <= 1.0:
        raise ConfigError(f"quantile must be in (0, 1] (got {quantile})")
    valid = np.isfinite(u)
    if count is not None:
        c = np.asarray(count, dtype=np.float64)
        if c.shape != u.shape:
            raise ConfigError(f"count must have the shape of utility {u.shape} (got {c.shape})")
        if not min_count >= 0:
            raise ConfigError(f"min_count must be >= 0 (got {min_count})")
        valid &= c >= min_count
    v = np.sort(u[valid])
    n = int(v.size)
    nan = float("nan")
    if n == 0:
        out = dict.fromkeys(("worst25_ratio", "range_gap", "cv", "min", "max", "mean"), nan)
        out["n_groups"] = 0
        return out
    mean = float(v.mean())
    q = max(1, int(np.ceil(round(quantile * n, 9))))  # round: 0.1 * 30 must give 3, not 4
    return {
        "worst25_ratio": float(v[:q].mean() / mean) if mean != 0 else nan,
        "range_gap": float(v[-1] - v[0]),
        "cv": float(v.std() / mean) if mean != 0 else nan,
        "min": float(v[0]),
        "max": float(v[-1]),
        "mean": mean,
        "n_groups": n,
    }


def group_exposure_counts(topk: Any, membership: Any, k: int) -> np.ndarray:
    """Group exposure ``c[g] = #{(u, r) : r <= k, topk[u, r] >= 0, M[topk[u, r], g]}``.

    float64 ``(G,)``; each filled slot of the first ``k`` columns adds 1 to every group of its
    item (``-1`` padding is ignored). Summable across clients.
    """
    m = _membership(membership)
    t = _topk_ids(topk, k, m.shape[0])
    item_counts = np.bincount(t[t >= 0], minlength=m.shape[0]).astype(np.float64)
    return item_counts @ m.astype(np.float64)


def group_shares(counts: Any) -> np.ndarray:
    """Normalise group counts to shares: ``counts / counts.sum()`` (sum to 1 over groups).

    A 2-D ``(n, G)`` input is normalised row by row. Counts must be finite and non-negative with
    a positive sum (per row).
    """
    c = np.asarray(counts, dtype=np.float64)
    if c.ndim not in (1, 2) or c.shape[-1] == 0:
        raise ConfigError(
            f"counts must be a non-empty 1-D (G,) or 2-D (n, G) array (got {c.shape})"
        )
    if not np.isfinite(c).all() or (c < 0).any():
        raise ConfigError("counts must be finite and non-negative")
    total = c.sum(axis=-1, keepdims=True)
    if (total <= 0).any():
        raise ConfigError("counts must have a positive sum (per row); shares are undefined")
    return c / total


def group_distribution(items: Any, membership: Any, weights: Any = None) -> np.ndarray:
    """GP: the share of group labels among a multiset of item ids, ``(G,)`` summing to 1.

    ``GP[g] = w[g] / sum_h w[h]``, ``w[g] = sum_j weights[j] * M[items[j], g]`` (``weights``
    default 1), normalised as :func:`group_shares`.
    """
    m = _membership(membership)
    it = np.asarray(items)
    if it.ndim != 1 or (it.size and not np.issubdtype(it.dtype, np.integer)):
        raise ConfigError(
            f"items must be a 1-D array of integer item ids (got {it.dtype} {it.shape})"
        )
    it = it.astype(np.int64)
    if it.size and (it.min() < 0 or it.max() >= m.shape[0]):
        raise ConfigError(f"items must be in [0, {m.shape[0]}) = membership rows")
    w = None
    if weights is not None:
        w = np.asarray(weights, dtype=np.float64)
        if w.shape != it.shape or not np.isfinite(w).all() or (w < 0).any():
            raise ConfigError(
                f"weights must be finite, non-negative and shaped like items {it.shape}"
            )
    per_item = np.bincount(it, weights=w, minlength=m.shape[0]).astype(np.float64)
    per_group = per_item @ m.astype(np.float64)
    if per_group.sum() <= 0:
        raise ConfigError("items (with weights) must put positive weight on at least one group")
    return per_group / per_group.sum()


def distribution_unfairness(gp: Any, gr: Any, eps: float = 1e-6) -> dict[str, float]:
    """Distance between a reference group distribution ``gp`` and an exposure one ``gr``.

    Both are renormalised to sum 1; ``d = gp - gr``. ``mgu = mean_g |d_g|``, ``dgu = max_g d_g -
    min_g d_g``, ``tv = 0.5 * sum_g |d_g|``, ``kl = sum_g p_g ln(p_g / q_g)`` (nats) with
    ``p = (gp + eps) / sum(gp + eps)``, ``q = (gr + eps) / sum(gr + eps)`` (smoothing keeps KL
    finite when a group gets no exposure; ``eps=0`` gives the unsmoothed, possibly inf, KL).
    """
    p = _vector(gp, "gp")
    q = _vector(gr, "gr")
    if p.shape != q.shape:
        raise ConfigError(f"gp and gr must have the same length (got {p.size} and {q.size})")
    if not eps >= 0:
        raise ConfigError(f"eps must be >= 0 (got {eps})")
    for name, v in (("gp", p), ("gr", q)):
        if v.sum() <= 0:
            raise ConfigError(f"{name} must have a positive sum")
    p, q = p / p.sum(), q / q.sum()
    d = p - q
    ps, qs = (p + eps) / (p + eps).sum(), (q + eps) / (q + eps).sum()
    with np.errstate(divide="ignore"):
        terms = np.where(ps > 0, ps * (np.log(ps) - np.log(qs)), 0.0)
    return {
        "mgu": float(np.abs(d).mean()),
        "dgu": float(d.max() - d.min()),
        "tv": float(0.5 * np.abs(d).sum()),
        "kl": float(terms.sum()),
    }


def group_mass(
    logprobs_or_probs: Any, membership: Any, log: bool = True, *, normalize: bool = False
) -> np.ndarray:
    """Probability mass of next-item distributions on each item group, ``(n, G)``.

    ``mass[r, g] = sum_{i : M[i, g]} P[r, i]`` with ``P = softmax(x)`` row-wise if ``log``
    (``x - max`` first, so any logits / log-probabilities work; ``-inf`` = zero mass) else
    ``P = x`` as given (finite, non-negative). Rows sum to 1 over groups only for a one-hot
    membership covering every item; ``normalize=True`` divides each row by its sum (the shares of
    :func:`group_shares`). A 1-D input is one distribution and gives ``(G,)``.
    """
    m = _membership(membership)
    x = np.asarray(
        logprobs_or_probs.detach().cpu().numpy()
        if hasattr(logprobs_or_probs, "detach")
        else logprobs_or_probs,
        dtype=np.float64,
    )
    one = x.ndim == 1
    x = x[None, :] if one else x
    if x.ndim != 2 or x.shape[1] != m.shape[0]:
        raise ConfigError(
            f"logprobs_or_probs must be (n, n_items={m.shape[0]}) or (n_items,) "
            f"(got shape {np.shape(logprobs_or_probs)})"
        )
    if log:
        if np.isnan(x).any() or np.isposinf(x).any():
            raise ConfigError("logprobs_or_probs (log=True) must not contain NaN or +inf")
        mx = x.max(axis=1, keepdims=True)
        if np.isneginf(mx).any():
            raise ConfigError("logprobs_or_probs (log=True) has a row that is all -inf")
        p = np.exp(x - mx)
        p /= p.sum(axis=1, keepdims=True)
    else:
        if not np.isfinite(x).all() or (x < 0).any():
            raise ConfigError("logprobs_or_probs (log=False) must be finite and non-negative")
        p = x
    mass = p @ m.astype(np.float64)
    if normalize:
        total = mass.sum(axis=1, keepdims=True)
        if (total <= 0).any():
            raise ConfigError(
                "logprobs_or_probs has a row with no mass on any group; cannot normalize"
            )
        mass = mass / total
    return mass[0] if one else mass


def _centred_cov(b: np.ndarray, s: np.ndarray) -> np.ndarray:
    """Sample covariance (ddof=1) over the last axis."""
    bc = b - b.mean(axis=-1, keepdims=True)
    sc = s - s.mean(axis=-1, keepdims=True)
    return (bc * sc).sum(axis=-1) / (b.shape[-1] - 1)


def bias_covariance(
    pre: Any,
    post: Any,
    ideal: Any,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> dict[str, float]:
    """UFO's diagnostic: covariance over groups of pretraining bias and fine-tuning shift.

    ``b = mean_u pre[u] - ideal``, ``s = mean_u post[u] - mean_u pre[u]`` (``(G,)``);
    ``cov = sum_g (b_g - mean b)(s_g - mean s) / (G - 1)``; ``corr`` = Pearson's r (NaN if ``b``
    or ``s`` is constant). ``lo``, ``hi``: percentile bootstrap interval at ``level`` from
    ``n_boot`` resamplings of users with replacement (same rows of ``pre`` and ``post``,
    ``np.random.default_rng(seed)``); ``p_positive``: share of bootstrap covariances > 0;
    ``n_users``, ``n_groups``. ``pre``, ``post``: ``(n_users, G)`` per-user group shares, or 1-D
    ``(G,)`` means (then ``lo = hi = p_positive = NaN`` and ``n_users = 1``).
    """
    a = np.asarray(pre, dtype=np.float64)
    z = np.asarray(post, dtype=np.float64)
    if a.ndim not in (1, 2) or a.shape != z.shape:
        raise ConfigError(
            f"pre and post must both be (n_users, G) or both (G,) (got {a.shape} and {z.shape})"
        )
    if not (np.isfinite(a).all() and np.isfinite(z).all()):
        raise ConfigError("pre and post must be finite")
    g = a.shape[-1]
    if g < 2 or a.size == 0:
        raise ConfigError(f"pre and post need at least 2 groups and 1 user (got shape {a.shape})")
    ideal_v = _vector(ideal, "ideal", nonneg=False)
    if ideal_v.size != g:
        raise ConfigError(f"ideal must have one entry per group ({g}), got {ideal_v.size}")
    if not 0.0 < level < 1.0:
        raise ConfigError(f"level must be in (0, 1) (got {level})")
    n_boot = _int_arg(n_boot, "n_boot", 1)
    a2, z2 = (a[None, :], z[None, :]) if a.ndim == 1 else (a, z)
    n_users = a2.shape[0]
    pre_m, post_m = a2.mean(axis=0), z2.mean(axis=0)
    b, s = pre_m - ideal_v, post_m - pre_m
    cov = float(_centred_cov(b, s))
    sd = float(np.std(b, ddof=1) * np.std(s, ddof=1))
    nan = float("nan")
    out = {
        "cov": cov,
        "corr": cov / sd if sd > 0 else nan,
        "lo": nan,
        "hi": nan,
        "p_positive": nan,
        "n_users": n_users,
        "n_groups": g,
    }
    if a.ndim == 1:
        return out
    rng = np.random.default_rng(seed)
    block = max(1, _CHUNK // n_users)  # bootstrap replicates per block (bounded memory)
    boot = np.empty(n_boot)
    for start in range(0, n_boot, block):
        nb = min(block, n_boot - start)
        idx = rng.integers(0, n_users, size=(nb, n_users))
        offs = (np.arange(nb, dtype=np.int64)[:, None] * n_users + idx).ravel()
        w = np.bincount(offs, minlength=nb * n_users).reshape(nb, n_users) / n_users
        bm_pre, bm_post = w @ a2, w @ z2
        boot[start : start + nb] = _centred_cov(bm_pre - ideal_v, bm_post - bm_pre)
    out["lo"], out["hi"] = (
        float(x) for x in np.percentile(boot, [50 * (1 - level), 50 * (1 + level)])
    )
    out["p_positive"] = float((boot > 0).mean())
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


def target_item_metrics(
    scores: np.ndarray,
    targets: np.ndarray,
    negatives: np.ndarray | None = None,
    k: int = 10,
) -> dict[str, np.ndarray]:
    """Per-user exposure of target items (profile-pollution attacks; CREAT's Table 1).

    ``scores`` (U, I): each user's item scores with the items the user has seen set to
    ``-inf``; a target the user has seen is not rankable for that user (its values are NaN).
    ``negatives`` (U, m) optional sampled negative items per user (unseen, not a target): the
    sampled protocol of the paper (rank among ``m`` = 100 negatives). Per user, averaged over its
    rankable targets:

    * ``tgt_exposure@k``: the target is in the user's full top-``k`` (rank = 1 + the number of
      unseen items scored strictly higher);
    * ``tgt_ndcg@k``: ``1 / log2(rank + 1)`` for rank <= k (full ranking);
    * with ``negatives``: ``tgt_hr@k_s`` / ``tgt_ndcg@k_s`` / ``tgt_mrr_s`` of the rank among
      the target and its negatives.
    """
    S = np.asarray(scores, dtype=np.float64)
    T = np.asarray(targets, dtype=np.int64).reshape(-1)
    U = S.shape[0]
    out: dict[str, list] = {f"tgt_exposure@{k}": [], f"tgt_ndcg@{k}": []}
    if negatives is not None:
        out.update({f"tgt_hr@{k}_s": [], f"tgt_ndcg@{k}_s": [], "tgt_mrr_s": []})
    for u in range(U):
        vals: dict[str, list[float]] = {name: [] for name in out}
        for t in T:
            st = S[u, t]
            if not np.isfinite(st):
                continue
            r = 1 + int((S[u] > st).sum())
            vals[f"tgt_exposure@{k}"].append(float(r <= k))
            vals[f"tgt_ndcg@{k}"].append(1.0 / np.log2(r + 1) if r <= k else 0.0)
            if negatives is not None:
                neg = np.asarray(negatives[u], dtype=np.int64)
                rs = 1 + int((S[u, neg] > st).sum())
                vals[f"tgt_hr@{k}_s"].append(float(rs <= k))
                vals[f"tgt_ndcg@{k}_s"].append(1.0 / np.log2(rs + 1) if rs <= k else 0.0)
                vals["tgt_mrr_s"].append(1.0 / rs)
        for name in out:
            out[name].append(float(np.mean(vals[name])) if vals[name] else np.nan)
    return {name: np.asarray(v, dtype=np.float64) for name, v in out.items()}

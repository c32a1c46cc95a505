"""Item groups of a recommendation dataset and the item-side group-fairness report.

Groups (evaluation metadata, like item popularity: the evaluator reads them from the
dataset and the training split in the simulation; clients never send them):

* ``pop``: popularity quantiles of the **training** interaction counts
  (:func:`fedrec.metrics.ranking.popularity_groups`, group 0 = most popular; quintiles by
  default);
* ``genre``: the item's genres, multi-label (ML-100K's 19 flags; IFairLRS counts every
  genre of a multi-genre item). Datasets without genres (lastfm, synthetic-rec) have no
  ``genre`` groups.

A training method that needs **one** label per item (BiFair's group weights, UFO's fair
targets) uses :func:`training_groups`: the popularity quantile, or the *primary* genre,
the first flag in ML-100K's genre order (``unknown`` excluded when the item has another).

:func:`group_report` turns the users' top-K lists into, per group kind ``name`` and K:
``{name}_worst25@K`` (the worst-25%-groups NDCG ratio, BiFair's statistic),
``{name}_range@K``, ``{name}_cv@K`` over groups with at least ``MIN_TEST`` test pairs,
``{name}_mgu@K``, ``{name}_dgu@K``, ``{name}_kl@K``, ``{name}_tv@K`` (exposure shares of
the top-K lists against the ideal ``GP``, the groups' share of the training
interactions: IFairLRS's MGU/DGU) and the per-group NDCG / exposure vectors in
``detail``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from fedrec.errors import ConfigError

GROUP_KINDS = ("popularity", "genre")
MIN_TEST = 5  # groups with fewer held-out pairs are left out of the utility disparity


def primary_genre(item_genres: np.ndarray) -> np.ndarray:
    """First genre flag of each item (``unknown`` = column 0 only when nothing else)."""
    g = np.asarray(item_genres, dtype=bool).copy()
    has_other = g[:, 1:].any(axis=1)
    g[has_other, 0] = False
    out = np.argmax(g, axis=1).astype(np.int64)
    out[~g.any(axis=1)] = 0
    return out


def training_groups(ds, ud, kind: str = "popularity", num_groups: int = 5) -> np.ndarray:
    """One group label per item (n_items,) int64 for training (see the module docstring)."""
    from fedrec.metrics.ranking import popularity_groups

    if kind == "popularity":
        return popularity_groups(ud.item_counts(), num_groups)
    if kind == "genre":
        if getattr(ds, "item_genres", None) is None:
            raise ConfigError(
                f"config key 'strategy.params.groups': '{ds.name}' has no item genres; "
                "allowed: popularity"
            )
        return primary_genre(ds.item_genres)
    raise ConfigError(
        f"config key 'strategy.params.groups': '{kind}' is unknown; allowed: "
        + ", ".join(GROUP_KINDS)
    )


def memberships(ds, ud, num_pop: int = 5) -> dict[str, np.ndarray]:
    """``{"pop": (n_items, num_pop) one-hot, "genre": (n_items, 19) multi-label}``."""
    from fedrec.metrics.ranking import group_membership, popularity_groups

    out = {"pop": group_membership(popularity_groups(ud.item_counts(), num_pop), num_pop)}
    if getattr(ds, "item_genres", None) is not None:
        out["genre"] = np.asarray(ds.item_genres, dtype=bool)
    return out


def ideal_shares(ud, membership: np.ndarray) -> np.ndarray:
    """``GP``: the groups' share of the training interactions (multi-label normalised)."""
    from fedrec.metrics.ranking import group_distribution

    return group_distribution(ud.train.indices, membership)


def group_report(
    ud,
    users: np.ndarray,
    top: np.ndarray,
    groups: dict[str, np.ndarray],
    k_list: tuple[int, ...] = (10,),
    split: str = "test",
) -> tuple[dict[str, float], dict[str, Any]]:
    """Flat metrics and per-group detail of the users' top-K lists (module docstring)."""
    from fedrec.metrics.ranking import (
        distribution_unfairness,
        group_exposure_counts,
        group_shares,
        group_utility,
        utility_disparity,
    )

    users = np.asarray(users, dtype=np.int64)
    targets = ud.targets(split)
    rel = [np.asarray(targets[u], dtype=np.int64) for u in users]
    flat: dict[str, float] = {}
    detail: dict[str, Any] = {}
    for name, M in groups.items():
        gp = ideal_shares(ud, M)
        detail[f"{name}_gp"] = gp.tolist()
        for k in k_list:
            gu = group_utility(top, rel, M, k)
            disp = utility_disparity(gu["ndcg"], gu["count"], min_count=MIN_TEST)
            flat[f"{name}_worst25@{k}"] = disp["worst25_ratio"]
            flat[f"{name}_range@{k}"] = disp["range_gap"]
            flat[f"{name}_cv@{k}"] = disp["cv"]
            counts = group_exposure_counts(top, M, k)
            gr = group_shares(counts) if counts.sum() > 0 else np.zeros(len(gp))
            if counts.sum() > 0:
                for key, v in distribution_unfairness(gp, gr).items():
                    flat[f"{name}_{key}@{k}"] = v
            detail[f"{name}_ndcg@{k}"] = np.nan_to_num(gu["ndcg"], nan=-1.0).tolist()
            detail[f"{name}_count@{k}"] = np.asarray(gu["count"]).tolist()
            detail[f"{name}_gr@{k}"] = gr.tolist()
    return flat, detail

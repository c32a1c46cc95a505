"""fedrec.metrics.ranking against external oracles on identical, tie-free rankings (anchors §3D).

* ranx (``pip install ranx``; skipped when missing): per-user ``ndcg@K``, ``recall@K``,
  ``precision@K``, ``hit_rate@K`` (our ``hr@K``), ``mrr@K`` and full-list ``mrr`` equal ours to
  1e-9. ranx's ``ndcg`` (Järvelin & Kekäläinen: gain = relevance) and ``ndcg_burges``
  (gain = 2^rel - 1) coincide for binary relevance, and both use IDCG over min(|R|, K) ideal hits
  and log2(rank + 1) discounts, so both equal our NDCG; ranx's ``recall@K`` divides by |R|, as ours.
  Excluded (training) items are simply left out of ranx's run, which is what masking to -inf does.
* scikit-learn's ``ndcg_score`` (a second NDCG oracle, always available): excluded items get a
  score below every other and relevance 0, so they can neither be hit nor change the ideal DCG.

Random scores are continuous, so there are no ties (ranx's tie order is unspecified).
"""

from __future__ import annotations

import numpy as np
import pytest

from fedrec.metrics import ranking as rk

pytestmark = [pytest.mark.reference, pytest.mark.filterwarnings("ignore::Warning")]

K_LIST = (5, 10)


@pytest.fixture(scope="module")
def instance():
    rng = np.random.default_rng(2024)
    n_users, n_items = 40, 60
    scores = rng.normal(size=(n_users, n_items))
    exclude, relevant = [], []
    for _ in range(n_users):
        items = rng.permutation(n_items)
        n_ex, n_rel = int(rng.integers(0, 15)), int(rng.integers(1, 14))
        exclude.append(np.sort(items[:n_ex]))
        relevant.append(np.sort(items[n_ex : n_ex + n_rel]))
    return scores, exclude, relevant


def ours(scores, exclude, relevant):
    top = rk.topk_items(scores, max(K_LIST), exclude=exclude)
    ranks = rk.first_relevant_rank(scores, relevant, exclude=exclude)
    return rk.per_user_metrics(top, relevant, K_LIST, ranks=ranks)


@pytest.mark.slow
def test_ranx_per_user_metrics_equal_ours(instance):
    ranx = pytest.importorskip("ranx")
    scores, exclude, relevant = instance
    # plain dicts (not ranx.Qrels/Run): ranx then skips a numba-compiled key check that costs ~15 s;
    # zero-padded query ids so ranx's sorted query order is the user order
    qrels = {f"u{u:04d}": {f"i{i}": 1 for i in rel} for u, rel in enumerate(relevant)}
    run = {
        f"u{u:04d}": {
            f"i{i}": float(scores[u, i]) for i in np.setdiff1d(np.arange(scores.shape[1]), ex)
        }
        for u, ex in enumerate(exclude)
    }
    names = {"mrr": "mrr"}
    for k in K_LIST:
        names.update(
            {
                f"ndcg@{k}": f"ndcg@{k}",
                f"ndcg_burges@{k}": f"ndcg@{k}",
                f"recall@{k}": f"recall@{k}",
                f"precision@{k}": f"precision@{k}",
                f"hit_rate@{k}": f"hr@{k}",
                f"mrr@{k}": f"mrr@{k}",
            }
        )
    theirs = ranx.evaluate(qrels, run, list(names), return_mean=False)
    mine = ours(scores, exclude, relevant)
    for their_name, our_name in names.items():
        np.testing.assert_allclose(
            mine[our_name], theirs[their_name], rtol=0, atol=1e-9, err_msg=their_name
        )
    means = rk.ranking_metrics(relevant, scores=scores, exclude=exclude, k_list=K_LIST)
    for their_name, our_name in names.items():
        assert means[our_name] == pytest.approx(float(np.mean(theirs[their_name])), abs=1e-9)


def test_sklearn_ndcg_equals_ours(instance):
    from sklearn.metrics import ndcg_score

    scores, exclude, relevant = instance
    y_true = np.zeros_like(scores)
    y_score = scores.copy()
    for u, (ex, rel) in enumerate(zip(exclude, relevant)):
        y_true[u, rel] = 1.0
        y_score[u, ex] = scores.min() - 1.0 - np.arange(ex.size)  # below everything, no ties
    mine = ours(scores, exclude, relevant)
    for k in K_LIST:
        assert np.mean(mine[f"ndcg@{k}"]) == pytest.approx(
            ndcg_score(y_true, y_score, k=k), abs=1e-12
        )
        per_user = [
            ndcg_score(y_true[u : u + 1], y_score[u : u + 1], k=k) for u in range(len(relevant))
        ]
        np.testing.assert_allclose(mine[f"ndcg@{k}"], per_user, rtol=0, atol=1e-12)

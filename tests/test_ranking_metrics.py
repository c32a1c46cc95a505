"""fedrec.metrics.ranking: hand-checked tiny rankings with exact expected values, tie rules,
input formats, summability across clients, and the full-ranking evaluation of fedrec.recsys."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import sparse

from fedrec.errors import ConfigError
from fedrec.metrics import ranking as rk
from fedrec.recsys.splits import Ragged, UserData
from fedrec.recsys.train import evaluate_full_ranking

TOL = 1e-12
L3, L4, L5, L6 = math.log2(3), math.log2(4), math.log2(5), math.log2(6)

# user 0: plain order 0..5, item 0 excluded, relevant {2, 5}
# user 1: ties (0.5 for items 0, 1, 4) broken by id -> 2, 0, 1, 4, 5, 3; relevant {4}
# user 2: no relevant item (left out of every mean)
# user 3: relevant {0, 1, 2, 3} (more than K), plain order
SCORES = np.array(
    [
        [0.9, 0.8, 0.7, 0.6, 0.5, 0.4],
        [0.5, 0.5, 0.9, 0.1, 0.5, 0.2],
        [0.1, 0.2, 0.3, 0.4, 0.5, 0.6],
        [0.6, 0.5, 0.4, 0.3, 0.2, 0.1],
    ]
)
RELEVANT = [[2, 5], [4], [], [0, 1, 2, 3]]
EXCLUDE = [[0], [], [], []]


def test_topk_by_hand_with_ties_and_exclusion():
    top = rk.topk_items(SCORES, 5, exclude=EXCLUDE)
    np.testing.assert_array_equal(
        top, [[1, 2, 3, 4, 5], [2, 0, 1, 4, 5], [5, 4, 3, 2, 1], [0, 1, 2, 3, 4]]
    )
    # fewer rankable items than K: padded with -1
    top = rk.topk_items(SCORES[:1], 7, exclude=[[0, 3]])
    np.testing.assert_array_equal(top, [[1, 2, 4, 5, -1, -1, -1]])


def test_topk_equals_stable_argsort_on_heavy_ties():
    rng = np.random.default_rng(0)
    s = rng.integers(0, 4, size=(50, 40)).astype(float)
    for k in (1, 5, 17, 40, 45):
        top = rk.topk_items(s, k)
        ref = np.argsort(-s, axis=1, kind="stable")[:, :k]
        np.testing.assert_array_equal(top[:, : ref.shape[1]], ref)


def test_accuracy_metrics_by_hand():
    top = rk.topk_items(SCORES, 5, exclude=EXCLUDE)
    ranks = rk.first_relevant_rank(SCORES, RELEVANT, exclude=EXCLUDE)
    np.testing.assert_array_equal(ranks, [2.0, 4.0, np.nan, 1.0])
    pu = rk.per_user_metrics(top, RELEVANT, (3, 5), ranks=ranks)
    idcg2 = 1 + 1 / L3
    idcg3 = 1 + 1 / L3 + 1 / L4
    exp = {
        "hr@3": [1, 0, np.nan, 1],
        "precision@3": [1 / 3, 0, np.nan, 1],
        "recall@3": [1 / 2, 0, np.nan, 3 / 4],
        "ndcg@3": [(1 / L3) / idcg2, 0, np.nan, 1.0],
        "mrr@3": [1 / 2, 0, np.nan, 1],
        "hr@5": [1, 1, np.nan, 1],
        "precision@5": [2 / 5, 1 / 5, np.nan, 4 / 5],
        "recall@5": [1, 1, np.nan, 1],
        "ndcg@5": [(1 / L3 + 1 / L6) / idcg2, 1 / L5, np.nan, (idcg3 + 1 / L5) / (idcg3 + 1 / L5)],
        "mrr@5": [1 / 2, 1 / 4, np.nan, 1],
        "mrr": [1 / 2, 1 / 4, np.nan, 1],
    }
    assert set(pu) == set(exp)
    for name, v in exp.items():
        np.testing.assert_allclose(pu[name], v, atol=TOL, err_msg=name)
    means = rk.mean_metrics(pu)
    for name, v in exp.items():
        assert means[name] == pytest.approx(np.nanmean(v), abs=TOL), name
    full = rk.ranking_metrics(RELEVANT, scores=SCORES, k_list=(3, 5), exclude=EXCLUDE)
    for name, v in exp.items():
        assert full[name] == pytest.approx(np.nanmean(v), abs=TOL), name
    assert full["num_users"] == 3


def test_relevant_input_formats_agree():
    top = rk.topk_items(SCORES, 5, exclude=EXCLUDE)
    dense = np.zeros_like(SCORES, dtype=bool)
    for u, r in enumerate(RELEVANT):
        dense[u, r] = True
    forms = [
        RELEVANT,
        dense,
        sparse.csr_array(dense.astype(float)),
        Ragged.from_lists(RELEVANT),
        [[2, 5, 2], [4, 4], [], [3, 2, 1, 0]],
    ]  # duplicates and order do not matter
    ref = rk.per_user_metrics(top, RELEVANT, (3, 5))
    for f in forms:
        got = rk.per_user_metrics(top, f, (3, 5))
        for name in ref:
            np.testing.assert_array_equal(got[name], ref[name])


def test_excluded_relevant_item_stays_relevant_but_cannot_be_hit():
    pu = rk.per_user_metrics(rk.topk_items(SCORES[:1], 3, exclude=[[2]]), [[2, 5]], (3,))
    assert pu["recall@3"][0] == 0.0  # top 3 = 0, 1, 3
    assert rk.first_relevant_rank(SCORES[:1], [[2]], exclude=[[2]])[0] == np.inf


def test_popular_items_fixed_size_ties_by_id():
    counts = np.array([5, 3, 3, 0, 3, 1, 0, 0, 0, 0])
    np.testing.assert_array_equal(np.flatnonzero(rk.popular_items(counts, 0.2)), [0, 1])
    np.testing.assert_array_equal(np.flatnonzero(rk.popular_items(counts, 0.25)), [0, 1, 2])
    np.testing.assert_array_equal(np.flatnonzero(rk.popular_items(counts, 0.01)), [0])
    with pytest.raises(ConfigError, match="fraction"):
        rk.popular_items(counts, 1.0)


def test_exposure_gini_coverage_by_hand():
    top = np.array([[0, 1, -1], [2, 0, 5]])
    c = rk.exposure_counts(top, 6)
    np.testing.assert_array_equal(c, [2, 1, 1, 0, 0, 1])
    popular = np.array([1, 1, 0, 0, 0, 0], dtype=bool)
    m = rk.exposure_metrics(top, 6, (3,), popular)
    assert m["exposure_pop@3"] == pytest.approx(3 / 5, abs=TOL)
    assert m["exposure_tail@3"] == pytest.approx(2 / 5, abs=TOL)
    assert m["gini@3"] == pytest.approx(
        13 / 30, abs=TOL
    )  # sorted 0,0,1,1,1,2 weights -5,-3,-1,1,3,5
    assert m["coverage@3"] == pytest.approx(4 / 6, abs=TOL)
    assert rk.gini_index([3, 3, 3]) == 0.0 and rk.gini_index([0, 0]) == 0.0
    assert rk.gini_index([0, 0, 0, 7]) == pytest.approx(3 / 4, abs=TOL)  # (n - 1) / n
    m1 = rk.exposure_metrics(top, 6, (1,), popular)
    assert m1["exposure_pop@1"] == pytest.approx(1 / 2) and m1["coverage@1"] == pytest.approx(2 / 6)


def test_item_group_recall_ndcg_by_hand():
    top = np.array([[2, 0, 5], [1, 3, 4]])
    relevant = [[0, 5, 3], [3]]
    popular = np.array([1, 1, 0, 0, 0, 0], dtype=bool)
    pu = rk.per_user_metrics(top, relevant, (3,), popular=popular)
    # user 0: pop relevant {0} hit at rank 2; tail relevant {3, 5}: 5 hit at rank 3
    # user 1: no popular relevant item (undefined); tail {3} hit at rank 2
    np.testing.assert_allclose(pu["recall_pop@3"], [1.0, np.nan], atol=TOL)
    np.testing.assert_allclose(pu["ndcg_pop@3"], [1 / L3, np.nan], atol=TOL)
    np.testing.assert_allclose(pu["recall_tail@3"], [1 / 2, 1.0], atol=TOL)
    np.testing.assert_allclose(pu["ndcg_tail@3"], [(1 / L4) / (1 + 1 / L3), 1 / L3], atol=TOL)
    m = rk.ranking_metrics(relevant, topk=top, k_list=(3,), popular=popular, num_items=6)
    assert m["recall_gap@3"] == pytest.approx(1.0 - 3 / 4, abs=TOL)
    assert m["ndcg_gap@3"] == pytest.approx(
        1 / L3 - ((1 / L4) / (1 + 1 / L3) + 1 / L3) / 2, abs=TOL
    )
    assert m["exposure_pop@3"] == pytest.approx(2 / 6, abs=TOL)


def test_user_group_gap_by_hand():
    pu = {
        "ndcg@10": np.array([0.2, 0.4, np.nan, 0.9, 0.1]),
        "hr@10": np.array([1.0, 0.0, np.nan, 1.0, 1.0]),
    }
    g = np.array([0, 0, 0, 1, 1])
    m = rk.user_group_metrics(pu, g)
    assert m["ndcg@10[0]"] == pytest.approx(0.3, abs=TOL) and m["ndcg@10[1]"] == pytest.approx(
        0.5, abs=TOL
    )
    assert m["ndcg@10_gap"] == pytest.approx(0.2, abs=TOL)
    assert m["hr@10[0]"] == 0.5 and m["hr@10[1]"] == 1.0 and m["hr@10_gap"] == 0.5
    with pytest.raises(ConfigError, match="groups"):
        rk.user_group_metrics(pu, g[:3])


def test_client_sums_reproduce_pooled_metrics():
    """Per-user values and exposure counts are summable: two 'clients' give the pooled result."""
    rng = np.random.default_rng(1)
    s = rng.random((40, 30))
    rel = [rng.choice(30, size=rng.integers(0, 4), replace=False) for _ in range(40)]
    top = rk.topk_items(s, 10)
    pooled = rk.per_user_metrics(top, rel, (10,))
    halves = [rk.per_user_metrics(top[a:b], rel[a:b], (10,)) for a, b in ((0, 17), (17, 40))]
    for name in pooled:
        sums = sum(np.nansum(h[name]) for h in halves)
        counts = sum((~np.isnan(h[name])).sum() for h in halves)
        assert sums / counts == pytest.approx(rk.mean_metrics(pooled)[name], abs=TOL)
    counts = rk.exposure_counts(top[:17], 30) + rk.exposure_counts(top[17:], 30)
    np.testing.assert_array_equal(counts, rk.exposure_counts(top, 30))


@pytest.mark.parametrize(
    ("call", "culprit"),
    [
        (lambda: rk.topk_items(np.array([[np.nan, 1.0]]), 1), "NaN"),
        (lambda: rk.topk_items(np.ones(3), 1), "2-D"),
        (lambda: rk.topk_items(np.ones((2, 3)), 0), "k must"),
        (lambda: rk.per_user_metrics(np.zeros((2, 3), int), [[0]], (3,)), "one row per user"),
        (lambda: rk.per_user_metrics(np.zeros((1, 3), int), [[0]], (5,)), "max\\(k_list\\)"),
        (lambda: rk.ranking_metrics([[0]], k_list=(1,)), "exactly one of scores or topk"),
        (lambda: rk.first_relevant_rank(np.ones((1, 3)), [[4]]), "relevant item ids"),
    ],
)
def test_errors_name_the_parameter(call, culprit):
    with pytest.raises(ConfigError, match=culprit):
        call()


def _tiny_user_data() -> UserData:
    # 3 users, 5 items; user 2 has no valid/test item
    train = Ragged.from_lists([[0, 1], [2], [0, 3, 4]])
    return UserData(
        3,
        5,
        train,
        Ragged.from_lists([[1, 0], [2], [4, 0, 3]]),
        Ragged.from_lists([[3], [0], []]),
        Ragged.from_lists([[2], [4], []]),
    )


def test_evaluate_full_ranking_by_hand():
    ud = _tiny_user_data()
    table = np.array(
        [[5.0, 4.0, 1.0, 3.0, 2.0], [1.0, 2.0, 3.0, 4.0, 5.0], [0.0, 0.0, 0.0, 0.0, 0.0]]
    )
    seen = []

    def score(users):
        seen.append(list(users))
        return table[users]

    # test split: history = train + valid; user 0 ranks 4 (2.0) then 2 (1.0); user 1 ranks 4 first
    m = evaluate_full_ranking(score, ud, k_list=(1, 2), split="test", batch_size=1)
    assert seen == [[0], [1]]
    assert m["num_users"] == 2
    assert m["hr@1"] == 0.5 and m["hr@2"] == 1.0
    assert m["ndcg@2"] == pytest.approx((1 / L3 + 1.0) / 2, abs=TOL)
    assert m["mrr"] == pytest.approx((1 / 2 + 1) / 2, abs=TOL)
    # popular = top 20% of 5 items = 1 item by train count: items 0 (2 users) -> popular {0}
    assert m["exposure_pop@2"] == 0.0 and m["coverage@2"] == pytest.approx(3 / 5)
    # valid split: history = train only; user 0: 3 (3.0) first -> hit;
    # user 1: 4, 3, 1, 0 -> 0 at rank 4
    m = evaluate_full_ranking(
        lambda u: table[u], ud, k_list=(1,), split="valid", user_groups=np.array([0, 1, 1])
    )
    assert m["hr@1"] == 0.5 and m["mrr"] == pytest.approx((1 + 1 / 4) / 2, abs=TOL)
    assert m["hr@1[0]"] == 1.0 and m["hr@1[1]"] == 0.0 and m["hr@1_gap"] == 1.0
    # no exclusion: user 0's test ranking 0, 1, 3, 4, 2 -> item 2 at rank 5
    m = evaluate_full_ranking(lambda u: table[u], ud, k_list=(1,), exclude_train=False)
    assert m["mrr"] == pytest.approx((1 / 5 + 1) / 2, abs=TOL)
    with pytest.raises(ConfigError, match="split"):
        evaluate_full_ranking(lambda u: table[u], ud, split="train")
    with pytest.raises(ConfigError, match="score_fn"):
        evaluate_full_ranking(lambda u: table[u][:, :3], ud)

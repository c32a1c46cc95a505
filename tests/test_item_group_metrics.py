"""fedrec.metrics.ranking, item-group fairness (BiFair / UFO / IFairLRS): hand-checked tiny cases
with exact values, and checks against independent computations (ranx for group NDCG / HR, plain
Python loops for exposures, distributions and group mass, scipy for KL, np.cov for the bias
covariance and a loop re-implementation of the bootstrap)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import entropy

from fedrec.errors import ConfigError
from fedrec.metrics import ranking as rk

TOL = 1e-12
L3 = math.log2(3)

# 6 items, 4 groups A, B, C, D (multi-label; item 4 in no group, group D empty)
#   item 0: A    item 1: A, B    item 2: B    item 3: C    item 4: -    item 5: A
MEMBERSHIP = np.array(
    [
        [1, 0, 0, 0],
        [1, 1, 0, 0],
        [0, 1, 0, 0],
        [0, 0, 1, 0],
        [0, 0, 0, 0],
        [1, 0, 0, 0],
    ],
    dtype=bool,
)
TOPK = np.array([[2, 0, 5], [1, 3, -1], [4, 2, 1], [0, 1, 2]])
RELEVANT = [[0, 5, 3], [3], [1], []]


# --------------------------------------------------------------------------- groups


def test_popularity_groups_ties_by_id_and_array_split_sizes():
    counts = np.array([5, 3, 3, 0, 3, 1, 0])
    # order: 0 (5), 1 (3), 2 (3), 4 (3), 5 (1), 3 (0), 6 (0); 7 items in 3 chunks: 3, 2, 2
    # group 0 = {0, 1, 2}, group 1 = {4, 5}, group 2 = {3, 6}
    g = rk.popularity_groups(counts, 3)
    assert g.dtype == np.int64
    np.testing.assert_array_equal(g, [0, 0, 0, 2, 1, 1, 2])
    np.testing.assert_array_equal(rk.popularity_groups(counts, 1), np.zeros(7))
    # n_groups = n_items: each item its own group, in popularity order
    np.testing.assert_array_equal(rk.popularity_groups(counts, 7), [0, 1, 2, 5, 3, 4, 6])
    # random counts with heavy ties: same as np.array_split of a stable descending argsort
    rng = np.random.default_rng(3)
    c = rng.integers(0, 5, size=103)
    order = np.argsort(-c, kind="stable")
    for n_groups in (2, 5, 10):
        ref = np.empty(103, dtype=np.int64)
        for grp, chunk in enumerate(np.array_split(order, n_groups)):
            ref[chunk] = grp
        np.testing.assert_array_equal(rk.popularity_groups(c, n_groups), ref)
        sizes = np.bincount(rk.popularity_groups(c, n_groups))
        assert sizes.max() - sizes.min() <= 1 and sizes.sum() == 103


def test_group_membership_one_hot():
    m = rk.group_membership(np.array([0, 2, -1, 1]))
    assert m.dtype == bool and m.shape == (4, 3)
    np.testing.assert_array_equal(m, [[1, 0, 0], [0, 0, 1], [0, 0, 0], [0, 1, 0]])
    m5 = rk.group_membership([0, 2, -1, 1], n_groups=5)
    assert m5.shape == (4, 5) and not m5[:, 3:].any()
    np.testing.assert_array_equal(m5[:, :3], m)


# --------------------------------------------------------------------------- utility


def test_group_utility_by_hand():
    # pairs (k=3): (u0, 0) pos 2 -> 1/log2(3), A | (u0, 5) pos 3 -> 1/2, A | (u0, 3) missing -> 0, C
    #              (u1, 3) pos 2 -> 1/log2(3), C | (u2, 1) pos 3 -> 1/2, A and B | u3: no pair
    nd, hr, cnt = rk.group_utility_sums(TOPK, RELEVANT, MEMBERSHIP, 3)
    np.testing.assert_array_equal(cnt, [3, 1, 2, 0])
    assert cnt.dtype == np.int64
    np.testing.assert_allclose(nd, [1 / L3 + 1 / 2 + 1 / 2, 1 / 2, 1 / L3, 0.0], atol=TOL)
    np.testing.assert_allclose(hr, [3, 1, 1, 0], atol=TOL)
    u = rk.group_utility(TOPK, RELEVANT, MEMBERSHIP, 3)
    np.testing.assert_allclose(u["ndcg"], [(1 + 1 / L3) / 3, 1 / 2, 1 / (2 * L3), np.nan], atol=TOL)
    np.testing.assert_allclose(u["hr"], [1.0, 1.0, 0.5, np.nan], atol=TOL)
    np.testing.assert_array_equal(u["count"], cnt)
    # k=2 on the same K=3 lists: the position-3 hits drop out
    u2 = rk.group_utility(TOPK, RELEVANT, MEMBERSHIP, 2)
    np.testing.assert_allclose(u2["ndcg"], [1 / (3 * L3), 0.0, 1 / (2 * L3), np.nan], atol=TOL)
    np.testing.assert_allclose(u2["hr"], [1 / 3, 0.0, 0.5, np.nan], atol=TOL)


def test_group_utility_sums_are_summable_across_clients():
    rng = np.random.default_rng(5)
    scores = rng.random((30, 20))
    top = rk.topk_items(scores, 8)
    rel = [rng.choice(20, size=rng.integers(0, 4), replace=False) for _ in range(30)]
    memb = rng.random((20, 3)) < 0.4
    pooled = rk.group_utility_sums(top, rel, memb, 8)
    parts = [rk.group_utility_sums(top[a:b], rel[a:b], memb, 8) for a, b in ((0, 11), (11, 30))]
    for j in range(3):
        np.testing.assert_allclose(parts[0][j] + parts[1][j], pooled[j], atol=TOL)
    expo = rk.group_exposure_counts(top[:11], memb, 8) + rk.group_exposure_counts(top[11:], memb, 8)
    np.testing.assert_allclose(expo, rk.group_exposure_counts(top, memb, 8), atol=TOL)


def _ranx_means(evaluate, top, rel_pairs, k):
    """Mean ranx ndcg@k / hit_rate@k over one query per (user, item) pair; run = the top-K list
    with scores K, K-1, ... (reproducing its order)."""
    # plain dicts (not ranx.Qrels/Run): ranx then skips a slow numba-compiled key check
    qrels = {f"q{j:04d}": {f"i{i}": 1} for j, (_, i) in enumerate(rel_pairs)}
    run = {
        f"q{j:04d}": {f"i{i}": float(top.shape[1] - r) for r, i in enumerate(top[u]) if i >= 0}
        for j, (u, _) in enumerate(rel_pairs)
    }
    res = evaluate(qrels, run, [f"ndcg@{k}", f"hit_rate@{k}"], return_mean=False)
    return float(np.mean(res[f"ndcg@{k}"])), float(np.mean(res[f"hit_rate@{k}"]))


@pytest.mark.reference
@pytest.mark.filterwarnings("ignore::Warning")
def test_group_ndcg_hr_equal_ranx():
    ranx = pytest.importorskip("ranx")
    rng = np.random.default_rng(2024)
    n_users, n_items, k = 60, 40, 10
    scores = rng.normal(size=(n_users, n_items))  # continuous: no ties
    top = rk.topk_items(scores, k)
    # one held-out item per user: group utility = mean per-user ranx metric of the users whose
    # test item is in the group (qrels filtered to the group's items)
    test_item = rng.integers(0, n_items, size=n_users)
    groups = rk.popularity_groups(rng.integers(0, 50, size=n_items), 4)
    memb = rk.group_membership(groups)
    u = rk.group_utility(top, [[i] for i in test_item], memb, k)
    for g in range(4):
        pairs = [(v, i) for v, i in enumerate(test_item) if memb[i, g]]
        assert u["count"][g] == len(pairs) > 0
        nd, hr = _ranx_means(ranx.evaluate, top, pairs, k)
        assert u["ndcg"][g] == pytest.approx(nd, abs=1e-9)
        assert u["hr"][g] == pytest.approx(hr, abs=1e-9)
    # several held-out items and multi-label groups: each (user, item) pair is its own query
    rel = [rng.choice(n_items, size=rng.integers(1, 5), replace=False) for _ in range(n_users)]
    memb = rng.random((n_items, 3)) < 0.5
    u = rk.group_utility(top, rel, memb, 5)
    for g in range(3):
        pairs = [(v, int(i)) for v, r in enumerate(rel) for i in r if memb[i, g]]
        nd, hr = _ranx_means(ranx.evaluate, top[:, :5], pairs, 5)
        assert u["count"][g] == len(pairs)
        assert u["ndcg"][g] == pytest.approx(nd, abs=1e-9)
        assert u["hr"][g] == pytest.approx(hr, abs=1e-9)


def test_utility_disparity_by_hand():
    util = np.array([0.1, 0.2, 0.3, 0.4, 0.5, np.nan])
    # 5 valid groups: bottom quartile = ceil(5/4) = 2 groups -> (0.1 + 0.2) / 2 = 0.15; mean 0.3
    d = rk.utility_disparity(util)
    assert d["worst25_ratio"] == pytest.approx(0.15 / 0.3, abs=TOL)
    assert d["range_gap"] == pytest.approx(0.4, abs=TOL)
    # population std of (-0.2, -0.1, 0, 0.1, 0.2) = sqrt(0.1 / 5)
    assert d["cv"] == pytest.approx(math.sqrt(0.02) / 0.3, abs=TOL)
    assert (d["min"], d["max"], d["mean"], d["n_groups"]) == pytest.approx((0.1, 0.5, 0.3, 5))
    # counts: group 4 has 1 pair (< min_count=5), group 5 has none -> 4 valid groups, q = 1
    d = rk.utility_disparity(util, count=[10, 10, 10, 10, 1, 0], min_count=5)
    assert d["n_groups"] == 4 and d["worst25_ratio"] == pytest.approx(0.1 / 0.25, abs=TOL)
    assert rk.utility_disparity(util, quantile=1.0)["worst25_ratio"] == pytest.approx(1.0)
    # 8 groups: bottom quartile = 2 groups exactly
    d8 = rk.utility_disparity(np.arange(1.0, 9.0))
    assert d8["worst25_ratio"] == pytest.approx(1.5 / 4.5, abs=TOL)
    # even utilities: ratio 1, no spread
    even = rk.utility_disparity([0.3, 0.3, 0.3])
    assert even["worst25_ratio"] == pytest.approx(1.0) and even["cv"] == pytest.approx(0.0)
    # mean 0: ratios undefined; no valid group: everything undefined
    zero = rk.utility_disparity([0.0, 0.0])
    assert math.isnan(zero["worst25_ratio"]) and math.isnan(zero["cv"]) and zero["range_gap"] == 0
    none = rk.utility_disparity(util, count=np.zeros(6), min_count=1)
    assert none["n_groups"] == 0 and all(math.isnan(v) for n, v in none.items() if n != "n_groups")


# --------------------------------------------------------------------------- exposure


def test_exposure_shares_distribution_by_hand():
    top = np.array([[0, 1, -1], [2, 0, 5]])
    # slots: 0 (A), 1 (A, B), 2 (B), 0 (A), 5 (A) -> A 4, B 2, C 0, D 0
    c = rk.group_exposure_counts(top, MEMBERSHIP, 3)
    assert c.dtype == np.float64
    np.testing.assert_array_equal(c, [4, 2, 0, 0])
    np.testing.assert_allclose(rk.group_shares(c), [4 / 6, 2 / 6, 0, 0], atol=TOL)
    np.testing.assert_array_equal(rk.group_exposure_counts(top, MEMBERSHIP, 1), [1, 1, 0, 0])
    # row-wise shares of a 2-D matrix
    np.testing.assert_allclose(rk.group_shares([[1, 3], [2, 2]]), [[0.25, 0.75], [0.5, 0.5]])
    # GP: items 0, 0, 1, 3, 4 -> A 3, B 1, C 1 (item 4 has no group) -> 5 labels
    gp = rk.group_distribution(np.array([0, 0, 1, 3, 4]), MEMBERSHIP)
    np.testing.assert_allclose(gp, [0.6, 0.2, 0.2, 0.0], atol=TOL)
    # weights 1, 1, 2, 0, 5 -> A 1 + 1 + 2, B 2, C 0
    gpw = rk.group_distribution(np.array([0, 0, 1, 3, 4]), MEMBERSHIP, weights=[1, 1, 2, 0, 5])
    np.testing.assert_allclose(gpw, [4 / 6, 2 / 6, 0.0, 0.0], atol=TOL)


def test_exposure_and_distribution_equal_loops():
    rng = np.random.default_rng(7)
    n_users, n_items, n_groups, k = 25, 30, 5, 6
    top = np.array([rng.permutation(n_items)[:8] for _ in range(n_users)])
    top[rng.random(top.shape) < 0.2] = -1
    memb = rng.random((n_items, n_groups)) < 0.3
    ref = [0.0] * n_groups
    for u in range(n_users):
        for r in range(k):
            i = int(top[u, r])
            if i < 0:
                continue
            for g in range(n_groups):
                if memb[i, g]:
                    ref[g] += 1
    got = rk.group_exposure_counts(top, memb, k)
    np.testing.assert_array_equal(got, ref)
    np.testing.assert_allclose(rk.group_shares(got), [x / sum(ref) for x in ref], atol=TOL)
    items = rng.integers(0, n_items, size=200)
    weights = rng.random(200)
    for w in (None, weights):
        acc = [0.0] * n_groups
        for j, i in enumerate(items):
            for g in range(n_groups):
                if memb[i, g]:
                    acc[g] += 1.0 if w is None else float(w[j])
        gp = rk.group_distribution(items, memb, weights=w)
        np.testing.assert_allclose(gp, [a / sum(acc) for a in acc], atol=TOL)
        assert gp.sum() == pytest.approx(1.0)


def test_distribution_unfairness_by_hand_and_kl_vs_scipy():
    # d = (0.3, 0, -0.3): mgu 0.2, dgu 0.6, tv 0.3; KL = 0.5 ln(2.5) + 0.2 ln(0.4) = 0.3 ln(2.5)
    m = rk.distribution_unfairness([5, 3, 2], [0.2, 0.3, 0.5], eps=0.0)  # gp renormalised
    assert m["mgu"] == pytest.approx(0.2, abs=TOL)
    assert m["dgu"] == pytest.approx(0.6, abs=TOL)
    assert m["tv"] == pytest.approx(0.3, abs=TOL)
    assert m["kl"] == pytest.approx(0.3 * math.log(2.5), abs=TOL)
    same = rk.distribution_unfairness([1, 2, 3], [2, 4, 6])
    assert same == pytest.approx({"mgu": 0.0, "dgu": 0.0, "tv": 0.0, "kl": 0.0}, abs=TOL)
    rng = np.random.default_rng(11)
    gp, gr = rng.random(6), rng.random(6)
    gr[[1, 4]] = 0.0  # groups without exposure
    for eps in (1e-6, 1e-3):
        p, q = (gp / gp.sum() + eps), (gr / gr.sum() + eps)
        kl = rk.distribution_unfairness(gp, gr, eps=eps)["kl"]
        assert kl == pytest.approx(entropy(p / p.sum(), q / q.sum()), rel=1e-12)
    assert rk.distribution_unfairness(gp, gr, eps=0.0)["kl"] == np.inf == entropy(gp, gr)


def test_group_mass_by_hand_and_vs_loop():
    probs = np.array([0.1, 0.2, 0.3, 0.0, 0.2, 0.2])
    # A = items 0, 1, 5 -> 0.5; B = items 1, 2 -> 0.5; C = item 3 -> 0; D -> 0. The row sums to 1
    # over groups only by chance: item 4 (0.2) has no group and item 1 (0.2) counts in A and B.
    with np.errstate(divide="ignore"):
        logits = np.log(probs) + 1000.0  # any shift works (stable softmax); item 3 is -inf
    np.testing.assert_allclose(rk.group_mass(logits, MEMBERSHIP), [0.5, 0.5, 0.0, 0.0], atol=TOL)
    np.testing.assert_allclose(rk.group_mass(probs, MEMBERSHIP, log=False), [0.5, 0.5, 0, 0])
    np.testing.assert_allclose(
        rk.group_mass(probs[None] * 2, MEMBERSHIP, log=False, normalize=True), [[0.5, 0.5, 0, 0]]
    )
    rng = np.random.default_rng(13)
    x = rng.normal(size=(4, 30)) * 5
    memb = rng.random((30, 3)) < 0.4
    got = rk.group_mass(x, memb)
    assert got.shape == (4, 3)
    for r in range(4):
        z = sum(math.exp(v) for v in x[r])
        for g in range(3):
            ref = sum(math.exp(x[r, i]) / z for i in range(30) if memb[i, g])
            assert got[r, g] == pytest.approx(ref, rel=1e-12)
    np.testing.assert_allclose(rk.group_mass(x, memb, normalize=True), rk.group_shares(got))


# --------------------------------------------------------------------------- bias covariance


def test_bias_covariance_by_hand_1d():
    # b = pre - 1/3 = (1/6, -1/30, -2/15), s = post - pre = (0.1, 0, -0.1), both mean 0
    # cov = (1/6 * 0.1 + 2/15 * 0.1) / (3 - 1) = 0.03 / 2 = 0.015
    r = rk.bias_covariance([0.5, 0.3, 0.2], [0.6, 0.3, 0.1], np.full(3, 1 / 3))
    assert r["cov"] == pytest.approx(0.015, abs=TOL)
    b, s = np.array([1 / 6, -1 / 30, -2 / 15]), np.array([0.1, 0.0, -0.1])
    assert r["corr"] == pytest.approx(np.corrcoef(b, s)[0, 1], abs=TOL)
    assert math.isnan(r["lo"]) and math.isnan(r["hi"]) and math.isnan(r["p_positive"])
    assert r["n_users"] == 1 and r["n_groups"] == 3
    flat = rk.bias_covariance([0.5, 0.3, 0.2], [0.5, 0.3, 0.2], np.full(3, 1 / 3))
    assert flat["cov"] == 0.0 and math.isnan(flat["corr"])  # no shift: r undefined


def _shares(rng, n_users, logits):
    x = logits[None, :] + rng.normal(scale=0.3, size=(n_users, logits.size))
    e = np.exp(x)
    return e / e.sum(axis=1, keepdims=True)


def test_bias_covariance_vs_np_cov_and_loop_bootstrap():
    rng = np.random.default_rng(17)
    n_users, g = 40, 5
    pre = _shares(rng, n_users, rng.normal(size=g))
    post = _shares(rng, n_users, rng.normal(size=g))
    ideal = np.full(g, 1 / g)
    r = rk.bias_covariance(pre, post, ideal, n_boot=200, seed=3)
    b, s = pre.mean(0) - ideal, post.mean(0) - pre.mean(0)
    assert r["cov"] == pytest.approx(np.cov(b, s)[0, 1], abs=TOL)
    assert r["corr"] == pytest.approx(np.corrcoef(b, s)[0, 1], abs=1e-12)
    assert (r["n_users"], r["n_groups"]) == (40, 5)
    # bootstrap re-implemented with a loop (same generator, same draws)
    gen = np.random.default_rng(3)
    idx = gen.integers(0, n_users, size=(200, n_users))
    boots = []
    for row in idx:
        pm, qm = pre[row].mean(0), post[row].mean(0)
        boots.append(np.cov(pm - ideal, qm - pm)[0, 1])
    lo, hi = np.percentile(boots, [2.5, 97.5])
    assert (r["lo"], r["hi"]) == pytest.approx((lo, hi), abs=1e-12)
    assert r["p_positive"] == pytest.approx(np.mean(np.array(boots) > 0))
    assert r["lo"] <= r["cov"] <= r["hi"]
    # deterministic for a seed, different for another; a wider level gives a wider interval
    assert rk.bias_covariance(pre, post, ideal, n_boot=200, seed=3) == r
    other = rk.bias_covariance(pre, post, ideal, n_boot=200, seed=4)
    assert (other["lo"], other["hi"]) != (r["lo"], r["hi"]) and other["cov"] == r["cov"]
    wide = rk.bias_covariance(pre, post, ideal, n_boot=200, seed=3, level=0.99)
    assert wide["lo"] <= r["lo"] and wide["hi"] >= r["hi"]


def test_bias_covariance_planted_positive():
    rng = np.random.default_rng(19)
    n_users, g = 200, 6
    ideal = np.full(g, 1 / g)
    pre = _shares(rng, n_users, np.linspace(1.0, -1.0, g))  # biased toward the head groups
    # fine-tuning amplifies each user's bias, plus noise: shift ~ +0.5 * bias
    post = pre + 0.5 * (pre - ideal) + rng.normal(scale=0.01, size=pre.shape)
    r = rk.bias_covariance(pre, post, ideal)
    assert r["cov"] > 0 and r["lo"] > 0 and r["corr"] > 0.9 and r["p_positive"] == 1.0
    # the opposite (fine-tuning corrects the bias): negative
    r = rk.bias_covariance(pre, pre - 0.5 * (pre - ideal), ideal, n_boot=100)
    assert r["cov"] < 0 and r["hi"] < 0 and r["p_positive"] == 0.0


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("call", "culprit"),
    [
        (lambda: rk.popularity_groups([3, 2, 1], 0), "n_groups"),
        (lambda: rk.popularity_groups([3, 2, 1], 4), "n_groups"),
        (lambda: rk.popularity_groups([3, 2, 1], 1.5), "n_groups"),
        (lambda: rk.popularity_groups(np.ones((2, 2))), "item_counts"),
        (lambda: rk.popularity_groups([]), "item_counts"),
        (lambda: rk.group_membership([0, 3], n_groups=2), "n_groups"),
        (lambda: rk.group_membership([-1, -1]), "n_groups"),
        (lambda: rk.group_membership([0.5, 1]), "groups"),
        (lambda: rk.group_utility_sums(np.zeros(3, int), [[0]], MEMBERSHIP, 1), "topk"),
        (lambda: rk.group_utility_sums(TOPK, RELEVANT, MEMBERSHIP, 5), "K >= k"),
        (lambda: rk.group_utility_sums(TOPK, RELEVANT, MEMBERSHIP, 0), "k must"),
        (lambda: rk.group_utility_sums(TOPK, RELEVANT, MEMBERSHIP[:, 0], 3), "membership"),
        (lambda: rk.group_utility_sums(TOPK, RELEVANT, MEMBERSHIP * 2, 3), "membership"),
        (lambda: rk.group_utility_sums(TOPK, RELEVANT, MEMBERSHIP[:5], 3), "topk ids"),
        (lambda: rk.group_utility_sums(TOPK, RELEVANT[:3], MEMBERSHIP, 3), "relevant"),
        (lambda: rk.group_utility_sums(TOPK, [[6], [], [], []], MEMBERSHIP, 3), "relevant"),
        (lambda: rk.group_utility_sums([[1, 1]], [[1]], MEMBERSHIP, 2), "repeat"),
        (lambda: rk.group_utility(TOPK, RELEVANT, np.zeros((6, 0), bool), 3), "membership"),
        (lambda: rk.utility_disparity(np.ones((2, 2))), "utility"),
        (lambda: rk.utility_disparity([1.0, 2.0], count=[1]), "count"),
        (lambda: rk.utility_disparity([1.0, 2.0], quantile=0.0), "quantile"),
        (lambda: rk.group_exposure_counts(TOPK, MEMBERSHIP, 4), "K >= k"),
        (lambda: rk.group_exposure_counts([[0, -2]], MEMBERSHIP, 2), "topk ids"),
        (lambda: rk.group_shares([0.0, 0.0]), "counts"),
        (lambda: rk.group_shares([1.0, -1.0, 2.0]), "counts"),
        (lambda: rk.group_shares([[1.0, 1.0], [0.0, 0.0]]), "counts"),
        (lambda: rk.group_distribution(np.array([6]), MEMBERSHIP), "items"),
        (lambda: rk.group_distribution(np.array([4, 4]), MEMBERSHIP), "items"),
        (lambda: rk.group_distribution(np.array([0]), MEMBERSHIP, weights=[1, 2]), "weights"),
        (lambda: rk.distribution_unfairness([1, 2], [1, 2, 3]), "gp and gr"),
        (lambda: rk.distribution_unfairness([0, 0], [1, 2]), "gp"),
        (lambda: rk.distribution_unfairness([1, 2], [1, -2]), "gr"),
        (lambda: rk.distribution_unfairness([1, 2], [1, 2], eps=-1.0), "eps"),
        (lambda: rk.group_mass(np.zeros((2, 5)), MEMBERSHIP), "logprobs_or_probs"),
        (lambda: rk.group_mass(np.full(6, -np.inf), MEMBERSHIP), "all -inf"),
        (lambda: rk.group_mass(-np.ones(6), MEMBERSHIP, log=False), "logprobs_or_probs"),
        (lambda: rk.group_mass(np.eye(6)[4], MEMBERSHIP, False, normalize=True), "no mass"),
        (lambda: rk.bias_covariance(np.ones((3, 2)), np.ones((2, 2)), [0.5, 0.5]), "pre and post"),
        (lambda: rk.bias_covariance([1.0], [1.0], [1.0]), "2 groups"),
        (lambda: rk.bias_covariance([0.5, 0.5], [0.5, 0.5], [1.0]), "ideal"),
        (lambda: rk.bias_covariance([0.5, 0.5], [0.5, 0.5], [0.5, 0.5], level=1.0), "level"),
        (lambda: rk.bias_covariance([0.5, 0.5], [0.5, 0.5], [0.5, 0.5], n_boot=0), "n_boot"),
    ],
)
def test_bad_input_raises_config_error(call, culprit):
    with pytest.raises(ConfigError, match=culprit):
        call()

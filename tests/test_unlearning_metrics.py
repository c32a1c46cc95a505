"""The unlearning evaluation API's metric registry, each metric checked against an
independent computation (issue 11)."""

import numpy as np
import pytest

from fedrec.errors import ConfigError
from fedrec.unlearning import metrics as um


def _mann_whitney_auc(pos, neg):
    """AUC by counting pairs (ties count one half), independent of scikit-learn."""
    pos, neg = np.asarray(pos, float), np.asarray(neg, float)
    greater = (pos[:, None] > neg[None, :]).sum()
    ties = (pos[:, None] == neg[None, :]).sum()
    return (greater + 0.5 * ties) / (pos.size * neg.size)


def test_mia_auc_matches_pair_counting_and_reads_half_at_chance():
    rng = np.random.default_rng(0)
    f = np.round(rng.normal(0.3, 1, 300), 1)  # rounded: ties occur
    u = np.round(rng.normal(0.0, 1, 500), 1)
    assert um.mia_auc(f, u) == pytest.approx(_mann_whitney_auc(f, u), abs=1e-12)
    same = rng.normal(size=4000)
    assert abs(um.mia_auc(same[:2000], same[2000:]) - 0.5) < 0.03
    assert um.mia_auc([2.0, 3.0], [0.0, 1.0]) == 1.0


def test_mia_tpr_at_fpr_by_hand():
    # 4 members, 4 non-members; at FPR 0 the two top members are above every non-member
    f, u = [0.9, 0.8, 0.3, 0.1], [0.7, 0.4, 0.2, 0.0]
    assert um.mia_tpr_at_fpr(f, u, fpr=0.0) == pytest.approx(0.5)
    assert um.mia_tpr_at_fpr(f, u, fpr=0.25) == pytest.approx(0.5)
    assert um.mia_tpr_at_fpr(f, u, fpr=1.0) == pytest.approx(1.0)
    # ROC points (0, .5), (.25, .5), (.5, .5), (.5, .75), ...: no interpolation
    assert um.mia_tpr_at_fpr(f, u, fpr=0.375) == pytest.approx(0.5)
    assert um.mia_tpr_at_fpr(f, u, fpr=0.5) == pytest.approx(0.75)
    with pytest.raises(ConfigError, match="fpr"):
        um.mia_tpr_at_fpr(f, u, fpr=1.5)


def test_distances_and_overlap_by_hand():
    ref = [np.array([[3.0, 0.0]]), np.array([4.0])]
    assert um.parameter_distance(ref, ref) == 0.0
    moved = [np.array([[3.0, 1.0]]), np.array([4.0])]
    assert um.parameter_distance(moved, ref) == pytest.approx(1.0 / 5.0)
    assert um.score_distance([1.0, 2.0, 4.0], [1.0, 3.0, 2.0]) == pytest.approx(1.0)
    a = np.array([[1, 2, 3], [4, 5, -1]])
    b = np.array([[3, 2, 9], [6, 4, 5]])
    assert um.topk_overlap(a, b) == pytest.approx((2 + 2) / 6)
    assert um.metric_gap(0.31, 0.29) == pytest.approx(0.02)
    assert um.privacy_leakage(0.6, 0.5) == pytest.approx(0.2)
    assert um.speedup(2.0, 20.0) == 10.0
    with pytest.raises(ConfigError, match="differ in size"):
        um.parameter_distance([np.zeros(2)], ref)


def test_active_inactive_gap_by_hand_with_ties():
    # 20 users: the top 5 % is one user; two users tie on 50 interactions -> lower id wins
    counts = np.full(20, 10.0)
    counts[[7, 3]] = 50.0
    utility = np.zeros(20)
    utility[3] = 1.0  # the active user (id 3 < 7)
    assert um.active_inactive_gap(utility, counts) == pytest.approx(1.0)
    utility[3], utility[7] = 0.0, 1.0
    assert um.active_inactive_gap(utility, counts) == pytest.approx(-1 / 19)


def test_registry_tags_filters_and_reports():
    names = {s.name for s in um.list_metrics(axis="completeness")}
    assert {"mia_auc", "mia_tpr_at_fpr", "topk_overlap", "parameter_distance"} <= names
    assert "speedup" not in names
    assert {s.name for s in um.list_metrics(target="attribute")} >= {"metric_gap", "speedup"}
    assert "mia_auc" not in {s.name for s in um.list_metrics(target="attribute")}
    spec = um.get_metric("mia_auc")
    assert spec.ideal == "match-retrain" and spec.fn is um.mia_auc
    row = um.compare("mia_auc", original=0.71, retrain=0.52, method=0.55)
    assert row["distance_to_retrain"] == pytest.approx(0.03) and row["axis"] == "completeness"
    with pytest.raises(ConfigError, match="unknown unlearning metric 'nope'"):
        um.get_metric("nope")
    with pytest.raises(ConfigError, match="axis must be one of"):
        um.list_metrics(axis="speed")
    with pytest.raises(ConfigError, match="already registered"):
        um.register("mia_auc", axis="completeness", ideal="low")(lambda: 0.0)
    with pytest.raises(ConfigError, match="is empty"):
        um.mia_auc([], [0.1])


def test_recommender_mia_features_by_hand_and_attack_separates_members():
    V = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [3.0, 3.0]])
    rec = np.array([[0, 1, -1], [3, 2, 1]])
    hist = [np.array([2]), np.array([0, 1])]
    np.testing.assert_allclose(
        um.mia_user_features(V, rec, hist), [[-0.5, -0.5], [4 / 3 - 0.5, 5 / 3 - 0.5]]
    )
    rng = np.random.default_rng(0)

    def users(n, shift):
        members = np.repeat([1, 0], n // 2)
        return rng.normal(size=(n, 4)) + shift * members[:, None], members

    Xs, ys = users(200, 1.5)
    Xt, yt = users(200, 1.5)
    assert um.recommender_mia_auc(Xs, ys, Xt, yt) > 0.85
    Xn, yn = users(400, 0.0)  # members look like non-members (ideal unlearning)
    assert abs(um.recommender_mia_auc(Xs, ys, Xn, yn) - 0.5) < 0.1
    with pytest.raises(ConfigError, match="both members"):
        um.recommender_mia_auc(Xs, ys, Xt, np.ones(200))
    with pytest.raises(ConfigError, match="outside 0..3"):
        um.mia_user_features(V, np.array([[4]]), [np.array([0])])


def test_utility_ratio_and_relearn_recovery_by_hand():
    assert um.utility_ratio(0.038, 0.040) == pytest.approx(0.95)
    with pytest.raises(ConfigError, match="reference_value"):
        um.utility_ratio(0.1, 0.0)
    assert um.relearn_recovery(0.71, 0.52) == pytest.approx(0.19)
    assert um.get_metric("relearn_recovery").axis == "robustness"
    assert {m.name for m in um.list_metrics(axis="utility")} >= {"utility_ratio"}


def test_language_model_membership_scores_by_hand():
    import zlib

    lp = [-0.1, -2.0, -0.5, -3.0, -0.2]
    assert um.min_k_score(lp, k=0.2) == pytest.approx(-3.0)
    assert um.min_k_score(lp, k=0.4) == pytest.approx(-2.5)
    assert um.min_k_score(lp, k=1.0) == pytest.approx(np.mean(lp))
    with pytest.raises(ConfigError, match="k must be"):
        um.min_k_score(lp, k=0.0)
    text = "mirel tovak was born in karsolde ."
    assert um.zlib_ratio_score(-12.0, text) == pytest.approx(
        -12.0 / len(zlib.compress(text.encode()))
    )
    # truth ratio: mean_j p_j / p_true with length-normalised log-probabilities
    assert um.truth_ratio(-1.0, [-2.0, -3.0]) == pytest.approx((np.exp(-1.0) + np.exp(-2.0)) / 2)
    assert um.get_metric("forget_quality").ideal == "high"


def test_forget_quality_is_the_two_sample_ks_p_value():
    rng = np.random.default_rng(0)
    a, b = rng.normal(0, 1, 80), rng.normal(0.8, 1, 60)
    # the KS statistic by hand: the largest gap between the two empirical CDFs
    grid = np.sort(np.concatenate([a, b]))
    d = np.max(
        np.abs(
            np.searchsorted(np.sort(a), grid, "right") / a.size
            - np.searchsorted(np.sort(b), grid, "right") / b.size
        )
    )
    from scipy.stats import ks_2samp

    res = ks_2samp(a, b)
    assert res.statistic == pytest.approx(d)
    assert um.forget_quality(a, b) == pytest.approx(res.pvalue) and um.forget_quality(a, b) < 0.01
    assert um.forget_quality(a, a) == pytest.approx(1.0)

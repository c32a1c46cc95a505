"""Tests for fedrec.metrics: hand-checked counts, pooled-vs-client sums, Fairlearn oracle."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fedrec.errors import ConfigError
from fedrec.metrics import (
    GAP_KEYS,
    FederatedMetrics,
    confusion_counts,
    federated_metrics,
    group_metrics,
    metrics_from_counts,
)

TOL = 1e-12


# --------------------------------------------------------------------------- hand-checked


def test_confusion_counts_by_hand():
    y_true = [0, 1, 1, 0, 2, 1]
    y_pred = [0, 1, 0, 0, 2, 2]
    groups = [0, 0, 1, 1, 1, 0]
    c = confusion_counts(y_true, y_pred, groups, num_classes=3, num_groups=2)
    assert c.dtype == np.int64 and c.shape == (2, 3, 3)
    expected = np.zeros((2, 3, 3), dtype=np.int64)
    expected[0, 0, 0] = 1
    expected[0, 1, 1] = 1
    expected[0, 1, 2] = 1
    expected[1, 1, 0] = 1
    expected[1, 0, 0] = 1
    expected[1, 2, 2] = 1
    np.testing.assert_array_equal(c, expected)


@pytest.mark.parametrize(
    ("kwargs", "culprit"),
    [
        (dict(y_true=[0, 3], y_pred=[0, 1], groups=[0, 0]), "y_true"),
        (dict(y_true=[0, 1], y_pred=[-1, 1], groups=[0, 0]), "y_pred"),
        (dict(y_true=[0, 1], y_pred=[0, 1], groups=[0, 2]), "groups"),
        (dict(y_true=[0, 1], y_pred=[0], groups=[0, 0]), "same length"),
        (dict(y_true=[0.5, 1], y_pred=[0, 1], groups=[0, 0]), "y_true"),
    ],
)
def test_confusion_counts_errors(kwargs, culprit):
    with pytest.raises(ConfigError, match=culprit):
        confusion_counts(**kwargs, num_classes=3, num_groups=2)


def test_binary_two_groups_by_hand():
    counts = np.array(
        [
            [[3, 1], [2, 4]],  # group 0: n=10, sel=0.5, TPR=4/6, FPR=1/4
            [[5, 1], [1, 3]],  # group 1: n=10, sel=0.4, TPR=3/4, FPR=1/6
        ]
    )
    m = metrics_from_counts(counts)
    assert m["n"] == 20
    assert m["accuracy"] == pytest.approx(15 / 20, abs=TOL)
    assert m["positive_rate"] == pytest.approx(9 / 20, abs=TOL)
    assert m["dp_pairwise_max"] == pytest.approx(0.1, abs=TOL)
    assert m["dp_gap"] == m["dp_pairwise_max"]
    assert m["dp_subgroup_max"] == pytest.approx(0.05, abs=TOL)  # |0.5 - 0.45|
    assert m["eop_gap"] == pytest.approx(3 / 4 - 4 / 6, abs=TOL)
    assert m["eop_subgroup_max"] == pytest.approx(0.05, abs=TOL)  # pooled TPR 7/10
    assert m["eo_gap"] == pytest.approx(1 / 12, abs=TOL)  # TPR gap 1/12, FPR gap 1/12
    assert m["eo_subgroup_max"] == pytest.approx(0.05, abs=TOL)  # pooled FPR 2/10
    assert set(GAP_KEYS) <= set(m)


def test_multiclass_empty_group_and_undefined_rates_by_hand():
    counts = np.zeros((3, 3, 3), dtype=np.int64)
    counts[0] = [[2, 0, 0], [0, 1, 1], [0, 0, 0]]  # n=4, no rows of class 2
    # group 1 has no rows at all -> ignored
    counts[2] = [[1, 1, 0], [0, 0, 0], [0, 1, 2]]  # n=5, no rows of class 1
    m = metrics_from_counts(counts)
    assert "positive_rate" not in m
    assert m["n"] == 9
    assert m["accuracy"] == pytest.approx(6 / 9, abs=TOL)
    # selection rates: g0 [.5, .25, .25], g2 [.2, .4, .4], pooled [1/3]*3
    assert m["dp_pairwise_max"] == pytest.approx(0.3, abs=TOL)
    assert m["dp_subgroup_max"] == pytest.approx(1 / 6, abs=TOL)
    # TPR class 0: g0 1, g2 1/2; classes 1 and 2 are defined in one group only -> skipped
    assert m["eop_gap"] == pytest.approx(0.5, abs=TOL)
    assert m["eop_subgroup_max"] == pytest.approx(0.25, abs=TOL)  # pooled recall(0) = 3/4
    # FPR: class 0 both 0; class 1 g0 0, g2 2/5; class 2 g0 1/4, g2 0
    assert m["eo_gap"] == pytest.approx(0.5, abs=TOL)
    gm = group_metrics(counts)
    assert [g["n"] for g in gm] == [4, 0, 5]
    assert math.isnan(gm[1]["accuracy"]) and all(math.isnan(v) for v in gm[1]["selection_rate"])
    np.testing.assert_allclose(gm[0]["selection_rate"], [0.5, 0.25, 0.25], atol=TOL)
    np.testing.assert_allclose(gm[2]["tpr"], [0.5, np.nan, 2 / 3], atol=TOL)
    np.testing.assert_allclose(gm[2]["fpr"], [0.0, 0.4, 0.0], atol=TOL)


def test_degenerate_cases():
    one_group = np.array([[[3, 1], [2, 4]]])
    m = metrics_from_counts(one_group)
    assert all(m[k] == 0.0 for k in GAP_KEYS)
    empty = np.zeros((2, 2, 2), dtype=np.int64)
    m = metrics_from_counts(empty)
    assert m["n"] == 0 and math.isnan(m["accuracy"])
    assert all(m[k] == 0.0 for k in GAP_KEYS)
    with pytest.raises(ValueError):
        metrics_from_counts(np.zeros((2, 2, 3)))
    with pytest.raises(ValueError):
        metrics_from_counts(-np.ones((2, 2, 2), dtype=np.int64))


# --------------------------------------------------------------------- pooled vs clients


def _same(d1, d2):
    """Exact equality of two metric dicts, treating nan == nan."""
    return d1.keys() == d2.keys() and all(
        d1[k] == d2[k] or (math.isnan(d1[k]) and math.isnan(d2[k])) for k in d1
    )


def _random_clients(rng, num_clients, C, G, sizes=None):
    data = {}
    for k in range(num_clients):
        n = int(rng.integers(20, 80)) if sizes is None else sizes[k]
        y = rng.integers(0, C, n)
        yhat = np.where(rng.random(n) < 0.6, y, rng.integers(0, C, n))
        a = rng.integers(0, G, n)
        data[k] = (y, yhat, a)
    return data


@pytest.mark.parametrize(("C", "G"), [(2, 2), (3, 3)])
def test_summed_counts_equal_pooled_predictions(C, G):
    rng = np.random.default_rng(7)
    data = _random_clients(rng, 5, C, G, sizes=[40, 0, 55, 31, 70])
    counts = {k: confusion_counts(*data[k], num_classes=C, num_groups=G) for k in data}
    # insertion order must not matter (summed in sorted id order)
    fm = federated_metrics({k: counts[k] for k in [3, 0, 4, 1, 2]})
    assert isinstance(fm, FederatedMetrics)
    pooled = [np.concatenate([data[k][i] for k in sorted(data)]) for i in range(3)]
    direct = metrics_from_counts(confusion_counts(*pooled, num_classes=C, num_groups=G))
    assert fm.overall == direct
    assert fm.by_group == group_metrics(confusion_counts(*pooled, num_classes=C, num_groups=G))
    assert list(fm.by_client) == [0, 1, 2, 3, 4]
    for k in data:
        assert _same(fm.by_client[k], metrics_from_counts(counts[k]))
    nonempty = [k for k in data if len(data[k][0]) > 0]
    for key in GAP_KEYS:
        vals = [fm.by_client[k][key] for k in nonempty]
        assert fm.local[f"{key}_local_max"] == max(vals)
        assert fm.local[f"{key}_local_mean"] == pytest.approx(np.mean(vals), abs=TOL)
    assert fm.local["accuracy_local_min"] == min(fm.by_client[k]["accuracy"] for k in nonempty)
    flat = fm.flat()
    assert flat["dp_gap"] == fm.overall["dp_gap"] and "dp_gap_local_max" in flat


def test_federated_metrics_errors():
    with pytest.raises(ValueError):
        federated_metrics({})
    with pytest.raises(ValueError, match="client 1"):
        federated_metrics({0: np.zeros((2, 2, 2), int), 1: np.zeros((3, 2, 2), int)})


# ------------------------------------------------------------------------ Fairlearn oracle


def _oracle_data(C, G, seed, n=600):
    rng = np.random.default_rng(seed)
    a = rng.integers(0, G, n)
    y = rng.integers(0, C, n)
    # group-dependent predictions so the gaps are not all ~0
    flip = rng.random(n) < 0.25 + 0.15 * a
    yhat = np.where(flip, rng.integers(0, C, n), y)
    return y, yhat, a


@pytest.mark.parametrize("G", [2, 3])
def test_binary_against_fairlearn(G):
    fl = pytest.importorskip("fairlearn.metrics")
    from sklearn.metrics import accuracy_score

    y, yhat, a = _oracle_data(2, G, seed=10 + G)
    m = metrics_from_counts(confusion_counts(y, yhat, a, 2, G))
    assert abs(m["accuracy"] - accuracy_score(y, yhat)) < TOL
    assert (
        abs(m["dp_pairwise_max"] - fl.demographic_parity_difference(y, yhat, sensitive_features=a))
        < TOL
    )
    assert (
        abs(
            m["dp_subgroup_max"]
            - fl.demographic_parity_difference(y, yhat, sensitive_features=a, method="to_overall")
        )
        < TOL
    )
    assert abs(m["eo_gap"] - fl.equalized_odds_difference(y, yhat, sensitive_features=a)) < TOL
    assert (
        abs(
            m["eo_subgroup_max"]
            - fl.equalized_odds_difference(y, yhat, sensitive_features=a, method="to_overall")
        )
        < TOL
    )
    tpr = fl.MetricFrame(metrics=fl.true_positive_rate, y_true=y, y_pred=yhat, sensitive_features=a)
    assert abs(m["eop_gap"] - tpr.difference()) < TOL
    assert abs(m["eop_subgroup_max"] - tpr.difference(method="to_overall")) < TOL
    sel = fl.MetricFrame(metrics=fl.selection_rate, y_true=y, y_pred=yhat, sensitive_features=a)
    gm = group_metrics(confusion_counts(y, yhat, a, 2, G))
    for g in range(G):
        assert abs(gm[g]["selection_rate"][1] - sel.by_group[g]) < TOL
        assert abs(gm[g]["tpr"][1] - tpr.by_group[g]) < TOL
    assert abs(m["positive_rate"] - sel.overall) < TOL
    assert m["dp_pairwise_max"] > 0.01 and m["eo_gap"] > 0.01  # the check is not vacuous


@pytest.mark.parametrize("G", [2, 3])
def test_multiclass_against_fairlearn_one_vs_rest(G):
    fl = pytest.importorskip("fairlearn.metrics")
    from sklearn.metrics import accuracy_score

    C = 3
    y, yhat, a = _oracle_data(C, G, seed=20 + G)
    counts = confusion_counts(y, yhat, a, C, G)
    m = metrics_from_counts(counts)
    gm = group_metrics(counts)
    assert abs(m["accuracy"] - accuracy_score(y, yhat)) < TOL
    dp, dp_sub, eop, eop_sub, eo = [], [], [], [], []
    for k in range(C):
        yt, yp = (y == k).astype(int), (yhat == k).astype(int)
        mf = fl.MetricFrame(
            metrics={
                "sel": fl.selection_rate,
                "tpr": fl.true_positive_rate,
                "fpr": fl.false_positive_rate,
            },
            y_true=yt,
            y_pred=yp,
            sensitive_features=a,
        )
        diff, diff_overall = mf.difference(), mf.difference(method="to_overall")
        dp.append(diff["sel"])
        dp_sub.append(diff_overall["sel"])
        eop.append(diff["tpr"])
        eop_sub.append(diff_overall["tpr"])
        eo.append(max(diff["tpr"], diff["fpr"]))
        for g in range(G):
            assert abs(gm[g]["selection_rate"][k] - mf.by_group["sel"][g]) < TOL
            assert abs(gm[g]["tpr"][k] - mf.by_group["tpr"][g]) < TOL
            assert abs(gm[g]["fpr"][k] - mf.by_group["fpr"][g]) < TOL
    assert abs(m["dp_pairwise_max"] - max(dp)) < TOL
    assert abs(m["dp_subgroup_max"] - max(dp_sub)) < TOL
    assert abs(m["eop_gap"] - max(eop)) < TOL
    assert abs(m["eop_subgroup_max"] - max(eop_sub)) < TOL
    assert abs(m["eo_gap"] - max(eo)) < TOL


def test_local_metrics_against_fairlearn_per_client():
    fl = pytest.importorskip("fairlearn.metrics")
    rng = np.random.default_rng(3)
    data = _random_clients(rng, 3, 2, 2, sizes=[150, 200, 120])
    fm = federated_metrics({k: confusion_counts(*data[k], 2, 2) for k in data})
    for k, (y, yhat, a) in data.items():
        ref = fl.demographic_parity_difference(y, yhat, sensitive_features=a)
        assert abs(fm.by_client[k]["dp_gap"] - ref) < TOL
    ref_max = max(
        fl.equalized_odds_difference(*data[k][:2], sensitive_features=data[k][2]) for k in data
    )
    assert abs(fm.local["eo_gap_local_max"] - ref_max) < TOL

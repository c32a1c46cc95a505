"""Attribute-inference suite: planted signal, sklearn agreement, flip-aware attacker on
in-sample-equalised (anti-aligned) data, determinism, errors.

Small synthetic data and small MLPs so the whole file runs in a few seconds.
"""

from __future__ import annotations

import ast
import warnings
from pathlib import Path

import numpy as np
import pytest
from sklearn.exceptions import ConvergenceWarning
from sklearn.metrics import balanced_accuracy_score, f1_score, roc_auc_score, roc_curve
from sklearn.model_selection import StratifiedKFold
from threadpoolctl import threadpool_limits

from fedrec.attacks import (
    ATTACKERS,
    AttackResult,
    age_buckets,
    attack,
    attack_many,
    make_attacker,
    results_table,
    tpr_at_fpr,
    upload_features,
)
from fedrec.data.recsys import AGE_BUCKETS, age_bucket, synthetic_recommendation
from fedrec.errors import ConfigError
from fedrec.seeding import derive_seed

FAST = dict(folds=3, repeats=1, mlp_hidden=(8,), max_iter=100)


def planted(n: int, d: int, s: float, probs, seed: int = 0):
    """Gaussian noise plus ``s`` times a per-class unit direction (class 0 gets none)."""
    rng = np.random.default_rng(seed)
    y = rng.choice(len(probs), size=n, p=probs)
    directions = np.linalg.qr(rng.normal(size=(d, d)))[0][: len(probs)]  # orthonormal rows
    directions[0] = 0.0
    return rng.normal(size=(n, d)) + s * directions[y], y


# ----------------------------------------------------------------------------- planted signal


@pytest.mark.parametrize("attacker", ATTACKERS)
def test_planted_binary_signal_is_found_and_noise_is_chance(attacker):
    X, y = planted(300, 8, 3.0, [0.5, 0.5], seed=1)
    strong = attack(X, y, attacker=attacker, **FAST)
    assert strong.auc > 0.9 and strong.balanced_accuracy > 0.8
    assert strong.num_classes == 2 and strong.n == 300 and len(strong.per_fold) == 3

    X0, y0 = planted(300, 8, 0.0, [0.5, 0.5], seed=2)
    null = attack(X0, y0, attacker=attacker, **FAST)
    assert abs(null.auc - 0.5) < 0.08
    assert abs(null.balanced_accuracy - null.chance_balanced_accuracy) < 0.08
    assert null.chance_auc == 0.5 and null.tpr_at_1pct_fpr < 0.1


@pytest.mark.parametrize("attacker", ATTACKERS)
def test_planted_four_class_signal_macro_auc(attacker):
    X, y = planted(400, 8, 3.0, [0.25] * 4, seed=3)
    strong = attack(X, y, attacker=attacker, **FAST)
    assert strong.num_classes == 4 and strong.auc > 0.9

    X0, y0 = planted(400, 8, 0.0, [0.25] * 4, seed=4)
    null = attack(X0, y0, attacker=attacker, **FAST)
    assert abs(null.auc - 0.5) < 0.08
    assert abs(null.balanced_accuracy - 0.25) < 0.08


@pytest.mark.parametrize("attacker", ATTACKERS)
def test_imbalanced_90_10_is_scored_against_balanced_chance(attacker):
    X, y = planted(400, 8, 0.0, [0.9, 0.1], seed=5)
    res = attack(X, y, attacker=attacker, **FAST)
    assert abs(res.balanced_accuracy - 0.5) < 0.08  # plain accuracy of "always 0" would be 0.9
    assert abs(res.auc - 0.5) < 0.08
    for row in res.per_fold:  # training part undersampled to the minority class
        counts = np.bincount(y[row["train_index"]], minlength=2)
        assert (
            counts[0]
            == counts[1]
            == np.bincount(y[np.setdiff1d(np.arange(400), row["test_index"])]).min()
        )
        assert row["n_test"] == row["test_index"].size
    unbalanced = attack(X, y, attacker=attacker, balance=False, **FAST)
    assert unbalanced.per_fold[0]["n_train"] > res.per_fold[0]["n_train"]
    assert unbalanced.balanced_accuracy < 0.6


# ----------------------------------------------------------------------------- sklearn agreement


@pytest.mark.parametrize("attacker,num_classes", [("logreg", 2), ("mlp", 3)])
def test_fold_metrics_match_sklearn_on_the_recorded_split(attacker, num_classes):
    X, y = planted(240, 6, 1.0, [1 / num_classes] * num_classes, seed=6)
    res = attack(X, y, attacker=attacker, **FAST)
    row = res.per_fold[1]
    model = make_attacker(
        attacker, seed=row["model_seed"], mlp_hidden=FAST["mlp_hidden"], max_iter=FAST["max_iter"]
    )
    with warnings.catch_warnings(), threadpool_limits(1, user_api="blas"):
        warnings.simplefilter("ignore", ConvergenceWarning)
        model.fit(X[row["train_index"]], y[row["train_index"]])
    yt = y[row["test_index"]]
    proba = model.predict_proba(X[row["test_index"]])
    pred = model.predict(X[row["test_index"]])
    if num_classes == 2:
        auc = roc_auc_score(yt, proba[:, 1])
        fpr, tpr, _ = roc_curve(yt, proba[:, 1])
        tpr1 = tpr[np.where(fpr <= 0.01)[0][-1]]  # untied scores: step value == interpolated
    else:
        auc = roc_auc_score(yt, proba, multi_class="ovr", average="macro")
        tpr1 = np.mean([tpr_at_fpr(yt == k, proba[:, k]) for k in range(num_classes)])
    assert row["auc"] == pytest.approx(auc, abs=1e-12)
    assert row["tpr_at_1pct_fpr"] == pytest.approx(tpr1, abs=1e-12)
    assert row["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(yt, pred), abs=1e-12)
    assert row["macro_f1"] == pytest.approx(f1_score(yt, pred, average="macro"), abs=1e-12)
    for m in ("auc", "balanced_accuracy", "macro_f1", "tpr_at_1pct_fpr"):
        vals = [r[m] for r in res.per_fold]
        assert getattr(res, m) == pytest.approx(np.mean(vals), abs=1e-12)
        assert getattr(res, m + "_std") == pytest.approx(np.std(vals), abs=1e-12)


def test_folds_partition_users_and_are_stratified():
    X, y = planted(150, 4, 1.0, [0.7, 0.3], seed=7)
    res = attack(X, y, attacker="logreg", folds=5, repeats=2)
    assert len(res.per_fold) == 10
    for r in range(2):
        tests = [row["test_index"] for row in res.per_fold if row["repeat"] == r]
        assert np.array_equal(np.sort(np.concatenate(tests)), np.arange(150))
        for t in tests:
            assert abs(np.mean(y[t]) - np.mean(y)) < 0.05
    for row in res.per_fold:
        assert np.intersect1d(row["train_index"], row["test_index"]).size == 0


def test_tpr_at_fpr_on_hand_made_roc():
    # Staircase (no ties): ROC points (0,0) (0,.25) (.25,.25) (.25,.5) (.5,.5) (.5,.75) (.5,1) ...
    y = [1, 1, 1, 1, 0, 0, 0, 0]
    s = [0.9, 0.6, 0.3, 0.2, 0.7, 0.4, 0.1, 0.05]
    assert tpr_at_fpr(y, s, 0.01) == 0.25
    assert tpr_at_fpr(y, s, 0.25) == 0.5
    assert tpr_at_fpr(y, s, 0.3) == 0.5
    assert tpr_at_fpr(y, s, 0.5) == 1.0
    assert tpr_at_fpr(y, s, 0.0) == 0.25
    # A tie between a positive and a negative: diagonal segment (0, .5) -> (.5, 1).
    y2, s2 = [1, 1, 0, 0], [0.9, 0.5, 0.5, 0.1]
    assert tpr_at_fpr(y2, s2, 0.1) == pytest.approx(0.6)
    assert tpr_at_fpr(y2, s2, 0.1, interpolate=False) == 0.5
    assert tpr_at_fpr(y2, s2, 1.0) == 1.0
    # Perfect and inverted scores.
    assert tpr_at_fpr([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9]) == 1.0
    assert tpr_at_fpr([1, 1, 0, 0], [0.1, 0.2, 0.8, 0.9]) == 0.0
    # Continuous scores with many negatives: Privacy Meter's step value.
    rng = np.random.default_rng(0)
    yy = rng.integers(0, 2, 3000)
    ss = rng.normal(size=3000) + yy
    fpr, tpr, _ = roc_curve(yy, ss)
    assert tpr_at_fpr(yy, ss) == pytest.approx(tpr[np.where(fpr <= 0.01)[0][-1]], abs=1e-12)
    with pytest.raises(ConfigError, match="2 classes"):
        tpr_at_fpr([1, 1], [0.1, 0.2])


# ----------------------------------------------------------------------------- determinism


def _fingerprint(res: AttackResult):
    return [
        (
            row["repeat"],
            row["fold"],
            row["auc"],
            row["macro_f1"],
            row["model_seed"],
            tuple(row["train_index"]),
            tuple(row["test_index"]),
        )
        for row in res.per_fold
    ]


def test_same_seed_is_identical_and_other_seed_changes_folds():
    X, y = planted(120, 6, 1.0, [0.5, 0.5], seed=8)
    kw = dict(FAST, folds=2)
    a = attack(X, y, attacker="mlp", seed=3, **kw)
    b = attack(X, y, attacker="mlp", seed=3, **kw)
    assert _fingerprint(a) == _fingerprint(b) and a.to_dict() == b.to_dict()
    c = attack(X, y, attacker="logreg", seed=4, folds=2, repeats=2)
    d = attack(X, y, attacker="logreg", seed=3, folds=2, repeats=2)
    assert not np.array_equal(c.per_fold[0]["test_index"], d.per_fold[0]["test_index"])
    # repeats use different folds; attackers share the folds of a seed
    assert not np.array_equal(d.per_fold[0]["test_index"], d.per_fold[2]["test_index"])
    assert np.array_equal(a.per_fold[0]["test_index"], d.per_fold[0]["test_index"])


def test_known_fraction_trains_on_known_users_and_scores_the_rest():
    X, y = planted(300, 8, 3.0, [0.7, 0.3], seed=9)
    res = attack(X, y, attacker="logreg", known_fraction=0.3, repeats=3, seed=1)
    assert len(res.per_fold) == 3 and res.auc > 0.9
    for row in res.per_fold:
        assert row["n_test"] == 300 - 90
        assert np.intersect1d(row["train_index"], row["test_index"]).size == 0
        known = np.setdiff1d(np.arange(300), row["test_index"])
        counts = np.bincount(y[row["train_index"]], minlength=2)
        assert counts[0] == counts[1] == np.bincount(y[known]).min()
    assert not np.array_equal(res.per_fold[0]["test_index"], res.per_fold[1]["test_index"])
    assert res.settings["known_fraction"] == 0.3


# ----------------------------------------------------------------------------- many / table


def test_attack_many_and_results_table():
    X, g = planted(120, 6, 2.0, [0.5, 0.5], seed=10)
    ages = np.random.default_rng(0).choice([15, 20, 30, 40], size=120)
    codes, names = age_buckets(ages)
    results = attack_many(
        X, {"gender": g, "age": codes}, attackers=("logreg", "mlp"), **dict(FAST, max_iter=30)
    )
    assert [(r.attribute, r.attacker) for r in results] == [
        ("gender", "logreg"),
        ("gender", "mlp"),
        ("age", "logreg"),
        ("age", "mlp"),
    ]
    assert results[2].num_classes == 4 and results[2].classes == [0, 1, 2, 3]
    table = results_table(results)
    lines = table.splitlines()
    assert len(lines) == 6
    assert lines[0] == (
        "| attribute | attacker | K | n | AUC | sym. AUC | bal. acc | accuracy (majority) "
        "| macro-F1 | TPR@1%FPR |"
    )
    assert lines[1].count("|") == lines[0].count("|") == lines[2].count("|") == 11
    assert lines[2].startswith("| gender | logreg | 2 | 120 | ")
    assert lines[2].count("±") == 5
    cells = [c.strip() for c in lines[2].split("|")[1:-1]]
    res = results[0]
    assert cells[5] == f"{res.auc_sym:.3f}"
    assert cells[7] == f"{res.accuracy:.3f} ± {res.accuracy_std:.3f} ({res.majority_rate:.3f})"
    assert "per_fold" not in results[0].to_dict()
    assert "train_index" not in results[0].to_dict(include_folds=True)["per_fold"][0]


def test_age_buckets_reuse_the_dataset_bands():
    ages = np.array([1, 17, 18, 24, 25, 34, 35, 44, 45, 49, 50, 55, 56, 80])
    codes, names = age_buckets(ages)
    assert codes.tolist() == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6]
    assert names == AGE_BUCKETS == ["<18", "18-24", "25-34", "35-44", "45-49", "50-55", "56+"]
    assert np.array_equal(codes, age_bucket(ages))


# ----------------------------------------------------------------------------- upload features


def test_upload_features_on_a_tiny_example():
    ids = [np.array([0, 2, 2]), np.array([4]), np.array([], dtype=int)]
    deltas = [
        np.array([[1.0, 0.0], [0.0, 2.0], [2.0, 4.0]]),
        np.array([[-1.0, 1.0]]),
        np.zeros((0, 2)),
    ]
    touched = upload_features(ids, None, 5, kind="touched")
    assert touched.shape == (3, 5)
    assert touched.tolist() == [[1, 0, 1, 0, 0], [0, 0, 0, 0, 1], [0, 0, 0, 0, 0]]
    mean = upload_features(ids, deltas, 5, kind="delta-mean")
    assert mean.shape == (3, 2) and mean.tolist() == [[1.0, 2.0], [-1.0, 1.0], [0.0, 0.0]]
    total = upload_features(ids, deltas, 5, kind="delta-sum")
    assert total.tolist() == [[3.0, 6.0], [-1.0, 1.0], [0.0, 0.0]]
    with pytest.raises(ConfigError, match="kind must be one of touched, delta-mean, delta-sum"):
        upload_features(ids, deltas, 5, kind="delta")
    with pytest.raises(ConfigError, match=r"outside \[0, num_items=4\)"):
        upload_features(ids, deltas, 4)
    with pytest.raises(ConfigError, match="deltas_per_user"):
        upload_features(ids, None, 5, kind="delta-mean")
    with pytest.raises(ConfigError, match=r"deltas_per_user\[1\] must have shape \(1, d\)"):
        upload_features(ids, [deltas[0], np.zeros((2, 2)), deltas[2]], 5, kind="delta-mean")


def test_server_sees_touched_items_and_infers_the_planted_attribute():
    ds = synthetic_recommendation(
        num_users=240, num_items=120, dim=8, interactions_per_user=15, attr_strength=3.0, seed=0
    )
    ids = [ds.item[ds.user == u] for u in range(ds.num_users)]
    X = upload_features(ids, None, ds.num_items, kind="touched")
    res = attack(X, ds.user_attrs["gender"], attacker="logreg", folds=3, repeats=1)
    assert res.auc > 0.75


# ----------------------------------------------------------------------------- flip-aware


def anti_aligned(n: int, d: int, probs, seed: int = 0):
    """Planted class shifts, then every class's full-sample mean subtracted (exact
    in-sample equalisation, as RAID / LEGO constraints do): held-out folds anti-aligned."""
    X, y = planted(n, d, 2.0, probs, seed=seed)
    for k in np.unique(y):
        X[y == k] -= X[y == k].mean(axis=0)
    return X, y


FLIP = dict(folds=5, repeats=1, mlp_hidden=(8,), max_iter=100)


def test_symmetric_auc_is_of_the_mean_auc():
    X, y = anti_aligned(200, 6, [0.5, 0.5], seed=1)
    low = attack(X, y, attacker="logreg", **FLIP)
    assert low.auc < 0.5 and low.auc_sym == max(low.auc, 1 - low.auc) == 1 - low.auc
    X, y = planted(200, 6, 2.0, [0.5, 0.5], seed=1)
    high = attack(X, y, attacker="logreg", **FLIP)
    assert high.auc > 0.5 and high.auc_sym == max(high.auc, 1 - high.auc) == high.auc
    assert high.to_dict()["auc_sym"] == high.auc_sym
    # not the mean of per-fold symmetric values (that one is >= and biased upward)
    per_fold_sym = np.mean([max(r["auc"], 1 - r["auc"]) for r in low.per_fold])
    assert per_fold_sym >= low.auc_sym


def test_accuracy_and_majority_rate_by_hand():
    rng = np.random.default_rng(0)
    y = np.r_[np.zeros(150, int), np.ones(50, int)]
    X = np.c_[10.0 * y + rng.normal(size=200) * 0.1, rng.normal(size=(200, 2))]
    res = attack(X, y, attacker="logreg", folds=5, repeats=2)
    assert res.accuracy == res.balanced_accuracy == 1.0 and res.accuracy_std == 0.0
    majority = []
    for row in res.per_fold:
        yt = y[row["test_index"]]
        share = max(np.sum(yt == 0), np.sum(yt == 1)) / yt.size
        assert row["majority_rate"] == share == 0.75  # stratified: 30 + 10 in every fold
        assert row["accuracy"] == 1.0
        majority.append(share)
    assert res.majority_rate == pytest.approx(np.mean(majority), abs=1e-15)
    # Without signal, a balanced attacker's accuracy sits below the majority rate.
    X0, y0 = planted(400, 6, 0.0, [0.8, 0.2], seed=13)
    null = attack(X0, y0, attacker="logreg", folds=4, repeats=1)
    row = null.per_fold[0]
    model = make_attacker("logreg", seed=row["model_seed"])
    model.fit(X0[row["train_index"]], y0[row["train_index"]])
    pred = model.predict(X0[row["test_index"]])
    assert row["accuracy"] == pytest.approx(np.mean(pred == y0[row["test_index"]]), abs=1e-15)
    assert null.accuracy < null.majority_rate - 0.15
    assert null.majority_rate == pytest.approx(np.mean(y0 == 0), abs=0.01)


def test_flip_aware_finds_the_inverted_attribute_of_in_sample_equalised_data():
    X, y = anti_aligned(300, 6, [0.5, 0.5])
    plain = {a: attack(X, y, attacker=a, **FLIP) for a in ("mlp", "logreg")}
    fa = attack(X, y, attacker="flip-aware", **FLIP)
    assert plain["logreg"].auc < 0.45 and plain["logreg"].auc_sym > 0.55
    assert fa.auc > 0.55
    signs = [row["sign"] for row in fa.per_fold]
    assert signs.count(-1) > len(signs) / 2
    for i, row in enumerate(fa.per_fold):
        # same outer split and balancing as the plain attackers
        ref = plain[row["chosen"]].per_fold[i]
        assert np.array_equal(row["train_index"], ref["train_index"])
        assert np.array_equal(row["test_index"], ref["test_index"])
        assert row["model_seed"] == ref["model_seed"]
        assert set(row["inner_auc"]) == {"mlp", "logreg"}
        best = max(abs(v - 0.5) for v in row["inner_auc"].values())
        assert abs(row["inner_auc"][row["chosen"]] - 0.5) == best
        assert row["sign"] == (1 if row["inner_auc"][row["chosen"]] >= 0.5 else -1)
        # the refit chosen model is the plain attacker; sign -1 reverses its scores
        if row["sign"] == 1:
            assert row["auc"] == ref["auc"] and row["accuracy"] == ref["accuracy"]
        else:
            assert row["auc"] == pytest.approx(1 - ref["auc"], abs=1e-12)
            assert row["balanced_accuracy"] == pytest.approx(
                1 - ref["balanced_accuracy"], abs=1e-12
            )
    # the inner AUC of logreg, recomputed from the (balanced) training rows alone
    row = fa.per_fold[2]
    train = row["train_index"]
    skf = StratifiedKFold(3, shuffle=True, random_state=derive_seed(0, "aia-inner", 0, 2) % 2**32)
    oof = np.zeros(train.size)
    for i, (a, b) in enumerate(skf.split(np.zeros((train.size, 1)), y[train])):
        model = make_attacker("logreg", seed=derive_seed(0, "aia-inner-model", 0, 2, i) % 2**32)
        model.fit(X[train[a]], y[train[a]])
        oof[b] = model.predict_proba(X[train[b]])[:, 1]
    assert row["inner_auc"]["logreg"] == pytest.approx(roc_auc_score(y[train], oof), abs=1e-12)
    assert fa.settings["inner_folds"] == 3
    assert fa.to_dict(include_folds=True)["per_fold"][0]["chosen"] in ("mlp", "logreg")


def test_flip_aware_multiclass_anti_aligned():
    X, y = anti_aligned(300, 6, [1 / 3] * 3)
    plain = attack(X, y, attacker="logreg", **FLIP)
    fa = attack(X, y, attacker="flip-aware", **FLIP)
    assert fa.num_classes == 3
    assert plain.auc < 0.45 and fa.auc > 0.55
    assert [row["sign"] for row in fa.per_fold].count(-1) >= 4
    for row in fa.per_fold:
        if row["sign"] == -1 and row["chosen"] == "logreg":
            ref = plain.per_fold[[r["fold"] for r in plain.per_fold].index(row["fold"])]
            assert row["auc"] == pytest.approx(1 - ref["auc"], abs=1e-12)


def test_flip_aware_on_noise_is_chance_and_on_signal_keeps_its_sign():
    X0, y0 = planted(400, 6, 0.0, [0.5, 0.5], seed=14)
    null = attack(X0, y0, attacker="flip-aware", **FLIP)
    assert abs(null.auc - 0.5) < 0.1
    X, y = planted(300, 6, 2.0, [0.5, 0.5], seed=15)
    lr = attack(X, y, attacker="logreg", **FLIP)
    fa = attack(X, y, attacker="flip-aware", **FLIP)
    assert lr.auc > 0.8 and fa.auc >= lr.auc - 0.05
    assert all(row["sign"] == 1 for row in fa.per_fold)
    assert all(min(row["inner_auc"].values()) > 0.5 for row in fa.per_fold)


def test_flip_aware_is_deterministic_and_not_a_single_model():
    X, y = anti_aligned(200, 4, [0.6, 0.4], seed=16)
    kw = dict(FLIP, folds=3, seed=7)
    a = attack(X, y, attacker="flip-aware", **kw)
    b = attack(X, y, attacker="flip-aware", **kw)
    assert a.to_dict(include_folds=True) == b.to_dict(include_folds=True)
    assert _fingerprint(a) == _fingerprint(b)
    c = attack(X, y, attacker="flip-aware", **dict(kw, inner_folds=4))
    assert c.settings["inner_folds"] == 4
    assert [r["inner_auc"] for r in c.per_fold] != [r["inner_auc"] for r in a.per_fold]
    with pytest.raises(ConfigError, match="'flip-aware' is a protocol") as info:
        make_attacker("flip-aware")
    assert "\n" not in str(info.value)


def test_attack_many_defaults_to_all_attackers():
    X, g = planted(120, 4, 2.0, [0.5, 0.5], seed=17)
    results = attack_many(X, {"gender": g}, **dict(FAST, max_iter=30))
    assert [r.attacker for r in results] == list(ATTACKERS) == ["mlp", "logreg", "flip-aware"]
    assert results[0].per_fold[0]["test_index"].tolist() == (
        results[2].per_fold[0]["test_index"].tolist()
    )
    assert "chosen" in results[2].per_fold[0] and "chosen" not in results[0].per_fold[0]


# ----------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(attacker="svm"), "attacker must be one of mlp, logreg, flip-aware; got 'svm'"),
        (dict(labels=np.zeros(60, dtype=int)), "at least 2 classes"),
        (dict(labels=np.arange(59) % 2), "same number of rows, got 60 and 59"),
        (dict(labels=(np.arange(60) % 2).astype(float)), "integer class codes"),
        (
            dict(labels=np.r_[np.zeros(57, int), np.ones(3, int)]),
            "folds=5 needs at least 5 users in every class",
        ),
        (dict(folds=1), "folds must be an integer >= 2"),
        (dict(repeats=0), "repeats must be an integer >= 1"),
        (dict(seed=-1), "seed must be an integer >= 0"),
        (dict(known_fraction=0.0), r"known_fraction must be a number in \(0, 1\]"),
        (dict(known_fraction=1.5), r"known_fraction must be a number in \(0, 1\]"),
        (dict(known_fraction=0.01), "known_fraction=0.01 leaves no known"),
        (dict(mlp_hidden=()), "mlp_hidden must be a non-empty tuple"),
        (dict(max_iter=0), "max_iter must be an integer >= 1"),
        (dict(inner_folds=1), "inner_folds must be an integer >= 2"),
        (dict(inner_folds=2.0), "inner_folds must be an integer >= 2"),
        (
            dict(attacker="flip-aware", inner_folds=50),
            "inner_folds=50 needs at least 50 users of every class in every training part",
        ),
        (
            dict(attacker="flip-aware", folds=2, labels=np.r_[np.zeros(56, int), np.ones(4, int)]),
            "inner_folds=3 needs at least 3 users of every class in every training part, "
            "but one has only 2",
        ),
        (dict(embeddings=np.full((60, 3), np.nan)), "embeddings must be finite"),
        (dict(embeddings=np.zeros(60)), r"embeddings must be a 2-D \(n, d\) array"),
    ],
)
def test_bad_inputs_raise_one_line_config_errors(kwargs, match):
    args = dict(embeddings=np.random.default_rng(0).normal(size=(60, 3)), labels=np.arange(60) % 2)
    args.update(kwargs)
    with pytest.raises(ConfigError, match=match) as info:
        attack(args.pop("embeddings"), args.pop("labels"), **args)
    assert "\n" not in str(info.value)


def test_attack_many_rejects_bad_arguments():
    X = np.zeros((10, 2))
    with pytest.raises(ConfigError, match="attributes must be a non-empty dict"):
        attack_many(X, {})
    with pytest.raises(ConfigError, match="attacker must be one of"):
        attack_many(X, {"g": np.arange(10) % 2}, attackers=("mlp", "xgb"))


def test_attacks_package_imports_no_flwr_and_only_pure_fedrec_modules():
    # Static (a subprocess import costs seconds): fedrec.data, .errors and .seeding are
    # themselves checked by test_layering's flwr-free list.
    import fedrec.attacks as pkg

    for path in Path(pkg.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [("." * node.level) + (node.module or "")]
            else:
                continue
            for name in names:
                assert not name.split(".")[0] == "flwr", (path.name, name)
                # pure fedrec layers only (test_layering checks that they stay flwr-free)
                assert not name.startswith(
                    (
                        "fedrec.strategies",
                        "fedrec.clients",
                        "fedrec.flower",
                        "fedrec.runtime",
                        "..strategies",
                        "..clients",
                        "..flower",
                        "..runtime",
                    )
                ), (path.name, name)
